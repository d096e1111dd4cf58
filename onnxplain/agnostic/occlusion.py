r"""Occlusion (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks").

A window (patch) slides over the input; each position is replaced by a reference
value and the drop of the explained score is recorded. Every element gets the mean
drop over the windows that cover it:

.. math::

    A_j(x) = \frac{1}{|W_j|} \sum_{w \in W_j} \big(f_c(x) - f_c(x_{[w \leftarrow r]})\big),
    \qquad W_j = \{w : j \in w\}

where :math:`f_c` is the explained score (by default the pre-softmax logit of the
top class), :math:`r` the reference and :math:`x_{[w \leftarrow r]}` the input with
window :math:`w` replaced by the reference. With ``normalize=True`` the map is
divided by :math:`|f_c(x)|`, the unoccluded score: :math:`A_j / |f_c(x)|` is the
*relative* drop (1 = occluding the window removes the whole score).

Geometry (as Captum's ``Occlusion``): windows start at 0, ``stride``, ``2*stride`` ...
until the axis is covered, so the last window of an axis may be cut off by the
border (it is then smaller than ``patch``); the stride may not exceed the patch
(elements no window covers would get no value). Windows span every channel: for
``[N, C, H, W]`` images a ``patch`` of one or two numbers covers ``H, W`` and all of
``C``; for ``[N, C, L]`` signals it covers ``L`` (all channels); for ``[N, F]`` tables
it covers features. A patch with one entry per non-batch axis (``C, H, W``) windows
the channel axis too (e.g. channels-last inputs, or per-channel occlusion).
"""
from __future__ import annotations

import itertools
from typing import Optional

import numpy as np

from ..compiler.errors import InputError
from .batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_BYTES, ModelRunner, evaluate


def _as_tuple(value, n: int, what: str) -> tuple:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * n
    vals = tuple(int(v) for v in value)
    if len(vals) == 1:
        return vals * n
    return vals


def window_axes(shape: tuple, patch) -> tuple:
    """The axes (of a batch of shape ``shape``) that ``patch`` slides over."""
    ndim = len(shape)
    if ndim < 2:
        raise InputError(f"occlusion needs a batch [N, ...] with at least one axis per sample, got shape {shape}")
    k = 1 if isinstance(patch, (int, np.integer)) else len(tuple(patch))
    if ndim == 2 or (k == ndim - 1 and k > 1):
        return tuple(range(1, ndim))
    return tuple(range(2, ndim))


def windows(shape: tuple, patch, stride=0) -> tuple:
    """Return ``(axes, windows)``: every window as a tuple of slices over one sample's axes.

    Parameters
    ----------
    shape : tuple
        The input batch's shape ``[N, ...]``.
    patch : int or tuple of int
        Window size per slid axis (one number for all).
    stride : int, tuple of int or None
        Step per axis; None = the patch size (non-overlapping windows).

    Raises
    ------
    InputError
        Listing every problem: a patch larger than the input, a zero or negative stride or
        patch, a stride larger than the patch, a wrong number of entries.
    """
    axes = window_axes(shape, patch)
    sizes = [shape[a] for a in axes]
    problems = []
    p = _as_tuple(patch, len(axes), "patch")
    s = _as_tuple(p if stride is None else stride, len(axes), "stride")
    if len(p) != len(axes):
        problems.append(f"patch {p} has {len(p)} entries; the input {tuple(shape)} needs "
                        + " or ".join(str(k) for k in sorted({1, len(axes), len(shape) - 1}))
                        + f" (windows over axes {list(axes)})")
    if len(s) != len(p):
        problems.append(f"stride {s} has {len(s)} entries; the patch has {len(p)}")
    if not problems:
        for a, n, pi, si in zip(axes, sizes, p, s):
            if pi < 1:
                problems.append(f"patch {pi} on axis {a}: must be at least 1")
            elif pi > n:
                problems.append(f"patch {pi} on axis {a} is larger than the input ({n}): use a patch <= {n}")
            if si < 1:
                problems.append(f"stride {si} on axis {a}: must be at least 1 (a stride of zero never moves)")
            elif 1 <= pi < n and si > pi:
                problems.append(f"stride {si} on axis {a} is larger than the patch {pi}: elements between "
                                f"windows would get no value; use a stride <= {pi}")
    if problems:
        raise InputError("occlusion: " + "; ".join(problems))
    # as Captum: ceil((n - p) / s) + 1 windows per axis, starting at 0, s, 2s, ...
    starts = [range(0, n - pi + si, si) if n > pi else range(0, 1) for n, pi, si in zip(sizes, p, s)]
    lead = (slice(None),) * (axes[0] - 1)
    out = []
    for corner in itertools.product(*starts):
        out.append(lead + tuple(slice(c, min(c + pi, n)) for c, pi, n in zip(corner, p, sizes)))
    return axes, out


