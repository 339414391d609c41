"""Preference data for DPO: the ear-whisperer over a generation output (``aidsafe pairs``)."""

from __future__ import annotations

from .job import PairMaker, PairsSummary, pack_of
from .schema import PairRecord, Side, Try, Verdict

__all__ = ["PairMaker", "PairRecord", "PairsSummary", "Side", "Try", "Verdict", "pack_of"]
