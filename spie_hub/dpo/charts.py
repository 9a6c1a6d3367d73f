"""Inline SVG charts: the report must open offline and load nothing, so no script and no chart library.

Each chart is an ``<svg role="img">`` with a ``<title>``, and every bar carries its value as text and tooltip, so
the figures stay readable when printed or read by a screen reader.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

PALETTE = {"livres": "#2e7d32", "retenus": "#c62828", "legale": "#1565c0", "consentement": "#2e7d32",
           "refus": "#c62828", "opposition": "#6a1b9a", "sans-consentement": "#9e9e9e", "hors-politique": "#ef6c00",
           "avis": "#6a1b9a", "propages": "#2e7d32", "en-attente": "#ef6c00"}
_FALLBACK = ["#00838f", "#5d4037", "#455a64", "#ad1457", "#827717"]


def _colour(key: str, index: int) -> str:
    return PALETTE.get(key, _FALLBACK[index % len(_FALLBACK)])


def _legend(keys: list[tuple[str, str]], y: int) -> str:
    parts, x = [], 0
    for index, (key, label) in enumerate(keys):
        parts.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{_colour(key, index)}"/>'
                     f'<text x="{x + 16}" y="{y + 11}" class="legend">{escape(label)}</text>')
        x += 24 + 7 * len(label)
    return "".join(parts)


def stacked_bars(title: str, rows: list[tuple[str, dict[str, int]]], segments: list[tuple[str, str]],
                 label_width: int = 260, width: int = 760) -> Markup:
    """Horizontal stacked bars, one row per label; each bar is scaled to its row total (shares)."""
    if not rows:
        return Markup(f'<p class="vide">{escape(title)} : aucune donnée sur la période.</p>')
    bar_w, row_h = width - label_width - 70, 26
    height = len(rows) * row_h + 40
    out = [f'<svg role="img" class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i, (label, values) in enumerate(rows):
        y = i * row_h
        total = sum(values.values()) or 1
        out.append(f'<text x="0" y="{y + 17}" class="label">{escape(label)}</text>')
        x = float(label_width)
        for index, (key, seg_label) in enumerate(segments):
            value = values.get(key, 0)
            if not value:
                continue
            w = bar_w * value / total
            out.append(f'<rect class="bar" x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
                       f'fill="{_colour(key, index)}"><title>{escape(seg_label)} : {value}</title></rect>')
            x += w
        out.append(f'<text x="{label_width + bar_w + 6}" y="{y + 17}" class="value">{sum(values.values())}</text>')
    out.append(_legend(segments, len(rows) * row_h + 12))
    out.append("</svg>")
    return Markup("".join(out))


def columns(title: str, points: list[tuple[str, dict[str, int]]], segments: list[tuple[str, str]],
            width: int = 760, height: int = 240) -> Markup:
    """Vertical stacked columns over time (one per day), on a common scale."""
    if not points:
        return Markup(f'<p class="vide">{escape(title)} : aucune donnée sur la période.</p>')
    top = max(sum(v.values()) for _, v in points) or 1
    plot_h, left = height - 70, 50
    step = (width - left) / len(points)
    col_w = max(4.0, min(40.0, step * 0.7))
    out = [f'<svg role="img" class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
           f'<line x1="{left}" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#555"/>',
           f'<text x="0" y="12" class="value">{top}</text><text x="0" y="{plot_h}" class="value">0</text>']
    for i, (day, values) in enumerate(points):
        x = left + i * step + (step - col_w) / 2
        y = float(plot_h)
        for index, (key, seg_label) in enumerate(segments):
            value = values.get(key, 0)
            if not value:
                continue
            h = plot_h * value / top * 0.95
            y -= h
            out.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{col_w:.1f}" height="{h:.1f}" '
                       f'fill="{_colour(key, index)}"><title>{escape(day)} — {escape(seg_label)} : {value}</title></rect>')
        if len(points) <= 16 or i % max(1, len(points) // 8) == 0:
            out.append(f'<text x="{x:.1f}" y="{plot_h + 16}" class="tick">{escape(day[5:])}</text>')
    out.append(_legend(segments, height - 20))
    out.append("</svg>")
    return Markup("".join(out))
