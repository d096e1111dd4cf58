"""Pictures of explanations with pillow and numpy only.

Every function takes one sample: a map ``r`` shaped ``[C, H, W]`` or ``[H, W]``
(channel axes are reduced first by :func:`reduce_channels`) and, where the input
is drawn, the input ``x`` shaped ``[C, H, W]`` (C = 1 or 3) or ``[H, W]``. Every
function returns a ``uint8`` RGB image ``[H, W, 3]``.

* :func:`heatmap` - signed relevance in a diverging colour map, symmetric
  around zero (``bwr``: blue < 0 < red, white at 0; ``coldnhot``: cyan, blue,
  black at 0, red, yellow), as iNNvestigate's and Zennit's heatmaps.
* :func:`graymap` - ``|r|`` in gray levels (black = 0).
* :func:`scaled_input` - the input multiplied by the normalized ``|r|``.
* :func:`masked_input` - the input where ``r`` is among its top ``fraction``
  of pixels, ``fill`` elsewhere.
* :func:`blend` - the heatmap laid over the input with opacity ``alpha``.
* :func:`project` - a signal (e.g. PatternNet's) projected back into the input
  range, per sample, as iNNvestigate's ``project``; :func:`signal_image` draws it.
* :func:`grid` - a labelled grid (row titles, column titles, per-cell
  captions) saved as PNG atomically (a temporary file, then a rename).

Scaling is robust: a map is divided by the ``percentile`` of ``|r|``
(:func:`robust_scale`) and clipped to ``[-1, 1]``, so a few extreme pixels do
not wash out the rest. ``percentile=100`` is the plain maximum.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

#: channel reductions of :func:`reduce_channels`
REDUCTIONS = ("sum", "norm", "maxabs")

#: colour stops ``(value in [-1, 1], (r, g, b) in [0, 1])`` of the diverging maps
COLORMAPS = {
    "bwr": ((-1.0, (0.0, 0.0, 1.0)), (0.0, (1.0, 1.0, 1.0)), (1.0, (1.0, 0.0, 0.0))),
    "coldnhot": ((-1.0, (0.0, 1.0, 1.0)), (-0.75, (0.0, 0.0, 1.0)), (0.0, (0.0, 0.0, 0.0)),
                 (0.75, (1.0, 0.0, 0.0)), (1.0, (1.0, 1.0, 0.0))),
}

#: the kinds of picture :func:`render` draws
KINDS = ("heatmap", "graymap", "scaled", "masked", "blend", "signal")


def reduce_channels(r: np.ndarray, how: str = "sum") -> np.ndarray:
    """Reduce a ``[C, H, W]`` map to ``[H, W]`` (2-D maps pass through).

    Parameters
    ----------
    r : numpy.ndarray
        The map, ``[C, H, W]`` or ``[H, W]``.
    how : {"sum", "norm", "maxabs"}
        ``sum``: :math:`\\sum_c r_c` (keeps the sign); ``norm``: :math:`\\sqrt{\\sum_c r_c^2}`;
        ``maxabs``: the channel value of largest magnitude, with its sign.

    Returns
    -------
    numpy.ndarray
        float64 ``[H, W]``.
    """
    r = np.asarray(r, np.float64)
    if how not in REDUCTIONS:
        raise ValueError(f"unknown channel reduction {how!r}: choose one of {', '.join(REDUCTIONS)}")
    if r.ndim == 2:
        return r
    if r.ndim != 3:
        raise ValueError(f"expected a [C, H, W] or [H, W] map, got shape {r.shape}")
    if how == "norm":
        return np.sqrt((r ** 2).sum(0))
    if how == "maxabs":
        idx = np.abs(r).argmax(0)
        return np.take_along_axis(r, idx[None], 0)[0]
    return r.sum(0)


def robust_scale(r: np.ndarray, percentile: float = 99.5) -> float:
    """The ``percentile`` of ``|r|``; the maximum of ``|r|`` if that is 0; 1 if ``r`` is all zero.

    Parameters
    ----------
    r : numpy.ndarray
        Any array.
    percentile : float
        In ``(0, 100]``; 100 is the maximum of ``|r|``.

    Returns
    -------
    float
        A positive scale ``s``; maps are shown as ``clip(r / s, -1, 1)``.
    """
    a = np.abs(np.asarray(r, np.float64))
    v = float(np.percentile(a, percentile)) if a.size else 0.0
    return v if v > 0 else (float(a.max()) if a.size and a.max() > 0 else 1.0)


def normalize(r: np.ndarray, percentile: float = 99.5, reduce: str = "sum") -> np.ndarray:
    """``clip(m / robust_scale(m), -1, 1)`` of the channel-reduced map ``m`` (float64 ``[H, W]``)."""
    m = reduce_channels(r, reduce)
    return np.clip(m / robust_scale(m, percentile), -1.0, 1.0)


def colorize(v: np.ndarray, cmap: str = "bwr") -> np.ndarray:
    """uint8 RGB of values ``v`` in ``[-1, 1]`` through the colour stops of ``cmap`` (linear in between)."""
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown colour map {cmap!r}: choose one of {', '.join(COLORMAPS)}")
    stops = COLORMAPS[cmap]
    xs = [s[0] for s in stops]
    v = np.clip(np.asarray(v, np.float64), -1.0, 1.0)
    rgb = np.stack([np.interp(v, xs, [s[1][c] for s in stops]) for c in range(3)], -1)
    return _to_uint8(rgb)


def heatmap(r: np.ndarray, percentile: float = 99.5, reduce: str = "sum", cmap: str = "bwr") -> np.ndarray:
    """Signed relevance in a diverging colour map, symmetric around zero.

    The map ``m`` (channels reduced by ``reduce``) is shown as ``v = clip(m / s, -1, 1)``
    with ``s`` = :func:`robust_scale` ``(m, percentile)``: with ``cmap="bwr"``, ``v = 0`` is white,
    ``v = 1`` red and ``v = -1`` blue, linear in between (iNNvestigate's ``seismic``-like,
    Zennit's ``bwr``); ``"coldnhot"``: cyan, blue, black (0), red, yellow.

    Parameters
    ----------
    r : numpy.ndarray
        ``[C, H, W]`` or ``[H, W]`` relevance.
    percentile : float
        Robust scale: the percentile of ``|m|`` shown at full colour.
    reduce : {"sum", "norm", "maxabs"}
        Channel reduction.
    cmap : {"bwr", "coldnhot"}
        Colour map.

    Returns
    -------
    numpy.ndarray
        uint8 ``[H, W, 3]``.
    """
    return colorize(normalize(r, percentile, reduce), cmap)


def graymap(r: np.ndarray, percentile: float = 99.5, reduce: str = "norm") -> np.ndarray:
    """``|m|`` in gray levels: black = 0, white = the robust maximum (``clip(|m| / s, 0, 1)``).

    Parameters
    ----------
    r : numpy.ndarray
        ``[C, H, W]`` or ``[H, W]`` map.
    percentile : float
        Robust scale, see :func:`robust_scale`.
    reduce : {"sum", "norm", "maxabs"}
        Channel reduction (default ``norm``).

    Returns
    -------
    numpy.ndarray
        uint8 ``[H, W, 3]``.
    """
    v = np.abs(normalize(r, percentile, reduce))
    return np.repeat(_to_uint8(v)[..., None], 3, -1)


def input_image(x: np.ndarray, low: Optional[float] = None, high: Optional[float] = None) -> np.ndarray:
    """The input as uint8 RGB ``[H, W, 3]``: ``clip((x - low) / (high - low), 0, 1) * 255``.

    Parameters
    ----------
    x : numpy.ndarray
        ``[C, H, W]`` (C = 1 gray, C >= 3 the first three channels as RGB) or ``[H, W]``.
    low, high : float or array of one value per channel, optional
        The input range (default: the sample's minimum and maximum).

    Returns
    -------
    numpy.ndarray
        uint8 ``[H, W, 3]``.
    """
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x[None]
    lo = float(x.min()) if low is None else low
    hi = float(x.max()) if high is None else high
    lo = np.asarray(lo, np.float64).reshape(-1, 1, 1)
    hi = np.asarray(hi, np.float64).reshape(-1, 1, 1)
    span = np.where(hi > lo, hi - lo, 1.0)
    v = np.clip((x - lo) / span, 0, 1)
    v = np.repeat(v[:1], 3, 0) if v.shape[0] in (1, 2) else v[:3]
    return _to_uint8(np.moveaxis(v, 0, -1))


def scaled_input(x: np.ndarray, r: np.ndarray, low=None, high=None, percentile: float = 99.5,
                 reduce: str = "norm") -> np.ndarray:
    """The input multiplied by the normalized relevance magnitude ``clip(|m| / s, 0, 1)`` per pixel.

    Parameters
    ----------
    x : numpy.ndarray
        The input, as in :func:`input_image`.
    r : numpy.ndarray
        The map, as in :func:`graymap`.
    low, high : optional
        The input range, as in :func:`input_image`.
    percentile : float
        Robust scale of ``|m|``.
    reduce : {"sum", "norm", "maxabs"}
        Channel reduction.

    Returns
    -------
    numpy.ndarray
        uint8 ``[H, W, 3]``: ``round(input_image(x) * w)``.
    """
    w = np.abs(normalize(r, percentile, reduce))
    return _to_uint8(input_image(x, low, high) / 255.0 * w[..., None])


def top_mask(r: np.ndarray, fraction: float, reduce: str = "sum") -> np.ndarray:
    """Boolean ``[H, W]``: the ``round(fraction * H * W)`` pixels of highest relevance.

    Ties are broken by pixel order (row-major), so exactly that many pixels are kept.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    m = reduce_channels(r, reduce)
    k = int(round(fraction * m.size))
    order = np.argsort(-m.ravel(), kind="stable")
    keep = np.zeros(m.size, bool)
    keep[order[:k]] = True
    return keep.reshape(m.shape)


def masked_input(x: np.ndarray, r: np.ndarray, fraction: float = 0.2, low=None, high=None,
                 reduce: str = "sum", fill: int = 0) -> np.ndarray:
    """The input on its most relevant ``fraction`` of pixels (see :func:`top_mask`), ``fill`` elsewhere.

    Parameters
    ----------
    x, r : numpy.ndarray
        Input and map, as in :func:`scaled_input`.
    fraction : float
        Share of pixels kept, in ``[0, 1]``.
    low, high : optional
        The input range, as in :func:`input_image`.
    reduce : {"sum", "norm", "maxabs"}
        Channel reduction; ``sum`` keeps the most positive (supporting) pixels.
    fill : int
        Gray level (0..255) of the removed pixels.

    Returns
    -------
    numpy.ndarray
        uint8 ``[H, W, 3]``.
    """
    img = input_image(x, low, high)
    keep = top_mask(r, fraction, reduce)
    out = np.full_like(img, int(fill))
    out[keep] = img[keep]
    return out


def blend(x: np.ndarray, r: np.ndarray, alpha: float = 0.5, low=None, high=None, percentile: float = 99.5,
          reduce: str = "sum", cmap: str = "bwr") -> np.ndarray:
    """The heatmap laid over the input: ``(1 - alpha) * input_image + alpha * heatmap``.

    Parameters
    ----------
    x, r : numpy.ndarray
        Input and map.
    alpha : float
        Opacity of the heatmap in ``[0, 1]`` (0: the input, 1: the heatmap).
    low, high, percentile, reduce, cmap
        As in :func:`input_image` and :func:`heatmap`.

    Returns
    -------
    numpy.ndarray
        uint8 ``[H, W, 3]``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    base = input_image(x, low, high).astype(np.float64)
    heat = heatmap(r, percentile, reduce, cmap).astype(np.float64)
    return _to_uint8(((1 - alpha) * base + alpha * heat) / 255.0)


def project(signal: np.ndarray, low=0.0, high=1.0, absmax: Optional[float] = None) -> np.ndarray:
    """Project a signal into the input range, per sample, as iNNvestigate's ``project``.

    ``p = low + (high - low) * clip((s / max|s| + 1) / 2, 0, 1)``: zero goes to the middle of the
    range, the largest magnitude to ``low`` or ``high``. PatternNet's output is a signal (an
    estimate of the input's informative part), not an attribution: draw it with this projection.

    Parameters
    ----------
    signal : numpy.ndarray
        One sample (any shape).
    low, high : float or array broadcastable to ``signal``
        The input range.
    absmax : float, optional
        Divisor (default: ``max |signal|``; an all-zero signal is left at the middle).

    Returns
    -------
    numpy.ndarray
        float64, shaped like ``signal``, inside ``[low, high]``.
    """
    s = np.asarray(signal, np.float64)
    m = float(np.abs(s).max()) if absmax is None and s.size else float(absmax or 0.0)
    u = s / m if m > 0 else np.zeros_like(s)
    t = np.clip((u + 1.0) / 2.0, 0.0, 1.0)
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if s.ndim == 3 and lo.ndim == 1:
        lo, hi = lo.reshape(-1, 1, 1), hi.reshape(-1, 1, 1)
    return lo + (hi - lo) * t


def signal_image(signal: np.ndarray, low=0.0, high=1.0) -> np.ndarray:
    """uint8 RGB of :func:`project` ``(signal, low, high)`` drawn with :func:`input_image` over ``[low, high]``."""
    return input_image(project(signal, low, high), low, high)


def render(kind: str, x: np.ndarray, r: np.ndarray, low=None, high=None, **opts) -> np.ndarray:
    """Draw one cell: ``kind`` is one of :data:`KINDS`; ``opts`` go to the drawing function."""
    if kind == "heatmap":
        return heatmap(r, **opts)
    if kind == "graymap":
        return graymap(r, **opts)
    if kind == "scaled":
        return scaled_input(x, r, low, high, **opts)
    if kind == "masked":
        return masked_input(x, r, low=low, high=high, **opts)
    if kind == "blend":
        return blend(x, r, low=low, high=high, **opts)
    if kind == "signal":
        lo = float(np.min(x)) if low is None else low
        hi = float(np.max(x)) if high is None else high
        return signal_image(r, lo, hi)
    raise ValueError(f"unknown picture kind {kind!r}: choose one of {', '.join(KINDS)}")


def _to_uint8(v: np.ndarray) -> np.ndarray:
    """``round(clip(v, 0, 1) * 255)`` as uint8."""
    return (np.clip(v, 0.0, 1.0) * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# grids


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple:
    if not text:
        return 0, 0
    box = draw.multiline_textbbox((0, 0), text, font=font, spacing=2)
    return box[2] - box[0], box[3] - box[1]


def _fit(draw, text: str, font, width: int) -> str:
    """Each line of ``text`` cut (with '...') to fit ``width`` pixels."""
    lines = []
    for line in str(text).split("\n"):
        if _text_size(draw, line, font)[0] > width:
            while line and _text_size(draw, line + "...", font)[0] > width:
                line = line[:-1]
            line += "..."
        lines.append(line)
    return "\n".join(lines)


def _wrap(draw, text: str, font, width: int, max_lines: int = 2) -> str:
    """``text`` broken after ``_``, ``.``, ``-`` or spaces into at most ``max_lines`` lines of ``width`` pixels."""
    import re

    parts = [p for p in re.split(r"(?<=[_.\- ])", str(text)) if p]
    lines, cur = [], ""
    for part in parts:
        if cur and _text_size(draw, cur + part, font)[0] > width:
            lines.append(cur)
            cur = part
        else:
            cur += part
    lines.append(cur)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + ["".join(lines[max_lines - 1:])]
    return _fit(draw, "\n".join(lines), font, width)


def layout_grid(cells: Sequence[Sequence[np.ndarray]], row_titles: Sequence[str] = (),
                col_titles: Sequence[str] = (), captions: Optional[Sequence[Sequence[str]]] = None,
                cell: int = 128, title: str = "", pad: int = 4):
    """Draw a labelled grid; return ``(image, boxes)``.

    Parameters
    ----------
    cells : list of rows of uint8 ``[h, w, 3]`` images
        Each image is resized to ``cell x cell`` (nearest neighbour); rows may be ragged.
    row_titles, col_titles : list of str
        Written left of each row and above each column (``\\n`` for several lines; column titles
        are wrapped after ``_``/``.``/``-``/spaces into two lines and cut to the cell width).
    captions : list of rows of str, optional
        Written under each cell (cut to the cell width).
    cell : int
        Side of a cell in pixels.
    title : str
        A line above everything.
    pad : int
        Gap between cells.

    Returns
    -------
    (PIL.Image.Image, list of list of tuple)
        The RGB canvas and, per row, the ``(left, top, right, bottom)`` box of each cell.
    """
    from PIL import Image, ImageDraw

    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(probe, "Ag", font)[1] + 2
    n_rows, n_cols = len(cells), max((len(r) for r in cells), default=0)
    col_texts = [_wrap(probe, t, font, cell) for t in col_titles]
    left = pad + max((_text_size(probe, str(t), font)[0] for t in row_titles), default=0) + (pad if row_titles else 0)
    title_h = (_text_size(probe, title, font)[1] + 2 * pad) if title else 0
    col_h = max((_text_size(probe, t, font)[1] for t in col_texts), default=0) + pad if col_titles else 0
    n_cap = max((str(c).count("\n") + 1 for row in captions or () for c in row), default=0)
    cap_h = n_cap * line_h
    top = pad + title_h + col_h
    row_h = cell + cap_h + pad
    title_w = _text_size(probe, title, font)[0] + 2 * pad if title else 0
    size = (max(left + n_cols * (cell + pad) + pad, title_w), top + n_rows * row_h)
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill="black", font=font)
    for j, t in enumerate(col_texts):
        draw.multiline_text((left + j * (cell + pad), pad + title_h), t, fill="black", font=font, spacing=2)
    boxes = []
    for i, row in enumerate(cells):
        y = top + i * row_h
        if i < len(row_titles):
            th = _text_size(draw, str(row_titles[i]), font)[1]
            draw.multiline_text((pad, y + max(0, (cell - th) // 2)), str(row_titles[i]), fill="black", font=font,
                                spacing=2)
        row_boxes = []
        for j, img in enumerate(row):
            x0 = left + j * (cell + pad)
            tile = Image.fromarray(_as_rgb(img)).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (x0, y))
            row_boxes.append((x0, y, x0 + cell, y + cell))
            if captions and i < len(captions) and j < len(captions[i]) and captions[i][j]:
                draw.multiline_text((x0, y + cell + 1), _fit(draw, captions[i][j], font, cell), fill="black",
                                    font=font, spacing=2)
        boxes.append(row_boxes)
    return canvas, boxes


def _as_rgb(img) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"grid cells must be uint8 images, got dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"grid cells must be [H, W, 3] RGB images, got shape {a.shape}")
    return a


def grid(cells: Sequence[Sequence[np.ndarray]], path: str, row_titles: Sequence[str] = (),
         col_titles: Sequence[str] = (), cell: int = 128, captions: Optional[Sequence[Sequence[str]]] = None,
         title: str = "") -> list:
    """Draw a labelled grid (see :func:`layout_grid`) and save it as PNG atomically.

    Returns
    -------
    list of list of tuple
        The box of each cell in the saved image.
    """
    canvas, boxes = layout_grid(cells, row_titles, col_titles, captions, cell, title)
    save_png(canvas, path)
    return boxes


def save_png(image, path: str) -> None:
    """Save a PIL image or a uint8 ``[H, W, 3]`` array as PNG, atomically (complete or absent)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(_as_rgb(image))
    atomic_write(path, lambda fh: image.save(fh, format="PNG"))


def atomic_write(path: str, write, binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it (see
    :func:`onnxplain.compiler.export.atomic_write`)."""
    from ..compiler.export import atomic_write as _atomic_write

    _atomic_write(path, write, binary)
