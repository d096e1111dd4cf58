"""Perturbation analysis ("pixel flipping", region perturbation) of explanation methods.

Samek, Binder, Montavon, Lapuschkin and Müller (2017), *Evaluating the visualization of what a deep
neural network has learned*, IEEE TNNLS 28(11); Bach et al. (2015), *On pixel-wise explanations for
non-linear classifier decisions by layer-wise relevance propagation*, PLoS ONE 10(7).

The input is split into non-overlapping regions (e.g. 4x4 pixels over every channel). A map ``R``
gives each region the score ``s_r = sum_{p in r} R_p`` (``region_score="sum"``) or
``sum_{p in r} |R_p|`` (``"abs"``). The regions are removed in the order of decreasing score (MoRF,
most relevant first; ties broken by region index) or increasing score (LeRF): removing means replacing
the region's values by a *fill* (uniform noise in the input range, as in Samek et al.). With ``x^(0) = x``
and ``x^(k)`` the input after ``k`` steps (``k * per_step`` regions removed), the area over the
perturbation curve is

    AOPC = 1/(L+1) * sum_{k=0..L} < f(x^(0)) - f(x^(k)) >_images

where ``f`` is the explained score (the pre-softmax logit of the target class, as in the compiled
models). A better explanation removes the evidence faster: a higher MoRF AOPC. A map of uniform random
numbers (:func:`random_attribution`) is the baseline every method should beat.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from ..compiler.errors import InputError
from .evaluation_plots import plot_curves, save_text, write_atomic  # noqa: F401 (public here too)

__all__ = ["ScoreModel", "PerturbationResult", "perturbation_analysis", "compare_methods", "parse_entries",
           "explain_entries", "random_attribution", "make_fill", "gaussian_blur", "region_shape", "region_ids",
           "region_scores", "removal_rank", "perturb", "plot_curves", "save_text", "write_atomic"]

FILLS = ("noise", "mean", "zero", "constant", "blur")
SENSITIVITY_METHODS = ("gradient", "smoothgrad", "vargrad")


# ----------------------------------------------------------------------------------------------- scoring
class ScoreModel:
    """Run a plain ONNX model and return its explained scores (pre-softmax logits by default).

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The classifier; it must have exactly one input.
    output : str, optional
        The scored output (default: the first output).
    strip_softmax : bool
        Score the input of a final Softmax/LogSoftmax (the logit), as :func:`onnxplain.compile` explains it.
    providers, threads
        ONNX Runtime execution providers and CPU intra-op threads.
    """

    def __init__(self, model, output: Optional[str] = None, strip_softmax: bool = True, providers=None,
                 threads: Optional[int] = None):
        from ..compiler.graph import load_model
        from ..runtime.session import make_session

        import onnx

        proto = onnx.ModelProto()
        proto.CopyFrom(load_model(model))   # never change the caller's model
        self.tensor = _scored_tensor(proto, output, strip_softmax)
        if self.tensor not in [o.name for o in proto.graph.output]:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(self.tensor))
        self.session = make_session(proto, providers, threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InputError(f"perturbation analysis needs a model with one input, this one has "
                             f"{[i.name for i in inputs]}")
        self.input = inputs[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Scores ``[N, K]`` (the scored tensor flattened per sample) for a batch ``x``."""
        from ..runtime.session import _NP_TYPES, check_array

        arr = check_array(self.input.name, x, list(self.input.shape), _NP_TYPES.get(self.input.type))
        out = self.session.run([self.tensor], {self.input.name: arr})[0]
        return np.asarray(out).reshape(len(arr), -1)


def _scored_tensor(proto, output: Optional[str], strip_softmax: bool) -> str:
    names = [o.name for o in proto.graph.output]
    out = output or names[0]
    if out not in names:
        raise InputError(f"the model has no output '{out}'; choose one of {names}")
    if not strip_softmax:
        return out
    from ..compiler.head import final_softmax, producers_of

    node = final_softmax(producers_of(proto), out)
    return out if node is None else node.input[0]


