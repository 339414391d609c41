"""A self-contained HTML page of a compiled graph (no script, no remote resource): its SVG, its
roles, its loop and its policy pack. What each node is and the loop's words come from the
graph's plan (``compiled.plan``), as in the pictures."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import _layout
from ._layout import model_label
from ._svg import _esc, render_svg

__all__ = ["html"]

_PAGE_CSS = """
body{font-family:DejaVu Sans,Verdana,Arial,Helvetica,sans-serif;color:#212529;margin:0;background:#fff}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:1.5em;margin:0 0 4px} h2{font-size:1.15em;margin:28px 0 8px}
.description{color:#495057;margin:4px 0 12px}
figure{margin:12px 0;overflow-x:auto} figure svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:.92em} th,td{border:1px solid #dee2e6;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f1f3f5} code{font-family:DejaVu Sans Mono,Consolas,monospace;font-size:.95em}
pre{background:#f8f9fa;border:1px solid #dee2e6;padding:10px;overflow-x:auto}
"""


def _row(cells: Iterable[object], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{_esc(c)}</{tag}>" for c in cells) + "</tr>"



def html(compiled: Any) -> str:
    """One self-contained HTML page (no script, no remote resource): the SVG, the roles (template,
    reply kind, model, params), the loop's rule and budget, the policy pack and the Mermaid text."""
    spec = compiled.spec
    pack = compiled.policies
    plan = compiled.plan
    lay = _layout.layout(compiled)
    loop = plan.loop
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(f'aidsafe graph {spec.name}')}</title>",
        f"<style>{_PAGE_CSS}</style>",
        "</head><body><main>",
        f"<h1>Graph <code>{_esc(spec.name)}</code></h1>",
    ]
    if spec.description:
        parts.append(f'<p class="description">{_esc(spec.description)}</p>')
    parts.append(f"<p>Policy pack <b>{_esc(pack.name)}@{_esc(pack.version)}</b> · graph file <code>{_esc(compiled.path)}</code></p>")
    parts.append(f'<figure class="graph">{render_svg(lay)}</figure>')

    parts.append("<h2>Roles</h2><table>")
    parts.append(_row(["node", "role", "template", "reply kind", "model", "max tokens", "params"], header=True))
    for node_id in (n.id for n in lay.nodes):
        entry = plan.get(node_id)
        if entry is None or entry.binding is None:
            continue
        binding = compiled.bindings[entry.binding.name]
        params = ", ".join(f"{k}={v}" for k, v in binding.params.items())
        parts.append(
            _row(
                [
                    node_id,
                    entry.role,
                    entry.binding.template,
                    entry.binding.reply,
                    model_label(compiled, entry.binding.name),
                    binding.settings.max_tokens or "",
                    params,
                ]
            )
        )
    parts.append("</table>")

    if loop is not None:
        parts.append("<h2>Deliberation loop</h2><table>")
        rows: list[tuple[str, object]] = [
            ("node", loop.id),
            ("mode", loop.spec.mode),
            ("agents", ", ".join(f"{a.name} ({a.role})" for a in loop.spec.agent_list())),
            ("exit rule", loop.exit.rule or "the round budget only"),
            ("round budget", loop.exit.budget),
            ("how it works", loop.spec.rule()),
        ]
        if loop.spec.mode == "parallel":
            rows.insert(5, ("minority", loop.spec.minority))
        if loop.exit.stops:
            rows.insert(4, ("stop reasons", ", ".join(loop.exit.stops)))
        parts += [_row(r) for r in rows]
        parts.append("</table>")

    parts.append(f"<h2>Policy pack {_esc(pack.name)}@{_esc(pack.version)}</h2>")
    if pack.description:
        parts.append(f'<p class="description">{_esc(pack.description)}</p>')
    parts.append("<table>" + _row(["id", "title"], header=True) + "".join(_row([p.id, p.title]) for p in pack.policies) + "</table>")
    parts.append(f"<details><summary>Mermaid</summary><pre>{_esc(compiled.mermaid())}</pre></details>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
