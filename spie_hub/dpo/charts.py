"""Inline SVG charts: the report must open offline and load nothing, so no script and no chart library.

Each chart is an ``<svg role="img">`` with a ``<title>``, and every bar carries its value as text and tooltip, so
the figures stay readable when printed or read by a screen reader. The rules that keep a chart honest:

* one scale per chart: in a chart of counts, a bar's length is proportional to its value, the same for every row
  (``bars``); a chart of shares says so in its title and draws every row at 100 % (``share_bars``);
* a time series has a real time axis: one slot per day of the period, empty days included (``timeline``);
* numbers in French (``1 234``), dates in French (``1er déc.``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from html import escape

from markupsafe import Markup

from spie_hub.dpo.french import date_courte, date_fr, nombre, pourcent

PALETTE = {"livres": "#2e7d32", "retenus": "#c62828", "legale": "#1565c0", "consentement": "#2e7d32",
           "refus": "#c62828", "opposition": "#6a1b9a", "sans-consentement": "#9e9e9e", "hors-politique": "#ef6c00",
           "sans-nir": "#795548", "avis": "#6a1b9a", "propages": "#2e7d32", "en-attente": "#ef6c00"}
_FALLBACK = ["#00838f", "#5d4037", "#455a64", "#ad1457", "#827717"]


def _colour(key: str, index: int) -> str:
    return PALETTE.get(key, _FALLBACK[index % len(_FALLBACK)])


def _legend_lines(keys: list[tuple[str, str]], width: int) -> list[list[tuple[int, str, str, int]]]:
    """Legend items laid out in lines that fit ``width``: (x, key, label, index)."""
    lines: list[list[tuple[int, str, str, int]]] = [[]]
    x = 0
    for index, (key, label) in enumerate(keys):
        size = 24 + 7 * len(label)
        if x and x + size > width:
            lines.append([])
            x = 0
        lines[-1].append((x, key, label, index))
        x += size
    return lines


def _legend(keys: list[tuple[str, str]], y: int, width: int = 760) -> str:
    parts = []
    for line_no, line in enumerate(_legend_lines(keys, width)):
        for x, key, label, index in line:
            top = y + 18 * line_no
            parts.append(f'<rect x="{x}" y="{top}" width="12" height="12" fill="{_colour(key, index)}"/>'
                         f'<text x="{x + 16}" y="{top + 11}" class="legend">{escape(label)}</text>')
    return "".join(parts)


def _legend_height(keys: list[tuple[str, str]], width: int = 760) -> int:
    return 18 * len(_legend_lines(keys, width))


def _empty(title: str) -> Markup:
    return Markup(f'<p class="vide">{escape(title)} : aucune donnée sur la période.</p>')


def _open(title: str, width: int, height: int) -> list[str]:
    return [f'<svg role="img" class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']


def nice_top(value: float) -> float:
    """The axis end: the smallest of 1, 2, 2.5, 5 × 10^k not below ``value`` (so ticks fall on round numbers)."""
    if value <= 0:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


def _stacked_row(out: list[str], label: str, values: dict[str, int], segments: list[tuple[str, str]], x0: int,
                 y: int, row_h: int, bar_w: float, full: float, caption: Callable[[int], str], css: str) -> float:
    """One row's label and its segments side by side (``full`` units span ``bar_w`` pixels); return where the row ends."""
    out.append(f'<text x="0" y="{y + 17}" class="label">{escape(label)}</text>')
    x = float(x0)
    for index, (key, seg_label) in enumerate(segments):
        value = values.get(key, 0)
        if not value:
            continue
        w = bar_w * value / full
        out.append(f'<rect class="{css}" data-value="{value}" x="{x:.2f}" y="{y + 4}" width="{w:.2f}" '
                   f'height="{row_h - 8}" fill="{_colour(key, index)}"><title>{escape(seg_label)} : '
                   f'{caption(value)}</title></rect>')
        x += w
    return x


def bars(title: str, rows: list[tuple[str, dict[str, int]]], segments: list[tuple[str, str]], unit: str,
         label_width: int = 260, width: int = 760) -> Markup:
    """Horizontal (stacked) bars on ONE scale for the whole chart: a bar's length is its total over the largest
    total, so equal values have equal lengths and unequal values never do."""
    if not rows or not any(sum(v.values()) for _, v in rows):
        return _empty(title)
    bar_w, row_h = width - label_width - 90, 26
    top = nice_top(max(sum(v.values()) for _, v in rows))
    height = len(rows) * row_h + 52 + _legend_height(segments, width)
    out = _open(title, width, height)
    for i, (label, values) in enumerate(rows):
        y = i * row_h
        x = _stacked_row(out, label, values, segments, label_width, y, row_h, bar_w, top,
                         lambda value: f"{nombre(value)} {escape(unit)}", "bar")
        out.append(f'<text x="{x + 6:.1f}" y="{y + 17}" class="value">{nombre(sum(values.values()))}</text>')
    axis_y = len(rows) * row_h + 4
    out.append(f'<line x1="{label_width}" y1="{axis_y}" x2="{label_width + bar_w}" y2="{axis_y}" stroke="#555"/>')
    for fraction in (0, 0.5, 1):
        x = label_width + bar_w * fraction
        out.append(f'<text x="{x:.1f}" y="{axis_y + 14}" class="tick" text-anchor="middle">{nombre(top * fraction)}</text>')
    out.append(f'<text x="{label_width - 8}" y="{axis_y + 14}" class="tick" text-anchor="end">échelle ({escape(unit)})</text>')
    out.append(_legend(segments, axis_y + 28, width))
    out.append("</svg>")
    return Markup("".join(out))


