"""Fonts, sizes and colours the pictures share: the layout measures text with the sizes, the SVG
stylesheet and the matplotlib drawing use the same colours."""

from __future__ import annotations

PLOTS_HINT = "pip install 'aidsafe[plots]'"

FONT_FAMILY = "DejaVu Sans, Verdana, Arial, Helvetica, sans-serif"
TITLE_SIZE = 17.0
SUBTITLE_SIZE = 12.0
ID_SIZE = 14.0
DETAIL_SIZE = 12.0
LINE = 17.0
EDGE_LABEL_SIZE = 11.5
LOOP_LABEL_SIZE = 12.0
MARGIN = 24.0
MIN_WIDTH = 520.0
ARROW_LENGTH = 9.0
ARROW_HALF_WIDTH = 4.5

# colours, shared by the SVG stylesheet and the matplotlib drawing
FLOW = "#5c677d"
CONTINUE = "#1971c2"
EXIT = "#2b8a3e"
VISITED = "#e8590c"
VISITED_FILL = "#fff4e6"
NODE_COLOURS = {  # kind: (fill, stroke, text)
    "role": ("#f8f9fa", "#495057", "#212529"),
    "agent": ("#e7f5ff", "#1971c2", "#212529"),
    "vote": ("#fff9db", "#e67700", "#212529"),
    "start": ("#343a40", "#343a40", "#ffffff"),
    "end": ("#343a40", "#343a40", "#ffffff"),
}
EDGE_COLOURS = {"flow": FLOW, "continue": CONTINUE, "exit": EXIT}
LOOP_FILL = "#f1f3f5"
LOOP_STROKE = "#adb5bd"
TEXT_COLOURS = {"title": "#212529", "subtitle": "#6c757d", "node-id": "#212529", "node-detail": "#495057", "loop-label": "#343a40"}
