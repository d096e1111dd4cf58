"""Pictures of explanations with pillow and numpy only.

* :func:`heatmap` - diverging map of signed relevance, symmetric around zero
  (blue < 0 < red), scaled by a robust percentile of ``|r|``.
* :func:`graymap` - ``|r|`` in gray levels.
* :func:`input_image` - the input itself, for the first column of a grid.
* :func:`grid` - a labelled grid (row and column titles) saved as PNG.

Channel axes are reduced by sum (default) or L2 norm first.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def reduce_channels(r: np.ndarray, how: str = "sum") -> np.ndarray:
    """[C, H, W] -> [H, W] by sum or L2 norm over channels (2-D maps pass through)."""
    r = np.asarray(r, np.float64)
    if r.ndim == 2:
        return r
    if r.ndim != 3:
        raise ValueError(f"expected a [C, H, W] or [H, W] map, got shape {r.shape}")
    return np.sqrt((r ** 2).sum(0)) if how == "norm" else r.sum(0)


def robust_scale(r: np.ndarray, percentile: float = 99.5) -> float:
    """The ``percentile`` of ``|r|`` (never zero)."""
    v = float(np.percentile(np.abs(r), percentile)) if r.size else 0.0
    return v if v > 0 else (float(np.abs(r).max()) or 1.0)


def heatmap(r: np.ndarray, percentile: float = 99.5, reduce: str = "sum") -> np.ndarray:
    """uint8 RGB [H, W, 3]: signed relevance, white at zero, red positive, blue negative."""
    m = reduce_channels(r, reduce)
    v = np.clip(m / robust_scale(m, percentile), -1.0, 1.0)
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], -1)
    rgb = np.clip(rgb, 0, 1)
    return (rgb * 255).round().astype(np.uint8)


def graymap(r: np.ndarray, percentile: float = 99.5, reduce: str = "norm") -> np.ndarray:
    """uint8 RGB [H, W, 3]: ``|r|``, black = 0, white = the robust maximum."""
    m = np.abs(reduce_channels(r, reduce))
    v = np.clip(m / robust_scale(m, percentile), 0, 1)
    return np.repeat((v * 255).round().astype(np.uint8)[..., None], 3, -1)


def input_image(x: np.ndarray, low: Optional[float] = None, high: Optional[float] = None) -> np.ndarray:
    """uint8 RGB [H, W, 3] from a [C, H, W] input (C = 1 or 3), scaled from [low, high] (default: min..max)."""
    x = np.asarray(x, np.float64)
    if x.ndim == 3:
        x = x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)
    lo = float(x.min()) if low is None else low
    hi = float(x.max()) if high is None else high
    v = np.clip((x - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    if v.ndim == 2:
        v = np.repeat(v[..., None], 3, -1)
    return (v * 255).round().astype(np.uint8)


def grid(cells: Sequence[Sequence[np.ndarray]], path: str, row_titles: Sequence[str] = (),
         col_titles: Sequence[str] = (), cell: int = 128) -> None:
    """Save a PNG grid of RGB images with row and column titles (written atomically)."""
    import os
    import tempfile

    from PIL import Image, ImageDraw

    from ..compiler.export import default_mode

    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    left = 8 + 7 * max((len(t) for t in row_titles), default=0)
    top = 22 if col_titles else 4
    pad = 4
    canvas = Image.new("RGB", (left + n_cols * (cell + pad), top + n_rows * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, t in enumerate(col_titles):
        draw.text((left + j * (cell + pad) + 2, 4), str(t)[: cell // 6], fill="black")
    for i, row in enumerate(cells):
        y = top + i * (cell + pad)
        if i < len(row_titles):
            draw.text((4, y + cell // 2 - 6), str(row_titles[i]), fill="black")
        for j, img in enumerate(row):
            tile = Image.fromarray(np.asarray(img, np.uint8)).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (left + j * (cell + pad), y))
    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".onnxplain-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        canvas.save(tmp, format="PNG")
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
