"""The HTML report at 10,000 records: file size, build time, and load time in a real browser.

Generates N prompts' records with the fake backend (the real graph and record format, no model),
judges them with the fake judge, writes ``aidsafe report`` for both, then opens the page in the
system's chromium through playwright and times: the page until its script has rendered the summary
and the first 100 rows (``load``), a search that filters all records, and opening one record's
timeline. Needs the [browser] extra and ``apt-get install chromium``.

    python bench/report_scale.py            # 10,000 records (~3 min on 2 cores)

Writes ``bench/report_scale.json`` (``--no-write`` to skip) and prints a summary.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent


def _aidsafe(*args: str) -> float:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "aidsafe", *args], capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"aidsafe {args[0]} failed:\n{proc.stderr[-3000:]}")
    return round(time.monotonic() - started, 1)


def _browser_times(page_file: Path, runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("AIDSAFE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    loads, scripts, searches, opens = [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(runs):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            started = time.monotonic()
            page.goto(page_file.as_uri())
            page.wait_for_selector("body[data-ready]", timeout=120_000)
            loads.append(time.monotonic() - started)
            scripts.append(int(page.evaluate("document.body.dataset.ready")) / 1000)
            started = time.monotonic()
            page.fill("#search", "number 99")
            page.wait_for_function("document.querySelector('#count').textContent.indexOf(' of ') > 0")
            searches.append(time.monotonic() - started)
            first = page.get_attribute("#list li", "data-id")
            started = time.monotonic()
            page.click("#list li")
            page.wait_for_selector(f'#detail[data-id="{first}"]')
            opens.append(time.monotonic() - started)
            if errors:
                raise SystemExit(f"page errors: {errors}")
            page.close()
        browser.close()
    med = statistics.median
    return {"runs": runs, "load_s": round(med(loads), 2), "script_s": round(med(scripts), 2), "search_s": round(med(searches), 3),
            "open_record_s": round(med(opens), 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3, help="browser loads (the median is reported)")
    parser.add_argument("--results", default=str(BENCH_DIR / "report_scale.json"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="aidsafe-report-"))
    src = folder / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"prompt number {i}: how do I do thing {i}?"}) + "\n" for i in range(args.n)),
                   encoding="utf-8")
    out, judged, page = folder / "out.jsonl", folder / "judged.jsonl", folder / "report.html"
    seconds = {
        "generate": _aidsafe("generate", str(src), "-o", str(out), "--backend", "fake", "--concurrency", "64", "--no-progress"),
        "judge": _aidsafe("judge", str(out), "-o", str(judged), "--backend", "fake", "--concurrency", "64", "--no-progress"),
        "report": _aidsafe("report", str(out), str(judged), "-o", str(page)),
    }
    result: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/report_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "records": args.n,
        "jsonl_mb": round(out.stat().st_size / 1e6, 1),
        "html_mb": round(page.stat().st_size / 1e6, 1),
        "seconds": seconds,
        "browser": _browser_times(page, args.runs),
    }
    print(json.dumps(result, indent=2))
    if not args.no_write:
        Path(args.results).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
