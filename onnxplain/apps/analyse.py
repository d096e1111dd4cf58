"""Analyse one prediction: several output neurons (classes) x several methods for one input.

Which evidence does the network see for each of its top candidates? One row per explained
class (by default the five top-scoring classes), one column per method; beside each row the
class name, its softmax probability and its logit. With a known true label (``label``) a
misprediction can be examined: the row of the true class shows what speaks for it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..compiler.errors import InputError
from ..runtime import visualize as vz
from .common import ModelInfo, Scorer, cell, display_name, map_stats, open_model, short
from .compare import explain_batch


def analyse(model, x: np.ndarray, methods: Sequence[str], *, targets: Optional[Sequence[int]] = None, top: int = 5,
            name: str = "input", label: Optional[int] = None, params: Optional[dict] = None,
            out: Optional[str] = None, view: str = "heatmap", cell_size: int = 128, value_range=None,
            **compile_opts) -> dict:
    """Explain several classes of one input with several methods.

    Parameters
    ----------
    model : str or ModelInfo
        The model file.
    x : numpy.ndarray
        One input in the model's layout, with or without the batch axis (``[1, ...]`` or ``[...]``).
    methods : list of str
        Method names.
    targets : list of int, optional
        The classes to explain (default: the ``top`` highest logits, best first).
    top : int
        Number of classes when ``targets`` is not given.
    name : str
        The input's name in the figure.
    label : int, optional
        The true class, written in the title (and marked in its row).
    params, out, view, cell_size, value_range, **compile_opts
        As in :func:`onnxplain.apps.compare.compare_methods`.

    Returns
    -------
    dict
        ``predicted`` (class, label, prob, logit), ``rows`` (per explained class: class, label,
        prob, logit, rank by logit, per-method statistics), ``maps`` (method -> ``[K, ...]``, row
        ``k`` explains ``rows[k]``), ``logits``/``probs`` (``[K_classes]``), ``figure`` and, when drawn,
        ``boxes`` (each cell's box).
    """
    info = model if isinstance(model, ModelInfo) else open_model(model, value_range)
    x = _one(np.asarray(x, np.float32), info)
    logits, probs = Scorer(info.proto, info.opts(compile_opts)["output"])(x)
    logits, probs = logits[0], probs[0]
    order = np.argsort(-logits, kind="stable")
    rank = {int(c): r for r, c in enumerate(order)}
    tg = [int(c) for c in order[: min(top, len(order))]] if targets is None else [int(t) for t in targets]
    bad = [t for t in tg if not 0 <= t < len(logits)]
    if bad or not tg:
        raise InputError(f"targets {bad or tg} out of range: the model has {len(logits)} classes "
                         f"(0..{len(logits) - 1})")
    batch = np.repeat(x, len(tg), 0)
    maps = explain_batch(info, batch, methods, np.array(tg, np.int64), params, batch_size=len(tg), **compile_opts)
    rows = [{"class": t, "label": info.label(t), "prob": float(probs[t]), "logit": float(logits[t]),
             "rank": rank[t] + 1, "stats": {m: map_stats(maps[m][k]) for m in methods}} for k, t in enumerate(tg)]
    k0 = int(order[0])
    result = {"model": info.path, "name": name, "methods": list(methods), "true_label": label,
              "predicted": {"class": k0, "label": info.label(k0), "prob": float(probs[k0]),
                            "logit": float(logits[k0])},
              "rows": rows, "maps": maps, "logits": logits, "probs": probs, "figure": out}
    if out:
        result["boxes"] = _draw(info, x[0], result, methods, out, view, cell_size)
    return result


def _one(x: np.ndarray, info: ModelInfo) -> np.ndarray:
    shape = info.spec.sample_shape if info.spec is not None else None
    if shape is not None and x.shape == tuple(shape):
        return x[None]
    if x.ndim >= 1 and len(x) == 1:
        return x
    raise InputError(f"analyse takes one input; got an array of shape {x.shape} (use --index to pick one)")


def _draw(info: ModelInfo, x, result, methods, out, view, cell_size) -> list:
    low, high = info.input_range(x[None])
    xi = info.chw(x)
    img = vz.input_image(xi, low, high)
    true = result["true_label"]
    rows, titles, caps = [], [], []
    for k, r in enumerate(result["rows"]):
        rows.append([img] + [cell(m, xi, info.chw(result["maps"][m][k]), low, high, view) for m in methods])
        mark = " (true)" if true is not None and r["class"] == true else ""
        name = "" if r["label"] == str(r["class"]) else f"{short(r['label'], 20)}\n"
        titles.append(f"#{r['rank']} class {r['class']}{mark}\n{name}p={r['prob']:.4f}\nlogit={r['logit']:.3f}")
        caps.append([""] + [f"sum={r['stats'][m]['sum']:.3g}" for m in methods])
    p = result["predicted"]
    title = (f"{info.name} on {display_name(result['name'], 30)}: predicted {short(p['label'], 20)} "
             f"(p={p['prob']:.3f})" + (f", true class {true} ({short(info.label(true), 20)})" if true is not None
                                        else "") + "; rows = explained classes")
    return vz.grid(rows, out, titles, ["input"] + list(methods), cell_size, caps, title=title)