# ----------------------------------------------------------------------------------------------- regions
def region_shape(sample_shape: Sequence[int], region=None) -> tuple:
    """The region size per tiled axis: the last ``len(region)`` axes are tiled, earlier axes (channels)
    belong to every region.

    ``region=None`` picks: for 1-D samples single features ``(1,)``; otherwise square regions over the
    last two axes with side ``clip(min(H, W) // 7, 1, 16)`` (4x4 on 28x28, 16x16 on 224x224). An int
    ``s`` means ``(s, s)`` on samples with two or more axes and ``(s,)`` on 1-D samples; pass a 1-tuple
    such as ``(8,)`` for 1-D windows along the last axis of ``[C, L]`` sequences.
    """
    shape = tuple(int(d) for d in sample_shape)
    if region is None:
        region = 1 if len(shape) == 1 else int(np.clip(min(shape[-2:]) // 7, 1, 16))
    if np.isscalar(region):
        region = (int(region),) * min(2, len(shape))
    region = tuple(int(r) for r in region)
    if not region or len(region) > len(shape) or any(r < 1 for r in region):
        raise InputError(f"region {region} does not fit samples of shape {shape}: give 1 to {len(shape)} "
                         "positive sizes for the last axes (e.g. 4 or (4, 4) for images, (8,) for 1-D windows)")
    if any(r > d for r, d in zip(region, shape[-len(region):])):
        raise InputError(f"region {region} is larger than the tiled axes {shape[-len(region):]}")
    return region


def region_ids(sample_shape: Sequence[int], region: Sequence[int]) -> tuple:
    """``(ids, count)``: the region index of every position of the tiled axes (raster order of the
    regions; edge regions are smaller where a size does not divide the axis) and the number of regions."""
    tiled = tuple(sample_shape[-len(region):])
    grid = [np.arange(d) // r for d, r in zip(tiled, region)]
    counts = [-(-d // r) for d, r in zip(tiled, region)]
    ids = np.ravel_multi_index(np.meshgrid(*grid, indexing="ij"), counts)
    return ids, int(np.prod(counts))


def region_scores(maps: np.ndarray, ids: np.ndarray, count: int, how: str = "sum") -> np.ndarray:
    """``[N, count]``: per sample, the sum of ``maps`` (or of ``|maps|``) over each region and channel."""
    m = np.asarray(maps, np.float64)
    if how == "abs":
        m = np.abs(m)
    elif how != "sum":
        raise InputError(f"region_score must be 'sum' or 'abs', got {how!r}")
    n = m.shape[0]
    lead = m.shape[1:m.ndim - ids.ndim]
    m = m.reshape((n, int(np.prod(lead)) if lead else 1) + ids.shape).sum(1)
    offs = (np.arange(n)[:, None] * count + ids.reshape(1, -1)).ravel()
    return np.bincount(offs, weights=m.reshape(-1), minlength=n * count).reshape(n, count)


def removal_rank(scores: np.ndarray, order: str = "morf") -> np.ndarray:
    """``[N, count]``: the step rank (0 = removed first) of every region. Ties are broken by the region
    index (a stable sort), so the result is deterministic."""
    if order == "morf":
        idx = np.argsort(-scores, axis=1, kind="stable")
    elif order == "lerf":
        idx = np.argsort(scores, axis=1, kind="stable")
    else:
        raise InputError(f"order must be 'morf' (most relevant first) or 'lerf', got {order!r}")
    rank = np.empty_like(idx)
    np.put_along_axis(rank, idx, np.arange(scores.shape[1])[None].repeat(len(scores), 0), axis=1)
    return rank


# ----------------------------------------------------------------------------------------------- fills
def make_fill(x: np.ndarray, fill: str = "noise", *, value_range=(0.0, 1.0), value: float = 0.0,
              sigma: float = 2.0, seed: int = 0, index: Optional[Sequence[int]] = None,
              tiled_axes: int = 2) -> np.ndarray:
    """The replacement values for the samples ``x`` (same shape): what a removed region becomes.

    Parameters
    ----------
    x : numpy.ndarray
        Samples ``[N, ...]``.
    fill : str
        ``"noise"``: uniform noise in ``value_range`` (Samek et al. 2017), drawn per sample from
        ``numpy.random.default_rng([seed, index])`` so that it does not depend on the batching;
        ``"mean"``: each sample's mean per channel (over the tiled axes); ``"zero"``; ``"constant"``:
        ``value``; ``"blur"``: a Gaussian blur (standard deviation ``sigma`` positions, reflected edges)
        of the sample over the tiled axes.
    value_range : (low, high)
        Scalars or one value per channel (axis 1).
    index : sequence of int, optional
        The samples' indices in the data set (default ``0..N-1``), for the noise seeds.
    tiled_axes : int
        How many trailing axes are spatial (for ``mean`` and ``blur``).
    """
    x = np.asarray(x)
    index = range(len(x)) if index is None else index
    if fill == "noise":
        lo, hi = (_per_channel(v, x.shape[1:]) for v in value_range)
        return np.stack([lo + (hi - lo) * np.random.default_rng([int(seed), int(i)]).random(x.shape[1:])
                         for i in index]).astype(x.dtype)
    if fill == "mean":
        axes = tuple(range(x.ndim - tiled_axes, x.ndim))
        return np.broadcast_to(x.mean(axis=axes, keepdims=True, dtype=np.float64), x.shape).astype(x.dtype)
    if fill in ("zero", "constant"):
        return np.full_like(x, 0.0 if fill == "zero" else value)
    if fill == "blur":
        return gaussian_blur(x, sigma, tiled_axes).astype(x.dtype)
    raise InputError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")


def _per_channel(v, sample_shape) -> np.ndarray:
    v = np.asarray(v, np.float64).reshape(-1)
    if v.size == 1 or len(sample_shape) < 2:
        return v.reshape(()) if v.size == 1 else v
    if v.size != sample_shape[0]:
        raise InputError(f"value range has {v.size} values; expected 1 or one per channel ({sample_shape[0]})")
    return v.reshape((-1,) + (1,) * (len(sample_shape) - 1))


def gaussian_blur(x: np.ndarray, sigma: float, axes: int = 2) -> np.ndarray:
    """Separable Gaussian blur of the last ``axes`` axes (kernel radius ``ceil(3 sigma)``, reflected edges)."""
    out = np.asarray(x, np.float64)
    if sigma <= 0:
        return out
    rad = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
    k /= k.sum()
    for ax in range(out.ndim - axes, out.ndim):
        pad = [(0, 0)] * out.ndim
        pad[ax] = (rad, rad)
        p = np.pad(out, pad, mode="reflect" if out.shape[ax] > 1 else "edge")
        out = sum(k[j] * np.take(p, np.arange(j, j + out.shape[ax]), axis=ax) for j in range(len(k)))
    return out


def random_attribution(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A baseline 'explanation': i.i.d. uniform numbers in [0, 1) (``numpy.random.default_rng(seed)``).

    Summed per region it gives a random removal order, the baseline of Samek et al. (2017)."""
    return np.random.default_rng(int(seed)).random(tuple(shape))


def perturb(x: np.ndarray, fill: np.ndarray, rank: np.ndarray, ids: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``x^(k)``: samples ``x[j]`` with every region of rank ``< removed[j]`` replaced by ``fill[j]``.

    ``rank`` is ``[B, count]`` (see :func:`removal_rank`), ``ids`` the region index per tiled position."""
    pix = np.take_along_axis(rank, np.broadcast_to(ids.reshape(1, -1), (len(rank), ids.size)), axis=1)
    mask = (pix < np.asarray(removed).reshape(-1, 1)).reshape((len(rank),) + (1,) * (x.ndim - 1 - ids.ndim)
                                                              + ids.shape)
    return np.where(mask, fill, x)


# ----------------------------------------------------------------------------------------------- result
@dataclass
class PerturbationResult:
    """Curves and AOPC of a perturbation analysis.

    Attributes
    ----------
    scores : dict
        ``label -> [N, L+1]`` array: ``f(x^(k))`` per image and step.
    removed : numpy.ndarray
        ``[L+1]``: regions removed after step ``k`` (``k * per_step``, at most ``count``).
    count : int
        Regions per sample.
    target : numpy.ndarray
        The scored class per image.
    settings : dict
        region, order, fill, region_score per label, seed, ...
    """

    scores: dict
    removed: np.ndarray
    count: int
    target: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def labels(self) -> list:
        return list(self.scores)

    def drop(self, label: str) -> np.ndarray:
        """``[N, L+1]``: ``f(x^(0)) - f(x^(k))``."""
        s = self.scores[label]
        return s[:, :1] - s

    def aopc_per_image(self, label: str) -> np.ndarray:
        """``[N]``: ``1/(L+1) sum_k (f(x^(0)) - f(x^(k)))``."""
        return self.drop(label).mean(1)

    @property
    def aopc(self) -> dict:
        """``label -> AOPC`` (averaged over images)."""
        return {m: float(self.aopc_per_image(m).mean()) for m in self.scores}

    def mean_curve(self, label: str) -> np.ndarray:
        """``[L+1]``: the mean over images of ``f(x^(k))``."""
        return self.scores[label].mean(0)

    def ranking(self) -> list:
        """``(label, AOPC)`` sorted best first: highest for MoRF, lowest for LeRF."""
        lerf = self.settings.get("order") == "lerf"
        return sorted(self.aopc.items(), key=lambda kv: kv[1], reverse=not lerf)

    def versus(self, label: str, baseline: str = "random") -> tuple:
        """``(mean, standard error)`` over images of the paired difference ``AOPC_label - AOPC_baseline``."""
        d = self.aopc_per_image(label) - self.aopc_per_image(baseline)
        return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")

    def table(self, markdown: bool = True) -> str:
        """AOPC per method (standard error over images; the paired difference to the random baseline), best
        first."""
        n = len(self.target)
        rows = []
        for rank, (m, a) in enumerate(self.ranking(), 1):
            se = float(self.aopc_per_image(m).std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
            dv, ds = self.versus(m) if "random" in self.scores and m != "random" else (float("nan"),) * 2
            rows.append((rank, m, a, se, dv, ds, float(self.mean_curve(m)[-1])))
        head = ["rank", "method", "AOPC", "± s.e.", "minus random", "± s.e.", "mean f at end"]
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
            lines += [f"| {r} | `{m}` | {a:.3f} | {se:.3f} | {_f(dv)} | {_f(ds, '')} | {e:.3f} |"
                      for r, m, a, se, dv, ds, e in rows]
        else:
            w = max([len(m) for _, m, *_ in rows] + [6])
            lines = [f"{'rank':>4}  {'method':<{w}}  {'AOPC':>8}  {'± s.e.':>7}  {'minus random':>12}  {'± s.e.':>7}"
                     f"  {'mean f at end':>13}"]
            lines += [f"{r:>4}  {m:<{w}}  {a:>8.3f}  {se:>7.3f}  {_f(dv):>12}  {_f(ds, ''):>7}  {e:>13.3f}"
                      for r, m, a, se, dv, ds, e in rows]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready: settings, AOPC (and its per-image values), mean curves, the removed counts."""
        return {"settings": self.settings, "images": int(len(self.target)), "regions": int(self.count),
                "removed": self.removed.tolist(), "aopc": self.aopc,
                "ranking": [m for m, _ in self.ranking()],
                "mean_curve": {m: self.mean_curve(m).tolist() for m in self.scores},
                "aopc_per_image": {m: self.aopc_per_image(m).tolist() for m in self.scores},
                "target": self.target.tolist()}


def _f(v: float, sign: str = "+") -> str:
    return "-" if np.isnan(v) else f"{v:{sign}.3f}"


# ----------------------------------------------------------------------------------------------- analysis
def perturbation_analysis(model, x: np.ndarray, attributions: dict, target=None, *, region=None,
                          steps: Optional[int] = None, per_step: int = 1, fill: str = "noise",
                          value_range=None, fill_value: float = 0.0, blur_sigma: Optional[float] = None,
                          order: str = "morf", region_score: Union[None, str, dict] = None, seed: int = 0,
                          random_baseline: bool = True, batch_size: int = 256, max_bytes: int = 1 << 28,
                          output: Optional[str] = None, strip_softmax: bool = True, providers=None,
                          threads: Optional[int] = None, progress: Optional[bool] = None) -> PerturbationResult:
    """Remove regions in the order each attribution gives and record the model's score (Samek et al. 2017).

    Parameters
    ----------
    model : str, os.PathLike, bytes, onnx.ModelProto or ScoreModel
        The classifier (one input).
    x : numpy.ndarray
        Samples ``[N, ...]`` as the model takes them.
    attributions : dict
        ``label -> maps`` shaped like ``x`` (e.g. ``onnxplain.Explainer(model, methods).explain(x)``).
    target : int or array of int, optional
        The scored class per sample (default: the model's top class on ``x``); the maps must explain it.
    region : int or tuple, optional
        Region size over the last axes (see :func:`region_shape`; default 4x4 on 28x28).
    steps : int, optional
        ``L``, the number of perturbation steps (default: until every region is removed, at most 100).
    per_step : int
        Regions removed per step.
    fill : str
        ``noise`` (default, uniform in ``value_range``), ``mean``, ``zero``, ``constant`` (``fill_value``)
        or ``blur`` (``blur_sigma``, default half the region side); see :func:`make_fill`.
    value_range : (low, high), optional
        The input range for the noise (scalars or per channel; default: min and max of ``x``).
    order : str
        ``morf`` (most relevant first, default) or ``lerf`` (least relevant first).
    region_score : str or dict, optional
        ``sum`` or ``abs`` of the map per region, for all labels or per label. Default: ``abs`` for the
        sensitivity methods (labels starting with gradient, smoothgrad, vargrad), whose sign is not
        evidence, ``sum`` for the others (relevance, as in Samek et al.).
    seed : int
        Seed of the noise fill and of the random baseline.
    random_baseline : bool
        Add the label ``random`` (:func:`random_attribution`) unless present.
    batch_size, max_bytes : int
        Perturbed samples per inference, bounded so that one batch takes at most ``max_bytes``.
    output, strip_softmax, providers, threads
        As in :class:`ScoreModel`.
    progress : bool, optional
        Show a tqdm bar (default: when there is more than one batch).

    Returns
    -------
    PerturbationResult
    """
    scorer = model if isinstance(model, ScoreModel) else ScoreModel(model, output, strip_softmax, providers, threads)
    x = np.asarray(x)
    attributions = _check_maps(x, attributions, random_baseline, seed)
    region = region_shape(x.shape[1:], region)
    ids, count = region_ids(x.shape[1:], region)
    per_step = int(per_step)
    if per_step < 1:
        raise InputError(f"per_step must be >= 1, got {per_step}")
    full = -(-count // per_step)
    steps = min(full, 100) if steps is None else int(steps)
    if not 1 <= steps <= full:
        raise InputError(f"steps must be 1..{full} ({count} regions of {region}, {per_step} per step), got {steps}")
    removed = np.minimum(np.arange(steps + 1) * per_step, count)
    how = _region_score_choice(region_score, attributions)
    ranks = {m: removal_rank(region_scores(a, ids, count, how[m]), order) for m, a in attributions.items()}
    lo_hi = _value_range(x, value_range)
    fill_opts = dict(value_range=lo_hi, value=fill_value, seed=seed, tiled_axes=len(region),
                     sigma=blur_sigma if blur_sigma is not None else max(region) / 2)
    tgt = _target(scorer, x, target, batch_size)
    scores = _run_steps(scorer, x, tgt, ranks, ids, removed, fill, fill_opts, batch_size, max_bytes, progress)
    settings = {"region": list(region), "per_step": per_step, "steps": steps, "order": order, "fill": fill,
                "value_range": [np.asarray(v).tolist() for v in lo_hi], "seed": int(seed),
                "region_score": how, "scored_tensor": scorer.tensor}
    if fill == "constant":
        settings["fill_value"] = float(fill_value)
    if fill == "blur":
        settings["blur_sigma"] = float(fill_opts["sigma"])
    return PerturbationResult(scores, removed, count, tgt, settings)


def _check_maps(x, attributions: dict, random_baseline: bool, seed: int) -> dict:
    if not isinstance(attributions, dict):
        raise InputError("attributions must be a dict label -> maps shaped like x")
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"x must be a non-empty batch [N, ...], got shape {x.shape}")
    out, problems = {}, []
    for m, a in attributions.items():
        a = np.asarray(a)
        if a.shape != x.shape:
            problems.append(f"'{m}': maps of shape {a.shape}, the inputs have shape {x.shape}")
        elif not np.all(np.isfinite(a)):
            problems.append(f"'{m}': maps contain NaN or Inf")
        out[m] = a
    if problems:
        raise InputError("bad attributions:\n  - " + "\n  - ".join(problems))
    if random_baseline and "random" not in out:
        out["random"] = random_attribution(x.shape, seed)
    if not out:
        raise InputError("no attributions to evaluate")
    return out


def _region_score_choice(region_score, attributions: dict) -> dict:
    if isinstance(region_score, dict):
        return {m: region_score.get(m, _default_score(m)) for m in attributions}
    return {m: region_score or _default_score(m) for m in attributions}


def _default_score(label: str) -> str:
    base = label.split(":")[0].split("[")[0]
    return "abs" if base in SENSITIVITY_METHODS else "sum"


def _value_range(x, value_range) -> tuple:
    if value_range is None:
        return float(x.min()), float(x.max())
    if len(value_range) != 2:
        raise InputError(f"value_range must be (low, high), got {value_range!r}")
    return tuple(np.asarray(v, np.float64) if np.ndim(v) else float(v) for v in value_range)


def _target(scorer, x, target, batch_size) -> np.ndarray:
    n = len(x)
    if target is None:
        return np.concatenate([scorer(x[s:s + batch_size]).argmax(1) for s in range(0, n, batch_size)])
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise InputError(f"target must hold integer class indices, got dtype {t.dtype}")
    t = np.broadcast_to(t.reshape(-1), (n,)) if t.size == 1 else t.reshape(-1)
    if t.shape != (n,) or np.any(t < 0):
        raise InputError(f"target must be one non-negative class per sample ({n}), got shape {t.shape}")
    return t.astype(np.int64)


def _run_steps(scorer, x, tgt, ranks, ids, removed, fill, fill_opts, batch_size, max_bytes, progress) -> dict:
    """Score every (label, image, step) in batches of at most ``batch_size`` and ``max_bytes``."""
    from tqdm.auto import tqdm

    labels, n, L1 = list(ranks), len(x), len(removed)
    per_sample = max(1, x[0].nbytes)
    bs = int(max(1, min(batch_size, max_bytes // (3 * per_sample))))
    group = int(max(1, min(n, max_bytes // (4 * per_sample))))   # images whose fills are held at once
    out = {m: np.empty((n, L1), np.float64) for m in labels}
    total = n * len(labels) * L1
    show = progress if progress is not None else total > bs
    with tqdm(total=total, desc="perturbation", unit="input", disable=not show) as bar:
        for g0 in range(0, n, group):
            idx = np.arange(g0, min(n, g0 + group))
            xf = make_fill(x[idx], fill, index=idx, **fill_opts)
            tasks = [(m, i, k) for m in range(len(labels)) for i in range(len(idx)) for k in range(L1)]
            for s in range(0, len(tasks), bs):
                mi, ii, kk = (np.array(c) for c in zip(*tasks[s:s + bs]))
                rk = np.stack([ranks[labels[m]][idx[i]] for m, i in zip(mi, ii)])
                xp = perturb(x[idx[ii]], xf[ii], rk, ids, removed[kk]).astype(x.dtype, copy=False)
                sc = scorer(xp)[np.arange(len(ii)), tgt[idx[ii]]]
                for m in np.unique(mi):
                    sel = mi == m
                    out[labels[m]][idx[ii[sel]], kk[sel]] = sc[sel]
                bar.update(len(ii))
    return out


# ----------------------------------------------------------------------------------------------- methods
def parse_entries(methods, params: Optional[dict] = None) -> list:
    """``[(label, method, params), ...]`` from names, ``"method:key=value:key=value"`` strings or tuples.

    ``params`` holds parameters for every entry whose method has them (``"steps"``) or for one method
    (``"integrated_gradients.steps"``); an entry's own parameters win. The same method may appear several
    times with different parameters (e.g. ``integrated_gradients:reference=black`` and
    ``integrated_gradients:reference=gray``) to compare hyper-parameters.
    """
    METHODS = _registry()
    entries, problems, used = [], [], set()
    for item in ([methods] if isinstance(methods, str) else list(methods)):
        if isinstance(item, str):
            name, *kvs = item.split(":")
            own = {}
            for kv in kvs:
                if "=" not in kv:
                    problems.append(f"'{item}': '{kv}' is not key=value (e.g. integrated_gradients:steps=32)")
                    continue
                own[kv.split("=", 1)[0].strip()] = kv.split("=", 1)[1].strip()
            label = item
        else:
            label, name, own = item[0], item[1], dict(item[2] if len(item) > 2 and item[2] else {})
        if name not in METHODS:
            problems.append(f"unknown method '{name}' (see `onnxplain methods`)")
            continue
        full = {}
        for key, value in (params or {}).items():
            m, _, p = key.rpartition(".")
            if (m == name and METHODS[name].param(p)) or (not m and METHODS[name].param(key)):
                full[p or key] = value
                used.add(key)
        full.update(own)
        entries.append((label, name, full))
    for key in set(params or {}) - used:
        problems.append(f"no requested method has a parameter '{key}'")
    labels = [e[0] for e in entries]
    problems += [f"label '{lab}' given twice" for lab in sorted({lab for lab in labels if labels.count(lab) > 1})]
    if problems:
        raise InputError("bad method list:\n  - " + "\n  - ".join(problems))
    return entries


def _registry() -> dict:
    """Compiled methods and, where the package has them, the model-agnostic ones (occlusion, LIME)."""
    from ..rules.methods import METHODS

    try:
        from ..agnostic import AGNOSTIC
    except ImportError:  # pragma: no cover
        AGNOSTIC = {}
    return {**METHODS, **AGNOSTIC}


def explain_entries(model, x: np.ndarray, entries: list, target: np.ndarray, *, batch_size: int = 64,
                    progress: Optional[bool] = None, **compile_kwargs) -> dict:
    """``label -> maps`` for entries from :func:`parse_entries`; entries whose methods differ share one
    compiled model (one inference per batch), repeated methods get their own."""
    from ..api import Explainer

    groups: list = []
    for label, name, params in entries:
        g = next((g for g in groups if name not in g), None)
        if g is None:
            groups.append({})
            g = groups[-1]
        g[name] = (label, params)
    maps = {}
    for g in groups:
        exp = Explainer(model, {n: p for n, (_, p) in g.items()}, batch_size=batch_size, progress=progress,
                        **compile_kwargs)
        out = exp.explain(x, target)
        for n, (label, _) in g.items():
            if isinstance(out[n], dict):
                raise InputError(f"'{label}': the model has several explained inputs")
            maps[label] = out[n]
    return {e[0]: maps[e[0]] for e in entries}


def compare_methods(model, x: np.ndarray, methods, target=None, *, params: Optional[dict] = None,
                    explain_batch_size: int = 64, compile_kwargs: Optional[dict] = None,
                    **analysis) -> PerturbationResult:
    """Explain ``x`` with each method entry and run :func:`perturbation_analysis` on the maps.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The classifier.
    x : numpy.ndarray
        Samples ``[N, ...]``.
    methods : list
        Names, ``"method:key=value"`` strings or ``(label, method, params)`` tuples (:func:`parse_entries`).
    target : int or array of int, optional
        Explained and scored class (default: the top class on ``x``).
    params : dict, optional
        Parameters for every entry that has them, or ``"method.key"``.
    explain_batch_size : int
        Samples per explanation batch.
    compile_kwargs : dict, optional
        ``output``, ``strip_softmax``, ``batchnorm``, ... for :func:`onnxplain.compile`.
    **analysis
        Passed to :func:`perturbation_analysis` (region, steps, fill, seed, ...).
    """
    ck = dict(compile_kwargs or {})
    scorer = ScoreModel(model, ck.get("output"), ck.get("strip_softmax", True), analysis.pop("providers", None),
                        analysis.pop("threads", None))
    entries = parse_entries(methods, params)
    tgt = _target(scorer, np.asarray(x), target, analysis.get("batch_size", 256))
    maps = explain_entries(model, x, entries, tgt, batch_size=explain_batch_size,
                           progress=analysis.get("progress"), **ck)
    return perturbation_analysis(scorer, x, maps, tgt, **analysis)
