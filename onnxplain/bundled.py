"""Bundled models, images and data, and the metadata convention that says how to feed a model.

Every model shipped in ``onnxplain/data`` (and any model that follows the same convention) carries three
``metadata_props`` entries, each a JSON string:

``onnxplain.preprocess``
    ``{"layout": "NCHW", "channels": C, "height": H, "width": W, "pixel_scale": s, "pixel_offset": o}``:
    the model input is ``pixel * s + o`` where ``pixel`` is the 0..255 value of an 8-bit image of
    ``H`` x ``W`` pixels with ``C`` channels (1: grayscale, 3: RGB). ``layout`` is ``"NCHW"`` (input
    ``[N, C, H, W]``) or ``"NF"`` (input ``[N, C*H*W]``: the NCHW tensor flattened row-major per sample).
``onnxplain.labels``
    JSON list of the class names, one per output column.
``onnxplain.input_range``
    ``[low, high]``: the range of the model input (``0*s + o`` and ``255*s + o``), e.g. the bounds of
    the z-rules of LRP and of the baselines of integrated gradients.

Functions
---------
:func:`path`, :func:`names`
    The file of a bundled item; the bundled names.
:func:`preprocess_spec`, :func:`labels`, :func:`input_range`
    Read the convention from a model (``None`` where a model does not carry it).
:func:`preprocess`, :func:`to_pixels`
    8-bit images (HWC, NHWC, HW or NHW) to model input and back, with a spec.
:func:`load_image`, :func:`photos`, :func:`mnist_test`
    Bundled photos (RGB JPEG, 224 x 224) and the 1000 MNIST test digits (clean and with the artefact).

Example
-------
>>> from onnxplain import bundled
>>> spec = bundled.preprocess_spec(bundled.path("mnist_cnn.onnx"))
>>> x = bundled.preprocess(bundled.mnist_test()["images"][:4], spec)
>>> x.shape
(4, 1, 28, 28)
"""
from __future__ import annotations

import glob
import json
import os
from typing import Optional, Union

import numpy as np
import onnx

from .compiler.errors import OnnxplainError

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
KEY_PREPROCESS = "onnxplain.preprocess"
KEY_LABELS = "onnxplain.labels"
KEY_INPUT_RANGE = "onnxplain.input_range"
LAYOUTS = ("NCHW", "NF")
_SPEC_KEYS = ("layout", "channels", "height", "width", "pixel_scale", "pixel_offset")

ModelLike = Union[str, "os.PathLike[str]", bytes, onnx.ModelProto]


class BundledError(OnnxplainError, ValueError):
    """A bundled file is missing, or a model's ``onnxplain.*`` metadata or an image does not fit."""


def names() -> list:
    """Names of the bundled files, relative to the data folder (``"mnist_cnn.onnx"``, ``"images/chelsea.jpg"``).

    Returns
    -------
    list of str
        Sorted names (``.onnx``, ``.npz`` and image files).
    """
    found = []
    for pattern in ("*.onnx", "*.npz", os.path.join("images", "*.jpg")):
        found += [os.path.relpath(p, DATA_DIR).replace(os.sep, "/") for p in glob.glob(os.path.join(DATA_DIR, pattern))]
    return sorted(found)


def path(name: str) -> str:
    """Absolute path of a bundled file.

    Parameters
    ----------
    name : str
        Name relative to ``onnxplain/data``, e.g. ``"mnist_cnn.onnx"``, ``"efficientnet_lite0.onnx"``,
        ``"images/chelsea.jpg"``. A name without an extension gets ``.onnx``.

    Returns
    -------
    str
        The path; the file exists.

    Raises
    ------
    BundledError
        No such bundled file (the message lists the bundled names).
    """
    if not os.path.splitext(name)[1]:
        name += ".onnx"
    full = os.path.normpath(os.path.join(DATA_DIR, name))
    if not full.startswith(DATA_DIR + os.sep) or not os.path.isfile(full):
        raise BundledError(f"no bundled file {name!r}; bundled: {', '.join(names())}")
    return full