def reference_array(x: np.ndarray, reference, axes: tuple) -> np.ndarray:
    """The replacement values, broadcast to ``x``'s shape.

    ``"zeros"`` (0), a number, ``"mean"`` (each sample's mean over the slid axes, so per
    channel for images), or an array broadcastable to one sample or to the batch.
    """
    if isinstance(reference, str):
        if reference == "zeros":
            return np.zeros((1,) * x.ndim, x.dtype)
        if reference == "mean":
            return x.mean(axis=axes, keepdims=True, dtype=np.float64).astype(x.dtype)
        raise InputError(f"occlusion reference {reference!r}: use zeros, mean, a number or an array")
    ref = np.asarray(reference, dtype=x.dtype)
    if ref.ndim == x.ndim - 1:
        ref = ref[None]
    try:
        np.broadcast_shapes(ref.shape, x.shape)
    except ValueError:
        raise InputError(f"occlusion reference of shape {ref.shape} does not broadcast to the input "
                         f"{x.shape}") from None
    if not np.all(np.isfinite(ref)):
        raise InputError("occlusion reference contains NaN or Inf")
    return ref


def occlusion(runner: ModelRunner, feeds: dict, name: str, target=None, *, patch=8, stride=None,
              reference="zeros", normalize: bool = False, max_batch: int = DEFAULT_MAX_BATCH,
              max_bytes: int = DEFAULT_MAX_BYTES, progress: Optional[bool] = None,
              return_scores: bool = False):
    """Occlusion map of input ``name`` (see the module docstring for the formula).

    Parameters
    ----------
    runner : ModelRunner
        The original model.
    feeds : dict
        Input name -> batch (validated with ``runner.feeds``); the other inputs stay fixed.
    name : str
        The input to occlude.
    target : int or array of int, optional
        Explained class per sample (default or negative: the top-scoring class).
    patch, stride : int or tuple of int
        Window size and step (stride None = patch).
    reference : str, float or numpy.ndarray
        ``"zeros"``, ``"mean"``, a number or an array (see :func:`reference_array`).
    normalize : bool
        Divide by ``|f_c(x)|`` (the unoccluded score).
    max_batch, max_bytes : int
        At most this many occluded copies, and this many bytes of them, per ONNX Runtime call.
    progress : bool, optional
        tqdm bar (default: when there is more than one batch).
    return_scores : bool
        Also return ``(base [N], scores [N, windows], classes [N])``.

    Returns
    -------
    numpy.ndarray
        The map, shaped and typed like the input (computed in float64).
    """
    x = feeds[name]
    n = len(x)
    axes, wins = windows(x.shape, patch, stride)
    ref = np.broadcast_to(reference_array(x, reference, axes), x.shape)
    base, cls = runner.base_scores(feeds, target)
    f0 = base[np.arange(n), cls]
    if normalize and np.any(f0 == 0):
        raise InputError(f"occlusion normalize: the explained score is 0 for samples "
                         f"{np.flatnonzero(f0 == 0).tolist()[:10]}; cannot divide by it (use normalize=false)")
    nw = len(wins)
    item_sample = np.repeat(np.arange(n), nw)
    item_window = np.tile(np.arange(nw), n)

    def make_batch(s, e):
        idx = item_sample[s:e]
        batch = {k: v[idx] for k, v in feeds.items()}
        xb = batch[name]
        for j in range(e - s):
            sl = wins[item_window[s + j]]
            xb[(j,) + sl] = ref[idx[j]][sl]
        return batch

    item_bytes = sum(v[:1].nbytes for v in feeds.values())
    scores = evaluate(runner, make_batch, n * nw, cls[item_sample], item_bytes, max_batch, max_bytes,
                      progress, "occlusion")
    diff = f0[item_sample].astype(np.float64) - scores.astype(np.float64)
    acc = np.zeros(x.shape, np.float64)
    count = np.zeros(x.shape[1:], np.float64)
    for w, sl in enumerate(wins):
        count[sl] += 1
        for i in range(n):
            acc[(i,) + sl] += diff[i * nw + w]
    out = acc / count
    if normalize:
        out /= np.abs(f0.astype(np.float64)).reshape((n,) + (1,) * (x.ndim - 1))
    result = out.astype(x.dtype)
    if return_scores:
        return result, (f0, scores.reshape(n, nw), cls)
    return result
