"""Statistics, calibration and the compare/filter/calibrate commands, on hand-built judged records
whose expected numbers are computed by hand in the comments (fast: no model, no network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from aidsafe.cli import main
from aidsafe.errors import InputError
from aidsafe.judge.calibration import agreement, calibrate, cohen_kappa, read_labels, weighted_kappa
from aidsafe.judge.comparison import compare
from aidsafe.judge.plots import plot_distributions
from aidsafe.judge.report import markdown_report
from aidsafe.judge.schema import METRICS, JudgedRecord, PairVerdict
from aidsafe.judge.stats import bootstrap_ci, metric_table, reconcile, win_rates
from aidsafe.records import Record
from aidsafe.summary import deliberation_stats

LABELS_CSV = Path(__file__).parents[1] / "data" / "judge_labels.csv"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- helpers ------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("clean_env")  # no AIDSAFE_* variable of the calling shell changes what a test sees


def make_record(
    record_id: str,
    *,
    status: str = "ok",
    stop_reason: str = "consensus",
    rounds: int = 1,
    thoughts: list[list[str]] | None = None,
    removed: int = 0,
    usage: dict[str, tuple[int, int]] | None = None,
) -> Record:
    """A valid generated record; ``thoughts`` gives each thought's cited policy ids."""
    return Record.model_validate(
        {
            "id": record_id,
            "prompt": f"prompt {record_id}",
            "graph": "aidsafe",
            "policy_set": {"name": "aidsafe5", "version": "1"},
            "intents": {},
            "deliberation": [],
            "stop_reason": stop_reason,
            "rounds": rounds,
            "thoughts": [{"text": f"thought {i}", "policies": cited} for i, cited in enumerate(thoughts or [])],
            "removed_thoughts": [{"text": f"removed {i}", "reason": "redundant"} for i in range(removed)],
            "response": f"response {record_id}",
            "models": {},
            "usage": {stage: {"prompt_tokens": p, "completion_tokens": c} for stage, (p, c) in (usage or {}).items()},
            "status": status,
        }
    )


def judged(record_id: str, scores: dict[str, int | None] | None = None, *, default: int | None = 5, **fields: Any) -> JudgedRecord:
    """A judged record: every metric scores ``default`` unless ``scores`` says otherwise."""
    full = {metric: default for metric in METRICS} | (scores or {})
    base = make_record(record_id, **fields).model_dump()
    judgement = {
        "judge_model": "fake:judge",
        "rubric": "rubric.j2#abc",
        "scores": full,
        "unscored": [metric for metric, score in full.items() if score is None],
        "citations": {"thoughts": 0, "citing": 0, "share_citing": None},
    }
    return JudgedRecord.model_validate(base | {"judgement": judgement})


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(record.model_dump_json() + "\n" for record in records), encoding="utf-8")
    return path


# --- bootstrap ----------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_is_deterministic() -> None:
    values = [1, 2, 3, 4, 5, 5, 4, 2]
    mean = sum(values) / len(values)
    ci = bootstrap_ci(values, seed=7)
    assert ci is not None
    assert ci[0] < mean < ci[1]
    assert 1 <= ci[0] and ci[1] <= 5
    assert bootstrap_ci(values, seed=7) == ci
    assert bootstrap_ci(list(reversed(values)), seed=7) == ci  # order does not matter


def test_bootstrap_ci_narrows_with_more_data() -> None:
    small = bootstrap_ci([1, 2, 3, 4, 5] * 2)
    large = bootstrap_ci([1, 2, 3, 4, 5] * 50)
    assert small is not None and large is not None
    assert large[1] - large[0] < (small[1] - small[0]) / 2
    assert large[0] < 3.0 < large[1]


def test_bootstrap_ci_edge_cases() -> None:
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([4.0]) is None
    assert bootstrap_ci([3, 3, 3]) == (3.0, 3.0)
    with pytest.raises(ValueError):
        bootstrap_ci([1, 2], level=1.5)


# --- metric table -------------------------------------------------------------------


def test_metric_table_excludes_and_counts_unscored() -> None:
    records = [judged("r1", {"relevance": 5}), judged("r2", {"relevance": 4}), judged("r3", {"relevance": None})]
    table = metric_table(records)
    assert list(table)[: len(METRICS)] == list(METRICS)
    relevance = table["relevance"]
    assert relevance["mean"] == pytest.approx(4.5)  # (5 + 4) / 2, not (5 + 4 + 0) / 3
    assert relevance["n_scored"] == 2
    assert relevance["n_unscored"] == 1
    assert 4.0 <= relevance["ci_low"] <= 4.5 <= relevance["ci_high"] <= 5.0
    assert table["coherence"] == {"mean": 5.0, "ci_low": 5.0, "ci_high": 5.0, "n_scored": 3, "n_unscored": 0}


