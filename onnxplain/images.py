"""Load images (files or folders) or arrays as model inputs.

A model's *preprocess spec* says how 8-bit pixels become its input. Bundled models
carry it in the ONNX metadata entry ``onnxplain.preprocess``::

    {"layout": "NCHW", "channels": 3, "height": 224, "width": 224,
     "pixel_scale": s, "pixel_offset": o}

with ``model_input = pixel * s + o`` for pixels in ``0..255`` (``s`` and ``o`` may be one
value per channel, e.g. ImageNet's mean/std normalization). Layouts: ``NCHW``,
``NHWC``, ``NHW`` (gray, no channel axis) and ``NF`` (flat: the ``[C, H, W]`` sample flattened
row-major to ``C*H*W`` features, as a flattened MNIST digit; the convention of
:mod:`onnxplain.bundled`). A model without the entry
gets a spec guessed from its input shape and the value range given by the caller
(the CLI's ``--range``, default ``0,1``: ``s = (high - low) / 255``, ``o = low``).

Loading converts each image's mode to the model's channel count (RGB to gray with a
warning, gray to RGB), scales it so its shorter side fits and center-crops it to the
model's height and width (with a warning when the size differs), then applies the spec.
Every unreadable file is listed in one :class:`~onnxplain.compiler.errors.InputError`.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .compiler.errors import InputError

#: file name endings read as images
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LAYOUTS = ("NCHW", "NHWC", "NHW", "NF")


@dataclass(frozen=True)
class Preprocess:
    """How 8-bit pixels become one model input (see the module docstring).

    Attributes
    ----------
    layout : {"NCHW", "NHWC", "NHW", "NF"}
    channels, height, width : int
    pixel_scale, pixel_offset : tuple of float
        One value, or one per channel: ``input = pixel * scale + offset``.
    source : str
        Where the spec comes from (``"model metadata"`` or ``"--range"``).
    """

    layout: str
    channels: int
    height: int
    width: int
    pixel_scale: Tuple[float, ...] = (1.0 / 255.0,)
    pixel_offset: Tuple[float, ...] = (0.0,)
    source: str = "model metadata"

    def _per_channel(self, v) -> np.ndarray:
        a = np.asarray(v, np.float64).reshape(-1)
        return np.broadcast_to(a, (self.channels,)) if a.size == 1 else a

    @property
    def low(self) -> np.ndarray:
        """Per channel: the input value of pixel 0 or 255, whichever is lower."""
        s, o = self._per_channel(self.pixel_scale), self._per_channel(self.pixel_offset)
        return np.minimum(o, 255 * s + o)

    @property
    def high(self) -> np.ndarray:
        """Per channel: the input value of pixel 0 or 255, whichever is higher."""
        s, o = self._per_channel(self.pixel_scale), self._per_channel(self.pixel_offset)
        return np.maximum(o, 255 * s + o)

    @property
    def sample_shape(self) -> tuple:
        """The shape of one sample in the model's layout."""
        c, h, w = self.channels, self.height, self.width
        return {"NCHW": (c, h, w), "NHWC": (h, w, c), "NHW": (h, w), "NF": (h * w * c,)}[self.layout]

    def from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """``[N, H, W, C]`` pixels in 0..255 -> float32 model inputs ``[N, *sample_shape]``."""
        p = np.asarray(pixels, np.float64)
        x = p * self._per_channel(self.pixel_scale) + self._per_channel(self.pixel_offset)
        n = len(x)
        if self.layout in ("NCHW", "NF"):
            x = np.moveaxis(x, -1, 1)
        elif self.layout == "NHW":
            x = x[..., 0]
        if self.layout == "NF":
            x = x.reshape(n, -1)
        return np.ascontiguousarray(x, np.float32)

    def to_chw(self, sample: np.ndarray) -> np.ndarray:
        """One sample (an input or a map shaped like it) in the model's layout -> ``[C, H, W]``."""
        a = np.asarray(sample)
        c, h, w = self.channels, self.height, self.width
        if a.size != c * h * w:
            raise InputError(f"a sample of {a.size} values does not fit the layout {self.layout} [C={c}, H={h}, W={w}]")
        if self.layout in ("NCHW", "NF"):
            return a.reshape(c, h, w)
        if self.layout == "NHW":
            return a.reshape(1, h, w)
        return np.moveaxis(a.reshape(h, w, c), -1, 0)  # NHWC

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`from_pixels`: model inputs ``[N, ...]`` -> float ``[N, H, W, C]`` pixels."""
        chw = np.stack([self.to_chw(s) for s in np.asarray(x, np.float64)])
        hwc = np.moveaxis(chw, 1, -1)
        return (hwc - self._per_channel(self.pixel_offset)) / self._per_channel(self.pixel_scale)


def model_metadata(model) -> dict:
    """The ``metadata_props`` of an ONNX model (a path or a ModelProto) as a dict."""
    import onnx

    proto = model if hasattr(model, "metadata_props") else onnx.load(os.fspath(model), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def labels(model, n_classes: Optional[int] = None) -> list:
    """Class names from ``onnxplain.labels`` (a JSON list), else ``["0", "1", ...]``."""
    meta = model_metadata(model)
    if "onnxplain.labels" in meta:
        try:
            names = [str(v) for v in json.loads(meta["onnxplain.labels"])]
        except (ValueError, TypeError):
            raise InputError(f"{_name(model)}: metadata 'onnxplain.labels' is not a JSON list of names") from None
        if n_classes is None or len(names) >= n_classes:
            return names
        return names + [str(i) for i in range(len(names), n_classes)]
    return [str(i) for i in range(n_classes or 0)]


def read_spec(model, input_shape: Optional[Sequence] = None,
              value_range: Optional[Tuple[float, float]] = None) -> Preprocess:
    """The preprocess spec of ``model``: its metadata, else guessed from ``input_shape``.

    Parameters
    ----------
    model : str or onnx.ModelProto
        The model.
    input_shape : sequence, optional
        The declared input shape (ints or names); needed when the model has no spec.
    value_range : (float, float), optional
        ``(low, high)`` that pixels 0..255 map to when the model has no spec (default ``(0, 1)``).

    Raises
    ------
    InputError
        A malformed spec, or an input shape that is no image layout.
    """
    meta = model_metadata(model)
    if "onnxplain.preprocess" in meta:
        return _parse_spec(meta["onnxplain.preprocess"], _name(model))
    lo, hi = value_range or (0.0, 1.0)
    dims = list(input_shape or [])
    layout, c, h, w = _guess_layout(dims, _name(model))
    return Preprocess(layout, c, h, w, ((hi - lo) / 255.0,), (float(lo),), "--range")


def _parse_spec(text: str, name: str) -> Preprocess:
    try:
        d = json.loads(text)
        layout = str(d.get("layout", "NCHW")).upper()
        c, h, w = int(d["channels"]), int(d["height"]), int(d["width"])
        scale = tuple(float(v) for v in np.atleast_1d(d.get("pixel_scale", 1.0 / 255)))
        offset = tuple(float(v) for v in np.atleast_1d(d.get("pixel_offset", 0.0)))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(f"{name}: metadata 'onnxplain.preprocess' is malformed ({exc}); expected JSON "
                         '{"layout": "NCHW", "channels": C, "height": H, "width": W, "pixel_scale": s, '
                         '"pixel_offset": o}') from None
    problems = []
    if layout not in LAYOUTS:
        problems.append(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if c not in (1, 3) or h < 1 or w < 1:
        problems.append(f"channels={c}, height={h}, width={w}: need 1 or 3 channels and a positive size")
    for key, v in (("pixel_scale", scale), ("pixel_offset", offset)):
        if len(v) not in (1, c):
            problems.append(f"{key} has {len(v)} values: give 1 or one per channel ({c})")
    if any(s == 0 for s in scale):
        problems.append("pixel_scale must not be 0")
    if problems:
        raise InputError(f"{name}: metadata 'onnxplain.preprocess': " + "; ".join(problems))
    return Preprocess(layout, c, h, w, scale, offset)


def _guess_layout(dims: list, name: str) -> tuple:
    static = [d if isinstance(d, int) and d > 0 else None for d in dims[1:]]
    if len(dims) == 4 and None not in static:
        if static[0] in (1, 3):
            return ("NCHW", *static)
        if static[2] in (1, 3):
            return ("NHWC", static[2], static[0], static[1])
    if len(dims) == 3 and None not in static:
        return ("NHW", 1, static[0], static[1])
    if len(dims) == 2 and static[0] is not None:
        side = int(math.isqrt(static[0]))
        if side * side == static[0]:
            return ("NF", 1, side, side)
    raise InputError(f"{name}: cannot read images into an input of shape {_fmt(dims)}: images need a static "
                     "[N, C, H, W] or [N, H, W, C] (C = 1 or 3), [N, H, W] or a flat [N, H*W] input; "
                     "pass a .npy/.npz array instead, or add an 'onnxplain.preprocess' metadata entry")


def _fmt(dims) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in dims) + "]"


def _name(model) -> str:
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else "model"


def find_images(paths: Union[str, Sequence[str]]) -> list:
    """Image files named by ``paths`` (files, or folders read non-recursively in sorted order).

    Raises
    ------
    InputError
        Listing every missing path, empty folder and non-image file, or when nothing is found.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files, problems = [], []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(p, f)))
            if not found:
                problems.append(f"{p}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif not os.path.exists(p):
            problems.append(f"{p}: no such file or folder")
        elif not p.lower().endswith(IMAGE_EXTENSIONS):
            problems.append(f"{p}: not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        else:
            files.append(p)
    if problems:
        raise InputError("; ".join(problems))
    if not files:
        raise InputError("no images given")
    return files


def load_pixels(files: Sequence[str], spec: Preprocess, warn=None) -> np.ndarray:
    """Read ``files`` as uint8 ``[N, H, W, C]`` pixels fitting ``spec`` (mode, resize, center crop).

    Parameters
    ----------
    files : list of str
        Image files.
    spec : Preprocess
        The model's spec (channels, height, width).
    warn : callable, optional
        Receives each warning text (default: :func:`warnings.warn`).

    Raises
    ------
    InputError
        Listing every file that cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    out, bad, gray, resized = [], [], [], []
    for f in files:
        try:
            with Image.open(f) as img:
                img.load()
                if spec.channels == 1 and img.mode not in ("L", "1", "I", "I;16", "F"):
                    gray.append(f)
                img = img.convert("L" if spec.channels == 1 else "RGB")
                if img.size != (spec.width, spec.height):
                    resized.append(f"{os.path.basename(f)} {img.size[0]}x{img.size[1]}")
                    img = fit(img, spec.width, spec.height)
                a = np.asarray(img, np.uint8)
                out.append(a[..., None] if a.ndim == 2 else a)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            bad.append(f"{f}: cannot read the image ({exc.__class__.__name__}: {exc})")
    if bad:
        raise InputError(f"{len(bad)} unreadable image file(s): " + "; ".join(bad))
    if gray:
        warn(f"the model takes gray images: converted {len(gray)} colour image(s) to gray "
             f"({', '.join(os.path.basename(g) for g in gray[:5])}{', ...' if len(gray) > 5 else ''})")
    if resized:
        warn(f"the model takes {spec.width}x{spec.height} images: resized and center-cropped "
             f"{', '.join(resized[:5])}{', ...' if len(resized) > 5 else ''}")
    return np.stack(out)


def fit(img, width: int, height: int):
    """Scale a PIL image (bilinear) so it covers ``width x height``, then center-crop to that size."""
    from PIL import Image

    w0, h0 = img.size
    k = max(width / w0, height / h0)
    w1, h1 = max(width, round(w0 * k)), max(height, round(h0 * k))
    img = img.resize((w1, h1), Image.BILINEAR)
    left, top = (w1 - width) // 2, (h1 - height) // 2
    return img.crop((left, top, left + width, top + height))


def load_images(paths, spec: Preprocess, warn=None) -> Tuple[np.ndarray, list]:
    """Model inputs from image files or folders: ``(float32 [N, *spec.sample_shape], file names)``."""
    files = find_images(paths)
    return spec.from_pixels(load_pixels(files, spec, warn)), files


def read_array(path: str) -> np.ndarray:
    """The array of a ``.npy``, or of a ``.npz`` (key ``images``, ``x`` or the first array), in its own dtype."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or folder")
    try:
        if path.lower().endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise InputError(f"{path}: the archive holds no arrays")
                key = next((k for k in ("images", "x") if k in z.files), z.files[0])
                arr = z[key]
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the array ({exc})") from None
    if arr.dtype.kind not in "fiub":
        raise InputError(f"{path}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def array_labels(path: str) -> Optional[np.ndarray]:
    """The ``labels`` array of a ``.npz`` (int64), or None."""
    if not str(path).lower().endswith(".npz") or not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as z:
        return z["labels"].astype(np.int64).reshape(-1) if "labels" in z.files else None


def load_array(path: str, spec: Optional[Preprocess] = None) -> np.ndarray:
    """Model inputs from ``.npy``/``.npz``: float arrays as they are; uint8 arrays shaped as pixels
    (``[N, H, W]`` or ``[N, H, W, C]`` of the spec's size, not its input shape) go through the spec."""
    arr = read_array(path)
    if arr.dtype == np.uint8 and spec is not None and tuple(arr.shape[1:]) != tuple(spec.sample_shape):
        hw = (spec.height, spec.width)
        if arr.ndim == 3 and arr.shape[1:] == hw and spec.channels == 1:
            return spec.from_pixels(arr[..., None])
        if arr.ndim == 4 and arr.shape[1:] == (*hw, spec.channels):
            return spec.from_pixels(arr)
        raise InputError(f"{path}: uint8 pixels of shape {arr.shape} fit neither the model input "
                         f"{spec.sample_shape} nor its {spec.height}x{spec.width}x{spec.channels} images")
    return arr.astype(np.float32)


def load_inputs(paths, spec: Optional[Preprocess], warn=None) -> Tuple[np.ndarray, list]:
    """Model inputs from one ``.npy``/``.npz`` array (see :func:`load_array`) or from images (files or folders).

    Returns
    -------
    (numpy.ndarray, list of str)
        The float32 batch and one name per sample (file names, or ``array[i]``).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    arrays = [os.fspath(p) for p in paths if os.fspath(p).lower().endswith((".npy", ".npz"))]
    if arrays:
        if len(paths) != 1:
            raise InputError("give one .npy/.npz array, or image files and folders, not both")
        x = load_array(arrays[0], spec)
        return x, [f"{os.path.basename(arrays[0])}[{i}]" for i in range(len(x))]
    if spec is None:
        raise InputError("images need a model with an image input; pass a .npy/.npz array instead")
    return load_images(paths, spec, warn)
