"""The report page in a real headless browser: the system's chromium (Debian's package), driven by
playwright. Needs the [browser] extra and ``apt-get install chromium``; .ci/run installs both, and
with AIDSAFE_REQUIRE_E2E set a missing browser fails instead of skipping."""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_extras
from test_report import XSS, make_run

from aidsafe.cli import main
from aidsafe.outputs import read_records
from aidsafe.records import Record


def _chromium() -> str | None:
    return os.environ.get("AIDSAFE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    no_browser = [] if _chromium() else ["a chromium binary (apt-get install chromium, or AIDSAFE_CHROMIUM=PATH)"]
    require_extras("playwright", extra="the [browser] extra (pip install 'aidsafe[browser]') and chromium", missing=no_browser)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            yield instance
        finally:
            instance.close()


# Tests ask for ``report`` before ``browser``: the report is made with asyncio.run, which cannot run
# once playwright's sync API holds this thread's event loop.
@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Record]]:
    folder = tmp_path_factory.mktemp("browser")
    run, judged = make_run(folder)
    page = folder / "report.html"
    assert main(["report", str(run), str(judged), "-o", str(page)]) == 0
    return page, list(read_records(run, Record))


def _open(browser: Any, page_file: Path) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("request", lambda r: problems.append(f"request: {r.url}") if not r.url.startswith(("file:", "data:")) else None)
    page.goto(page_file.as_uri())
    page.wait_for_selector("body[data-ready]", timeout=30_000)
    return page, problems


def test_the_page_loads_and_its_counts_match_the_file(report: tuple[Path, list[Record]], browser: Any) -> None:
    page_file, records = report
    page, problems = _open(browser, page_file)
    kpi = {k: page.text_content(f'#summary [data-k="{k}"] .num') for k in ("records", "ok", "failed")}
    ok = sum(r.status == "ok" for r in records)
    assert kpi == {"records": str(len(records)), "ok": str(ok), "failed": str(len(records) - ok)}
    for reason in {r.stop_reason for r in records}:
        shown = page.text_content(f'#summary [data-k="stop_reasons"] tr[data-key="{reason}"] td.v')
        assert shown == str(sum(r.stop_reason == reason for r in records))
    assert page.locator("#list li").count() == len(records)
    assert page.text_content("#count").startswith(f"{len(records)} of {len(records)} records match")
    page.select_option("#f-status", "failed")
    assert page.locator("#list li").count() == len(records) - ok
    page.select_option("#f-status", "")
    page.fill("#search", "poem")
    assert [li.get_attribute("data-id") for li in page.locator("#list li").all()] == [r.id for r in records if "poem" in r.prompt]
    assert problems == []


def test_a_record_timeline_opens(report: tuple[Path, list[Record]], browser: Any) -> None:
    page_file, records = report
    record = next(r for r in records if r.stop_reason == "budget")
    page, problems = _open(browser, page_file)
    page.click(f'#list li[data-id="{record.id}"]')
    page.wait_for_selector(f'#detail[data-id="{record.id}"]')
    assert page.locator("#detail .turn").count() == len(record.deliberation)
    assert page.locator("#detail .turn.agreed").count() == sum(t.agreed for t in record.deliberation)
    assert page.text_content("#detail .response-text") == record.response
    visited = page.eval_on_selector_all("#detail .picture [data-node].visited", "els => els.map(e => e.getAttribute('data-node'))")
    assert "refine" in visited and "deliberate_agent_2" in visited
    failed = next(r for r in records if r.status == "failed")
    page.click(f'#list li[data-id="{failed.id}"]')
    assert failed.error is not None and failed.error.message in page.text_content("#detail .error")
    assert page.get_attribute("#detail .picture [data-node].failed", "data-node") == failed.error.stage
    assert page.url.endswith(f"#record={failed.id}")
    assert problems == []


def test_hostile_prompts_render_as_text(report: tuple[Path, list[Record]], browser: Any, tmp_path: Path) -> None:
    page_file, records = report
    page, problems = _open(browser, page_file)
    for record in records:
        if record.prompt not in XSS:
            continue
        page.click(f'#list li[data-id="{record.id}"]')
        page.wait_for_selector(f'#detail[data-id="{record.id}"]')
        assert page.text_content("#detail .prompt-text") == record.prompt
        assert page.text_content(f'#list li[data-id="{record.id}"] .prompt') == record.prompt
    assert page.evaluate("window.__xss") is None  # none of them ran
    assert page.locator("#detail img, #list img").count() == 0
    shot = Path(os.environ.get("AIDSAFE_SCREENSHOT_DIR") or tmp_path) / "report.png"
    page.click('#list li[data-id="budget0"]')
    page.screenshot(path=str(shot), full_page=True)
    head = shot.read_bytes()[:24]
    width, height = struct.unpack(">II", head[16:24])
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and width == 1400 and height > 1000
    assert problems == []
