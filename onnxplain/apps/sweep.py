"""Hyper-parameter sweep: how IG's reference and SmoothGrad's noise scale and post-processing change the map.

Integrated gradients (Sundararajan et al. 2017) explain ``x`` relative to a reference ``x'``:
``IG_i = (x_i - x'_i) * mean_k df/dx_i(x' + a_k (x - x'))``. A black reference credits bright
pixels, a white one dark pixels, a gray one both, so the same prediction gets different maps.
SmoothGrad (Smilkov et al. 2017) averages the gradient over noisy copies ``x + N(0, s^2)`` with
``s = noise_scale * (max x - min x)``: too little noise leaves the gradient's speckle, too much
washes out the object; the post-processing (``abs`` or ``square`` of each gradient before
averaging) decides whether opposite signs cancel.

The figure has, per input, one row for IG over the references (black -> gray -> white by
default) and one row per SmoothGrad post-processing over increasing noise scales; the first
cell of each row is the input. Each setting is compiled on its own (the parameters are
compile-time constants of the explanation graph).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..runtime import visualize as vz
from .common import ModelInfo, Scorer, display_name, map_stats, method_params, open_model, short

DEFAULT_REFERENCES = ("black", "gray", "white")
DEFAULT_NOISE = (0.02, 0.1, 0.2, 0.4)
DEFAULT_POSTPROCESS = ("abs", "square")


def settings(references: Sequence = DEFAULT_REFERENCES, noise_scales: Sequence[float] = DEFAULT_NOISE,
             postprocess: Sequence[str] = DEFAULT_POSTPROCESS, steps: int = 32, samples: int = 32) -> list:
    """The swept settings: ``[(row, caption, method, params), ...]`` in figure order."""
    out = [("integrated_gradients", f"reference={r}", "integrated_gradients", {"reference": r, "steps": steps})
           for r in references]
    for p in postprocess:
        out += [(f"smoothgrad {p}", f"noise={s:g}", "smoothgrad",
                 {"noise_scale": float(s), "postprocess": p, "samples": samples}) for s in noise_scales]
    return out


def sweep(model, x: np.ndarray, *, names: Optional[Sequence[str]] = None, targets=None,
          references: Sequence = DEFAULT_REFERENCES, noise_scales: Sequence[float] = DEFAULT_NOISE,
          postprocess: Sequence[str] = DEFAULT_POSTPROCESS, steps: int = 32, samples: int = 32,
          out: Optional[str] = None, cell_size: int = 112, value_range=None, progress: Optional[bool] = None,
          **compile_opts) -> dict:
    """Explain a batch with IG over references and SmoothGrad over noise scales and post-processings.

    Parameters
    ----------
    model : str or ModelInfo
        The model file (IG's ``black``/``white``/``gray`` come from its input range).
    x : numpy.ndarray
        The batch in the model's layout (one row group per sample in the figure).
    names : list of str, optional
        One name per sample.
    targets : int or array of int, optional
        Class per sample (default: the top class).
    references : list
        IG references (``zeros``, ``black``, ``gray``, ``white``, ``mean`` or a number).
    noise_scales : list of float
        SmoothGrad noise scales (fractions of each sample's value range).
    postprocess : list of str
        SmoothGrad post-processings, one row each (``none``, ``abs``, ``square``).
    steps, samples : int
        IG steps and SmoothGrad samples of every setting.
    out : str, optional
        Write the PNG figure there.
    cell_size : int
        Side of a cell.
    value_range, progress, **compile_opts
        As in :func:`onnxplain.apps.compare.compare_methods`.

    Returns
    -------
    dict
        ``settings`` (per setting: row, caption, method, params, per-sample map statistics),
        ``maps`` (one array per setting, in the same order), ``samples`` (name, target, prob,
        logit), ``figure``, ``boxes`` when drawn.
    """
    from tqdm.auto import tqdm

    from ..api import Explainer

    info = model if isinstance(model, ModelInfo) else open_model(model, value_range)
    x = np.asarray(x, np.float32)
    names = list(names) if names is not None else [f"#{i}" for i in range(len(x))]
    logits, probs = Scorer(info.proto, info.opts(compile_opts)["output"])(x)
    tgt = logits.argmax(1) if targets is None else np.broadcast_to(np.asarray(targets, np.int64).reshape(-1), (len(x),))
    rows, maps = [], []
    todo = settings(references, noise_scales, postprocess, steps, samples)
    for row, caption, method, p in tqdm(todo, desc="sweep", unit="setting", disable=not (progress or progress is None
                                                                                          and len(todo) > 4)):
        spec = {method: {**method_params([method], info)[method], **p}}
        exp = Explainer(info.proto, spec, batch_size=max(1, len(x)), progress=False, **info.opts(compile_opts))
        m = np.asarray(exp.explain({info.input_name: x}, np.asarray(tgt, np.int64))[method])
        maps.append(m)
        rows.append({"row": row, "caption": caption, "method": method, "params": p,
                     "stats": [map_stats(m[i]) for i in range(len(x))]})
    samples_ = [{"name": names[i], "target": int(tgt[i]), "label": info.label(int(tgt[i])),
                 "prob": float(probs[i, tgt[i]]), "logit": float(logits[i, tgt[i]])} for i in range(len(x))]
    result = {"model": info.path, "settings": rows, "maps": maps, "samples": samples_, "figure": out}
    if out:
        result["boxes"] = _draw(info, x, result, out, cell_size)
    return result


def _draw(info: ModelInfo, x, result, out, cell_size) -> list:
    low, high = info.input_range(x)
    groups = []
    for s in result["settings"]:
        if not groups or groups[-1][0] != s["row"]:
            groups.append((s["row"], []))
        groups[-1][1].append(s)
    index = {id(s): k for k, s in enumerate(result["settings"])}
    cells, titles, caps = [], [], []
    for i, smp in enumerate(result["samples"]):
        xi = info.chw(x[i])
        img = vz.input_image(xi, low, high)
        for g, (row, members) in enumerate(groups):
            pics = []
            for s in members:
                r = info.chw(result["maps"][index[id(s)]][i])
                signed = s["method"] == "integrated_gradients" or s["params"].get("postprocess") == "none"
                pics.append(vz.heatmap(r) if signed else vz.graymap(r, reduce="sum"))
            cells.append([img] + pics)
            head = f"{display_name(smp['name'], 18)}\n{short(smp['label'], 18)} p={smp['prob']:.3f}\n" \
                if g == 0 else ""
            titles.append(head + row)
            caps.append(["input"] + [s["caption"] for s in members])
    return vz.grid(cells, out, titles, (), cell_size, caps,
                   title=f"{info.name}: IG over references, SmoothGrad over noise scales "
                         "(IG signed: blue < 0 < red; SmoothGrad abs/square: gray levels)")
