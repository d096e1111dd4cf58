r"""LIME for images and arrays (Ribeiro, Singh & Guestrin 2016, "Why Should I Trust You?").

The input is cut into :math:`M` segments (super-pixels by SLIC or quickshift from
scikit-image, or a regular grid for any input). :math:`S` binary vectors
:math:`z \in \{0,1\}^M` are drawn uniformly (the first is all ones: the input
itself); segment :math:`m` of sample :math:`z` keeps the input where
:math:`z_m = 1` and is replaced by a *fill* (gray, per-segment mean, blurred input,
zeros or a number) where :math:`z_m = 0`. The model scores every such input,
:math:`y = f_c(x_z)`, and a weighted linear model is fitted:

.. math::

    \min_{\beta, \beta_0} \sum_s \pi(z_s) \big(y_s - \beta_0 - \beta^\top z_s\big)^2 + \alpha \|\beta\|^2
    \quad (\text{Ridge; Lasso: } \alpha \|\beta\|_1 \text{ with scikit-learn's scaling})

with the kernel of the ``lime`` package, on the cosine distance between :math:`z` and
the all-ones vector:

.. math::

    d(z) = 1 - \frac{z^\top \mathbf{1}}{\|z\| \sqrt{M}} = 1 - \sqrt{k/M}\ (k = \text{segments kept};
    d = 1 \text{ when } k = 0), \qquad \pi(z) = \sqrt{\exp(-d(z)^2 / w^2)}

(``kernel_width`` :math:`w`, 0.25 as ``lime_image``). The map gives every element of
segment :math:`m` the coefficient :math:`\beta_m` (all channels alike).

Differences from the ``lime`` package, on purpose: the explained score is the
pre-softmax logit (with ``strip_softmax``, like every onnxplain method; ``lime``
regresses on probabilities), all segments enter the fit (no feature selection),
the default fill is gray (``lime``'s default is the per-segment mean: ``fill=mean``)
and the default sample count is 500 (``lime``: 1000).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..compiler.errors import InputError
from .batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_BYTES, ModelRunner, evaluate
from .occlusion import window_axes, windows

SEGMENTATIONS = ("auto", "slic", "quickshift", "grid")
FILLS = ("gray", "mean", "blur", "zeros")


@dataclass
class LimeDetails:
    """What LIME computed for one sample (for inspection and tests)."""

    segments: np.ndarray  # int labels 0..M-1, shaped like one sample
    masks: np.ndarray  # [S, M] int8, row 0 all ones
    scores: np.ndarray  # [S] the model's explained score on each perturbed input
    weights: np.ndarray  # [S] kernel weights
    coef: np.ndarray  # [M]
    intercept: float
    r2: float  # weighted R^2 of the fit on the samples


def _grid(sample_shape: tuple, segments: int, cell) -> np.ndarray:
    shape = (1,) + tuple(sample_shape)
    if not cell:
        axes = window_axes(shape, 1)
        sizes = [shape[a] for a in axes]
        side = max(1, int(np.ceil((np.prod(sizes) / max(segments, 1)) ** (1.0 / len(sizes)))))
        cell = tuple(min(side, n) for n in sizes)
    _, wins = windows(shape, cell, None)
    labels = np.empty(sample_shape, np.int64)
    for k, sl in enumerate(wins):
        labels[sl] = k
    return labels


def segment(sample: np.ndarray, segmentation: str = "auto", segments: int = 50, compactness: float = 10.0,
            cell=0, seed: int = 0) -> np.ndarray:
    """Segment labels 0..M-1 shaped like ``sample`` (one input without the batch axis).

    ``slic`` and ``quickshift`` need an image ``[C, H, W]`` (quickshift: C = 3); the image is
    scaled to [0, 1] by its own min and max first. ``grid`` works on any shape: cells of
    ``cell`` elements per slid axis (0 = about ``segments`` cells). ``auto`` = slic for
    ``[C, H, W]`` inputs, grid otherwise.
    """
    if segmentation == "auto":
        segmentation = "slic" if sample.ndim == 3 else "grid"
    if segmentation == "grid":
        return _grid(sample.shape, segments, cell)
    if sample.ndim != 3:
        raise InputError(f"lime segmentation={segmentation} needs images [N, C, H, W]; the input has shape "
                         f"[N, {', '.join(map(str, sample.shape))}]: use segmentation=grid")
    img = np.moveaxis(sample.astype(np.float64), 0, -1)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    from skimage import segmentation as sk

    if segmentation == "slic":
        lab = sk.slic(img, n_segments=segments, compactness=compactness, start_label=0, channel_axis=-1)
    elif segmentation == "quickshift":
        if img.shape[-1] != 3:
            raise InputError(f"lime segmentation=quickshift needs 3-channel images, got {img.shape[-1]} "
                             "channels: use slic or grid")
        lab = sk.quickshift(img, kernel_size=4, max_dist=200, ratio=0.2, rng=seed, channel_axis=-1)
    else:
        raise InputError(f"lime segmentation {segmentation!r}: use one of {', '.join(SEGMENTATIONS)}")
    labels = np.unique(lab, return_inverse=True)[1].reshape(lab.shape)
    return np.broadcast_to(labels[None], sample.shape).astype(np.int64)


def fill_values(sample: np.ndarray, labels: np.ndarray, fill, blur_sigma: float = 5.0) -> np.ndarray:
    """The values a switched-off segment takes, shaped like ``sample`` (float64).

    ``gray``: the middle of each channel's range, (min + max) / 2 (of the whole sample for
    ``[F]`` rows); ``mean``: each segment's mean per channel (``lime``'s default);
    ``blur``: a Gaussian blur of the input (``blur_sigma`` elements, channels kept apart);
    ``zeros``; or a number.
    """
    x = sample.astype(np.float64)
    chan = x.ndim >= 2
    if isinstance(fill, str):
        if fill == "zeros":
            return np.zeros_like(x)
        if fill == "gray":
            axes = tuple(range(1, x.ndim)) if chan else None
            mid = (x.min(axis=axes, keepdims=True) + x.max(axis=axes, keepdims=True)) / 2
            return np.broadcast_to(mid, x.shape)
        if fill == "mean":
            return _segment_means(x, labels, chan)
        if fill == "blur":
            from skimage.filters import gaussian

            sigma = (0.0,) + (float(blur_sigma),) * (x.ndim - 1) if chan else float(blur_sigma)
            return gaussian(x, sigma=sigma, preserve_range=True, mode="nearest")
        raise InputError(f"lime fill {fill!r}: use one of {', '.join(FILLS)} or a number")
    return np.full_like(x, float(fill))


def _segment_means(x: np.ndarray, labels: np.ndarray, chan: bool) -> np.ndarray:
    out = np.empty_like(x)
    m = int(labels.max()) + 1
    for c in range(x.shape[0]) if chan else [None]:
        xs, ls = (x[c], labels[c]) if chan else (x, labels)
        count = np.bincount(ls.ravel(), minlength=m)
        total = np.bincount(ls.ravel(), weights=xs.ravel(), minlength=m)
        means = np.divide(total, count, out=np.zeros(m), where=count > 0)
        if chan:
            out[c] = means[ls]
        else:
            out[...] = means[ls]
    return out


def kernel_weights(masks: np.ndarray, kernel_width: float) -> np.ndarray:
    """``sqrt(exp(-d^2 / w^2))`` with ``d`` the cosine distance of each mask to all ones."""
    k = masks.sum(1).astype(np.float64)
    d = np.where(k > 0, 1.0 - np.sqrt(k / masks.shape[1]), 1.0)
    return np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))


def fit(masks, scores, weights, regressor: str = "ridge", alpha: float = 1.0, seed: int = 0):
    """Weighted linear fit of ``scores`` on ``masks``: ``(coef, intercept, weighted R^2)``."""
    from sklearn.linear_model import Lasso, Ridge

    if regressor == "ridge":
        model = Ridge(alpha=alpha, fit_intercept=True)
    elif regressor == "lasso":
        model = Lasso(alpha=alpha, fit_intercept=True, random_state=seed)
    else:
        raise InputError(f"lime regressor {regressor!r}: use ridge or lasso")
    z = masks.astype(np.float64)
    model.fit(z, scores, sample_weight=weights)
    return model.coef_.astype(np.float64), float(model.intercept_), float(model.score(z, scores, weights))


def lime(runner: ModelRunner, feeds: dict, name: str, target=None, *, segmentation: str = "auto",
         segments: int = 50, compactness: float = 10.0, cell=0, samples: int = 500, kernel_width: float = 0.25,
         fill="gray", blur_sigma: float = 5.0, regressor: str = "ridge", alpha: float = 1.0, seed: int = 0,
         max_batch: int = DEFAULT_MAX_BATCH, max_bytes: int = DEFAULT_MAX_BYTES,
         progress: Optional[bool] = None, return_details: bool = False):
    """LIME map of input ``name`` (see the module docstring for the method).

    Parameters
    ----------
    runner : ModelRunner
        The original model.
    feeds : dict
        Input name -> batch (validated with ``runner.feeds``); the other inputs stay fixed.
    name : str
        The explained input.
    target : int or array of int, optional
        Explained class per sample (default or negative: the top-scoring class).
    segmentation, segments, compactness, cell
        See :func:`segment`.
    samples : int
        Perturbed inputs per sample (the first is the input itself); at least the number of segments.
    kernel_width : float
        Width ``w`` of the kernel on the cosine distance.
    fill, blur_sigma
        See :func:`fill_values`.
    regressor : str
        ``ridge`` (``lime``'s default, alpha 1) or ``lasso``.
    alpha : float
        Regularization strength of the regressor.
    seed : int
        Seed of the masks (sample ``i`` uses ``numpy.random.default_rng([seed, i])``).
    max_batch, max_bytes, progress
        As in :func:`onnxplain.agnostic.occlusion.occlusion`.
    return_details : bool
        Also return a list of :class:`LimeDetails`, one per sample.

    Returns
    -------
    numpy.ndarray
        The map, shaped and typed like the input.
    """
    x = feeds[name]
    n = len(x)
    if samples < 2 or kernel_width <= 0:
        raise InputError(f"lime needs samples >= 2 and kernel_width > 0 (got {samples}, {kernel_width})")
    labels = [segment(x[i], segmentation, segments, compactness, cell, seed) for i in range(n)]
    counts = [int(lab.max()) + 1 for lab in labels]
    short = [(i, m) for i, m in enumerate(counts) if samples < m]
    if short:
        raise InputError("lime: samples=" + str(samples) + " is below the number of segments of "
                         + ", ".join(f"sample {i} ({m} segments)" for i, m in short[:10])
                         + ": the fit would be underdetermined; raise samples or lower segments")
    fills = [fill_values(x[i], labels[i], fill, blur_sigma) for i in range(n)]
    masks = []
    for i, m in enumerate(counts):
        z = np.random.default_rng([seed, i]).integers(0, 2, size=(samples, m), dtype=np.int8)
        z[0] = 1
        masks.append(z)
    _, cls = runner.base_scores(feeds, target)
    item_sample = np.repeat(np.arange(n), samples)
    item_row = np.tile(np.arange(samples), n)

    def make_batch(s, e):
        idx = item_sample[s:e]
        batch = {k: v[idx] for k, v in feeds.items()}
        xb = batch[name]
        for j in range(e - s):
            i = idx[j]
            keep = masks[i][item_row[s + j]][labels[i]].astype(bool)
            xb[j] = np.where(keep, x[i], fills[i])
        return batch

    item_bytes = sum(v[:1].nbytes for v in feeds.values())
    y = evaluate(runner, make_batch, n * samples, cls[item_sample], item_bytes, max_batch, max_bytes,
                 progress, "lime").astype(np.float64).reshape(n, samples)
    out = np.empty(x.shape, np.float64)
    details = []
    for i in range(n):
        w = kernel_weights(masks[i], kernel_width)
        coef, icpt, r2 = fit(masks[i], y[i], w, regressor, alpha, seed)
        out[i] = coef[labels[i]]
        details.append(LimeDetails(labels[i], masks[i], y[i], w, coef, icpt, r2))
    result = out.astype(x.dtype)
    return (result, details) if return_details else result
