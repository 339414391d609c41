"""The local backend's own completion loop over llama-cpp-python: what ``Llama.create_chat_completion``
with ``response_format={"type": "json_object", "schema": ...}`` answers, token for token, in less time.

**Prefix reuse.** Every prompt of a role starts with the same system message (the policy pack and
the role's instructions: 93-97% of its tokens). The KV cells of that prefix are computed once,
saved (``llama_state_seq_get_data``, the prefix's cells only), and restored into the cache for
the next prompt of the role (``llama_state_seq_set_data``); only the tokens after it are decoded.
States are kept in a least-recently-used store capped in count and bytes (:class:`PrefixStates`);
a cap of 0 bytes turns reuse off, leaving what llama-cpp-python itself reuses (the prefix shared
with the previous call's tokens, still in the cache).

**Same tokens.** The reference is llama-cpp-python answering on a fresh context (the prompt decoded
from its first token). llama.cpp's CPU results are the same for any split of a prompt into
micro-batches of two tokens or more, but a one-token micro-batch can give other logits; the rest of
a prompt is therefore decoded in pieces that give every token a micro-batch of the kind it gets
when the whole prompt is decoded from the start (:meth:`LlamaEngine._eval_rest`). (The library
itself decodes only what differs from the previous call's tokens, in pieces that start there, so
its own replies can depend on the call before.) Sampling is the chain
llama-cpp-python builds (penalties, the schema's grammar, then greedy at temperature 0, else
top-k, typical, top-p, min-p, temperature and a seeded draw), applied so that it picks the same
token (:meth:`LlamaEngine._pick`). ``tests/models/test_local_engine.py`` compares the two on the
embedded model.

**Less work per token.** The grammar is compiled once per schema and cloned per call (the library
compiles it on every call). The grammar and the penalties run on the few candidates that can be
picked (the argmax; about the best :data:`WARM_CANDIDATES` tokens at a temperature above 0). When
those cannot decide (a JSON reply's punctuation, where the grammar allows a handful of tokens),
:class:`VocabTrie` finds every token the grammar allows by judging one token per next character and
looking further only below the characters it allows: about 1 ms, where judging all 49,152 tokens of
SmolLM2's vocabulary one by one (what the library does for every token it writes) takes about 4 ms.
(Inside a string, where nearly every token is allowed, the walk would cost more: all are judged.)
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CANDIDATES", "WARM_CANDIDATES", "LlamaEngine", "PrefixFiles", "PrefixStates", "VocabTrie", "engine_supports"]

_log = logging.getLogger("aidsafe.models")

CANDIDATES = 128
"""Tokens the grammar judges first at temperature 0 when it refuses the best one (the best by logit)."""
WARM_CANDIDATES = 256
"""About how many tokens the grammar judges first at a temperature above 0 (the best by logit); the tokens left
out then weigh too little to move top-p's cut for most tokens of a JSON reply (see :func:`_decided`), and
:class:`VocabTrie` answers for the others. (2,048 decided more tokens but cost more than it saved.)"""
MIN_PREFIX = 64
"""Shortest shared prefix worth a saved state, in tokens."""
_PREFIX_TEXTS = 256
"""System texts whose tokens are remembered (each a list of ints)."""
_GRAMMARS = 64
"""Compiled grammars kept (one per schema)."""


def engine_supports(llama: Any) -> bool:
    """Whether the engine renders this model's prompts as llama-cpp-python does: a GGUF chat template
    (``chat_format`` ``chat_template.*``), no custom chat handler, and a KV cache (not a recurrent or
    hybrid model). Other models take the library's path."""
    import llama_cpp

    if not str(getattr(llama_cpp, "__version__", "")).startswith("0.3."):
        return False  # the engine drives llama-cpp-python 0.3's internals (input_ids, n_tokens, eval, its samplers)
    if getattr(llama, "_is_recurrent", False) or getattr(llama, "_is_hybrid", False):
        return False  # their state is not a set of KV cells per token
    return llama.chat_handler is None and str(llama.chat_format or "").startswith("chat_template.")


def _common_prefix(a: Any, b: list[int]) -> int:
    import numpy as np

    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64)
    i = int(np.argmax(differ))
    return i if differ[i] else n


def _token_dtype() -> np.dtype[np.void]:
    """numpy's view of llama.cpp's ``llama_token_data`` (id, logit, p)."""
    import numpy as np

    return np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


def _token_data(lc: Any, data: Any) -> Any:
    """A ``llama_token_data_array`` over ``data`` (a numpy array of :func:`_token_dtype`), for a sampler to apply to."""
    return lc.llama_token_data_array(data=data.ctypes.data_as(lc.llama_token_data_p), size=len(data), selected=-1, sorted=False)


@dataclass
class _State:
    data: Any
    """The saved cells (a ctypes byte array)."""
    tokens: int


