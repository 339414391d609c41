"""Judging the data: an LLM auto-grader, citation checks, pairwise comparison, statistics, calibration."""

from __future__ import annotations

from .calibration import calibrate, cohen_kappa, weighted_kappa
from .judge import Judge, JudgeSummary, citations, parse_scores, parse_winner
from .kinds import PAIRWISE, SCORES
from .plots import plot_distributions
from .report import markdown_report
from .schema import METRICS, Citations, JudgedRecord, Judgement, PairVerdict
from .stats import bootstrap_ci, metric_table, reconcile, win_rates

__all__ = [
    "METRICS",
    "PAIRWISE",
    "SCORES",
    "Citations",
    "Judge",
    "JudgeSummary",
    "JudgedRecord",
    "Judgement",
    "PairVerdict",
    "bootstrap_ci",
    "calibrate",
    "citations",
    "cohen_kappa",
    "markdown_report",
    "metric_table",
    "parse_scores",
    "parse_winner",
    "plot_distributions",
    "reconcile",
    "weighted_kappa",
    "win_rates",
]