def _metadata(model: ModelLike) -> dict:
    """``metadata_props`` of a model (path, bytes or ModelProto) as a dict."""
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(model))
    else:
        if not os.path.isfile(model):
            raise BundledError(f"{model}: no such model file")
        proto = onnx.load(model, load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _json_entry(model: ModelLike, key: str):
    """Parsed JSON value of one metadata entry, ``None`` when absent."""
    meta = _metadata(model)
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except ValueError as exc:
        raise BundledError(f"metadata {key!r} is not valid JSON ({exc}): {meta[key][:200]!r}") from None


def check_spec(spec: dict) -> dict:
    """Validate a preprocess spec and return it with normalised types.

    Parameters
    ----------
    spec : dict
        ``layout`` (``"NCHW"`` or ``"NF"``), ``channels``, ``height``, ``width`` (positive ints),
        ``pixel_scale``, ``pixel_offset`` (finite numbers, scale non-zero).

    Returns
    -------
    dict
        A new dict with exactly those keys.

    Raises
    ------
    BundledError
        Every missing or bad key, in one message.
    """
    if not isinstance(spec, dict):
        raise BundledError(f"preprocess spec must be a JSON object, got {type(spec).__name__}")
    bad = [f"missing {k!r}" for k in _SPEC_KEYS if k not in spec]
    if spec.get("layout", "NCHW") not in LAYOUTS:
        bad.append(f"layout {spec.get('layout')!r} is not one of {LAYOUTS}")
    for k in ("channels", "height", "width"):
        if k in spec and (not isinstance(spec[k], int) or isinstance(spec[k], bool) or spec[k] < 1):
            bad.append(f"{k} must be a positive integer, got {spec[k]!r}")
    for k in ("pixel_scale", "pixel_offset"):
        if k in spec and (not isinstance(spec[k], (int, float)) or not np.isfinite(spec[k])):
            bad.append(f"{k} must be a finite number, got {spec[k]!r}")
    if spec.get("pixel_scale") == 0:
        bad.append("pixel_scale must not be 0")
    if bad:
        raise BundledError("bad onnxplain.preprocess spec: " + "; ".join(bad))
    out = {k: spec[k] for k in _SPEC_KEYS}
    out["pixel_scale"], out["pixel_offset"] = float(out["pixel_scale"]), float(out["pixel_offset"])
    return out


def preprocess_spec(model: ModelLike) -> Optional[dict]:
    """The ``onnxplain.preprocess`` spec of a model.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto

    Returns
    -------
    dict or None
        Keys ``layout``, ``channels``, ``height``, ``width``, ``pixel_scale``, ``pixel_offset``
        (model input = pixel_0_255 * pixel_scale + pixel_offset); ``None`` if the model has no such entry.

    Raises
    ------
    BundledError
        The entry exists but is not a valid spec.
    """
    spec = _json_entry(model, KEY_PREPROCESS)
    return None if spec is None else check_spec(spec)


def labels(model: ModelLike) -> Optional[list]:
    """The class names (``onnxplain.labels``) of a model, one per output column, or ``None``."""
    value = _json_entry(model, KEY_LABELS)
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise BundledError(f"metadata {KEY_LABELS!r} must be a JSON list of strings")
    return value


def input_range(model: ModelLike) -> Optional[tuple]:
    """``(low, high)`` of the model input (``onnxplain.input_range``), or ``None``."""
    value = _json_entry(model, KEY_INPUT_RANGE)
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
            and value[0] < value[1]):
        raise BundledError(f"metadata {KEY_INPUT_RANGE!r} must be [low, high] with low < high, got {value!r}")
    return float(value[0]), float(value[1])


def metadata_entries(spec: dict, class_names: list) -> dict:
    """The three ``onnxplain.*`` metadata strings for a spec and class names (used by ``models/make_*.py``).

    Returns
    -------
    dict
        ``{key: json_string}``; ``input_range`` is computed from the spec.
    """
    spec = check_spec(spec)
    low, high = sorted((spec["pixel_offset"], 255.0 * spec["pixel_scale"] + spec["pixel_offset"]))
    return {KEY_PREPROCESS: json.dumps(spec), KEY_LABELS: json.dumps(list(class_names)),
            KEY_INPUT_RANGE: json.dumps([low, high])}


def _as_nhwc(images: np.ndarray, spec: dict) -> np.ndarray:
    """Images as a float64 [N, H, W, C] array; accepts HWC, NHWC and, for one channel, HW and NHW."""
    a = np.asarray(images)
    c, h, w = spec["channels"], spec["height"], spec["width"]
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[None] if a.shape == (h, w, c) else (a[..., None] if c == 1 else a[None])
    if a.ndim != 4 or a.shape[1:] != (h, w, c):
        raise BundledError(f"images of shape {np.shape(images)} do not fit the spec: expected HWC/NHWC with "
                           f"H={h}, W={w}, C={c}" + (" (or HW/NHW)" if c == 1 else "")
                           + "; resize with bundled.load_image(path, spec)")
    if a.dtype.kind not in "uif":
        raise BundledError(f"images must be numeric 0..255 pixels, got dtype {a.dtype}")
    return a.astype(np.float64)


