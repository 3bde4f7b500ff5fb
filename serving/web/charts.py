"""Charts as inline SVG, drawn on the server: no JavaScript library, no CDN, no build step.

Each function returns ``markupsafe.Markup`` built only from numbers and escaped
labels, so templates can insert it as is. The charts carry ``role="img"`` and a
title for screen readers; pages show the same numbers in a table next to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

TIER_COLOURS = ("#8c6d46", "#8e99a4", "#d4a017", "#5b3f8c", "#1f6f8b", "#2e7d32")
#: Colours of the usual tier names; other names take a colour by rank.
NAMED_COLOURS = {
    "bronze": "#a0672c",
    "silver": "#8e99a4",
    "gold": "#d4a017",
    "platinum": "#5f7482",
    "vip": "#5b3f8c",
    "diamond": "#1f6f8b",
    "black": "#2b2b2b",
}


@dataclass(frozen=True)
class WeekMovement:
    """Upgrades and downgrades that took effect in one week (starting ``label``)."""

    label: str
    upgrades: int
    downgrades: int


def tier_colour(name: str, rank: int) -> str:
    """The colour of a tier: by its name when it is a usual one, else by its rank."""
    return NAMED_COLOURS.get(name.strip().lower(), TIER_COLOURS[rank % len(TIER_COLOURS)])


def pyramid(levels: Sequence[tuple[str, int]], width: int = 380) -> Markup:
    """The tier pyramid: ``levels`` from the lowest tier to the highest, drawn highest on top,
    each bar centred with a width proportional to its customers (at least a sliver)."""
    row, gap, label_w, value_w = 30, 6, 70, 120
    height = len(levels) * (row + gap) + gap
    biggest = max((count for _, count in levels), default=0) or 1
    total = sum(count for _, count in levels) or 1
    span = width - label_w - value_w
    middle = label_w + span / 2
    parts = [
        f'<svg class="chart pyramid" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="pyramid-title" xmlns="http://www.w3.org/2000/svg">',
        '<title id="pyramid-title">Customers per tier</title>',
    ]
    for position, (rank, (name, count)) in enumerate(reversed(list(enumerate(levels)))):
        y = gap + position * (row + gap)
        bar = max(6.0, span * count / biggest)
        x = middle - bar / 2
        share = 100 * count / total
        parts.append(
            f'<g class="level" data-tier="{escape(name)}" data-count="{count}">'
            f'<rect x="{x:.1f}" y="{y}" width="{bar:.1f}" height="{row}" rx="4" '
            f'fill="{tier_colour(name, rank)}"/>'
            f'<text x="{label_w - 10}" y="{y + row / 2 + 5}" text-anchor="end" '
            f'class="label">{escape(name)}</text>'
            f'<text x="{width - value_w + 10}" y="{y + row / 2 + 5}" class="value">'
            f"{count:,} ({share:.1f}%)</text></g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def movements(weeks: Sequence[WeekMovement], width: int = 760, height: int = 260) -> Markup:
    """Upgrades (bars up) and downgrades (bars down) per week around a zero line."""
    left, right, top, bottom = 44, 10, 14, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    most_up = max([0, *(w.upgrades for w in weeks)])
    most_down = max([0, *(w.downgrades for w in weeks)])
    biggest = max(1, most_up + most_down)
    # The zero line splits the height in proportion (each side keeps at least a sixth).
    up_share = min(5 / 6, max(1 / 6, most_up / biggest))
    zero = top + plot_h * up_share
    scale = min(plot_h * up_share / max(1, most_up), plot_h * (1 - up_share) / max(1, most_down))
    step = plot_w / max(1, len(weeks))
    bar = max(2.0, step * 0.7)
    parts = [
        f'<svg class="chart movements" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="movements-title" xmlns="http://www.w3.org/2000/svg">',
        '<title id="movements-title">Tier upgrades and downgrades per week</title>',
        f'<line x1="{left}" y1="{zero}" x2="{width - right}" y2="{zero}" class="axis"/>',
        f'<text x="{left - 6}" y="{zero + 4:.1f}" text-anchor="end" class="tick">0</text>',
    ]
    if most_up:  # labels of the largest bars, kept clear of the zero label
        parts.append(
            f'<text x="{left - 6}" y="{min(zero - 10, zero - most_up * scale + 10):.1f}" '
            f'text-anchor="end" class="tick">+{most_up:,}</text>'
        )
    if most_down:
        parts.append(
            f'<text x="{left - 6}" y="{max(zero + 18, zero + most_down * scale):.1f}" '
            f'text-anchor="end" class="tick">−{most_down:,}</text>'
        )
    label_every = max(1, len(weeks) // 8)
    for i, week in enumerate(weeks):
        x = left + i * step + (step - bar) / 2
        up, down = week.upgrades * scale, week.downgrades * scale
        parts.append(
            f'<g class="week" data-week="{escape(week.label)}" data-upgrades="{week.upgrades}" '
            f'data-downgrades="{week.downgrades}">'
            f"<title>week of {escape(week.label)}: {week.upgrades:,} up, "
            f"{week.downgrades:,} down</title>"
            f'<rect class="up" x="{x:.1f}" y="{zero - up:.1f}" width="{bar:.1f}" height="{up:.1f}"/>'
            f'<rect class="down" x="{x:.1f}" y="{zero:.1f}" width="{bar:.1f}" height="{down:.1f}"/>'
            "</g>"
        )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                f'class="tick">{escape(week.label[5:])}</text>'
            )
    parts.append(
        f'<g class="legend"><rect class="up" x="{left}" y="{height - 14}" width="10" height="10"/>'
        f'<text x="{left + 14}" y="{height - 5}" class="tick">upgrades</text>'
        f'<rect class="down" x="{left + 90}" y="{height - 14}" width="10" height="10"/>'
        f'<text x="{left + 104}" y="{height - 5}" class="tick">downgrades</text></g>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def probability_bar(probability: float, width: int = 90) -> Markup:
    """A small horizontal bar for a probability in a table cell."""
    filled = max(0.0, min(1.0, probability)) * width
    level = "high" if probability >= 0.7 else "mid" if probability >= 0.4 else "low"
    return Markup(
        f'<svg class="pbar {level}" viewBox="0 0 {width} 10" width="{width}" height="10" '
        f'aria-hidden="true"><rect class="track" width="{width}" height="10" rx="3"/>'
        f'<rect class="fill" width="{filled:.1f}" height="10" rx="3"/></svg>'
    )
