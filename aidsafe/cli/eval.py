"""``aidsafe eval TASK ...``, ``aidsafe eval report`` and ``aidsafe eval calibrate``: the safety
benchmarks on inspect_ai (extra ``[eval]``). Models are named as inspect names them
(``vllm/...``, ``openai-api/SERVICE/MODEL``, ``llama-cpp-python/MODEL``, ``openai/...``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import AidsafeError, ConfigError, InputError
from ..outputs import atomic_write_text
from ._options import env_option

TASKS = ("safety", "overrefusal", "strongreject", "utility", "cot_faithfulness")
GRADED = ("safety", "overrefusal", "strongreject", "cot_faithfulness")
HELP = "evaluate a model on the safety benchmarks (inspect_ai; extra [eval]); 'report' tabulates logs, 'calibrate' checks a grader"
TASK_HELP = {
    "safety": "harmful prompts -> safe-response rate, graded over the policy pack (BeaverTails, WildChat, Do-Not-Answer, any prompt file)",
    "overrefusal": "XSTest by inspect_evals' grader: full compliance / full refusal / partial refusal on the safe and the unsafe-contrast prompts",
    "strongreject": "StrongREJECT by inspect_evals' scorer: safe-response rate and StrongREJECT score; optional jailbreak wrappers",
    "utility": "MMLU by inspect_evals' samples and solver (same-subject k-shot from the dev split), the letter read as lm-eval reads it",
    "cot_faithfulness": "the model's own reasoning graded for faithfulness to the policies",
}
OWN_RUBRIC = ("safety", "cot_faithfulness")


def _require_inspect() -> None:
    import importlib.util

    missing = [name for name in ("inspect_ai", "inspect_evals") if importlib.util.find_spec(name) is None]
    if missing:
        raise AidsafeError(f"evaluation needs the [eval] extra ({', '.join(missing)} missing; inspect-ai and inspect-evals, Python 3.11 or later): "
                           "pip install 'aidsafe[eval]'")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help=HELP, description=HELP)
    tasks = p.add_subparsers(dest="eval_command", required=True, metavar="TASK")
    for name in TASKS:
        t = tasks.add_parser(name, help=TASK_HELP[name], description=TASK_HELP[name])
        t.add_argument("--data", required=True, help="the benchmark file (its upstream format; see docs/evaluation.md) or hf:NAME[:SPLIT]")
        env_option(t, "--model", required=True, help="the model under test, as inspect names it", env="AIDSAFE_EVAL_MODEL")
        env_option(t, "--model-base-url", help="its OpenAI-compatible base URL", env="AIDSAFE_EVAL_MODEL_BASE_URL")
        if name in GRADED:
            env_option(t, "--grader", required=True, help="the grader model, as inspect names it (a strong model, not the one under test)",
                       env="AIDSAFE_EVAL_GRADER")
            env_option(t, "--grader-base-url", help="the grader's base URL", env="AIDSAFE_EVAL_GRADER_BASE_URL")
        if name in OWN_RUBRIC:
            t.add_argument("--rubric", help="a rubric template of your own (default: the shipped prompts/eval_*.jinja)")
            env_option(t, "--grader-structured", choices=["none", "json_schema", "json_object"], default="none",
                       help="send the grade's JSON Schema as response_format: json_schema (OpenAI, vLLM), json_object (llama-cpp-python's server); "
                            "default none: the grade's JSON is parsed from the reply", env="AIDSAFE_EVAL_GRADER_STRUCTURED")
        if name in ("safety", "cot_faithfulness"):
            t.add_argument("--policies", default="aidsafe5", help="the policy pack the grader applies (default aidsafe5)")
            t.add_argument("--prompt-field", default="prompt", help="the prompt field of a plain JSONL/CSV file")
        if name == "overrefusal":
            t.add_argument("--subset", choices=["safe", "unsafe"], help="only the safe prompts or only the unsafe contrasts (default: both)")
        if name == "strongreject":
            t.add_argument("--jailbreak", default="none",
                           help="a wrapper from prompts/jailbreaks.yaml (none, prefix_injection, refusal_suppression, roleplay, base64) or inspect_evals' AIM")
            t.add_argument("--jailbreaks", help="a jailbreaks file of your own in that layout")
        if name == "utility":
            t.add_argument("--shots", type=int, default=0, help="worked examples of the question's own subject before it (lm-eval uses 5); needs --fewshot-data")
            t.add_argument("--fewshot-data", help="where the worked examples come from: MMLU's dev split (any of the MMLU formats)")
            t.add_argument("--cot", action="store_true", help="inspect_evals' chain-of-thought prompt and no 16-token reply limit")
        t.add_argument("--reasoning-tag", default="think", help="the tag around the model's reasoning, stripped before grading ('' for none)")
        t.add_argument("--system-prompt", help="a system message for the model under test")
        t.add_argument("-T", dest="task_args", action="append", default=[], metavar="KEY=VALUE", help="another task parameter (repeatable)")
        t.add_argument("--limit", type=int, help="only the first N samples")
        t.add_argument("--epochs", type=int, default=1, help="generations per sample, reduced to one score per sample (the mean over its scored epochs) before any figure")
        env_option(t, "--log-dir", default="logs", help="where inspect writes its log (read it with inspect view or aidsafe eval report)",
                   env="AIDSAFE_EVAL_LOG_DIR")
        t.add_argument("--max-connections", type=int, help="concurrent calls per model")
        t.add_argument("--max-tokens", type=int, help="reply budget of the model under test (default: the benchmark's own; a reply cut at it is never graded safe, compliant or correct)")
        t.add_argument("--temperature", type=float, help="sampling temperature of the model under test (default: the benchmark's own; 0 for safety, cot_faithfulness, overrefusal, utility; 0.75 for strongreject)")
        t.add_argument("--max-retries", type=int, default=3, help="retries of a failed model call (default 3)")
        t.add_argument("--timeout", type=int, default=120, help="seconds per model call (default 120)")
        t.add_argument("--no-progress", action="store_true", help="no progress display")
        t.set_defaults(func=run_task, task=name)
    r = tasks.add_parser("report", help="the Table 2 layout over inspect logs: a column per model, bootstrap 95%% intervals, n scored/unscored")
    r.add_argument("logs", nargs="+", help="inspect log files or folders of them")
    r.add_argument("--label", action="append", default=[], metavar="LOGFILE=NAME", help="a column name for one log's model (repeatable)")
    r.add_argument("--json", help="also write the table as JSON")
    r.add_argument("--markdown", help="also write the table as Markdown")
    r.add_argument("--plot", help="also write a PNG of the table (needs the plots extra)")
    r.set_defaults(func=run_report)
    c = tasks.add_parser("calibrate", help="a grader against human labels (CSV id,label): agreement and Cohen's kappa")
    c.add_argument("log", help="an inspect log of an aidsafe task")
    c.add_argument("--labels", required=True, help="CSV with the columns id,label")
    c.add_argument("--json", help="also write the result as JSON")
    c.set_defaults(func=run_calibrate)


def _task_args(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {"data": args.data, "reasoning_tag": args.reasoning_tag or None}
    for key in ("rubric", "policies", "prompt_field", "subset", "jailbreak", "jailbreaks", "shots", "fewshot_data", "system_prompt", "max_tokens",
                "grader_structured"):
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    if getattr(args, "cot", False):
        values["cot"] = True
    for item in args.task_args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"-T takes KEY=VALUE, got {item!r}")
        try:
            values[key.replace("-", "_")] = json.loads(value)
        except ValueError:
            values[key.replace("-", "_")] = value
    return values


def run_task(args: argparse.Namespace) -> int:
    _require_inspect()
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import GenerateConfig, get_model

    from ..evals import tasks as evals

    task_fn = getattr(evals, args.task)
    try:
        task = task_fn(**_task_args(args))
    except TypeError as exc:
        raise ConfigError(f"task {args.task!r}: {exc}") from None
    config = GenerateConfig(max_retries=args.max_retries, timeout=args.timeout,
                            **({"max_connections": args.max_connections} if args.max_connections else {}))
    model = get_model(args.model, base_url=args.model_base_url, config=config, memoize=False)
    roles = {}
    if args.task in GRADED:
        grader_config = GenerateConfig(max_retries=args.max_retries, timeout=args.timeout,
                                       **({"max_connections": args.max_connections} if args.max_connections else {}))
        roles["grader"] = get_model(args.grader, base_url=args.grader_base_url, config=grader_config, memoize=False)
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be 1 or more, got {args.epochs}")
    overrides = {"temperature": args.temperature} if args.temperature is not None else {}
    logs = inspect_eval(task, model=model, model_roles=roles or None, log_dir=args.log_dir, limit=args.limit, epochs=args.epochs,
                        display="none" if args.no_progress else None, **overrides)
    log = logs[0]
    if log.status != "success":
        message = log.error.message if log.error else log.status
        where = f" ({args.model_base_url})" if args.model_base_url else ""
        grader = f"; grader {args.grader}{f' ({args.grader_base_url})' if args.grader_base_url else ''}" if args.task in GRADED else ""
        print(f"aidsafe eval {args.task}: the run failed: model {args.model}{where}{grader}: {message.splitlines()[0] if message else ''}\n"
              f"  log: {log.location}", file=sys.stderr)
        return 1
    scores = log.results.scores if log.results else []
    metrics = {name: value.value for score in scores for name, value in score.metrics.items()}
    shown = ", ".join(f"{name.split('/')[-1]} {value:.4g}" for name, value in metrics.items() if name != "stderr")
    unscored = next((s.unscored_samples for s in scores if s.unscored_samples), 0)
    no_response = sum(1 for sample in log.samples or [] for score in (sample.scores or {}).values() if score.reason == "no_response")
    counts = f"{unscored} unscored" + (f", {no_response} with no response (empty or cut)" if no_response else "") if unscored or no_response else "all scored"
    print(f"aidsafe eval {args.task}: {len(log.samples or [])} samples of {args.data} on {args.model} ({counts}): {shown}\n  log: {log.location}",
          file=sys.stderr)
    return 0


def run_report(args: argparse.Namespace) -> int:
    _require_inspect()
    from ..evals.report import as_json, eval_logs, markdown_table, plot_table, report_table

    if args.plot:
        from ..judge.plots import require_plots

        require_plots()
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--label takes LOGFILE=NAME, got {item!r}")
        labels[key] = value
    table = report_table(eval_logs(args.logs), labels)
    text = markdown_table(table)
    sys.stdout.write(text)
    if args.markdown:
        atomic_write_text(args.markdown, text)
    if args.json:
        atomic_write_text(args.json, json.dumps(as_json(table), indent=2) + "\n")
    if args.plot:
        plot_table(table, args.plot)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    _require_inspect()
    from ..evals.calibration import calibrate_log

    result = calibrate_log(args.log, args.labels)
    kappa = f"{result['kappa']:.3f}" if result["kappa"] is not None else "undefined"
    agreement = f"{result['agreement']:.3f}" if result["agreement"] is not None else "–"
    print(f"{result['task']}: {result['compared']} of {result['labelled']} labelled samples compared "
          f"({result['unscored']} unscored by the grader); agreement {agreement}, Cohen's kappa {kappa}")
    for key, count in result["confusion"].items():
        print(f"  {key}: {count}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0
