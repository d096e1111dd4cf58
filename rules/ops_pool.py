"""Exact backward adapters of pooling, reductions and normalizations.

* MaxPool: the forward node is asked for its ``Indices`` output (the flat
  position of each window's winner, ties to the first as in PyTorch); the
  gradient is scattered back with ``ScatterElements(reduction='add')``, which is
  right for overlapping windows too (``MaxUnpool`` where windows are disjoint).
* AveragePool: the transpose of "sum over the window, divide by the count" is a
  depthwise ConvTranspose with a kernel of ones applied to ``dy / count``; the
  count map is computed at compile time (``count_include_pad`` honoured).
* Softmax: ``dx = y * (dy - sum(dy * y))``; LogSoftmax: ``dx = dy - exp(y) sum(dy)``.
* LayerNormalization (and InstanceNormalization, over the spatial axes): with
  ``xh = (x - mu) / sigma`` and ``h = dy * gamma``,
  ``dx = (h - mean(h) - xh * mean(h * xh)) / sigma`` over the normalized axes.
* ReduceMax/ReduceMin: the gradient goes to the extremal entries, ties sharing it equally.
* LRN: ``y = x d^-beta`` with ``d = bias + alpha/size * sum_window x^2``;
  ``dx = dy d^-beta - 2 alpha beta / size * x * sum_window'(dy x d^(-beta-1))``.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .base import Ctx, Unsupported, node_attr, vjp
from .ops_linear import conv_geometry, transpose_pads


def _extra_output(ctx: Ctx, node, index: int, what: str) -> str:
    """Make the forward ``node`` also produce its optional output ``index`` and return its name."""
    while len(node.output) <= index:
        node.output.append("")
    if not node.output[index]:
        node.output[index] = ctx.g.fresh(f"{node.name}/{what}")
    return node.output[index]


def _flat_size(ctx: Ctx, x: str) -> str:
    b = ctx.b
    return b.op("Reshape", b.op("Size", x), b.ints([1]))


def _windows_disjoint(ctx: Ctx, node) -> bool:
    """Whether no input position lies in two pooling windows (stride >= dilated kernel on every axis)."""
    kernel = list(node_attr(node, "kernel_shape"))
    strides = list(node_attr(node, "strides", [1] * len(kernel)))
    dil = list(node_attr(node, "dilations", [1] * len(kernel)))
    return all(s >= (k - 1) * d + 1 for k, s, d in zip(kernel, strides, dil))


def _unpool_attrs(ctx: Ctx, node):
    """MaxUnpool attributes for a MaxPool with disjoint windows and static shapes, else None.

    MaxUnpool only scatters by the indices; its kernel, strides and pads just set the smallest
    output it accepts, ``(out - 1) s + k - pads``, which pads (< kernel) keep within the input's
    size (padding, ceil mode's partial windows).
    """
    if not _windows_disjoint(ctx, node):
        return None
    xs, ys = ctx.g.shape(node.input[0]), ctx.g.shape(node.output[0])
    if xs is None or ys is None or not all(isinstance(d, int) for d in list(xs[2:]) + list(ys[2:])):
        return None
    kernel = list(node_attr(node, "kernel_shape"))
    strides = list(node_attr(node, "strides", [1] * len(kernel)))
    extra = [max(0, (o - 1) * s + k - n) for o, s, k, n in zip(ys[2:], strides, kernel, xs[2:])]
    begin, end = [e // 2 for e in extra], [e - e // 2 for e in extra]
    if any(e >= k for e, k in zip(end, kernel)):  # MaxUnpool wants pads < kernel
        return None
    return {"kernel_shape": kernel, "strides": strides, "pads": begin + end}


@vjp("MaxPool")
def _maxpool(ctx: Ctx, node, gy):
    """Scatter ``dy`` to the winners (``Indices``).  Disjoint windows (VGG's 2x2/2): each position wins
    at most one window, so ``MaxUnpool`` (a plain scatter, 5x faster than ``ScatterElements`` in ONNX
    Runtime, float32 only) is exact; overlapping windows (ResNet's 3x3/2) sum with ``ScatterElements``."""
    if node_attr(node, "storage_order", 0):
        raise Unsupported("MaxPool with storage_order=1", "export with the default storage order")
    x = node.input[0]
    idx = _extra_output(ctx, node, 1, "indices")
    b = ctx.b
    unpool = _unpool_attrs(ctx, node) if ctx.g.dtype(x) == onnx.TensorProto.FLOAT else None
    if unpool is not None:
        return [b.op("MaxUnpool", gy[0], idx, b.shape_of(x), **unpool)]
    zeros = b.op("ConstantOfShape", _flat_size(ctx, x),
                 value=helper.make_tensor("value", ctx.g.dtype(x), [1], [0]))
    flat = b.op("ScatterElements", zeros, b.op("Reshape", idx, b.ints([-1])), b.op("Reshape", gy[0], b.ints([-1])),
                axis=0, reduction="add")
    return [b.reshape_like(flat, x)]


def avgpool_counts(geo: dict, out_spatial, include_pad: bool) -> np.ndarray:
    """Number of summed elements of each AveragePool window (shape ``out_spatial``)."""
    per_axis = []
    nd = geo["nd"]
    for i in range(nd):
        s, eff, n, pb, pe = (geo["strides"][i], geo["eff"][i], geo["spatial"][i], geo["pads"][i],
                             geo["pads"][i + nd])
        d = geo["dilations"][i]
        lo, hi = (-pb, n + pe) if include_pad else (0, n)
        cnt = []
        for o in range(out_spatial[i]):
            start = o * s - pb
            pos = np.arange(start, start + eff, d)
            cnt.append(np.count_nonzero((pos >= lo) & (pos < hi)))
        per_axis.append(np.array(cnt, np.float64))
    counts = per_axis[0]
    for c in per_axis[1:]:
        counts = np.multiply.outer(counts, c)
    return counts


@vjp("AveragePool")
def _avgpool(ctx: Ctx, node, gy):
    x = node.input[0]
    kernel = list(node_attr(node, "kernel_shape"))
    shape = ctx.static_shape(x, node)
    out = ctx.static_shape(node.output[0], node, "output")
    if not isinstance(shape[1], int):
        raise Unsupported("the channel count is not static", "export with static shapes")
    geo = conv_geometry(ctx, node, x, kernel)
    counts = avgpool_counts(geo, out[2:], bool(node_attr(node, "count_include_pad", 0)))
    pads, outpad = transpose_pads(geo, out[2:])
    b = ctx.b
    dt = helper.tensor_dtype_to_np_dtype(ctx.g.dtype(x))
    scaled = b.op("Mul", gy[0], b.const((1.0 / np.maximum(counts, 1)).astype(dt)[None, None]))
    ones = b.const(np.ones([shape[1], 1] + kernel, dt))
    dx = b.op("ConvTranspose", scaled, ones, strides=geo["strides"], dilations=geo["dilations"], pads=pads,
              output_padding=outpad if any(outpad) else None, group=shape[1])
    return [dx]


@vjp("GlobalAveragePool")
def _gap(ctx: Ctx, node, gy):
    x, b = node.input[0], ctx.b
    ratio = b.op("Div", b.op("CastLike", b.op("Size", node.output[0]), gy[0]),
                 b.op("CastLike", b.op("Size", x), gy[0]))
    return [b.op("Mul", b.op("Expand", gy[0], b.shape_of(x)), ratio)]


@vjp("GlobalMaxPool")
def _gmp(ctx: Ctx, node, gy):
    """The whole gradient of each channel goes to its first maximal position."""
    x, b = node.input[0], ctx.b
    xf = b.op("Reshape", x, b.ints([0, 0, -1]))
    am = b.op("ArgMax", xf, axis=2, keepdims=1)
    g = b.op("Reshape", gy[0], b.ints([0, 0, 1]))
    return [b.reshape_like(b.op("ScatterElements", b.zeros_like(xf), am, g, axis=2), x)]


def _reduce_axes(ctx: Ctx, node) -> list:
    rank = ctx.g.rank(node.input[0])
    if rank is None:
        raise Unsupported("the input rank is unknown", "run shape inference / static export")
    if len(node.input) > 1 and node.input[1]:
        axes = ctx.require_const(node.input[1], "axes").tolist()
    else:
        axes = node_attr(node, "axes", None)
    if not axes:
        if node_attr(node, "noop_with_empty_axes", 0):
            return []
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


@vjp("ReduceSum", "ReduceMean")
def _reduce(ctx: Ctx, node, gy):
    x, b = node.input[0], ctx.b
    axes = _reduce_axes(ctx, node)
    g = gy[0]
    if not axes:
        return [g] + [None] * (len(node.input) - 1)
    if not node_attr(node, "keepdims", 1):
        g = b.unsqueeze(g, axes)
    g = b.op("Expand", g, b.shape_of(x))
    if node.op_type == "ReduceMean":
        ratio = b.op("Div", b.op("CastLike", b.op("Size", node.output[0]), g), b.op("CastLike", b.op("Size", x), g))
        g = b.op("Mul", g, ratio)
    return [g] + [None] * (len(node.input) - 1)


def _kept(ctx: Ctx, node, t: str, axes: list) -> str:
    """``t`` (shaped like the reduction's output) with the reduced axes restored as unit axes."""
    return ctx.b.unsqueeze(t, axes) if axes and not node_attr(node, "keepdims", 1) else t


@vjp("ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
def _reduce_other(ctx: Ctx, node, gy):
    """Reductions ``y = R(x)`` over ``axes``; with ``g`` and ``y`` broadcast back over the reduced axes:

    * ReduceMax / ReduceMin: ``dx = g [x = y] / #{x = y}`` (ties share equally, as PyTorch's ``amax``);
    * ReduceL1: ``dx = g sign(x)``;  ReduceSumSquare: ``dx = 2 g x``;
    * ReduceL2 (``y = sqrt(sum x^2)``): ``dx = g x / y`` (0 where ``y = 0``);
    * ReduceLogSum (``y = log(sum x)``): ``dx = g exp(-y)``;
    * ReduceLogSumExp: ``dx = g exp(x - y)``.
    """
    x, y, b, op = node.input[0], node.output[0], ctx.b, node.op_type
    axes = _reduce_axes(ctx, node)
    rest = [None] * (len(node.input) - 1)
    if not axes and op in ("ReduceMax", "ReduceMin"):
        return [gy[0]] + rest
    if not axes:
        raise Unsupported(f"{op} with noop_with_empty_axes and no axes (runtimes disagree on what it computes)",
                          "give the axes explicitly")
    g, yk = _kept(ctx, node, gy[0], axes), _kept(ctx, node, y, axes)
    if op in ("ReduceMax", "ReduceMin"):
        mask = b.op("CastLike", b.op("Equal", x, yk), g)
        share = b.op("Div", g, b.reduce("ReduceSum", mask, axes, keepdims=1))
        return [b.op("Mul", mask, share)] + rest
    if op == "ReduceL1":
        d = b.op("Sign", x)
    elif op == "ReduceSumSquare":
        d = b.op("Mul", x, b.scalar_like(2.0, x))
    elif op == "ReduceL2":
        pos = b.op("Greater", yk, b.scalar_like(0.0, yk))
        d = b.op("Div", x, b.op("Where", pos, yk, b.scalar_like(1.0, yk)))
    elif op == "ReduceLogSum":
        return [b.op("Expand", b.op("Mul", g, b.op("Exp", b.op("Neg", yk))), b.shape_of(x))] + rest
    else:
        d = b.op("Exp", b.op("Sub", x, yk))
    return [b.op("Mul", g, d)] + rest


def _softmax_axis(ctx: Ctx, node) -> int:
    return node_attr(node, "axis", -1)


@vjp("Softmax")
def _softmax(ctx: Ctx, node, gy):
    y, b = node.output[0], ctx.b
    s = b.reduce("ReduceSum", b.op("Mul", gy[0], y), [_softmax_axis(ctx, node)], keepdims=1)
    return [b.op("Mul", y, b.op("Sub", gy[0], s))]


@vjp("LogSoftmax")
def _logsoftmax(ctx: Ctx, node, gy):
    y, b = node.output[0], ctx.b
    s = b.reduce("ReduceSum", gy[0], [_softmax_axis(ctx, node)], keepdims=1)
    return [b.op("Sub", gy[0], b.op("Mul", b.op("Exp", y), s))]


@vjp("LayerNormalization")
def _layernorm(ctx: Ctx, node, gy):
    x, b = node.input[0], ctx.b
    if any(ctx.needs[1:]):
        raise Unsupported("its scale or bias depends on the explained input", "use constant scale and bias")
    rank = ctx.g.rank(x)
    if rank is None:
        raise Unsupported("the input rank is unknown", "run shape inference / static export")
    axis = node_attr(node, "axis", -1) % rank
    axes = list(range(axis, rank))
    mean = _extra_output(ctx, node, 1, "mean")
    inv = _extra_output(ctx, node, 2, "invstd")
    mean_c, inv_c = b.op("CastLike", mean, x), b.op("CastLike", inv, x)
    xh = b.op("Mul", b.op("Sub", x, mean_c), inv_c)
    h = b.op("Mul", gy[0], node.input[1])
    mh = b.reduce("ReduceMean", h, axes)
    mhx = b.reduce("ReduceMean", b.op("Mul", h, xh), axes)
    dx = b.op("Mul", b.op("Sub", b.op("Sub", h, mh), b.op("Mul", xh, mhx)), inv_c)
    return [dx] + [None] * (len(node.input) - 1)


@vjp("InstanceNormalization")
def _instancenorm(ctx: Ctx, node, gy):
    """Per sample and channel, over the spatial axes ``A``: ``y = gamma xh + beta``, ``xh = (x - mu) / sigma``.

    With ``h = dy gamma``: ``dx = (h - mean_A(h) - xh mean_A(h xh)) / sigma`` (as for LayerNormalization);
    ``mu`` and ``sigma = sqrt(var + eps)`` are recomputed.
    """
    x, b = node.input[0], ctx.b
    if any(ctx.needs[1:]):
        raise Unsupported("its scale or bias depends on the explained input", "use constant scale and bias")
    rank = ctx.g.rank(x)
    if rank is None:
        raise Unsupported("the input rank is unknown", "run shape inference / static export")
    axes = list(range(2, rank))
    xc = b.op("Sub", x, b.reduce("ReduceMean", x, axes))
    var = b.reduce("ReduceMean", b.op("Mul", xc, xc), axes)
    inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.scalar_like(node_attr(node, "epsilon", 1e-5), var))))
    xh = b.op("Mul", xc, inv)
    h = b.op("Mul", gy[0], b.unsqueeze(node.input[1], list(range(1, rank - 1))))
    mh = b.reduce("ReduceMean", h, axes)
    mhx = b.reduce("ReduceMean", b.op("Mul", h, xh), axes)
    dx = b.op("Mul", b.op("Sub", b.op("Sub", h, mh), b.op("Mul", xh, mhx)), inv)
    return [dx] + [None] * (len(node.input) - 1)


def _channel_window_sum(ctx: Ctx, t: str, size: int, before: int, after: int, like: str) -> str:
    """Sum of ``t`` [N, C, ...] over channels ``c - before ... c + after`` (zero outside)."""
    b = ctx.b
    t3 = b.op("Reshape", t, b.ints([0, 0, -1]))
    t4 = b.unsqueeze(t3, [1])  # [N, 1, C, R]
    s = b.op("AveragePool", t4, kernel_shape=[size, 1], pads=[before, 0, after, 0], count_include_pad=1)
    s = b.op("Mul", s, b.scalar_like(float(size), t))
    return b.reshape_like(b.squeeze(s, [1]), like)


@vjp("LRN")
def _lrn(ctx: Ctx, node, gy):
    x, y, b = node.input[0], node.output[0], ctx.b
    size = node_attr(node, "size")
    alpha, beta, bias = node_attr(node, "alpha", 1e-4), node_attr(node, "beta", 0.75), node_attr(node, "bias", 1.0)
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = _channel_window_sum(ctx, b.op("Mul", x, x), size, lo, hi, x)
    d = b.op("Add", b.op("Mul", sq, b.scalar_like(alpha / size, x)), b.scalar_like(bias, x))
    g = gy[0]
    term1 = b.op("Mul", g, b.op("Pow", d, b.scalar_like(-beta, x)))
    inner = b.op("Mul", b.op("Mul", g, x), b.op("Pow", d, b.scalar_like(-beta - 1.0, x)))
    back = _channel_window_sum(ctx, inner, size, hi, lo, x)
    term2 = b.op("Mul", b.op("Mul", x, back), b.scalar_like(2.0 * alpha * beta / size, x))
    return [b.op("Sub", term1, term2)]
