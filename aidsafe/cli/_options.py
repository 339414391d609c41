"""Shared CLI options. Every option can also be set by an environment variable ``AIDSAFE_<NAME>``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..engines import ENGINES
from ..errors import ConfigError
from ..models import ModelSettings, backend_names
from ..models.endpoints import endpoints_from_urls, load_endpoints
from ..runner import JobOptions

__all__ = [
    "add_graph_options", "add_job_options", "add_model_options", "env_option", "job_options_from_args", "role_models_from_args",
    "settings_from_args",
]


def _env_name(flag: str) -> str:
    return "AIDSAFE_" + flag.lstrip("-").upper().replace("-", "_")


def _env_error(name: str, raw: str, problem: str) -> SystemExit:
    print(f"aidsafe: error: environment variable {name}={raw!r}: {problem}", file=sys.stderr)
    return SystemExit(2)


def env_option(
    parser: argparse.ArgumentParser | Any,
    *flags: str,
    default: Any = None,
    type: Any = str,
    help: str = "",
    env: str | None = None,
    **kwargs: Any,
) -> None:
    """Add an option whose default comes from ``AIDSAFE_<NAME>`` (or ``env``) when that variable is set.

    The variable's value is checked like a command-line value (type, choices); a bad value
    exits with status 2 and names the variable.
    """
    name = env or _env_name(next(f for f in flags if f.startswith("--")))
    raw = os.environ.get(name)
    action = kwargs.get("action")
    if raw is not None and raw != "":
        if action == "store_true":
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise _env_error(name, raw, "expected true/false, 1/0, yes/no or on/off")
            default = raw.lower() in ("1", "true", "yes", "on")
        elif action == "append":
            default = [v.strip() for v in raw.split(",") if v.strip()]
        else:
            try:
                default = type(raw)
            except ValueError:
                raise _env_error(name, raw, f"not a valid {getattr(type, '__name__', 'value')}") from None
            choices = kwargs.get("choices")
            if choices is not None and default not in choices:
                raise _env_error(name, raw, f"choose from {', '.join(map(str, choices))}")
    text = f"{help} [env: {name}]" if help else f"[env: {name}]"
    if kwargs.get("required") and default is not None:
        kwargs["required"] = False  # the environment variable gives it
    if action in ("store_true", "append"):
        parser.add_argument(*flags, default=default, help=text, **kwargs)
    else:
        parser.add_argument(*flags, default=default, type=type, help=text, **kwargs)


def add_job_options(parser: argparse.ArgumentParser, unit: str, *, env_prefix: str = "", retry_failed: bool = True) -> None:
    """The flags every file job takes (``aidsafe generate``, ``judge``, ``pairs``): concurrency,
    overwrite, retry, cache, progress, and where the items run (``--engine`` and its Ray flags).
    ``unit`` names an item in the help (``prompt``, ``record``); each flag's variable is
    ``AIDSAFE_<env_prefix>_<FLAG>`` (``AIDSAFE_<FLAG>`` without a prefix)."""
    units = f"{unit}s"

    def env(flag: str) -> str:
        return "AIDSAFE_" + (f"{env_prefix}_" if env_prefix else "") + flag.upper().replace("-", "_")

    env_option(parser, "--concurrency", type=int, env=env("concurrency"),
               help=f"{units} in flight at once (default: 16 with an openai endpoint, 1 for the local model, which runs one call "
                    "at a time; per actor with --engine ray)")
    env_option(parser, "--overwrite", action="store_true", env=env("overwrite"),
               help="start from scratch: delete the output and its response cache first")
    if retry_failed:
        env_option(parser, "--retry-failed", action="store_true", env=env("retry-failed"),
                   help=f"run the {units} whose records failed again, replacing those records")
    env_option(parser, "--no-cache", action="store_true", env=env("no-cache"), help="do not keep the response cache that makes resumes free")
    env_option(parser, "--no-progress", action="store_true", env=env("no-progress"), help="no progress bar")
    env_option(parser, "--engine", choices=list(ENGINES), default="local", env=env("engine"),
               help="local: this process; ray: Ray Data, an actor pool (extra [ray]; RAY_ADDRESS names a cluster)")
    env_option(parser, "--ray-actors", type=int, default=2, env=env("ray-actors"),
               help=f"with --engine ray: actors in the pool, each with --concurrency {units} in flight")
    env_option(parser, "--ray-batch-size", type=int, default=32, env=env("ray-batch-size"),
               help=f"with --engine ray: {units} per batch (one block file OUTPUT.parts/*.jsonl each)")
    env_option(parser, "--ray-batch-retries", type=int, default=3, env=env("ray-batch-retries"),
               help=f"with --engine ray: times a batch whose actor died runs again; a {unit} that kills its actor gets a failed "
                    "record (worker_crash)")


def job_options_from_args(args: argparse.Namespace) -> JobOptions:
    """:class:`~aidsafe.runner.JobOptions` from the flags of :func:`add_job_options`; ``--engine ray``
    gives a Ray executor (Ray is imported only then)."""
    executor = None
    if args.engine == "ray":
        from ..engines.ray_data import RayExecutor, RayOptions

        executor = RayExecutor(RayOptions(actors=args.ray_actors, batch_size=args.ray_batch_size, max_batch_retries=args.ray_batch_retries))
    return JobOptions(
        concurrency=args.concurrency, overwrite=args.overwrite, retry_failed=getattr(args, "retry_failed", False),
        cache=not args.no_cache, progress=not args.no_progress, executor=executor,
    )


def add_graph_options(parser: argparse.ArgumentParser) -> None:
    env_option(parser, "--graph", default="aidsafe", help="shipped graph name (aidsafe, roundtable, init_only, single) or a graph file path")
    env_option(parser, "--policies", default="aidsafe5", help="shipped policy pack (aidsafe5, llamaguard3) or a pack file path")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    env_option(group, "--backend", choices=backend_names(), help="default: openai when --base-url is given, else local")
    env_option(group, "--base-url", action="append", metavar="URL",
               help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM); repeat it for several replicas of the model "
                    "(comma-separated in the variable)")
    env_option(group, "--endpoints", metavar="FILE", help="an endpoints file: several servers with their own model names, weights and limits")
    env_option(group, "--model", help="model name (openai), GGUF path (local; default: embedded SmolLM2-135M) or fake behaviour")
    env_option(group, "--api-key-env", default="OPENAI_API_KEY", help="name of the environment variable holding the API key")
    env_option(group, "--role-model", action="append", metavar="ROLE=MODEL", help="model for one role or agent (repeatable)")
    env_option(group, "--temperature", type=float, help="sampling temperature (default: 0.2 local, server default otherwise)")
    env_option(group, "--max-tokens", type=int, help="max tokens per reply, for every role (default: each role's own, sized for a Mixtral-class model)")
    env_option(group, "--timeout", type=float, default=300.0, help="seconds per model call")
    env_option(group, "--max-retries", type=int, default=3, help="retries per model call on connection errors, timeouts and 5xx")
    env_option(group, "--call-deadline", type=float, default=600.0,
               help="seconds one model call may wait out 429/503 backpressure (retried, not counted in --max-retries)")
    env_option(group, "--max-in-flight", type=int, default=256, help="most calls in flight to one endpoint (its adaptive limit starts here)")
    env_option(
        group,
        "--structured-output",
        choices=["auto", "json_schema", "json_object"],
        default="auto",
        help="how the JSON Schema is sent to an openai endpoint (auto: json_schema, else json_object + schema)",
    )
    env_option(
        group,
        "--system-role",
        choices=["auto", "native", "merge"],
        default="auto",
        help="how the system text is sent: native (a system message), merge (joined to the first user turn, for chat templates "
             "without a system role: Mixtral-8x7B-Instruct, Gemma) or auto (native until the server refuses it, then merged for that "
             "endpoint and model); a role's system_role in the graph file and an endpoint's in the endpoints file take precedence over auto",
    )
    env_option(group, "--n-ctx", type=int, default=8192, help="context window of the local model")
    env_option(group, "--prefix-cache", type=int, default=256, metavar="MB",
               help="memory for the local model's saved prompt prefixes (each role's system message is computed once "
                    "and reused, also by later runs: they are kept in AIDSAFE_PREFIX_DIR, default ~/.cache/aidsafe/prefixes, "
                    "1 GB at most; the answers are the same); 0 turns it off")
    env_option(group, "--seed", type=int, help="sampling seed")


def settings_from_args(args: argparse.Namespace) -> ModelSettings:
    urls: list[str] = list(args.base_url or [])
    if args.endpoints and urls:
        raise ConfigError("give either --base-url or --endpoints, not both")
    endpoints = load_endpoints(args.endpoints) if args.endpoints else endpoints_from_urls(urls) if len(urls) > 1 else ()
    if args.prefix_cache < 0:
        raise ConfigError("--prefix-cache must be 0 (off) or more megabytes")
    if args.call_deadline <= 0 or args.max_in_flight < 1:
        raise ConfigError("--call-deadline must be above 0 and --max-in-flight at least 1")
    backend = args.backend or ("openai" if urls or endpoints else "local")
    return ModelSettings(
        backend=backend,
        model=args.model,
        base_url=endpoints[0].url if endpoints else (urls[0] if urls else None),
        endpoints=endpoints,
        call_deadline=args.call_deadline,
        max_in_flight=args.max_in_flight,
        api_key_env=args.api_key_env,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        timeout=args.timeout,
        max_retries=args.max_retries,
        structured=args.structured_output,
        system_role=args.system_role,
        n_ctx=args.n_ctx,
        prefix_cache_mb=args.prefix_cache,
        seed=args.seed,
    )


def role_models_from_args(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in args.role_model or []:
        role, sep, model = item.partition("=")
        if not sep or not role or not model:
            raise SystemExit(f"aidsafe: --role-model expects ROLE=MODEL, got {item!r}")
        out[role.strip()] = model.strip()
    return out