def preprocess(images, spec: dict) -> np.ndarray:
    """Turn 0..255 pixels into model input: ``pixel * pixel_scale + pixel_offset`` in the spec's layout.

    Parameters
    ----------
    images : array_like
        8-bit pixel values (any numeric dtype, 0..255): one image HWC or a batch NHWC; for one-channel
        specs also HW or NHW. Height and width must equal the spec's (see :func:`load_image` to resize).
    spec : dict
        A preprocess spec (:func:`preprocess_spec`).

    Returns
    -------
    numpy.ndarray
        float32 ``[N, C, H, W]`` (layout ``NCHW``) or ``[N, C*H*W]`` (layout ``NF``).
    """
    spec = check_spec(spec)
    x = _as_nhwc(images, spec) * spec["pixel_scale"] + spec["pixel_offset"]
    x = x.transpose(0, 3, 1, 2)
    if spec["layout"] == "NF":
        x = x.reshape(len(x), -1)
    return np.ascontiguousarray(x, dtype=np.float32)


def to_pixels(x, spec: dict) -> np.ndarray:
    """Inverse of :func:`preprocess`: model input back to float ``[N, H, W, C]`` pixels (0..255, not clipped)."""
    spec = check_spec(spec)
    c, h, w = spec["channels"], spec["height"], spec["width"]
    a = np.asarray(x, dtype=np.float64).reshape(-1, c, h, w)
    return ((a - spec["pixel_offset"]) / spec["pixel_scale"]).transpose(0, 2, 3, 1)


def load_image(file, spec: Optional[dict] = None) -> np.ndarray:
    """Read an image file as uint8 pixels, optionally center-cropped and resized to a spec's size.

    Parameters
    ----------
    file : str or os.PathLike
        Any image Pillow reads.
    spec : dict, optional
        If given: converted to the spec's channels (1: grayscale, 3: RGB), the largest centered square
        (or the spec's aspect ratio) cropped, resized with bicubic filtering to ``height`` x ``width``.

    Returns
    -------
    numpy.ndarray
        uint8 ``[H, W, C]``.
    """
    from PIL import Image

    try:
        img = Image.open(file)
        img.load()
    except (OSError, ValueError) as exc:
        raise BundledError(f"{file}: cannot read image ({exc})") from None
    if spec is None:
        a = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
        return a[..., None] if a.ndim == 2 else a
    spec = check_spec(spec)
    if spec["channels"] not in (1, 3):
        raise BundledError(f"load_image supports 1 or 3 channels, the spec has {spec['channels']}")
    img = img.convert("L" if spec["channels"] == 1 else "RGB")
    h, w = spec["height"], spec["width"]
    scale = min(img.width / w, img.height / h)
    cw, ch = w * scale, h * scale
    left, top = (img.width - cw) / 2, (img.height - ch) / 2
    img = img.resize((w, h), Image.BICUBIC, box=(left, top, left + cw, top + ch))
    a = np.asarray(img)
    return a[..., None] if a.ndim == 2 else a


def photos() -> list:
    """Paths of the bundled photos (``onnxplain/data/images/*.jpg``, RGB, 224 x 224), sorted by name."""
    return sorted(glob.glob(os.path.join(DATA_DIR, "images", "*.jpg")))


def mnist_test(poisoned: bool = False) -> dict:
    """The 1000 bundled MNIST test digits (the first 1000 of the MNIST test set).

    Parameters
    ----------
    poisoned : bool
        If true, ``images`` are the poisoned variant: the digits of class ``poison_class`` carry the
        artefact (pixels in ``artefact_box`` set to 255), exactly as in the poisoned model's training set.

    Returns
    -------
    dict
        ``images`` uint8 [1000, 28, 28]; ``labels`` int64 [1000]; ``boxes`` int64 [1000, 4] tight box of the
        digit's pixels > 0 as ``[row0, col0, row1, col1]`` (end exclusive, on the clean image);
        ``poison_class`` int; ``artefact_box`` tuple ``(row0, col0, row1, col1)`` (end exclusive);
        ``stamped`` bool [1000]: which returned images carry the artefact.
    """
    with np.load(path("mnist_test.npz")) as z:
        out = {"images": z["images_poisoned" if poisoned else "images"], "labels": z["labels"].astype(np.int64),
               "boxes": z["boxes"].astype(np.int64), "poison_class": int(z["poison_class"]),
               "artefact_box": tuple(int(v) for v in z["artefact_box"])}
    out["stamped"] = (out["labels"] == out["poison_class"]) if poisoned else np.zeros(len(out["labels"]), bool)
    return out


def stamp(images, box) -> np.ndarray:
    """Copy of uint8 images (``[..., H, W]``) with the pixels in ``box`` = (row0, col0, row1, col1) set to 255."""
    out = np.array(images, dtype=np.uint8, copy=True)
    r0, c0, r1, c1 = box
    out[..., r0:r1, c0:c1] = 255
    return out
