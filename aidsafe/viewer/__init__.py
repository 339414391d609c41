"""``aidsafe report``: one self-contained HTML file to read a run (summary, records, timelines).

The page has no external resource: its CSS and JavaScript (``assets/``) are inlined, the records
travel as one JSON block that the script reads, and every user or model text is put on the page
with ``textContent``, never parsed as HTML; a Content-Security-Policy with a per-file nonce lets
only the page's own script run. The list renders 100 rows at a time and a record's timeline is
built only when it is opened, so a file of 10,000 records stays usable.
"""

from __future__ import annotations

from .build import build_report, record_path, write_report

__all__ = ["build_report", "record_path", "write_report"]