def test_metric_table_all_unscored_and_missing_key() -> None:
    record = judged("r1", default=None)
    record.judgement.scores.pop("coherence")  # a metric absent from the scores counts as unscored too
    table = metric_table([record])
    assert table["coherence"] == {"mean": None, "ci_low": None, "ci_high": None, "n_scored": 0, "n_unscored": 1}


# --- deliberation -------------------------------------------------------------------


def three_records() -> list[Record]:
    return [
        # ok, consensus after 2 rounds: 3 thoughts (2 citing), 1 removed, 100+50+10+5 = 165 tokens
        make_record("r1", stop_reason="consensus", rounds=2, thoughts=[["P1"], ["P1", "P2"], []], removed=1,
                    usage={"intent": (100, 50), "refiner": (10, 5)}),
        # ok, budget after 3 rounds: 1 thought (citing), nothing removed, 200+100 = 300 tokens
        make_record("r2", stop_reason="budget", rounds=3, thoughts=[["P3"]], usage={"intent": (200, 100)}),
        # failed: counted in n, failed and stop_reasons only
        make_record("r3", status="failed", stop_reason="error", rounds=1, usage={"intent": (30, 0)}),
    ]


def test_deliberation_stats_hand_computed() -> None:
    stats = deliberation_stats(three_records())
    assert stats == {
        "n": 3,
        "ok": 2,
        "failed": 1,
        "mean_rounds": 2.5,  # (2 + 3) / 2
        "consensus_rate": 0.5,  # 1 consensus of 2 ok records with a loop
        "stop_reasons": {"budget": 1, "consensus": 1, "error": 1},
        "mean_thoughts_after_refiner": 2.0,  # (3 + 1) / 2
        "mean_thoughts_before_refiner": 2.5,  # ((3 + 1) + (1 + 0)) / 2
        "mean_removed_thoughts": 0.5,  # (1 + 0) / 2
        "mean_total_tokens": 232.5,  # (165 + 300) / 2
        "citation_share": 0.75,  # 3 of 4 thoughts cite a policy
        "first_turn_agreement": None,  # no record has deliberation turns
        "zero_edit_consensus": None,
    }


def test_consensus_rate_ignores_records_without_loop() -> None:
    records = [make_record("a", stop_reason="no_loop", rounds=0), make_record("b", stop_reason="consensus")]
    assert deliberation_stats(records)["consensus_rate"] == 1.0
    assert deliberation_stats([make_record("a", stop_reason="no_loop", rounds=0)])["consensus_rate"] is None
    empty = deliberation_stats([])
    assert empty["n"] == 0 and empty["mean_rounds"] is None and empty["citation_share"] is None


# --- pairwise -----------------------------------------------------------------------


def verdict(winner: str | None, index: int = 0) -> PairVerdict:
    return PairVerdict(id=f"p{index}", a="base", b="ours", winner=winner, verdicts=[winner, winner])  # type: ignore[arg-type]


def test_win_rates_over_scored_verdicts() -> None:
    rates = win_rates([verdict(w, i) for i, w in enumerate(["a", "a", "b", "tie", None])])
    assert rates == {
        "a_wins": 2, "b_wins": 1, "ties": 1, "unscored": 1, "n": 5,
        "a_win_rate": 0.5, "b_win_rate": 0.25, "tie_rate": 0.25,  # over the 4 scored verdicts
    }


def test_win_rates_without_scored_verdicts() -> None:
    rates = win_rates([verdict(None)])
    assert rates["n"] == 1 and rates["unscored"] == 1
    assert rates["a_win_rate"] is None and rates["b_win_rate"] is None and rates["tie_rate"] is None
    assert win_rates([])["n"] == 0


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("a", "a", "a"),
        ("b", "b", "b"),
        ("tie", "tie", "tie"),
        ("a", "b", "tie"),
        ("b", "a", "tie"),
        ("a", "tie", "tie"),
        ("tie", "b", "tie"),
        ("a", None, "a"),
        (None, "b", "b"),
        ("tie", None, "tie"),
        (None, "tie", "tie"),
        (None, None, None),
    ],
)
def test_reconcile(first: str | None, second: str | None, expected: str | None) -> None:
    assert reconcile(first, second) == expected


