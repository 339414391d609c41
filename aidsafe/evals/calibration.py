"""``aidsafe eval calibrate``: a grader's labels against human labels, from an inspect log.

The labels file is a CSV with the columns ``id,label`` (a header; other columns ignored): the
sample id and the human's label in the grader's vocabulary for that task — ``safe``/``unsafe``
(safety), ``full_compliance``/``full_refusal``/``partial_refusal`` (overrefusal),
``refused``/``complied`` (strongreject), ``1``-``5`` (cot_faithfulness), ``correct``/``wrong``
(utility). The result: pairs compared, exact agreement, Cohen's kappa over the categories seen,
the confusion counts, and how many labelled samples the grader left unscored (not compared) or
the log does not hold (an error naming them). A score a rule decided without the grader (an empty
or cut reply) is not compared: it is counted with the unscored ones.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..judge.calibration import cohen_kappa

__all__ = ["calibrate_log", "grader_label", "read_label_csv"]


def read_label_csv(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{sample id: label}`` from a CSV with the columns ``id,label``."""
    file = Path(path)
    if not file.is_file():
        raise InputError("labels file not found", file=file)
    labels: dict[str, str] = {}
    with open(file, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"id", "label"} <= {f.strip() for f in reader.fieldnames}:
            raise InputError(f"needs the columns id and label, has {reader.fieldnames}", file=file, line=1)
        for row in reader:
            ident, label = (row.get("id") or "").strip(), (row.get("label") or "").strip().lower()
            if not ident or not label:
                raise InputError("a row needs an id and a label", file=file, line=reader.line_num)
            if ident in labels:
                raise InputError(f"id {ident!r} is labelled twice", file=file, line=reader.line_num)
            labels[ident] = label
    if not labels:
        raise InputError("holds no label", file=file)
    return labels


def grader_label(task: str, score: Any) -> str | None:
    """What the grader said about one sample, in the labels' vocabulary (None when unscored)."""
    if score is None or score.value is None or (isinstance(score.value, float) and math.isnan(score.value)):
        return None
    if score.reason == "no_response":  # decided by a rule (an empty or cut reply), not by the grader
        return None
    meta = score.metadata or {}
    if task == "safety":
        return str(meta.get("verdict", "")) or None
    if task == "overrefusal":
        return str(meta.get("label") or "") or ("full_refusal" if isinstance(score.value, dict) and score.value.get("full_refusal") else None)
    if task == "strongreject":
        refusal = score.value.get("refusal") if isinstance(score.value, dict) else None
        return None if refusal is None else "refused" if refusal == 1 else "complied"
    if task == "utility":
        return "correct" if score.value == 1.0 else "wrong"
    if task == "cot_faithfulness":
        return str(int(score.value))
    return str(score.value)


def calibrate_log(log_file: str | os.PathLike[str], labels_csv: str | os.PathLike[str]) -> dict[str, Any]:
    """Agreement and Cohen's kappa of the grader in ``log_file`` with the human labels."""
    from inspect_ai.log import read_eval_log

    labels = read_label_csv(labels_csv)
    log = read_eval_log(str(log_file))
    task = log.eval.task.split("/")[-1]
    samples = {str(s.id): s for s in log.samples or []}
    missing = sorted(set(labels) - set(samples))
    if missing:
        raise InputError(f"labels ids the log does not hold: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}", file=labels_csv)
    pairs: list[tuple[str, str]] = []
    unscored = 0
    graders: Counter[str] = Counter()
    for ident, human in labels.items():
        score = next(iter((samples[ident].scores or {}).values()), None)
        said = grader_label(task, score)
        if said is None:
            unscored += 1
            continue
        graders[str((score.metadata or {}).get("grader")) if score is not None else "?"] += 1
        pairs.append((said.lower(), human))
    categories = sorted({c for pair in pairs for c in pair})
    agree = sum(a == b for a, b in pairs)
    return {
        "log": str(log_file),
        "task": task,
        "graders": dict(graders),
        "labelled": len(labels),
        "compared": len(pairs),
        "unscored": unscored,
        "agreement": agree / len(pairs) if pairs else None,
        "kappa": cohen_kappa([a for a, _ in pairs], [b for _, b in pairs], categories) if pairs else None,
        "confusion": {f"grader {a} / human {b}": n for (a, b), n in sorted(Counter(pairs).items())},
    }
