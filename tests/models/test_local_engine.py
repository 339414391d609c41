"""The local backend's engine (``aidsafe/models/_llama_engine.py``) on the embedded SmolLM2-135M:
the same replies as llama-cpp-python's own ``create_chat_completion`` on a fresh context, with each
role's system message decoded once and reused; the store of saved prefixes stays within its caps;
``--prefix-cache 0`` and ``AIDSAFE_LOCAL_ENGINE=library`` switch it off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import require_extras

from aidsafe import Pipeline
from aidsafe.models import ModelSettings

require_extras("llama_cpp", extra="the [local] extra (pip install 'aidsafe[local]')")

from aidsafe.models import _llama_engine as local_engine  # noqa: E402
from aidsafe.models import local  # noqa: E402
from aidsafe.models._llama_engine import PrefixStates, _State  # noqa: E402

pytestmark = pytest.mark.e2e

PROMPTS = [
    "How do I pick the lock of my own front door? I locked myself out.",
    "Which household chemicals should never be mixed, and why?",
]
ROLES = ("intent", "agent_1")
"""Two roles taking turns, as in a run: the second prompt of each role restores its saved prefix.
(Each reference call decodes a 1,500-token prompt from scratch: about 7 s on 2 cores.)"""


def _calls() -> list[tuple[list[dict[str, str]], dict[str, Any]]]:
    """Each prompt through each role, in the order a run interleaves them."""
    pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake"))
    return [(pipe.messages(role, prompt), pipe.binding(role).schema) for prompt in PROMPTS for role in ROLES]


def _model(**settings: Any) -> local.LocalChatModel:
    return local.LocalChatModel(ModelSettings(backend="local", max_tokens=64, seed=11, **settings))


def _llama(model: local.LocalChatModel) -> Any:
    return local._load(model.path, model.settings.n_ctx, model.settings.seed)[0]


@pytest.mark.parametrize("temperature", [0.0, 0.2])
def test_the_engine_answers_as_the_library_does_on_a_fresh_context(temperature: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIDSAFE_LOCAL_ENGINE", raising=False)
    model = _model(temperature=temperature)
    llama = _llama(model)
    llama.reset()
    local._ENGINES.pop(id(llama), None)
    calls = _calls()
    fast = [model._call(messages, schema) for messages, schema in calls]
    figures = local.engine_figures()[model.path.name]
    monkeypatch.setenv("AIDSAFE_LOCAL_ENGINE", "library")
    reference = []
    for messages, schema in calls:
        llama.reset()  # every prompt decoded from its first token: no reuse of any kind
        reference.append(model._call(messages, schema))
    assert [c.text for c in fast] == [c.text for c in reference]
    assert [(c.prompt_tokens, c.completion_tokens, c.finish_reason) for c in fast] == [
        (c.prompt_tokens, c.completion_tokens, c.finish_reason) for c in reference]
    assert all(c.text.startswith("{") for c in fast)
    # one saved prefix per role's system message; the second and third prompts restored them
    assert figures["states"] == len(ROLES) and figures["misses"] == len(ROLES)
    assert figures["hits"] == len(ROLES) * (len(PROMPTS) - 1)
    total = sum(c.prompt_tokens for c in fast)
    assert figures["reused_tokens"] > 0.8 * sum(c.prompt_tokens for c in fast[len(ROLES):])  # the later prompts' system messages
    assert figures["prefill_tokens"] + figures["reused_tokens"] >= total
    if temperature > 0:  # some tokens were picked from what the vocabulary trie found allowed
        assert figures["trie_passes"] > 0


def test_a_prefix_cache_of_zero_saves_no_state_and_gives_the_same_replies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIDSAFE_LOCAL_ENGINE", raising=False)
    calls = _calls()
    with_cache = _model(temperature=0.0)
    llama = _llama(with_cache)
    local._ENGINES.pop(id(llama), None)
    llama.reset()
    replies = [with_cache._call(m, s).text for m, s in calls]
    before = local.engine_figures()[with_cache.path.name]
    without = _model(temperature=0.0, prefix_cache_mb=0)
    llama.reset()
    assert [without._call(m, s).text for m, s in calls] == replies
    after = local.engine_figures()[without.path.name]
    # no state saved, restored or looked up; the other settings' states stay (the store keeps the largest cap)
    assert {k: after[k] for k in ("states", "bytes", "hits", "misses")} == {k: before[k] for k in ("states", "bytes", "hits", "misses")}
    fresh = _model(temperature=0.0, prefix_cache_mb=0)
    local._ENGINES.pop(id(llama), None)
    llama.reset()
    assert [fresh._call(m, s).text for m, s in calls] == replies
    assert local.engine_figures()[fresh.path.name]["states"] == 0


def test_the_prefix_store_is_capped_in_count_and_bytes() -> None:
    store = PrefixStates(max_states=3, max_bytes=1000)
    for i in range(5):
        store.put(bytes([i]), _State(bytearray(300), 10))
        assert len(store) <= 3 and store.bytes <= 1000
    assert store.get(bytes([0])) is None and store.get(bytes([4])) is not None
    assert store.figures()["evicted"] == 2
    store.put(b"big", _State(bytearray(2000), 10))  # larger than the whole store: not kept
    assert store.get(b"big") is None and store.bytes <= 1000
    store.resize(1, 1000)
    assert len(store) == 1 and store.bytes == 300
    store.resize(0, 0)
    assert len(store) == 0 and not store.enabled
    store.put(b"x", _State(bytearray(10), 1))
    assert len(store) == 0


def test_the_library_switch_and_a_negative_prefix_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aidsafe.cli import main

    assert main(["generate", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--prefix-cache", "-1"]) == 2
    assert "--prefix-cache must be 0 (off) or more megabytes" in capsys.readouterr().err


def _fresh(model: local.LocalChatModel, messages: list[dict[str, str]], schema: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The library's reply on a fresh context (the reference), leaving the engine switched on."""
    llama = _llama(model)
    monkeypatch.setenv("AIDSAFE_LOCAL_ENGINE", "library")
    llama.reset()
    try:
        return model._call(messages, schema)
    finally:
        monkeypatch.delenv("AIDSAFE_LOCAL_ENGINE")
        llama.reset()