def test_reconcile_rejects_unknown_verdicts() -> None:
    with pytest.raises(ValueError):
        reconcile("A", "a")


# --- markdown -----------------------------------------------------------------------


def test_markdown_report_layout() -> None:
    records = [judged("r1", {"relevance": 5}), judged("r2", {"relevance": 4}), judged("r3", {"relevance": None})]
    report = markdown_report(compare({"base": records}, [verdict("a"), verdict("b", 1)]))
    lines = report.splitlines()
    assert "## Inputs (compared over the 3 ids that are ok in every input)" in lines
    assert "| base | 3 | 3 | 3 | 0 |" in lines
    assert "| Metric | base |" in lines
    relevance = next(line for line in lines if line.startswith("| relevance |"))
    assert "4.50 [" in relevance and "(n=2, unscored=1)" in relevance
    for metric in METRICS:
        assert any(line.startswith(f"| {metric} |") for line in lines)
    assert "| Statistic | base |" in lines
    assert "| base | ours | unknown | 50.0% (1) | 0.0% (0) | 50.0% (1) | 0 | 2 |" in lines


# --- kappa --------------------------------------------------------------------------


def test_cohen_kappa_two_by_two() -> None:
    # 20 items, confusion [[7, 3], [3, 7]]: p_o = 14/20 = 0.7; marginals 0.5/0.5 on both sides:
    # p_e = 0.5*0.5 + 0.5*0.5 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    judge = [4] * 7 + [4] * 3 + [5] * 3 + [5] * 7
    human = [4] * 7 + [5] * 3 + [4] * 3 + [5] * 7
    assert cohen_kappa(judge, human) == pytest.approx(0.4)


def test_kappa_perfect_and_undefined() -> None:
    assert cohen_kappa([1, 3, 5, 2], [1, 3, 5, 2]) == pytest.approx(1.0)
    assert weighted_kappa([1, 3, 5, 2], [1, 3, 5, 2]) == pytest.approx(1.0)
    assert cohen_kappa([3, 3], [3, 3]) is None  # p_e = 1: undefined
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        cohen_kappa([1, 2], [1])


def test_weighted_kappa_three_categories() -> None:
    # pairs (1,1) (2,3) (3,3) (1,2); weights (i-j)^2 (the 1/(K-1)^2 factor cancels).
    # observed: sum w*count = 0 + 1 + 0 + 1 = 2
    # marginals judge r = {1: 2, 2: 1, 3: 1}, human c = {1: 1, 2: 1, 3: 2}; expected count r_i c_j / 4:
    #   i=1: 2*(1*0 + 1*1 + 2*4) = 18;  i=2: 1*(1*1 + 1*0 + 2*1) = 3;  i=3: 1*(1*4 + 1*1 + 2*0) = 5
    #   sum w*E = 26 / 4 = 6.5  ->  kappa_w = 1 - 2 / 6.5 = 9/13
    assert weighted_kappa([1, 2, 3, 1], [1, 3, 3, 2]) == pytest.approx(9 / 13)
    # unweighted on the same pairs: p_o = 2/4; p_e = (2*1 + 1*1 + 1*2) / 16 = 5/16
    # kappa = (8/16 - 5/16) / (11/16) = 3/11
    assert cohen_kappa([1, 2, 3, 1], [1, 3, 3, 2]) == pytest.approx(3 / 11)


def test_agreement_rates() -> None:
    result = agreement([1, 2, 5, 4], [1, 3, 3, 4])
    assert result["n"] == 4
    assert result["exact"] == 0.5  # (1,1) (4,4)
    assert result["within_1"] == 0.75  # all but (5,3)
    assert agreement([], [])["exact"] is None


# --- calibration --------------------------------------------------------------------

# Judge scores chosen against tests/data/judge_labels.csv (human scores in brackets):
#   relevance     r1..r4: 5 4 3 2      [5 4 3 2]  -> everything 1.0
#   coherence     r1..r4: 4 4 None 3   [5 4 4 3]  -> 3 pairs (4,5) (4,4) (3,3), 1 unscored
#   completeness  r1..r4: 2 2 5 4      [1 2 3 4]
CALIBRATION_SCORES = {
    "r1": {"relevance": 5, "coherence": 4, "completeness": 2},
    "r2": {"relevance": 4, "coherence": 4, "completeness": 2},
    "r3": {"relevance": 3, "coherence": None, "completeness": 5},
    "r4": {"relevance": 2, "coherence": 3, "completeness": 4},
}


