"""Discovery curves as a standalone SVG: discovery@k against attempts (log scale), one line and band per curve.

Hand-written SVG keeps the picture available to the API and the light client with no plotting dependency.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from html import escape

from sdpo_core.curves import DiscoveryCurve

WIDTH, HEIGHT = 720, 470
LEFT, RIGHT, TOP, BOTTOM = 70, 190, 80, 60  # TOP leaves room for three lines of note
COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _x(k: float, k_max: int) -> float:
    span = math.log10(max(k_max, 2))
    return LEFT + (WIDTH - LEFT - RIGHT) * (math.log10(max(k, 1)) / span)


def _y(p: float) -> float:
    return TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - p)


def _steps(ks: Sequence[int], values: Sequence[float], k_max: int) -> list[tuple[float, float]]:
    """Points of a right-continuous step line through (k, value)."""
    points = []
    for i, (k, v) in enumerate(zip(ks, values, strict=True)):
        if i:
            points.append((_x(k, k_max), _y(values[i - 1])))
        points.append((_x(k, k_max), _y(v)))
    return points


def _path(points: list[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def discovery_svg(curves: Sequence[DiscoveryCurve], title: str = "Discovery curve", note: str = "") -> str:
    """An SVG document plotting `curves`; `note` is a line under the title (e.g. the attempts ratio)."""
    k_max = max((max(c.ks) for c in curves if c.ks), default=1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    for i, line in enumerate(textwrap.wrap(note, 100)[:3]):  # the note may be long: wrap it under the title
        parts.append(f'<text x="{LEFT}" y="{40 + 14 * i}" fill="#444">{escape(line)}</text>')
    # ---- axes and grid ----
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _y(p)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{p:.2f}</text>')
    decade = 1
    while decade <= k_max:
        x = _x(decade, k_max)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{decade}</text>')
        decade *= 10
    parts.append(
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.1f}" y="{HEIGHT - 18}" text-anchor="middle">attempts k (log scale)</text>'
    )
    parts.append(
        f'<text transform="translate(18,{(TOP + HEIGHT - BOTTOM) / 2:.1f}) rotate(-90)" text-anchor="middle">'
        "P(solved within k attempts)</text>"
    )
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
        'fill="none" stroke="#333"/>'
    )
    # ---- curves: band, then line, then legend ----
    for i, curve in enumerate(curves):
        color = COLORS[i % len(COLORS)]
        if not curve.ks:
            continue
        upper = _steps(curve.ks, curve.high, k_max)
        lower = _steps(curve.ks, curve.low, k_max)
        parts.append(f'<polygon points="{_path(upper + lower[::-1])}" fill="{color}" fill-opacity="0.15" stroke="none"/>')
        parts.append(
            f'<polyline points="{_path(_steps(curve.ks, curve.mean, k_max))}" fill="none" stroke="{color}" '
            f'stroke-width="2"><title>{escape(curve.label)}</title></polyline>'
        )
        y = TOP + 10 + 34 * i
        parts.append(f'<line x1="{WIDTH - RIGHT + 12}" y1="{y}" x2="{WIDTH - RIGHT + 36}" y2="{y}" '
                     f'stroke="{color}" stroke-width="3"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 42}" y="{y + 4}">{escape(curve.label)}</text>')
        parts.append(
            f'<text x="{WIDTH - RIGHT + 42}" y="{y + 18}" fill="#666" font-size="10">'
            f"n={curve.runs}, at {curve.ks[-1]}: {curve.mean[-1]:.2f}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)