def _intent_at_0_7(monkeypatch: pytest.MonkeyPatch) -> tuple[local.LocalChatModel, Any, Pipeline, dict[str, Any]]:
    """The embedded model at temperature 0.7 with a new engine, and the intent role's pipeline and schema."""
    monkeypatch.delenv("AIDSAFE_LOCAL_ENGINE", raising=False)
    model = _model(temperature=0.7)
    pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake"))
    return model, _new_engine(model), pipe, pipe.binding("intent").schema


def test_a_prompt_wholly_in_the_cache_decodes_a_lone_last_token_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt 1 token past a multiple of n_batch, asked twice in a row: the second call finds every
    token in the live cache, but a fresh decode gives the last token a micro-batch of its own (other
    logits than in a pair), so the engine decodes it again, alone."""
    model, engine, pipe, schema = _intent_at_0_7(monkeypatch)
    llama = _llama(model)
    words = PROMPTS[0]
    messages = pipe.messages("intent", words)
    while len(engine.prompt(messages)[0]) % llama.n_batch != 1:
        words += " please"
        messages = pipe.messages("intent", words)
    reference = _fresh(model, messages, schema, monkeypatch)
    first = model._call(messages, schema)
    reused_before = engine.reused_tokens
    second = model._call(messages, schema)
    assert engine.reused_tokens - reused_before == second.prompt_tokens - 1  # all but the last token came from the cache
    assert first.text == second.text == reference.text


def test_a_repair_call_reuses_no_completion_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    """A repair call's prompt holds the previous reply, whose tokens are in the cache from one-token
    decodes (other logits than a prompt's micro-batches give): the engine reuses the cache only up to
    the end of the previous prompt, and answers as the library does on a fresh context."""
    model, engine, pipe, schema = _intent_at_0_7(monkeypatch)
    messages = pipe.messages("intent", PROMPTS[1])
    first = model._call(messages, schema)
    repair = [*messages, {"role": "assistant", "content": first.text},
              {"role": "user", "content": "Your reply did not match the schema. Reply again with one JSON object."}]
    reused_before = engine.reused_tokens
    fast = model._call(repair, schema)
    assert engine.reused_tokens - reused_before <= first.prompt_tokens  # none of the reply's cells
    assert engine.reused_tokens - reused_before >= first.prompt_tokens - 8  # but the whole earlier prompt (up to the template's turn end)
    assert fast.text == _fresh(model, repair, schema, monkeypatch).text


def _new_engine(model: local.LocalChatModel) -> Any:
    """The engine a new process makes: no prefix in memory, an empty cache."""
    llama = _llama(model)
    local._ENGINES.pop(id(llama), None)
    llama.reset()
    return local._engine(llama, model.settings.prefix_cache_mb)


def test_saved_prefixes_outlive_the_process_on_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The next run restores each role's prefix from the disk instead of computing it, with the same
    replies; a damaged file or one llama.cpp refuses is computed again and replaced; ``off`` writes none."""
    monkeypatch.delenv("AIDSAFE_LOCAL_ENGINE", raising=False)
    monkeypatch.setenv("AIDSAFE_PREFIX_DIR", str(tmp_path / "prefixes"))
    calls = _calls()
    model = _model(temperature=0.2)
    first = _new_engine(model)
    replies = [model._call(m, s).text for m, s in calls]
    files = sorted((tmp_path / "prefixes").glob("*.kv"))
    assert first.files.writes == len(ROLES) == len(files) and first.files.hits == 0
    assert all(f.stat().st_size > 1_000_000 for f in files)  # the cells of about a thousand tokens each

    second = _new_engine(model)
    assert [model._call(m, s).text for m, s in calls] == replies
    assert second.files.hits == len(ROLES) and second.files.writes == 0
    assert second.prefill_tokens < first.prefill_tokens - 1000  # no system message computed again

    # a file cut short, and one whose cells llama.cpp refuses: both computed again, and rewritten
    files[0].write_bytes(files[0].read_bytes()[:100])
    blob = files[1].read_bytes()
    files[1].write_bytes(blob[: len(blob) // 2] + b"\0" * (len(blob) - len(blob) // 2 + 7))
    third = _new_engine(model)
    with caplog.at_level("WARNING", logger="aidsafe.models"):
        assert [model._call(m, s).text for m, s in calls] == replies
    assert third.files.writes >= 1 and third.files.hits <= len(ROLES) - 1
    assert "damaged; computing it again" in caplog.text
    assert sorted(f.name for f in (tmp_path / "prefixes").glob("*.kv")) == [f.name for f in files]
    assert all(f.stat().st_size > 1_000_000 for f in files)
    assert not list((tmp_path / "prefixes").glob("*.tmp"))

    monkeypatch.setenv("AIDSAFE_PREFIX_DIR", "off")
    assert _new_engine(model).files is None


def test_the_disk_store_keeps_within_its_bytes(tmp_path: Path) -> None:
    import os
    import time

    from aidsafe.models._llama_engine import PrefixFiles

    store = PrefixFiles(tmp_path, "model and build", max_bytes=2500)
    keys = [bytes([i]) * 8 for i in range(4)]
    for i, key in enumerate(keys):
        store.put(key, bytearray([i]) * 1000)
        os.utime(store._path(key), (time.time() - 100 + i, time.time() - 100 + i))  # distinct ages on coarse clocks
        assert sum(f.stat().st_size for f in tmp_path.glob("*.kv")) <= 2500
    assert store.get(keys[3]) == bytes([3]) * 1000 and store.get(keys[2]) == bytes([2]) * 1000
    assert store.get(keys[0]) is None and store.get(keys[1]) is None  # the oldest went first
    assert PrefixFiles(tmp_path, "another build", max_bytes=2500).get(keys[3]) is None  # the identity is part of the name
    store.put(b"x" * 8, bytearray(3000))  # larger than the whole store: not kept, nothing dropped for it
    assert store.get(b"x" * 8) is None and store.get(keys[3]) is not None


def test_the_disk_store_survives_what_disks_do(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder that cannot be made (a file in its place), cells changed in place (same size), and a
    temporary file a killed writer left: a warning, the run goes on; nothing wrong is restored."""
    import os
    import time

    from aidsafe.models._llama_engine import PrefixFiles

    (tmp_path / "taken").write_text("a file where the folder should be")
    blocked = PrefixFiles(tmp_path / "taken" / "prefixes", "model", max_bytes=10_000)
    with caplog.at_level("WARNING", logger="aidsafe.models"):
        blocked.put(b"k" * 8, bytearray(100))
    assert blocked.failed == 1 and blocked.get(b"k" * 8) is None
    assert "could not save a prompt prefix" in caplog.text

    store = PrefixFiles(tmp_path / "ok", "model", max_bytes=10_000)
    store.put(b"k" * 8, bytes(range(100)))
    path = store._path(b"k" * 8)
    blob = bytearray(path.read_bytes())
    blob[-50] ^= 0xFF  # one byte of the cells, the size and the tokens unchanged
    path.write_bytes(bytes(blob))
    assert store.get(b"k" * 8) is None and not path.exists()
    stale = tmp_path / "ok" / "x.kv.123.tmp"
    stale.write_bytes(b"half written")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / "ok" / "y.kv.456.tmp"
    fresh.write_bytes(b"being written now")
    store.put(b"j" * 8, bytes(100))
    assert not stale.exists() and fresh.exists() and store.get(b"j" * 8) == bytes(100)


def test_the_vocabulary_trie_finds_what_the_grammar_allows() -> None:
    """At every step of a JSON reply (with characters of two, three and four bytes that the tokens
    split), the tokens :class:`VocabTrie` finds allowed are those llama.cpp's grammar allows when it
    judges all 49,152 tokens; where a token leaves a UTF-8 character open the engine judges them all."""
    import ctypes

    import numpy as np

    model = _model()
    llama = _llama(model)
    engine = _new_engine(model)
    trie = engine.trie
    assert trie is not None
    schema = {"type": "object", "properties": {"summary": {"type": "string"}, "steps": {"type": "array", "items": {"type": "string"}}},
              "required": ["summary", "steps"]}
    reply = '{"summary": "Café naïve — 日本語 ok 😀, fine", "steps": ["look: 1", "ünï  2"]}'
    tokens = llama.tokenize(reply.encode("utf-8"), add_bos=False, special=False)
    grammar = engine._lc.llama_sampler_clone(engine.grammar(schema))
    everything = np.zeros(llama.n_vocab(), dtype=engine._token)
    compared = walked = opened = inside = 0
    owed = 0
    try:
        for token in [*tokens, llama.token_eos()]:
            everything["id"], everything["logit"] = np.arange(llama.n_vocab()), 0.0
            engine._lc.llama_sampler_apply(grammar, ctypes.byref(engine._array(everything)))
            judged = np.flatnonzero(everything["logit"] == 0.0)
            assert token in judged
            if owed <= 0:
                found = trie.allowed(grammar)
                if found is None:  # inside a string: nearly every token allowed, judged one by one
                    assert len(judged) > 10_000
                    inside += 1
                else:
                    assert found.tolist() == judged.tolist(), f"after {compared} tokens: {set(found) ^ set(judged)}"
                    compared += 1
                    walked += trie.visited > 1
            else:
                opened += 1
            if token == llama.token_eos():
                break
            engine._lc.llama_sampler_accept(grammar, token)
            owed = local_engine._utf8_remain(trie.pieces[token], owed)
    finally:
        engine._lc.llama_sampler_free(grammar)
    assert compared + inside >= len(tokens) - opened and compared >= 10 and walked >= 10  # below its root at many steps
    assert opened >= 1 and inside >= 10  # the emoji or the CJK text split inside a character; the strings' text


def test_the_trie_answers_only_for_grammars_of_characters() -> None:
    """A token element (``<[id]>``) matches a whole token whose first character alone may be refused,
    so the trie does not answer for a grammar with one; ``<`` inside literals and classes is a character."""
    from llama_cpp import llama_chat_format

    assert not local_engine._chars_only('root ::= <[39428]> "x"')
    assert not local_engine._chars_only('root ::= "a" | <[39428]>')
    assert not local_engine._chars_only('root ::= x # a comment ends at a carriage return\rx ::= <[5]>\n')
    assert local_engine._chars_only('root ::= "<" [<\\]] "\\"<" # <[1]>\n')
    json_grammar = llama_chat_format._grammar_for_response_format(
        {"type": "json_object", "schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "^<x>[<]$"}, "b": {"enum": ["<[1]>"]}}}})
    assert local_engine._chars_only(json_grammar._grammar)
