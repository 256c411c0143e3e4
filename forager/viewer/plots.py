"""Small SVG charts drawn on the server: a histogram, horizontal bars and stacked bars.

Plain SVG strings keep the page free of a charting library (nothing to vendor, nothing to run in
the browser) and render in any browser, in a screenshot and with JavaScript off. Each chart has a
<title> per mark so hovering shows the exact figure.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

from forager.viewer.render import seconds

WIDTH = 560
BAR_HEIGHT = 18
LABEL_WIDTH = 170
COLORS = {"model": "#4c78a8", "env": "#f58518", "other": "#bab0ac"}


def _svg(width: int, height: int, body: list[str], label: str) -> Markup:
    return Markup(
        f'<svg class="plot" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>'
    )


def bucket(counts: list[tuple[int, int]], max_bins: int = 24) -> list[tuple[str, int]]:
    """Group (value, count) pairs into at most max_bins labelled bins of equal integer width."""
    if not counts:
        return []
    low, high = counts[0][0], counts[-1][0]
    width = max(1, -(-(high - low + 1) // max_bins))
    bins: dict[int, int] = {}
    for value, count in counts:
        start = low + (value - low) // width * width
        bins[start] = bins.get(start, 0) + count
    starts = range(low, high + 1, width)
    return [(str(s) if width == 1 else f"{s}–{s + width - 1}", bins.get(s, 0)) for s in starts]


def histogram(bins: list[tuple[str, int]], x_label: str, label: str) -> Markup:
    if not bins:
        return Markup('<p class="muted">no data</p>')
    height, top, bottom, left = 200, 12, 36, 44
    plot_w, plot_h = WIDTH - left - 8, height - top - bottom
    peak = max(c for _, c in bins) or 1
    step = plot_w / len(bins)
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{WIDTH - 8}" y2="{top + plot_h}" class="axis"/>',
            f'<text x="{left - 6}" y="{top + 8}" class="tick" text-anchor="end">{peak}</text>',
            f'<text x="{left - 6}" y="{top + plot_h}" class="tick" text-anchor="end">0</text>']
    widest = max(len(name) for name, _ in bins) * 6.5 + 8  # ~6.5 px per character at 11 px
    every = max(1, -(-int(widest) // max(int(step), 1)))  # label every n-th bin so labels never overlap
    for i, (name, count) in enumerate(bins):
        h = plot_h * count / peak
        x = left + i * step
        body.append(f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(step - 2, 1):.1f}" '
                    f'height="{h:.1f}" class="bar"><title>{escape(name)}: {count}</title></rect>')
        if i % every == 0:
            body.append(f'<text x="{x + step / 2:.1f}" y="{top + plot_h + 14}" class="tick" '
                        f'text-anchor="middle">{escape(name)}</text>')
    body.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" class="axis-label" text-anchor="middle">'
                f'{escape(x_label)}</text>')
    return _svg(WIDTH, height, body, label)


def hbars(items: list[tuple[str, float, str]], maximum: float | None, label: str) -> Markup:
    """One bar per (name, value, text shown at the bar's end), scaled to `maximum` (default: the largest)."""
    if not items:
        return Markup('<p class="muted">no data</p>')
    peak = maximum or max(v for _, v, _ in items) or 1
    plot_w = WIDTH - LABEL_WIDTH - 90
    body = []
    for i, (name, value, text) in enumerate(items):
        y = 4 + i * (BAR_HEIGHT + 4)
        w = plot_w * max(value, 0) / peak
        body += [f'<text x="{LABEL_WIDTH - 6}" y="{y + 13}" class="tick" text-anchor="end">{escape(_clip(name))}</text>',
                 f'<rect x="{LABEL_WIDTH}" y="{y}" width="{plot_w}" height="{BAR_HEIGHT}" class="track"/>',
                 f'<rect x="{LABEL_WIDTH}" y="{y}" width="{w:.1f}" height="{BAR_HEIGHT}" class="bar">'
                 f'<title>{escape(name)}: {escape(text)}</title></rect>',
                 f'<text x="{LABEL_WIDTH + plot_w + 6}" y="{y + 13}" class="tick">{escape(text)}</text>']
    return _svg(WIDTH, 8 + len(items) * (BAR_HEIGHT + 4), body, label)


def stacked(rows: list[tuple[str, dict[str, float]]], label: str) -> Markup:
    """One bar per row split into parts (model / env / other seconds), each bar scaled to its own total."""
    if not rows:
        return Markup('<p class="muted">no data</p>')
    plot_w = WIDTH - LABEL_WIDTH - 90
    body = []
    for i, (name, parts) in enumerate(rows):
        y = 4 + i * (BAR_HEIGHT + 4)
        total = sum(parts.values()) or 1
        x = float(LABEL_WIDTH)
        body.append(f'<text x="{LABEL_WIDTH - 6}" y="{y + 13}" class="tick" text-anchor="end">{escape(_clip(name))}</text>')
        for part, value in parts.items():
            w = plot_w * value / total
            body.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{BAR_HEIGHT}" fill="{COLORS.get(part, "#888")}">'
                        f'<title>{escape(name)} {part}: {seconds(value)} ({100 * value / total:.0f}%)</title></rect>')
            x += w
        body.append(f'<text x="{LABEL_WIDTH + plot_w + 6}" y="{y + 13}" class="tick">{seconds(sum(parts.values()))}</text>')
    legend_y = 8 + len(rows) * (BAR_HEIGHT + 4)
    for j, part in enumerate(next(iter(rows))[1]):
        lx = LABEL_WIDTH + j * 90
        body += [f'<rect x="{lx}" y="{legend_y}" width="10" height="10" fill="{COLORS.get(part, "#888")}"/>',
                 f'<text x="{lx + 14}" y="{legend_y + 9}" class="tick">{escape(part)}</text>']
    return _svg(WIDTH, legend_y + 16, body, label)


def _clip(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