def calibration_records() -> list[JudgedRecord]:
    return [judged(record_id, scores) for record_id, scores in CALIBRATION_SCORES.items()]


def test_calibrate_per_metric_hand_computed() -> None:
    result = calibrate(calibration_records(), LABELS_CSV)
    assert result["labels"] == 12
    assert list(result["metrics"]) == ["relevance", "coherence", "completeness"]
    relevance = result["metrics"]["relevance"]
    assert relevance == {"n": 4, "exact": 1.0, "within_1": 1.0, "kappa": 1.0, "weighted_kappa": 1.0, "unscored": 0, "missing": 0}

    coherence = result["metrics"]["coherence"]
    # p_o = 2/3; judge {4: 2/3, 3: 1/3}, human {5: 1/3, 4: 1/3, 3: 1/3}: p_e = 2/9 + 1/9 = 1/3
    # kappa = (2/3 - 1/3) / (2/3) = 0.5
    # weighted: observed sum w*count = 1 (the (4,5) pair); expected = (1/3) * [2*(1 + 0 + 1) + 1*(4 + 1 + 0)] = 3
    # kappa_w = 1 - 1/3 = 2/3
    assert coherence["n"] == 3 and coherence["unscored"] == 1 and coherence["missing"] == 0
    assert coherence["exact"] == pytest.approx(2 / 3)
    assert coherence["within_1"] == 1.0
    assert coherence["kappa"] == pytest.approx(0.5)
    assert coherence["weighted_kappa"] == pytest.approx(2 / 3)

    completeness = result["metrics"]["completeness"]
    # pairs (2,1) (2,2) (5,3) (4,4): exact 2/4, within-1 3/4
    # judge {2: .5, 5: .25, 4: .25}, human uniform .25 on 1..4: p_e = .5*.25 + .25*.25 = .1875
    # kappa = (.5 - .1875) / .8125 = 5/13
    # weighted: observed 1 + 0 + 4 + 0 = 5; expected (1/4) * [2*(1+0+1+4) + 1*(16+9+4+1) + 1*(9+4+1+0)] = 56/4 = 14
    # kappa_w = 1 - 5/14 = 9/14
    assert completeness["n"] == 4
    assert completeness["exact"] == 0.5 and completeness["within_1"] == 0.75
    assert completeness["kappa"] == pytest.approx(5 / 13)
    assert completeness["weighted_kappa"] == pytest.approx(9 / 14)


def test_calibrate_overall_pools_pairs() -> None:
    overall = calibrate(calibration_records(), LABELS_CSV)["overall"]
    # 11 pairs: exact 4 + 2 + 2 = 8, within-1 4 + 3 + 3 = 10
    # judge counts {5: 2, 4: 4, 3: 2, 2: 3}, human {5: 2, 4: 3, 3: 3, 2: 2, 1: 1}
    # p_e = (2*2 + 4*3 + 2*3 + 3*2) / 121 = 28/121; kappa = (88 - 28) / (121 - 28) = 20/31
    # weighted: observed 1 + 1 + 4 = 6; expected (1/11) * (2*49 + 4*22 + 2*17 + 3*34) = 322/11
    # kappa_w = 1 - 66/322 = 128/161
    assert overall["n"] == 11 and overall["unscored"] == 1 and overall["missing"] == 0
    assert overall["exact"] == pytest.approx(8 / 11)
    assert overall["within_1"] == pytest.approx(10 / 11)
    assert overall["kappa"] == pytest.approx(20 / 31)
    assert overall["weighted_kappa"] == pytest.approx(128 / 161)