def share_bars(title: str, rows: list[tuple[str, dict[str, int]]], segments: list[tuple[str, str]], unit: str,
               label_width: int = 260, width: int = 760) -> Markup:
    """100 % stacked bars: each row split by share (the title says so); the row's count is written at its end."""
    rows = [(label, values) for label, values in rows if sum(values.values())]
    if not rows:
        return _empty(title)
    bar_w, row_h = width - label_width - 110, 26
    height = len(rows) * row_h + 16 + _legend_height(segments, width)
    out = _open(title, width, height)
    for i, (label, values) in enumerate(rows):
        y, total = i * row_h, sum(values.values())
        _stacked_row(out, label, values, segments, label_width, y, row_h, bar_w, total,
                     lambda value, total=total: f"{nombre(value)} {escape(unit)} ({pourcent(value, total)})",
                     "bar share")
        out.append(f'<text x="{label_width + bar_w + 6}" y="{y + 17}" class="value">{nombre(total)} {escape(unit)}</text>')
    out.append(_legend(segments, len(rows) * row_h + 6, width))
    out.append("</svg>")
    return Markup("".join(out))


def timeline(title: str, start: dt.date, end: dt.date, points: dict[str, dict[str, int]],
             segments: list[tuple[str, str]], unit: str, width: int = 760, height: int = 250) -> Markup:
    """Stacked columns on a real time axis: one slot per day from ``start`` to ``end`` (days without any value
    are empty slots, never skipped), one vertical scale with its ticks."""
    if not any(sum(v.values()) for v in points.values()):
        return _empty(title)
    days = (end - start).days + 1
    height += _legend_height(segments, width) - 18
    left, right, plot_top, plot_h = 64, 10, 10, 170
    plot_w = width - left - right
    step = plot_w / days
    col_w = max(1.0, min(40.0, step * 0.8))
    top = nice_top(max(sum(v.values()) for v in points.values()))
    base = plot_top + plot_h
    out = _open(title, width, height)
    for fraction in (0, 0.5, 1):
        y = base - plot_h * fraction
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{"#555" if fraction == 0 else "#ddd"}"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{nombre(top * fraction)}</text>')
    for day_iso, values in sorted(points.items()):
        try:
            offset = (dt.date.fromisoformat(day_iso) - start).days
        except ValueError:
            continue
        if not 0 <= offset < days:
            continue
        x = left + offset * step + (step - col_w) / 2
        y = float(base)
        for index, (key, seg_label) in enumerate(segments):
            value = values.get(key, 0)
            if not value:
                continue
            h = plot_h * value / top
            y -= h
            out.append(f'<rect class="bar" data-value="{value}" data-day="{day_iso}" x="{x:.2f}" y="{y:.2f}" '
                       f'width="{col_w:.2f}" height="{h:.2f}" fill="{_colour(key, index)}"><title>{date_fr(day_iso)} — '
                       f'{escape(seg_label)} : {nombre(value)} {escape(unit)}</title></rect>')
    # Ticks at round intervals of days, always the first and last day of the period.
    every = next(n for n in (1, 2, 7, 14, 30, 61, 91, 182, 365, 10**6) if days / n <= 8)
    ticks = sorted({0, days - 1, *range(0, days, every)})
    for offset in ticks:
        if offset not in (0, days - 1) and (offset < every / 2 or days - 1 - offset < every / 2):
            continue  # too close to an end label
        x = left + offset * step + step / 2
        label = date_courte(start + dt.timedelta(days=offset))
        out.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#555"/>'
                   f'<text x="{x:.1f}" y="{base + 17}" class="tick" text-anchor="middle">{escape(label)}</text>')
    out.append(f'<text x="{left}" y="{base + 34}" class="tick">{escape(unit)} par jour, du {date_fr(start)} au '
               f'{date_fr(end)} ({nombre(days)} jours)</text>')
    out.append(_legend(segments, base + 44, width))
    out.append("</svg>")
    return Markup("".join(out))
