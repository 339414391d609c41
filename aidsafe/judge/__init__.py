"""Judging the data: an LLM auto-grader, citation checks, pairwise comparison and statistics."""

from __future__ import annotations

from .calibration import calibrate, cohen_kappa, weighted_kappa
from .judge import Judge, citations, parse_scores, parse_winner, read_records
from .schema import METRICS, Citations, JudgedRecord, Judgement, PairVerdict
from .stats import bootstrap_ci, deliberation_stats, markdown_report, metric_table, reconcile, win_rates

__all__ = [
    "METRICS",
    "Citations",
    "Judge",
    "JudgedRecord",
    "Judgement",
    "PairVerdict",
    "bootstrap_ci",
    "calibrate",
    "citations",
    "cohen_kappa",
    "deliberation_stats",
    "markdown_report",
    "metric_table",
    "reconcile",
    "weighted_kappa",
    "win_rates",
    "parse_scores",
    "parse_winner",
    "read_records",
]
