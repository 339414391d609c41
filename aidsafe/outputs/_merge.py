"""Merge shard outputs into one file, checking that every id is there exactly once."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO

from ..errors import InputError
from ..pairing import PromptCheck, prompt_key, prompts_in
from ..records import Record, config_sha256
from ._atomic import atomic_binary
from ._lines import PathLike, Problem, lines, parse_line
from ._scan import scan_output
from ._sidecar import read_sidecar

__all__ = ["merge_outputs"]


def merge_outputs(
    paths: list[PathLike],
    dest: PathLike,
    *,
    expected_ids: Iterable[str | tuple[str, str]] | None = None,
) -> dict[str, int]:
    """Concatenate shard outputs into ``dest`` (atomically), checking the ids.

    Each shard is first validated with ``scan_output(repair=False)`` (shards are never
    modified). Raises :class:`InputError` for an id found twice (naming the id and both
    files), a shard whose last line is torn, shards written with different configurations
    (their records' ``written_by.config``, or for a shard whose records predate it, its summary
    sidecar's ``config``; the shard and line of the first odd record named), and - when
    ``expected_ids`` (the input's ids, or
    its ``(id, prompt)`` pairs) is given - for ids missing from the shards (up to 10 listed,
    with the count) or not in the input, and, given prompts, for ids whose record names
    another prompt than the input (:mod:`aidsafe.pairing`). Returns ``{"records", "ok",
    "failed", "shards"}``.
    """
    shards = [Path(p) for p in paths]
    if not shards:
        raise InputError("no shard files given to merge")
    dest = Path(dest)
    given: dict[Path, Path] = {}
    configs: dict[str, tuple[Path, int | None]] = {}
    for shard in shards:
        config = _check_shard(shard, dest)
        first = given.setdefault(shard.resolve(), shard)
        if first is not shard:
            raise InputError(f"shard given twice (also as {first})", file=shard)
        if config is not None:
            configs.setdefault(config[0], (shard, config[1]))
    _one_config(configs)
    seen: dict[str, tuple[Path, int]] = {}
    keys: dict[str, str] | None = {} if expected_ids is not None else None
    counts = {"records": 0, "ok": 0, "failed": 0, "shards": len(shards)}
    with atomic_binary(dest) as out:
        for shard in shards:
            _copy_shard(shard, out, seen, counts, keys)
        if expected_ids is not None:
            assert keys is not None
            _check_expected(seen, keys, expected_ids, shards)
    return counts


def _check_shard(shard: Path, dest: Path) -> tuple[str, int | None] | None:
    """A shard must exist, differ from the destination, and hold no damaged line (nor records of
    two configurations). Returns its configuration digest and the line of its first record that
    carries it (None: its sidecar's, the records carry none), or None when unknown."""
    if not shard.is_file():
        raise InputError("shard file not found; check the path", file=shard)
    if dest.exists() and shard.resolve() == dest.resolve():
        raise InputError("the merged output must not be one of the shards", file=shard)
    state = scan_output(shard, repair=False)
    if state.config is not None:
        return state.config, state.config_line
    remembered = (read_sidecar(shard) or {}).get("config")
    return (config_sha256(remembered), None) if isinstance(remembered, dict) and state.lines else None


def _one_config(configs: dict[str, tuple[Path, int | None]]) -> None:
    """Refuse shards of several configurations, naming the first odd shard (and record)."""
    if len(configs) < 2:
        return
    (first, (first_shard, first_line)), (odd, (odd_shard, odd_line)) = list(configs.items())[:2]

    def where(shard: Path, line: int | None) -> str:
        return f"{shard}:{line}" if line is not None else f"{shard} (its summary sidecar)"

    raise InputError(
        f"written with configuration sha256 {odd}{'' if odd_line is not None else ' (its summary sidecar)'}, but "
        f"{where(first_shard, first_line)} with {first}: shards of different configurations (graph, policy pack, templates, "
        "models, sampling) would make one output of both; merge the shards of one configuration (run this shard again "
        "with the others' settings, or merge it into another output)",
        file=odd_shard,
        line=odd_line,
    )


def _copy_shard(
    shard: Path, out: IO[bytes], seen: dict[str, tuple[Path, int]], counts: dict[str, int], keys: dict[str, str] | None
) -> None:
    """Append one shard's records to ``out``, refusing ids already seen and a torn tail; ``keys``
    gets each record's :func:`~aidsafe.pairing.prompt_key` (to check them against the input)."""
    for line in lines(shard):
        if line.blank:
            continue
        parsed = parse_line(line, Record)
        if isinstance(parsed, Problem):
            raise InputError(
                "last line is truncated (interrupted run?); resume this shard with "
                "'aidsafe generate' (which repairs it) before merging",
                file=shard,
                line=line.number,
            )
        first = seen.get(parsed.id)
        if first is not None:
            raise InputError(
                f"duplicate id {parsed.id!r}: also in {first[0]}:{first[1]}",
                file=shard,
                line=line.number,
            )
        seen[parsed.id] = (shard, line.number)
        if keys is not None:
            keys[parsed.id] = prompt_key(parsed)
        out.write(line.raw if line.complete else line.raw + b"\n")
        counts["records"] += 1
        counts[parsed.status] += 1


def _check_expected(
    seen: dict[str, tuple[Path, int]], keys: dict[str, str], expected_ids: Iterable[str | tuple[str, str]], shards: list[Path]
) -> None:
    """Every expected id must be in the shards, every shard id expected, and (given the input's
    prompts) every record's prompt the input's."""
    expected: set[str] = set()
    missing: list[str] = []
    check = PromptCheck("the input", "the shards")
    for entry in expected_ids:
        item, prompt = (entry, None) if isinstance(entry, str) else entry
        expected.add(item)
        if item not in seen:
            missing.append(item)
        elif prompt is not None and keys.get(item) != prompt_key(prompt):
            check.mismatch(item, prompt, None)
    if check.count:
        ids = [entry[0] for entry in check.listed]
        check.fill("b", prompts_in(dict.fromkeys(seen[i][0] for i in ids), ids))
        check.raise_if_any()
    if missing:
        listed = ", ".join(repr(i) for i in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise InputError(
            f"{len(missing)} input id(s) missing from the {len(shards)} shard(s): {listed}{more}; "
            "run the missing prompts before merging"
        )
    unexpected = [i for i in seen if i not in expected]
    if unexpected:
        first = unexpected[0]
        where, line = seen[first]
        raise InputError(
            f"{len(unexpected)} record id(s) not in the input, e.g. {first!r}; wrong input file or shard?",
            file=where,
            line=line,
        )
