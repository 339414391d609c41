"""Block files: an output written by several workers at once, as whole files, merged once by id.

A worker elsewhere (a Ray actor) cannot append to the output that the driver holds: it writes the
records of one batch as one *block*, ``OUT.parts/r<run>-<digest of the batch's ids>.jsonl``
(a temporary name, fsync, then a rename: a block is whole or absent). The name is a function of
the run and the ids, so a batch run twice replaces its block instead of adding one.
:func:`merge_blocks` joins the output and its blocks into the output, each id once.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._atomic import atomic_text
from ._lines import LineModel, PathLike, read_record_lines
from ._scan import _status, scan_output

__all__ = ["BlocksState", "MergedBlocks", "block_name", "blocks_dir", "merge_blocks", "scan_blocks", "write_block"]

_BLOCK = re.compile(r"^r(\d+)-[0-9a-f]+\.jsonl$")


def blocks_dir(records_path: PathLike) -> Path:
    """The block folder of a JSONL output: ``out.jsonl`` -> ``out.jsonl.parts``."""
    path = Path(records_path)
    return path.with_name(path.name + ".parts")


def block_name(run: int, ids: list[str]) -> str:
    """The block file of one batch: the same run and ids always give the same name."""
    digest = hashlib.sha256("\n".join(ids).encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return f"r{run:04d}-{digest}.jsonl"


def write_block(path: Path, lines: list[str]) -> None:
    """Write a block atomically: a temporary file (unique to this process), fsync, rename."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temp.open("w", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@dataclass
class BlocksState:
    """What the block folder of an output holds."""

    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    prompts: dict[str, str] = field(default_factory=dict)
    """Each block record's prompt key, by id (to check a resumed input, as ``OutputState.prompts``)."""
    files: list[Path] = field(default_factory=list)
    last_run: int = 0
    configs: dict[str, tuple[Path, int]] = field(default_factory=dict)
    """Each configuration digest the block records carry (``written_by.config``), with the block
    and line of its first record (blocks of one run carry one; the runner refuses others)."""
    format: int = 0
    """The highest ``written_by.format`` of the block records (0: none carries one)."""


def scan_blocks(folder: Path, *, model: LineModel[Any], what: str, clean: bool = True) -> BlocksState:
    """Ids in the blocks of ``folder`` (each block is whole: blocks are written atomically); with
    ``clean``, the hidden files an unfinished batch left (a killed writer's temporary file, a
    batch's journal: a new run starts those batches afresh) are removed."""
    state = BlocksState()
    if not folder.is_dir():
        return state
    for hidden in folder.glob(".*") if clean else ():
        if hidden.is_file():
            hidden.unlink(missing_ok=True)
    for block in sorted(folder.glob("*.jsonl")):
        scanned = scan_output(block, repair=False, model=model, what=what, prompts=True)
        state.done |= scanned.done
        state.failed |= scanned.failed
        for record_id, key in scanned.prompts.items():
            state.prompts.setdefault(record_id, key)
        if scanned.config is not None:
            state.configs.setdefault(scanned.config, (block, scanned.config_line or 0))
        state.format = max(state.format, scanned.format)
        state.files.append(block)
        match = _BLOCK.match(block.name)
        if match:
            state.last_run = max(state.last_run, int(match.group(1)))
    state.failed -= state.done
    return state


@dataclass
class MergedBlocks:
    """What :func:`merge_blocks` did."""

    ids: set[str]
    """Every id in the merged output."""
    parts: int
    """Block files merged (and deleted)."""
    duplicates: int
    """Copies of an id left out (a batch run twice, a failed record run again)."""


def merge_blocks(records_path: Path, folder: Path, *, model: LineModel[Any], what: str = "an aidsafe record") -> MergedBlocks:
    """Join ``records_path`` and the blocks of ``folder`` into ``records_path``, each id once.

    Sources are read in order (the output, then the blocks by name: by run, oldest first). Of
    the copies of an id, the first one that did not fail is kept, else the last one. The output
    is replaced atomically; then the blocks are deleted (and the folder, once empty). Memory
    grows with the number of ids, not of records.
    """
    parts = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    sources = ([records_path] if records_path.exists() else []) + parts
    chosen: dict[str, tuple[int, int, bool]] = {}  # id -> (source, line number, ok)
    duplicates = 0
    for index, source in enumerate(sources):
        for line, record in read_record_lines(source, model, what=what):
            record_id = str(record.id)  # type: ignore[attr-defined]
            previous = chosen.get(record_id)
            if previous is not None:
                duplicates += 1
                if previous[2]:
                    continue
            chosen[record_id] = (index, line.number, _status(record) != "failed")
    keep: dict[int, set[int]] = {}
    for index, number, _ok in chosen.values():
        keep.setdefault(index, set()).add(number)
    if parts:
        with atomic_text(records_path) as out:
            for index, source in enumerate(sources):
                wanted = keep.get(index, set())
                with source.open("rb") as handle:
                    for number, raw in enumerate(handle, start=1):
                        if number in wanted:
                            text = raw.decode("utf-8")
                            out.write(text if text.endswith("\n") else text + "\n")
        for part in parts:
            part.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return MergedBlocks(ids=set(chosen), parts=len(parts), duplicates=duplicates)
