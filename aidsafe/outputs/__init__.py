"""Files of records: one typed, streaming reader for every kind of record; crash repair; atomic
rewrites; the summary sidecar; one live run per output; merging; Parquet / Hugging Face layouts.

A job appends one JSON line per item to a JSONL file. This package keeps such files usable
across crashes, whatever model their lines validate as (generation records, judged records,
pairwise verdicts, ...):

* :func:`read_records` streams a file, each line validated as the given model; any bad line
  raises :class:`~aidsafe.errors.InputError` naming the file and line.
* :func:`scan_output` reads an existing output before a resume and repairs what a crash
  (``kill -9``) can leave behind: a truncated or corrupt *last* line is cut off; a corrupt line
  anywhere else is real damage and is refused with its ``file:line`` - never dropped; so is a
  record whose ``written_by.config`` (the digest of the configuration that wrote it, see
  :class:`~aidsafe.records.WrittenBy`) differs from the file's other records'.
* :func:`drop_records`, :func:`atomic_write_text` and :func:`write_sidecar` rewrite files
  atomically: write ``<path>.tmp`` in the same folder, flush and fsync, ``os.replace``.
* :class:`OutputLock` lets one live run write an output; a second is refused at once.
* :func:`write_block` and :func:`merge_blocks`: an output written by workers elsewhere as whole
  block files (``OUT.parts/``), joined into the output once, each id once.
* :func:`merge_outputs` concatenates shard outputs, refusing duplicate, missing or unexpected ids
  and shards written with different configurations.
* :func:`convert_output` writes Parquet or a Hugging Face ``save_to_disk`` folder, and
  :func:`records_from_dataset` turns such a dataset back into records.

Every reader streams its file line by line (binary, tracking byte offsets), so memory grows
with the number of ids, not with the size of the file.
"""

from __future__ import annotations

from ._atomic import atomic_text, atomic_write_text
from ._blocks import BlocksState, MergedBlocks, block_name, blocks_dir, merge_blocks, scan_blocks, write_block
from ._datasets import JSON_FIELDS, OUTPUT_FORMATS, convert_output, record_features, records_from_dataset
from ._lines import LineModel, first_line_is, read_record_lines, read_records
from ._lock import OutputLock, lock_path
from ._merge import merge_outputs
from ._scan import OutputState, drop_records, mixed_configs, scan_output, stamp_of
from ._sidecar import read_sidecar, sidecar_path, write_sidecar

__all__ = [
    "JSON_FIELDS",
    "OUTPUT_FORMATS",
    "BlocksState",
    "LineModel",
    "MergedBlocks",
    "OutputLock",
    "OutputState",
    "atomic_text",
    "atomic_write_text",
    "block_name",
    "blocks_dir",
    "convert_output",
    "drop_records",
    "first_line_is",
    "lock_path",
    "merge_blocks",
    "merge_outputs",
    "mixed_configs",
    "read_record_lines",
    "read_records",
    "read_sidecar",
    "record_features",
    "records_from_dataset",
    "scan_blocks",
    "scan_output",
    "sidecar_path",
    "stamp_of",
    "write_block",
    "write_sidecar",
]
