"""Figures and atomic files of the evaluation applications (perturbation curves, audit panels).

Pillow and numpy only; every file is written to a temporary file in the target folder and renamed.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

# ----------------------------------------------------------------------------------------------- figure
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207), (188, 189, 34), (0, 0, 0)]


def plot_curves(result, path: str, title: Optional[str] = None, size=(820, 440)) -> None:
    """Save a PNG of the mean perturbation curves ``<f(x^(k))>`` (one line per method, the random
    baseline dashed gray) against the fraction of regions removed, with AOPC in the legend (atomically)."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = _font(12)
    box = (60, 46, w - 320, h - 45)
    curves = {m: result.mean_curve(m) for m in result.labels}
    lo = min(float(c.min()) for c in curves.values())
    hi = max(float(c.max()) for c in curves.values())
    lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-12 else (lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo))
    xs = result.removed / result.count
    px = lambda v: box[0] + (box[2] - box[0]) * v / max(float(xs[-1]), 1e-12)  # noqa: E731
    py = lambda v: box[3] - (box[3] - box[1]) * (v - lo) / (hi - lo)  # noqa: E731
    _axes(d, box, lo, hi, float(xs[-1]), px, py, font)
    s = result.settings
    d.text((8, 6), title or f"perturbation analysis ({s.get('order', 'morf').upper()}, fill {s.get('fill')}, "
           f"{len(result.target)} inputs)", fill="black", font=font)
    d.text(((box[0] + box[2]) // 2 - 70, h - 20), "fraction of regions removed", fill="black", font=font)
    d.text((4, 26), "mean score f (explained logit)", fill="black", font=font)
    for j, (m, a) in enumerate(result.ranking()):
        color = (128, 128, 128) if m == "random" else PALETTE[j % len(PALETTE)]
        pts = [(px(float(a_)), py(float(b_))) for a_, b_ in zip(xs, curves[m])]
        _polyline(d, pts, color, dashed=m == "random")
        y = box[1] + 4 + 16 * j
        _polyline(d, [(box[2] + 12, y + 6), (box[2] + 36, y + 6)], color, dashed=m == "random")
        d.text((box[2] + 42, y), _fit(f"{a:.3f}  {m}", font, w - box[2] - 48), fill="black", font=font)
    d.text((box[2] + 12, box[1] - 18), "AOPC  method", fill="black", font=font)
    _save_png(img, path)


def _fit(text: str, font, width: float) -> str:
    """``text`` shortened in the middle (``...``) to ``width`` pixels: the ends of a label say the most."""
    if not hasattr(font, "getlength") or font.getlength(text) <= width:
        return text
    head, tail = len(text) // 2, len(text) // 2
    while head > 4 and font.getlength(text[:head] + "..." + text[-tail:]) > width:
        head, tail = head - 1, tail - 1 if tail > head else tail
    return text[:head] + "..." + text[-tail:]


def _axes(d, box, lo, hi, xmax, px, py, font=None) -> None:
    d.rectangle(box, outline="black")
    for t in np.linspace(0, xmax, 6):
        d.line([(px(t), box[3]), (px(t), box[3] + 4)], fill="black")
        d.text((px(t) - 10, box[3] + 6), f"{t:.2f}", fill="black", font=font)
    for t in np.linspace(lo, hi, 6):
        d.line([(box[0] - 4, py(t)), (box[0], py(t))], fill="black")
        d.line([(box[0] + 1, py(t)), (box[2] - 1, py(t))], fill=(235, 235, 235))
        d.text((4, py(t) - 6), f"{t:.3g}", fill="black", font=font)


def _polyline(d, pts, color, dashed: bool = False) -> None:
    """Straight segments; dashed = every other segment (and half of each) left out."""
    for j, (p, q) in enumerate(zip(pts[:-1], pts[1:])):
        if not dashed:
            d.line([p, q], fill=color, width=2)
        elif j % 2 == 0:
            d.line([p, ((p[0] + q[0]) / 2 + (q[0] - p[0]) / 4, (p[1] + q[1]) / 2 + (q[1] - p[1]) / 4)],
                   fill=color, width=2)


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _save_png(img, path: str) -> None:
    """Write a PIL image atomically (temporary file in the same folder, then a rename)."""
    write_atomic(path, lambda fh: img.save(fh, format="PNG"), binary=True)


def save_text(text: str, path: str) -> None:
    """Write text (JSON, Markdown) atomically."""
    write_atomic(path, lambda fh: fh.write(text))


def write_atomic(path: str, write, binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it: complete or absent."""
    from ..compiler.export import atomic_write

    atomic_write(path, write, binary)


BOX_COLOR = (0, 170, 0)
REGION_COLORS = [(255, 140, 0), (200, 0, 200), (0, 160, 220)]


def plot_audit(result, x_images, path: str, worst: int = 8, class_names=None, cell: int = 96) -> None:
    """Save the audit figure (atomically): the ``worst`` images with the lowest inside share (input and
    signed heatmap, the object box in green, named regions in orange), then one panel per class with the
    class-mean normalised ``|relevance|`` map, its peak marked with a cross.

    ``x_images`` are ``[N, H, W]`` or ``[N, C, H, W]`` inputs (drawn min..max)."""
    from PIL import Image, ImageDraw

    from ..runtime.visualize import graymap, heatmap, input_image

    order = [int(i) for i in result.image_ranking()[:worst]]
    classes = result.class_table()
    n_cols = max(len(order), len(classes), 1)
    pad, cap = 6, 30
    w = 10 + n_cols * (cell + pad)
    h = 24 + 2 * cell + cap + pad + 24 + cell + cap + 10
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = _font(11)
    d.text((10, 4), f"lowest share of |relevance| inside the box ({result.settings.get('method')})", fill="black",
           font=_font(13))
    y0 = 24
    for j, i in enumerate(order):
        xi = np.asarray(x_images[i])
        tiles = [input_image(xi if xi.ndim == 3 else xi[None]), heatmap(result.signed_maps[i])]
        for t, tile in enumerate(tiles):
            pos = (10 + j * (cell + pad), y0 + t * cell)
            _paste_with_boxes(img, tile, pos, cell, result.masks[i], result.regions)
        lab = "-" if result.labels is None else _name(class_names, int(result.labels[i]))
        d.text((10 + j * (cell + pad), y0 + 2 * cell + 2), f"#{i} y={lab} p={_name(class_names, int(result.predicted[i]))}",
               fill="black", font=font)
        d.text((10 + j * (cell + pad), y0 + 2 * cell + 15), f"share {result.share[i]:.2f}", fill="black", font=font)
    y1 = y0 + 2 * cell + cap + pad
    d.text((10, y1 + 4), f"mean normalised |relevance| per {result.settings.get('by')} class (ranked, lowest "
           "share first; + = peak)", fill="black", font=_font(13))
    for j, row in enumerate(classes):
        k = row["class"]
        pos = (10 + j * (cell + pad), y1 + 24)
        _paste_with_boxes(img, graymap(result.class_maps[k], percentile=100), pos, cell, None, result.regions,
                          peak=row["peak"])
        d.text((pos[0], pos[1] + cell + 2), f"{_name(class_names, k)} (n={row['n']})", fill="black", font=font)
        d.text((pos[0], pos[1] + cell + 15), f"share {row['mean_share']:.2f}", fill="black", font=font)
    _save_png(img, path)


def _name(names, k: int) -> str:
    return str(names[k]) if names is not None and 0 <= k < len(names) else str(k)


def _paste_with_boxes(img, tile, pos, cell: int, mask, regions: dict, peak=None) -> None:
    """Paste an RGB tile scaled to ``cell`` (nearest) and outline the mask's bounding box and regions."""
    from PIL import Image, ImageDraw

    tile = np.asarray(tile, np.uint8)
    th, tw = tile.shape[:2]
    img.paste(Image.fromarray(tile).resize((cell, cell), Image.NEAREST), pos)
    d = ImageDraw.Draw(img)
    sy, sx = cell / th, cell / tw

    def outline(m, color):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows):
            d.rectangle([pos[0] + cols[0] * sx, pos[1] + rows[0] * sy, pos[0] + (cols[-1] + 1) * sx - 1,
                         pos[1] + (rows[-1] + 1) * sy - 1], outline=color, width=2)
    if mask is not None:
        outline(np.asarray(mask), BOX_COLOR)
    for j, m in enumerate(regions.values()):
        outline(np.asarray(m), REGION_COLORS[j % len(REGION_COLORS)])
    if peak is not None:
        cy, cx = pos[1] + (peak[0] + 0.5) * sy, pos[0] + (peak[1] + 0.5) * sx
        d.line([(cx - 5, cy), (cx + 5, cy)], fill=(0, 120, 255), width=2)
        d.line([(cx, cy - 5), (cx, cy + 5)], fill=(0, 120, 255), width=2)