class PrefixStates:
    """Saved KV states of prompt prefixes, least recently used first out: at most ``max_states``
    states and ``max_bytes`` bytes in all (a state larger than that is not kept)."""

    def __init__(self, max_states: int, max_bytes: int) -> None:
        self.max_states, self.max_bytes = max_states, max_bytes
        self._states: collections.OrderedDict[bytes, _State] = collections.OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evicted = 0

    def __len__(self) -> int:
        return len(self._states)

    @property
    def enabled(self) -> bool:
        return self.max_states > 0 and self.max_bytes > 0

    def get(self, key: bytes) -> _State | None:
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return state

    def put(self, key: bytes, state: _State) -> None:
        size = len(state.data)
        if not self.enabled or size > self.max_bytes:
            return
        while self._states and (len(self._states) >= self.max_states or self.bytes + size > self.max_bytes):
            _, old = self._states.popitem(last=False)
            self.bytes -= len(old.data)
            self.evicted += 1
        self._states[key] = state
        self.bytes += size

    def resize(self, max_states: int, max_bytes: int) -> None:
        """New caps; states beyond them are dropped, oldest first."""
        self.max_states, self.max_bytes = max_states, max_bytes
        while self._states and (len(self._states) > max_states or self.bytes > max_bytes):
            _, old = self._states.popitem(last=False)
            self.bytes -= len(old.data)
            self.evicted += 1

    def figures(self) -> dict[str, int]:
        return {"states": len(self._states), "bytes": self.bytes, "hits": self.hits, "misses": self.misses, "evicted": self.evicted}