def test_calibrate_counts_labels_without_judged_record() -> None:
    result = calibrate(calibration_records()[:3], LABELS_CSV)  # r4 not judged: its 3 labels are missing
    assert result["overall"]["missing"] == 3
    assert result["overall"]["n"] == 8
    assert result["metrics"]["relevance"]["n"] == 3


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("r1,relevance,5\n", ":1", "header"),
        ("id,metric,score\nr1,relevance,5\nr2,relevance,6\n", ":3", "1-5"),
        ("id,metric,score\nr1,relevance,x\n", ":2", "integer"),
        ("id,metric,score\nr1,helpfulness,4\n", ":2", "faithfulness_cot_policy"),
        ("id,metric,score\nr1,relevance,4\nr1,relevance,5\n", ":3", "twice"),
    ],
)
def test_read_labels_errors_name_file_and_line(tmp_path: Path, text: str, where: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_labels(path)
    assert f"{path}{where}:" in str(info.value)
    assert message in str(info.value)


# --- plot ---------------------------------------------------------------------------


def test_plot_distributions_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = plot_distributions({"base": calibration_records(), "ours": [judged("x")]}, tmp_path / "dist.png")
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert not (tmp_path / "dist.png.tmp").exists()


# --- CLI: compare -------------------------------------------------------------------


@pytest.fixture
def compare_inputs(tmp_path: Path) -> dict[str, Path]:
    base = write_jsonl(tmp_path / "base.jsonl", [judged("r1", {"relevance": 5}), judged("r2", {"relevance": 4}), judged("r3", {"relevance": None})])
    ours = write_jsonl(tmp_path / "ours.jsonl", [judged("r1", default=4), judged("r2", default=4)])
    plain = write_jsonl(tmp_path / "plain.jsonl", three_records())
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(verdict(w, i).model_dump_json() + "\n" for i, w in enumerate(["a", "b", "b", None])), encoding="utf-8")
    return {"base": base, "ours": ours, "plain": plain, "pairs": pairs}


