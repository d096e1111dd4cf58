"""Compare methods (methods x images) and compare models (methods x models on the same images).

* :func:`compare_methods` - the main job of ``onnxplain explain``: one row per input, one column
  per method (after the input itself), each row titled with the predicted class, its softmax
  probability and logit.
* :func:`compare_models` - one row per model (and image), the same methods in the columns: each
  model reads the image with its own preprocess spec (layout, size, value range), so models from
  different frameworks and with different input layouts can be compared on one picture.

Both return a dict of numbers (predictions, top-k, per-map statistics) and the maps, and draw
the PNG grid when ``out`` is given.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from ..compiler.errors import InputError
from ..runtime import visualize as vz
from .common import ModelInfo, Scorer, cell, display_name, map_stats, method_params, open_model, short


def explain_batch(info: ModelInfo, x: np.ndarray, methods: Sequence[str], targets: Optional[np.ndarray] = None,
                  params: Optional[dict] = None, batch_size: int = 4, progress: Optional[bool] = None,
                  **compile_opts) -> dict:
    """Maps of every method for the batch ``x``: ``{method: array shaped like x}``.

    ``low``/``high`` of methods that take them come from the model's spec (see
    :func:`~onnxplain.apps.common.method_params`); ``params`` are the user's (as ``--param``).
    """
    from ..api import Explainer

    exp = Explainer(info.proto, method_params(methods, info, params), params=params, batch_size=batch_size,
                    progress=progress, **info.opts(compile_opts))
    maps = exp.explain({info.input_name: x}, None if targets is None else np.asarray(targets, np.int64))
    return {m: np.asarray(maps[m]) for m in methods}


def predictions(info: ModelInfo, x: np.ndarray, top: int = 5, output: Optional[str] = None) -> tuple:
    """``(logits, probs, rows)``: rows hold per sample the top class, its label, probability, logit and top-k."""
    logits, probs = Scorer(info.proto, output)(x)
    rows = []
    for i in range(len(x)):
        order = np.argsort(-logits[i], kind="stable")[: min(top, logits.shape[1])]
        k = int(order[0])
        rows.append({"class": k, "label": info.label(k), "prob": float(probs[i, k]), "logit": float(logits[i, k]),
                     "top": [{"class": int(c), "label": info.label(int(c)), "prob": float(probs[i, c]),
                              "logit": float(logits[i, c])} for c in order]})
    return logits, probs, rows


def compare_methods(model, x: np.ndarray, methods: Sequence[str], *, names: Optional[Sequence[str]] = None,
                    targets=None, params: Optional[dict] = None, out: Optional[str] = None, view: str = "heatmap",
                    top: int = 5, cell_size: int = 128, batch_size: int = 4, progress: Optional[bool] = None,
                    value_range=None, **compile_opts) -> dict:
    """Explain a batch with several methods; draw inputs (rows) x methods (columns).

    Parameters
    ----------
    model : str or ModelInfo
        The model file (its preprocess spec and labels are read from the metadata).
    x : numpy.ndarray
        The batch, in the model's input layout.
    methods : list of str
        Method names (see ``onnxplain methods``).
    names : list of str, optional
        One row name per sample (e.g. the file names).
    targets : int or array of int, optional
        Class explained per sample (default: the top class).
    params : dict, optional
        Method parameters, as ``--param`` (``steps``, ``smoothgrad.samples``, ...).
    out : str, optional
        Write the PNG grid there (atomically).
    view : str
        Picture of the attribution maps: ``heatmap`` (default), ``graymap``, ``scaled``, ``masked``,
        ``blend`` (signal methods are always projected into the input range).
    top : int
        Number of classes in each sample's top-k list.
    cell_size : int
        Side of a grid cell in pixels.
    batch_size : int
        Samples per inference (a progress bar shows when there are several batches).
    progress : bool, optional
        Force the progress bar on or off.
    value_range : (float, float), optional
        The model's input range when it has no preprocess spec.
    **compile_opts
        Passed to :class:`~onnxplain.api.Explainer` (``threads``) and :func:`onnxplain.compile`
        (``output``, ``strip_softmax``, ``batchnorm``).

    Returns
    -------
    dict
        ``model``, ``methods``, ``samples`` (per sample: name, prediction, top-k, explained target
        with its probability and logit, per-method statistics of the map), ``maps`` (method ->
        array), ``logits`` and ``probs`` (``[N, K]``), ``figure`` (the PNG path or None) and, when
        drawn, ``boxes`` (each cell's box in the PNG).
    """
    info = model if isinstance(model, ModelInfo) else open_model(model, value_range)
    x = np.asarray(x, np.float32)
    names = list(names) if names is not None else [f"#{i}" for i in range(len(x))]
    logits, probs, rows = predictions(info, x, top, info.opts(compile_opts)["output"])
    tgt = _targets(targets, logits)
    maps = explain_batch(info, x, methods, tgt, params, batch_size, progress, **compile_opts)
    samples = []
    for i, row in enumerate(rows):
        t = int(tgt[i])
        samples.append({"name": names[i], **row, "target": t, "target_label": info.label(t),
                        "target_prob": float(probs[i, t]), "target_logit": float(logits[i, t]),
                        "stats": {m: map_stats(maps[m][i]) for m in methods}})
    result = {"model": info.path, "methods": list(methods), "samples": samples, "maps": maps,
              "logits": logits, "probs": probs, "figure": out}
    if out:
        result["boxes"] = draw_methods(info, x, maps, samples, methods, out, view, cell_size)
    return result


def _targets(targets, logits: np.ndarray) -> np.ndarray:
    n, k = logits.shape
    top = logits.argmax(1)
    if targets is None:
        return top
    t = np.asarray(targets, np.int64).reshape(-1)
    if t.size == 1:
        t = np.repeat(t, n)
    if t.shape != (n,):
        raise InputError(f"give one target for all inputs or one per input ({n}), got {t.size}")
    bad = t[(t >= k) | (t < -1)]
    if bad.size:
        raise InputError(f"target {bad.tolist()} out of range: the model has {k} classes (0..{k - 1}, -1 = top)")
    return np.where(t < 0, top, t)


def draw_methods(info: ModelInfo, x, maps, samples, methods, out, view="heatmap", cell_size=128) -> list:
    """The grid of :func:`compare_methods`; returns the cell boxes."""
    low, high = info.input_range(x)
    rows, titles, caps = [], [], []
    for i, s in enumerate(samples):
        xi = info.chw(x[i])
        rows.append([vz.input_image(xi, low, high)]
                    + [cell(m, xi, info.chw(maps[m][i]), low, high, view) for m in methods])
        titles.append(f"{display_name(s['name'])}\n{short(s['label'], 20)}\n"
                      f"p={s['prob']:.3f} z={s['logit']:.2f}")
        second = s["top"][1] if len(s["top"]) > 1 else None
        expl = (f"explained: {short(s['target_label'], 14)}" if s["target"] != s["class"]
                else f"2nd: {short(second['label'], 12)} {second['prob']:.2f}" if second else "")
        caps.append([expl] + [f"sum={s['stats'][m]['sum']:.3g}" for m in methods])
    return vz.grid(rows, out, titles, ["input"] + list(methods), cell_size, caps,
                   title=f"{info.name}: rows = inputs (predicted class, softmax p, logit z), columns = methods")


def compare_models(models: Sequence, images, methods: Sequence[str], *, targets=None, params: Optional[dict] = None,
                   out: Optional[str] = None, view: str = "heatmap", value_range=None, cell_size: int = 128,
                   index: Optional[Sequence[int]] = None, warn=None, **compile_opts) -> dict:
    """The same methods on several models for the same images: rows = (image, model), columns = methods.

    Parameters
    ----------
    models : list of str
        Model files; each reads the images with its own preprocess spec.
    images : str or list of str
        Image files or folders, or one ``.npy``/``.npz`` array in the *first* model's input layout
        and range, or uint8 pixels (converted to pixels with that model's spec, then to each model's input).
    methods : list of str
        Method names.
    targets : int or list of int, optional
        Class per image (default: each model's own top class).
    params, out, view, value_range, cell_size, **compile_opts
        As in :func:`compare_methods`.
    index : list of int, optional
        Use only these samples (array rows or image files in order).
    warn : callable, optional
        Receives loader warnings (mode conversion, resizing).

    Returns
    -------
    dict
        ``models`` (per model: path and the :func:`compare_methods` result for its inputs), ``figure``,
        ``boxes`` when drawn.
    """
    from ..images import find_images, load_array, load_pixels

    infos = [m if isinstance(m, ModelInfo) else open_model(m, value_range) for m in models]
    missing = [i.path for i in infos if i.spec is None]
    if missing:
        raise InputError(f"compare-models needs image models; no image layout for {', '.join(missing)}")
    paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if len(paths) == 1 and os.fspath(paths[0]).lower().endswith((".npy", ".npz")):
        arr = load_array(os.fspath(paths[0]), infos[0].spec)
        idx = list(range(len(arr))) if index is None else [int(i) for i in index]
        bad = [i for i in idx if not 0 <= i < len(arr)]
        if bad:
            raise InputError(f"index {bad} out of range: {paths[0]} holds {len(arr)} inputs")
        pixels = np.clip(infos[0].spec.to_pixels(arr[idx]), 0, 255)
        names = [f"{os.path.basename(os.fspath(paths[0]))}[{i}]" for i in idx]
        per_model = [_resize_pixels(pixels, i.spec) for i in infos]
    else:
        files = find_images(paths)
        files = files if index is None else [files[int(i)] for i in index]
        names = files
        per_model = [load_pixels(files, i.spec, warn) for i in infos]
    results = []
    for info, pix in zip(infos, per_model):
        x = info.spec.from_pixels(pix)
        results.append(compare_methods(info, x, methods, names=names, targets=targets, params=params,
                                       **compile_opts))
    result = {"models": [{"path": i.path, **r} for i, r in zip(infos, results)], "methods": list(methods),
              "figure": out}
    if out:
        xs = [i.spec.from_pixels(p) for i, p in zip(infos, per_model)]
        result["boxes"] = _draw_models(infos, xs, results, methods, out, view, cell_size)
    return result


def _resize_pixels(pixels: np.ndarray, spec) -> np.ndarray:
    """Float pixels ``[N, H, W, C]`` fitting ``spec``: unchanged when they fit, else (rounded to uint8) the
    channels averaged or repeated and each image resized and center-cropped."""
    from PIL import Image

    from ..images import fit

    if pixels.shape[1:] == (spec.height, spec.width, spec.channels):
        return pixels
    p = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    if p.shape[-1] != spec.channels:
        p = (p.mean(-1, keepdims=True).round().astype(np.uint8) if spec.channels == 1
             else np.repeat(p, spec.channels, -1))
    if p.shape[1:3] == (spec.height, spec.width):
        return p
    out = []
    for img in p:
        im = Image.fromarray(img[..., 0] if spec.channels == 1 else img)
        a = np.asarray(fit(im, spec.width, spec.height))
        out.append(a[..., None] if a.ndim == 2 else a)
    return np.stack(out)


def _draw_models(infos, xs, results, methods, out, view, cell_size) -> list:
    rows, titles, caps = [], [], []
    n = len(xs[0])
    for i in range(n):
        for info, x, res in zip(infos, xs, results):
            s = res["samples"][i]
            low, high = info.input_range(x)
            xi = info.chw(x[i])
            rows.append([vz.input_image(xi, low, high)]
                        + [cell(m, xi, info.chw(res["maps"][m][i]), low, high, view) for m in methods])
            titles.append(f"{short(info.name, 22)}\n{display_name(s['name'], 22)}\n"
                          f"{short(s['label'], 14)} p={s['prob']:.3f}\nz={s['logit']:.2f}")
            caps.append([f"{info.spec.layout} {info.spec.channels}x{info.spec.height}x{info.spec.width}"]
                        + [f"sum={s['stats'][m]['sum']:.3g}" for m in methods])
    return vz.grid(rows, out, titles, ["input as read"] + list(methods), cell_size, caps,
                   title="rows = models (prediction, softmax p, logit z), columns = methods")