class PrefixFiles:
    """Saved prefix states on disk, so that the next process (the next run) restores them too: one
    file per prefix in ``folder``, named by a hash of ``identity`` (what the cells depend on: the
    model file, the llama.cpp build, the CPU, the context's settings) and the prefix's tokens. A file
    holds the tokens it was made from and a digest of its cells, both checked on reading. Written
    whole or not at all (a temporary file renamed); at most ``max_bytes`` in the folder, least
    recently used first out."""

    MAGIC = b"aidsafe-prefix-2\n"
    DIGEST = 32
    """Bytes of the BLAKE2b digest of the cells, checked on reading: llama.cpp checks a state's
    layout, not its values, so a damaged file could otherwise restore wrong cells without a word."""
    STALE_TMP_S = 600
    """A temporary file older than this is left by a killed writer, and removed."""

    def __init__(self, folder: Path, identity: str, max_bytes: int) -> None:
        self.folder, self.identity, self.max_bytes = folder, identity, max_bytes
        self.hits = self.writes = self.failed = 0

    def _path(self, tokens: bytes) -> Path:
        return self.folder / (hashlib.sha256(self.identity.encode() + b"\0" + tokens).hexdigest()[:40] + ".kv")

    def get(self, tokens: bytes) -> bytes | None:
        """The saved cells of the prefix with these tokens (int32 bytes), or None (a damaged file is removed)."""
        path = self._path(tokens)
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        head = len(self.MAGIC) + 8
        n = int.from_bytes(blob[len(self.MAGIC) : head], "little") if len(blob) >= head else -1
        digest = blob[head + n : head + n + self.DIGEST]
        cells = blob[head + n + self.DIGEST :]
        if not blob.startswith(self.MAGIC):  # an older aidsafe's format: replaced without a word
            return self._drop(path)
        if n < 0 or blob[head : head + n] != tokens or digest != hashlib.blake2b(cells, digest_size=self.DIGEST).digest():
            _log.warning("aidsafe: a saved prompt prefix in %s is damaged; computing it again", self.folder)
            return self._drop(path)
        with contextlib.suppress(OSError):
            os.utime(path)
        self.hits += 1
        return cells

    def put(self, tokens: bytes, data: Any) -> None:
        if len(data) + len(tokens) > self.max_bytes:  # larger than the whole store: not kept
            return
        path = self._path(tokens)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(self.MAGIC + len(tokens).to_bytes(8, "little") + tokens)
                f.write(hashlib.blake2b(data, digest_size=self.DIGEST).digest())
                f.write(data)
            os.replace(tmp, path)
            self.writes += 1
            self._trim(keep=path)
        except OSError as exc:  # a full or read-only disk, a file where the folder should be: the run goes on without it
            self.failed += 1
            _log.warning("aidsafe: could not save a prompt prefix in %s: %s", self.folder, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def forget(self, tokens: bytes) -> None:
        """Remove the file of a prefix llama.cpp refused to restore."""
        self._drop(self._path(tokens))

    def _drop(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
        return None

    def _trim(self, keep: Path) -> None:
        now = time.time()
        for path in self.folder.glob("*.tmp"):  # left by a writer killed mid-write
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > self.STALE_TMP_S:
                    path.unlink()
        files = []
        for path in self.folder.glob("*.kv"):
            if path == keep:  # the newest stays, whatever the clock's resolution says of the others
                continue
            with contextlib.suppress(OSError):
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
        total = keep.stat().st_size + sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            self._drop(path)
            total -= size


def _utf8_remain(piece: bytes, remain: int) -> int:
    """Bytes still owed by a UTF-8 character after ``piece``, given ``remain`` owed before it: the
    ``n_remain`` of llama.cpp's grammar (``decode_utf8``), -1 after an invalid sequence."""
    piece = piece.split(b"\0", 1)[0]  # llama.cpp reads a piece up to its first NUL
    i = 0
    if remain > 0:
        while i < len(piece) and remain > 0:
            if piece[i] >> 6 != 2:
                return -1
            remain -= 1
            i += 1
    while i < len(piece):
        first = piece[i]
        remain = _UTF8_LENGTH[first >> 4] - 1
        if remain < 0:
            return -1
        i += 1
        while i < len(piece) and remain > 0:
            i += 1
            remain -= 1
    return remain


_UTF8_LENGTH = (1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4)
"""Length of a UTF-8 sequence by its first byte's high 4 bits (0: a continuation byte), as llama.cpp's table."""


def _chars_only(gbnf: str) -> bool:
    """Whether a GBNF grammar matches characters only: no token element (``<[id]>``, ``<token>``)
    outside its quoted literals and character classes."""
    i, n = 0, len(gbnf)
    while i < n:
        c = gbnf[i]
        if c in "\"[":
            end = "\"" if c == "\"" else "]"
            i += 1
            while i < n and gbnf[i] != end:
                i += 2 if gbnf[i] == "\\" else 1
        elif c == "#":  # a comment, to the end of the line (llama.cpp ends it at \r or \n)
            while i < n and gbnf[i] not in "\r\n":
                i += 1
        elif c == "<":
            return False
        i += 1
    return True


class VocabTrie:
    """Which tokens a grammar allows, found without judging the whole vocabulary one token at a time.

    llama.cpp's grammar reads a token's text one character at a time: a token is allowed when every
    character can follow the ones before it. So when a one-character token ``c`` is refused after a
    text ``p``, every token that starts with ``p + c`` is refused too. The tokens are sorted by their
    text (the text the grammar reads: ``token_to_piece`` with special tokens spelled out); from the
    root, the grammar judges one probe (the one-character token) per next character, and only the
    groups whose probe it allows are looked at further: a large group on a clone of the grammar that
    accepted its probe, a small one (or any group once :attr:`MAX_NODES` were visited) judged token by
    token at the root in one call, with the tokens that have no place in the tree (end-of-generation
    tokens, pieces that are not whole UTF-8 characters, empty or over-long pieces). The answer is the
    set llama.cpp's grammar allows over the whole vocabulary (``tests/models/test_local_engine.py``
    compares them), valid when no UTF-8 character is left open by the tokens accepted so far and the
    grammar is made of characters only (no token elements ``<[id]>``, which match a whole token:
    :func:`_chars_only`). The engine's grammars are also never lazy (``llama_sampler_init_grammar``,
    not ``_lazy``), whose trigger a probe accepted on a clone could fire."""

    SMALL = 16
    """Groups of at most this many tokens are judged token by token."""
    MAX_NODES = 64
    """Grammar states (clones) visited per question at most."""
    MAX_CHARS = 32
    """Longer pieces are judged token by token."""
    MANY = 64
    """More first characters allowed than this: the grammar is inside a string, where nearly every
    token is allowed and the walk would cost more than judging them all (measured 20-25 ms against 8-10)."""
    MAX_KEPT = 4096
    """Nodes whose groups are kept (then forgotten all at once): a JSON reply visits a few hundred."""

    def __init__(self, llama: Any) -> None:
        import llama_cpp as lc
        import numpy as np

        self._lc: Any = lc
        vocab = llama._model.vocab
        buf = ctypes.create_string_buffer(256)
        self.pieces: list[bytes] = []
        loose: list[int] = []
        texts: list[tuple[str, int]] = []
        for token in range(llama.n_vocab()):
            n = lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
            if n < 0:  # a longer piece: -n bytes
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
            piece = buf.raw[:n] if n > 0 else b""
            self.pieces.append(piece)
            if lc.llama_vocab_is_eog(vocab, token) or not piece or b"\0" in piece:
                loose.append(token)
                continue
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError:
                loose.append(token)
                continue
            if len(text) > self.MAX_CHARS:
                loose.append(token)
            else:
                texts.append((text, token))
        texts.sort()
        self.ids = np.array([t for _, t in texts], dtype=np.int32)
        lengths = np.array([len(text) for text, _ in texts], dtype=np.int64)
        points = np.frombuffer("".join(text for text, _ in texts).encode("utf-32-le"), dtype=np.uint32).astype(np.int32)
        self.chars = np.full((len(texts), self.MAX_CHARS + 1), -1, dtype=np.int32)
        """Row i: the code points of the i-th text, then -1 (below any character: sorted order)."""
        rows = np.repeat(np.arange(len(texts)), lengths)
        cols = np.arange(len(points)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        self.chars[rows, cols] = points
        self.probe: dict[int, int] = {}
        for text, token in texts:
            if len(text) == 1 and ord(text) not in self.probe and not lc.llama_vocab_is_control(vocab, token):
                self.probe[ord(text)] = token
        self.loose = np.array(loose, dtype=np.int32)
        self._nodes: dict[tuple[int, int], tuple[Any, Any, Any, Any, list[Any]]] = {}
        self._token = _token_dtype()
        self.visited = 0

    def _judge(self, grammar: Any, ids: Any) -> Any:
        """Which of these tokens the grammar allows (a mask)."""
        import numpy as np

        lc = self._lc
        data = np.zeros(len(ids), dtype=self._token)
        data["id"] = ids
        lc.llama_sampler_apply(grammar, ctypes.byref(_token_data(lc, data)))
        return data["logit"] == 0.0

    def _node(self, lo: int, hi: int, depth: int) -> tuple[Any, Any, Any, Any, list[Any]]:
        """The texts ``lo:hi`` (sharing their first ``depth`` characters) by their next character: the
        tokens that end here, each group's bounds and probe, and the groups without a probe."""
        import numpy as np

        key = (lo, depth)
        hit = self._nodes.get(key)
        if hit is None:
            column = self.chars[lo:hi, depth]
            ends = int(np.searchsorted(column, 0))  # -1 sorts first: the texts that end at this depth
            column = column[ends:]
            begins = np.concatenate(([0], np.flatnonzero(column[1:] != column[:-1]) + 1)) if len(column) else np.zeros(0, np.int64)
            stops = np.append(begins[1:], len(column))
            probes = np.array([self.probe.get(int(c), -1) for c in column[begins]], dtype=np.int32)
            have = probes >= 0
            base = lo + ends
            orphans = [self.ids[base + b : base + e] for b, e in zip(begins[~have], stops[~have], strict=True)]
            hit = (self.ids[lo : lo + ends], base + begins[have], base + stops[have], probes[have], orphans)
            if len(self._nodes) >= self.MAX_KEPT:
                self._nodes.clear()
            self._nodes[key] = hit
        return hit

    def allowed(self, grammar: Any) -> Any:
        """The ids of the tokens this grammar sampler allows now (sorted), or None when it allows more
        than :attr:`MANY` first characters (inside a JSON string): judging every token is faster then."""
        import numpy as np

        found: list[Any] = []
        judge: list[Any] = [self.loose]
        self.visited = 0
        first = self._judge(grammar, self._node(0, len(self.ids), 0)[3])
        if int(first.sum()) > self.MANY:
            return None
        self._walk(grammar, 0, len(self.ids), 0, found, judge, first)
        ids = np.concatenate(judge)
        found.append(ids[self._judge(grammar, ids)])
        return np.sort(np.concatenate(found))

    def _walk(self, grammar: Any, lo: int, hi: int, depth: int, found: list[Any], judge: list[Any], judged: Any = None) -> None:
        import numpy as np

        lc = self._lc
        self.visited += 1
        ending, begins, stops, probes, orphans = self._node(lo, hi, depth)
        if depth:  # the grammar took these texts' every character
            found.append(ending)
        judge.extend(orphans)
        if not len(probes):
            return
        for i in np.flatnonzero(self._judge(grammar, probes) if judged is None else judged):
            a, b = int(begins[i]), int(stops[i])
            if b - a <= self.SMALL or self.visited >= self.MAX_NODES or depth + 1 >= self.MAX_CHARS:
                judge.append(self.ids[a:b])
                continue
            child = lc.llama_sampler_clone(grammar)
            try:
                lc.llama_sampler_accept(child, int(probes[i]))  # allowed just now: accepting it cannot fail
                self._walk(child, a, b, depth + 1, found, judge)
            finally:
                lc.llama_sampler_free(child)


class LlamaEngine:
    """Chat completions constrained to a JSON Schema on one ``llama_cpp.Llama`` (see the module
    docstring). Not thread-safe: the caller holds the model's lock around :meth:`complete`."""

    def __init__(self, llama: Any, *, max_states: int, max_bytes: int, files: PrefixFiles | None = None) -> None:
        import llama_cpp as lc
        import numpy as np
        from llama_cpp import llama_chat_format

        if not engine_supports(llama):
            raise ValueError(f"no GGUF chat template to render (chat_format={llama.chat_format!r})")
        self.llama = llama
        self.states = PrefixStates(max_states, max_bytes)
        self.files = files
        """Saved prefixes on disk (None: none are read or written)."""
        fmt = llama.chat_format
        template = llama.metadata["tokenizer.chat_template" if fmt == "chat_template.default" else "tokenizer." + fmt]
        eos, bos = llama.token_eos(), llama.token_bos()
        texts = {"eos_token": llama._model.token_get_text(eos) if eos != -1 else "",
                 "bos_token": llama._model.token_get_text(bos) if bos != -1 else ""}
        # the formatter Llama.__init__ registers for the template, and the same without the assistant's turn
        formatter: Any = llama_chat_format.Jinja2ChatFormatter
        self._format = formatter(template=template, stop_token_ids=[eos], **texts)
        self._format_head = formatter(template=template, stop_token_ids=[eos], add_generation_prompt=False, **texts)
        self._heads: collections.OrderedDict[str, list[int]] = collections.OrderedDict()
        self._grammars: collections.OrderedDict[str, tuple[Any, bool]] = collections.OrderedDict()
        self._grammar_lock = threading.Lock()
        n_vocab = llama.n_vocab()
        self._token = _token_dtype()
        self._all = np.zeros(n_vocab, dtype=self._token)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._one = np.zeros(1, dtype=self._token)
        self._piece = ctypes.create_string_buffer(32)  # the library's detokenize buffer: a longer piece is dropped as it drops it
        self.prefill_tokens = self.reused_tokens = 0
        self.clean = 0
        """Leading cells of the cache decoded as a fresh decode of their prompt decodes them (not the
        completion's one-token decodes): the live cache is reused up to here only."""
        self.seconds = {"prefill": 0.0, "decode": 0.0, "sample": 0.0}
        """Time in llama.cpp's prefill, in its one-token decodes, and in picking tokens."""
        self.full_passes = 0
        """Tokens for which the grammar had to judge the whole vocabulary (through :attr:`trie` or not)."""
        self.trie_passes = 0
        """Of :attr:`full_passes`, those answered through :attr:`trie`."""
        self.trie: VocabTrie | None = VocabTrie(llama)
        """Finds what the grammar allows in the whole vocabulary (None: judges every token)."""
        self._lc: Any = lc  # llama_cpp, untyped here: its ctypes stubs do not take byref() arguments

    # -- the prompt ------------------------------------------------------------------------------

    def _tokenize(self, text: str, added_special: bool) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=not added_special, special=True)

    def prompt(self, messages: list[dict[str, str]], reuse: bool = True) -> tuple[list[int], int, list[str]]:
        """The prompt's tokens (as the library's chat handler makes them), the length of the shared
        prefix to reuse (0: none), and the template's stop strings."""
        rendered = self._format(messages=messages)
        tokens = self._tokenize(rendered.prompt, rendered.added_special)
        stop = [rendered.stop] if isinstance(rendered.stop, str) else list(rendered.stop or [])
        shared = 0
        if reuse and self.states.enabled and len(messages) > 1 and messages[0].get("role") == "system":
            text = messages[0].get("content") or ""
            head = self._heads.get(text)
            if head is None:
                try:
                    alone = self._format_head(messages=messages[:1])
                    head = self._tokenize(alone.prompt, alone.added_special)
                except Exception:  # a template that wants a user turn (Qwen3: "No user query found"): no reuse
                    head = []
                self._heads[text] = head
                if len(self._heads) > _PREFIX_TEXTS:
                    self._heads.popitem(last=False)
            shared = min(_common_prefix(head, tokens), len(tokens) - 1)
            if shared % self.llama.n_batch == 1:  # never end the prefix with a one-token micro-batch
                shared -= 1
            if shared < MIN_PREFIX:
                shared = 0
        return tokens, shared, stop

    def grammar(self, schema: dict[str, Any]) -> Any:
        """The schema's grammar sampler, compiled once (callers clone it)."""
        return self._grammar(schema)[0]

    def _grammar(self, schema: dict[str, Any]) -> tuple[Any, bool]:
        """The schema's grammar sampler, and whether :attr:`trie` may answer for it (:func:`_chars_only`)."""
        from llama_cpp import llama_chat_format

        key = json.dumps(schema)  # property order matters to the grammar, as it does to the library's
        with self._grammar_lock:
            hit = self._grammars.get(key)
            if hit is None:
                grammar: Any = llama_chat_format._grammar_for_response_format({"type": "json_object", "schema": schema})
                sampler = self._lc.llama_sampler_init_grammar(self.llama._model.vocab, grammar._grammar.encode("utf-8"),
                                                              grammar._root.encode("utf-8"))
                if not sampler:
                    raise ValueError("llama.cpp could not compile the JSON Schema's grammar")
                hit = self._grammars[key] = (sampler, _chars_only(grammar._grammar))
                if len(self._grammars) > _GRAMMARS:
                    _, (old, _) = self._grammars.popitem(last=False)
                    self._lc.llama_sampler_free(old)
            else:
                self._grammars.move_to_end(key)
            return hit

    def close(self) -> None:
        with self._grammar_lock:
            for sampler, _ in self._grammars.values():
                self._lc.llama_sampler_free(sampler)
            self._grammars.clear()
        self.states.resize(0, 0)

    # -- prefill ---------------------------------------------------------------------------------

    def _prefill(self, tokens: list[int], shared: int) -> None:
        import numpy as np

        llama, lc = self.llama, self._lc
        live = min(_common_prefix(llama.input_ids[: llama.n_tokens], tokens), self.clean) if llama.n_tokens else 0
        self.clean = 0  # set again once this prompt is decoded
        if shared == 0 or live >= shared:  # no saved prefix, or the previous call was this role's: what the cache holds
            start = min(live, len(tokens) - 1)
            self.reused_tokens += start
            self._eval_rest(tokens, start)
            return
        key = np.asarray(tokens[:shared], dtype=np.int32).tobytes()
        state = self.states.get(key)
        restored = False
        if state is not None:
            if not self._restore(state, tokens):
                raise RuntimeError("llama.cpp could not restore a saved prompt prefix")
            restored = True
        elif self.files is not None and (blob := self.files.get(key)) is not None:  # saved by an earlier run
            state = _State((ctypes.c_uint8 * len(blob)).from_buffer_copy(blob), shared)
            restored = self._restore(state, tokens)
            if restored:
                self.states.put(key, state)
            else:  # another build's cells: computed again below
                self.files.forget(key)
                _log.warning("aidsafe: llama.cpp refused a saved prompt prefix from %s; computing it again", self.files.folder)
        if restored:
            self.reused_tokens += shared
        else:  # the prefix from the start, in n_batch pieces as a whole prompt's (shared % n_batch != 1), then saved
            llama.n_tokens = 0
            llama.eval(tokens[:shared])
            self.prefill_tokens += shared
            size = lc.llama_state_seq_get_size(llama.ctx, 0)
            data = (ctypes.c_uint8 * size)()
            got = lc.llama_state_seq_get_data(llama.ctx, data, size, 0)
            if got:
                state = _State(data if got == size else (ctypes.c_uint8 * got).from_buffer_copy(data), shared)
                self.states.put(key, state)
                if self.files is not None:
                    self.files.put(key, state.data)
        self._eval_rest(tokens, shared)

    def _restore(self, state: _State, tokens: list[int]) -> bool:
        """Put a saved prefix's cells in the emptied cache (False: llama.cpp refused them)."""
        llama = self.llama
        llama._ctx.kv_cache_seq_rm(-1, 0, -1)
        llama.n_tokens = 0  # the cache is empty until the state is in
        if self._lc.llama_state_seq_set_data(llama.ctx, state.data, len(state.data), 0) == 0:
            llama._ctx.kv_cache_seq_rm(-1, 0, -1)
            return False
        llama.input_ids[: state.tokens] = tokens[: state.tokens]
        llama.n_tokens = state.tokens
        return True

    def _eval_rest(self, tokens: list[int], start: int) -> None:
        """Decode ``tokens[start:]`` after the ``start`` tokens in the cache so that every token gets a
        micro-batch of the kind (one token, or several) it gets when the whole prompt is decoded from
        the start in ``n_batch`` pieces: there the last token is alone when ``len % n_batch == 1``, and
        no other is. A piece that would leave a token alone takes the token before it along (decoded again)."""
        llama = self.llama
        end, batch = len(tokens), llama.n_batch
        if end % batch == 1 and end - 1 >= start:  # the whole-prompt decode takes the last token alone
            if (end - 1 - start) % batch == 1 and start > 0:
                start -= 1
            llama.n_tokens = start
            if end - 1 > start:
                llama.eval(tokens[start : end - 1])
            llama.eval(tokens[end - 1 :])
        else:
            if (end - start) % batch == 1 and start > 0:
                start -= 1
            llama.n_tokens = start
            llama.eval(tokens[start:])
        self.prefill_tokens += end - start

    # -- sampling --------------------------------------------------------------------------------

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any], *, temperature: float, max_tokens: int | None,
                 repeat_penalty: float, frequency_penalty: float, seed: int | None, presence_penalty: float = 0.0,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0, reuse: bool = True) -> dict[str, Any]:
        """What ``create_chat_completion`` returns for these arguments (its defaults for the others):
        ``choices[0].message.content``, ``finish_reason`` and ``usage``."""
        import numpy as np

        llama, lc = self.llama, self._lc
        tokens, shared, stop_texts = self.prompt(messages, reuse)
        grammar, by_chars = self._grammar(schema)
        n_ctx = llama._n_ctx
        if len(tokens) >= n_ctx:
            raise ValueError(f"Requested tokens ({len(tokens)}) exceed context window of {n_ctx}")
        budget = n_ctx - len(tokens) if max_tokens is None or max_tokens <= 0 else max_tokens
        budget = budget if budget + len(tokens) < n_ctx else n_ctx - len(tokens)
        stops = [s.encode("utf-8") for s in stop_texts if s]
        llama.set_seed(seed if seed is not None else random.Random(llama._seed).randint(0, 2**32))
        clock = time.perf_counter()
        try:
            self._prefill(tokens, shared)
        except BaseException:
            llama.n_tokens = 0  # nothing in the cache is trusted after a failed decode
            raise
        self.clean = len(tokens) - (len(tokens) % llama.n_batch == 1)
        self.seconds["prefill"] += time.perf_counter() - clock

        vocab, ctx, n_vocab = llama._model.vocab, llama.ctx, llama._n_vocab
        window = llama.last_n_tokens_size
        penalised = window > 0 and (repeat_penalty != 1.0 or frequency_penalty != 0.0 or presence_penalty != 0.0)
        grm = lc.llama_sampler_clone(grammar)
        pen = lc.llama_sampler_init_penalties(n_vocab, window, repeat_penalty, frequency_penalty, presence_penalty)
        tail = None
        if temperature > 0.0:  # the library chain after penalties and grammar (Llama._init_sampler)
            tail = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
            for sampler in (lc.llama_sampler_init_top_k(top_k), lc.llama_sampler_init_typical(typical_p, 1),
                            lc.llama_sampler_init_top_p(top_p, 1), lc.llama_sampler_init_min_p(min_p, 1),
                            lc.llama_sampler_init_temp(temperature), lc.llama_sampler_init_dist(llama._seed)):
                lc.llama_sampler_chain_add(tail, sampler)
        elif temperature < 0.0:
            raise ValueError("a negative temperature is not supported by the local engine")
        recent: collections.deque[int] = collections.deque()
        counts: dict[int, int] = {}
        out: list[int] = []
        text = b""
        cut: bytes | None = None
        finish = "length"
        pending_bytes = 0
        scanned = 0
        owed = 0  # bytes of a UTF-8 character the grammar still waits for (the trie needs none)
        try:
            while True:
                clock = time.perf_counter()
                logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
                if penalised and counts:
                    ids = np.fromiter(counts.keys(), dtype=np.int32, count=len(counts))
                    few = np.zeros(len(ids), dtype=self._token)
                    few["id"], few["logit"] = ids, logits[ids]
                    lc.llama_sampler_apply(pen, ctypes.byref(self._array(few)))
                    work = logits.copy()
                    work[few["id"]] = few["logit"]
                else:
                    work = logits
                token = self._pick(work, grm, tail, top_k, top_p, min_p, by_chars and owed <= 0)
                self.seconds["sample"] += time.perf_counter() - clock
                lc.llama_sampler_accept(pen, token)
                lc.llama_sampler_accept(grm, token)
                if tail is not None:
                    lc.llama_sampler_accept(tail, token)
                if penalised:  # the ids in the penalties sampler's window
                    counts[token] = counts.get(token, 0) + 1
                    recent.append(token)
                    if len(recent) > window:
                        old = recent.popleft()
                        counts[old] -= 1
                        if not counts[old]:
                            del counts[old]
                if lc.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                if self.trie is not None:
                    owed = _utf8_remain(self.trie.pieces[token], owed)
                out.append(token)
                n = lc.llama_token_to_piece(vocab, token, self._piece, 32, 0, False)
                text += self._piece.raw[:n] if n > 0 else b""
                # a stop string is looked for only between whole UTF-8 characters (as the library does)
                for k, byte in enumerate(text[-3:]):
                    k = 3 - k
                    for num, pattern in ((2, 192), (3, 224), (4, 240)):
                        if num > k and pattern & byte == pattern:
                            pending_bytes = num - k
                if pending_bytes > 0:
                    pending_bytes -= 1
                else:
                    hit = next((text.index(s) for s in stops if text.find(s, max(0, scanned - len(s) + 1)) >= 0), None)
                    scanned = len(text)
                    if hit is not None:
                        cut, finish = text[:hit], "stop"
                        break
                    if len(out) >= budget:
                        break
                clock = time.perf_counter()
                llama.eval([token])
                self.seconds["decode"] += time.perf_counter() - clock
        finally:
            lc.llama_sampler_free(grm)
            lc.llama_sampler_free(pen)
            if tail is not None:
                lc.llama_sampler_free(tail)
        content = (text if cut is None else cut).decode("utf-8", errors="ignore")
        return {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(tokens), "completion_tokens": len(out), "total_tokens": len(tokens) + len(out)},
        }

    def _array(self, data: Any) -> Any:
        return _token_data(self._lc, data)

    def _whole(self, work: Any, grm: Any, fresh: bool) -> Any:
        """Every token with its logit, those the grammar refuses at -inf: what the grammar leaves of
        the whole vocabulary (through :attr:`trie` when ``fresh``: a grammar of characters only, and no
        UTF-8 character left open by the tokens before; and unless it is inside a string)."""
        self.full_passes += 1
        everything = self._all
        everything["id"], everything["p"] = self._ids, 0.0
        allowed = self.trie.allowed(grm) if self.trie is not None and fresh else None
        if allowed is not None:
            self.trie_passes += 1
            everything["logit"] = -math.inf
            everything["logit"][allowed] = work[allowed]
        else:
            everything["logit"] = work
            self._lc.llama_sampler_apply(grm, ctypes.byref(self._array(everything)))
        return everything

    def _pick(self, work: Any, grm: Any, tail: Any, top_k: int, top_p: float, min_p: float, fresh: bool = False) -> int:
        """The token the library's chain picks from these (penalised) logits (``fresh``: :attr:`trie`
        may answer for this grammar now, see :meth:`_whole`)."""
        import numpy as np

        lc = self._lc
        if tail is None:  # greedy: the best token the grammar allows
            best = int(np.argmax(work))
            one = self._one
            one["id"][0], one["logit"][0], one["p"][0] = best, work[best], 0.0
            lc.llama_sampler_apply(grm, ctypes.byref(self._array(one)))
            if one["logit"][0] != -math.inf:
                return best
            k = min(CANDIDATES, len(work))
            idx = np.argpartition(work, -k)[-k:]
            values = work[idx]
            order = np.lexsort((idx, -values))  # by value, then id: the greedy sampler's first maximum
            few = np.zeros(k, dtype=self._token)
            few["id"], few["logit"] = idx[order], values[order]
            lc.llama_sampler_apply(grm, ctypes.byref(self._array(few)))
            allowed = np.flatnonzero(few["logit"] != -math.inf)
            if len(allowed) and float(values[order][allowed[0]]) > float(values.min()):
                return int(few["id"][allowed[0]])
            return int(np.argmax(self._whole(work, grm, fresh)["logit"]))
        # at a temperature: the grammar judges the best WARM_CANDIDATES; when what the chain keeps
        # is decided by them alone (see _decided), its tail runs on the allowed ones
        step = 16  # about the best WARM_CANDIDATES: those at or above the cut that takes WARM_CANDIDATES / step of every step-th
        idx = None
        if len(work) >= step * WARM_CANDIDATES:
            cut = np.partition(work[::step], -WARM_CANDIDATES // step)[-WARM_CANDIDATES // step]
            idx = np.flatnonzero(work >= cut)  # in token-id order, as in the whole array
        if idx is None or not WARM_CANDIDATES // 4 <= len(idx) <= 4 * WARM_CANDIDATES:  # a small vocabulary, or logits not spread as the sample says
            k = min(WARM_CANDIDATES, len(work))
            idx = np.sort(np.argpartition(work, -k)[-k:])
        few = np.zeros(len(idx), dtype=self._token)
        few["id"], few["logit"] = idx, work[idx]
        floor = float(few["logit"].min())
        lc.llama_sampler_apply(grm, ctypes.byref(self._array(few)))
        ok = few["logit"] != -math.inf
        if ok.any():
            allowed = np.ascontiguousarray(few[ok])
            if _decided(np.sort(allowed["logit"].astype(np.float64))[::-1], floor, top_k, top_p, min_p):
                array = self._array(allowed)
                lc.llama_sampler_apply(tail, ctypes.byref(array))
                return int(allowed["id"][array.selected])
        everything = self._whole(work, grm, fresh)  # top_k sorts it in place: made again each time
        array = self._array(everything)
        lc.llama_sampler_apply(tail, ctypes.byref(array))
        return int(everything["id"][array.selected])

_MARGIN = 1e-4
"""Relative distance from a cut that float32 rounding in llama.cpp cannot cross."""


def _decided(ranked: Any, floor: float, top_k: int, top_p: float, min_p: float) -> bool:
    """Whether the chain's tail (top-k, typical 1.0, top-p, min-p, temperature, draw) keeps the same
    tokens, in the same order, from the allowed candidates alone (``ranked``: their logits, best
    first) as from the whole vocabulary, where tokens left out of the candidates have logits of at
    most ``floor`` and may be allowed. The draw then picks the same token with the same random number.

    * The top-k tokens are known when ``top_k`` of the candidates are allowed and the k-th is above
      ``floor``.
    * Otherwise up to ``top_k - n`` unknown tokens join the top-k; they change top-p's normalisation
      only. When top-p cuts at the same candidate (with a margin) whether their mass is 0 or at its
      most (``(top_k - n) * exp(floor)``), it drops them and keeps the same candidates.
    * Two kept logits that are equal could be ordered otherwise: not decided. min-p compares logits
      with the best one (not decided within a margin of its cut).
    """
    import numpy as np

    n = len(ranked)
    if n == 0 or top_k <= 0:
        return False
    kept = ranked[: min(top_k, n)]
    if n >= top_k:
        if not kept[-1] > floor or (n > top_k and not ranked[top_k] < kept[-1]):  # a tie at the top-k cut
            return False
    else:
        if not 0.0 < top_p < 1.0:
            return False
        weights = np.exp(kept - kept[0])
        cum = np.cumsum(weights)
        least, most = cum[-1], cum[-1] + (top_k - n) * math.exp(floor - kept[0])
        i = int(np.searchsorted(cum, top_p * most * (1 + _MARGIN)))  # the first index whose sum passes at the most mass
        if i >= n or (i > 0 and not cum[i - 1] < top_p * least * (1 - _MARGIN)):
            return False
        kept = kept[: i + 1]
        if not kept[-1] > floor:  # a left-out token could tie with it
            return False
    if len(kept) > 1 and bool(np.any(kept[1:] == kept[:-1])):
        return False
    if min_p > 0 and len(kept) > 1 and bool(np.any(np.abs(kept - kept[0] - math.log(min_p)) < _MARGIN * 10)):
        return False
    return True