def test_compare_prints_table_with_every_metric_and_label(compare_inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compare", str(compare_inputs["base"]), str(compare_inputs["ours"]), "--labels", "baseline", "aidsafe"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert "| Metric | baseline | aidsafe |" in lines
    for metric in METRICS:
        assert any(line.startswith(f"| {metric} |") for line in lines), metric
    relevance = next(line for line in lines if line.startswith("| relevance |"))
    # r3 is ok in baseline only: both inputs are compared over r1 and r2
    assert "| baseline | 3 | 3 | 2 | 1 |" in lines and "| aidsafe | 2 | 2 | 2 | 0 |" in lines
    assert "4.50 [4.00, 5.00] (n=2, unscored=0)" in relevance and "4.00 [4.00, 4.00] (n=2, unscored=0)" in relevance
    difference = next(line for line in lines if line.startswith("| relevance |") and "−" not in line and "%" in line)
    assert "-0.50 [-1.00, 0.00] (-11.1%, n=2)" in difference  # (4 + 4) / 2 - (5 + 4) / 2; 4 / 4.5 - 1
    assert "| Statistic | baseline | aidsafe |" in lines


def test_compare_json_pairs_and_plain_records(compare_inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "out.json"
    args = ["compare", str(compare_inputs["base"]), str(compare_inputs["plain"]), "--pairs", str(compare_inputs["pairs"]), "--json", str(out_json)]
    assert main(args) == 0
    report = capsys.readouterr().out
    document = json.loads(out_json.read_text(encoding="utf-8"))
    assert document["inputs"]["base.jsonl"]["metrics"]["relevance"]["mean"] == 4.5
    assert document["inputs"]["base.jsonl"]["metrics"]["relevance"]["n_unscored"] == 0  # r3 failed in plain.jsonl: dropped
    assert document["inputs"]["base.jsonl"]["dropped"] == 1 and document["common"] == 2
    assert document["inputs"]["plain.jsonl"]["metrics"] is None  # plain records: deliberation only
    assert document["inputs"]["plain.jsonl"]["deliberation"]["mean_total_tokens"] == 232.5
    assert document["pairs"] == [
        {"a": "base", "b": "ours", "grader": "unknown", "a_wins": 1, "b_wins": 2, "ties": 0, "unscored": 1, "n": 4,
         "a_win_rate": pytest.approx(1 / 3), "b_win_rate": pytest.approx(2 / 3), "tie_rate": 0.0}
    ]
    assert "| Metric | base.jsonl |" in report.splitlines()  # the plain file has no score column
    assert "| Statistic | base.jsonl | plain.jsonl |" in report.splitlines()
    assert "| base | ours | unknown | 33.3% (1) | 0.0% (0) | 66.7% (2) | 1 | 4 |" in report.splitlines()


def test_compare_plot_writes_png(compare_inputs: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "dist.png"
    assert main(["compare", str(compare_inputs["base"]), str(compare_inputs["ours"]), "--plot", str(png)]) == 0
    assert png.read_bytes().startswith(PNG_SIGNATURE)


def test_compare_plot_without_matplotlib_names_the_extra(
    compare_inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    png = tmp_path / "dist.png"
    assert main(["compare", str(compare_inputs["base"]), "--plot", str(png)]) == 2
    captured = capsys.readouterr()
    assert "pip install 'aidsafe[plots]'" in captured.err
    assert captured.out == "" and not png.exists()


def test_compare_label_count_must_match(compare_inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(compare_inputs["base"]), "--labels", "a", "b"]) == 2
    assert "--labels" in capsys.readouterr().err


# --- CLI: malformed input -----------------------------------------------------------


@pytest.mark.parametrize("command", ["compare", "filter", "calibrate"])
def test_malformed_judged_line_names_file_and_line(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    good = judged("r1").model_dump_json()
    broken = json.loads(good)
    broken["judgement"]["scores"] = "five"
    path.write_text(good + "\n" + json.dumps(broken) + "\n", encoding="utf-8")
    extra = {"compare": [], "filter": ["-o", str(tmp_path / "kept.jsonl")], "calibrate": ["--labels", str(LABELS_CSV)]}[command]
    assert main([command, str(path), *extra]) == 2
    assert f"{path}:2:" in capsys.readouterr().err
    assert not (tmp_path / "kept.jsonl").exists()


def test_not_json_line_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(judged("r1").model_dump_json() + "\n\n{not json\n", encoding="utf-8")
    assert main(["compare", str(path)]) == 2
    assert f"{path}:3:" in capsys.readouterr().err


# --- CLI: filter --------------------------------------------------------------------


@pytest.fixture
def filter_input(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "judged.jsonl",
        [
            judged("r1", {"relevance": 5, "coherence": 4}),  # passes both thresholds
            judged("r2", {"relevance": 3}),  # relevance < 4
            judged("r3", {"relevance": None}),  # relevance unscored: fails by default
            judged("r4", status="failed", stop_reason="error"),  # failed: never kept
            judged("r5", {"relevance": 4, "completeness": None}),  # passes; an unthresholded metric is unscored
        ],
    )


def kept_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


def run_filter(filter_input: Path, *extra: str) -> tuple[int, Path]:
    out = filter_input.with_name("kept.jsonl")
    return main(["filter", str(filter_input), "-o", str(out), "--min", "relevance=4", "--min", "coherence=4", *extra]), out


def test_filter_keeps_exactly_the_passing_ok_records(filter_input: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_filter(filter_input)
    assert code == 0
    assert kept_ids(out) == ["r1", "r5"]
    err = capsys.readouterr().err
    assert "kept 2, dropped 3 of 5 records" in err
    assert "relevance < 4: 1" in err and "relevance unscored: 1" in err and "status failed: 1" in err
    originals = filter_input.read_text(encoding="utf-8").splitlines()
    assert out.read_text(encoding="utf-8").splitlines() == [originals[0], originals[4]]  # copied verbatim


def test_filter_allow_unscored_and_require_scored(filter_input: Path) -> None:
    code, out = run_filter(filter_input, "--allow-unscored")
    assert code == 0 and kept_ids(out) == ["r1", "r3", "r5"]
    code, out = run_filter(filter_input, "--require-scored")
    assert code == 0 and kept_ids(out) == ["r1"]


def test_filter_unknown_metric_lists_metrics(filter_input: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kept.jsonl"
    assert main(["filter", str(filter_input), "-o", str(out), "--min", "helpfulness=3"]) == 2
    err = capsys.readouterr().err
    assert "helpfulness" in err and all(metric in err for metric in METRICS)
    assert not out.exists()


def test_filter_rejects_plain_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "plain.jsonl", three_records())
    assert main(["filter", str(path), "-o", str(tmp_path / "kept.jsonl")]) == 2
    assert f"{path}:1:" in capsys.readouterr().err


# --- CLI: calibrate -----------------------------------------------------------------


def test_calibrate_cli_prints_kappa_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "judged.jsonl", calibration_records())
    out_json = tmp_path / "calibration.json"
    assert main(["calibrate", str(path), "--labels", str(LABELS_CSV), "--json", str(out_json)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "kappa" in lines[0] and "weighted kappa" in lines[0]
    assert "| coherence | 3 | 1 | 0 | 0.667 | 1.000 | 0.500 | 0.667 |" in lines
    assert any(line.startswith("| overall | 11 |") for line in lines)
    document = json.loads(out_json.read_text(encoding="utf-8"))
    assert document["overall"]["kappa"] == pytest.approx(20 / 31)
