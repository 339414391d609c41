"""Judging the data: an LLM auto-grader, citation checks, pairwise comparison and statistics."""

from __future__ import annotations

from .judge import Judge, citations, parse_scores, parse_winner, read_records
from .schema import METRICS, Citations, JudgedRecord, Judgement, PairVerdict

__all__ = [
    "METRICS",
    "Citations",
    "Judge",
    "JudgedRecord",
    "Judgement",
    "PairVerdict",
    "citations",
    "parse_scores",
    "parse_winner",
    "read_records",
]
