"""Exact backward adapters of shape and selection ops.

Reshape-like ops are undone with ``Reshape(dy, Shape(x))``; Transpose with the
inverse permutation; Concat/Split by slicing/concatenating; Tile by summing the
tiles.  Selections along one axis with constant positions (Gather on constant
indices, strided Slice, reflect/edge/wrap Pad, Resize) are linear maps ``y = x M``
along that axis with a 0/1 (or, for linear Resize, interpolation) matrix ``M``
known at compile time; their transpose is ``dx = dy M^T`` (:func:`axis_matmul`).
Gather on indices computed at run time scatters ``dy`` back with
``ScatterElements(reduction='add')``.  Resize matrices are obtained by running
ONNX's reference implementation of the very node on unit vectors, so every
coordinate-transformation and rounding mode is honoured.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from .base import Ctx, Unsupported, node_attr, unbroadcast, vjp

_INT64_MAX = np.iinfo(np.int64).max


@vjp("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def _reshape(ctx: Ctx, node, gy):
    return [ctx.b.reshape_like(gy[0], node.input[0])] + [None] * (len(node.input) - 1)


@vjp("Expand")
def _expand(ctx: Ctx, node, gy):
    return [unbroadcast(ctx, gy[0], node.input[0], node.output[0]), None]


@vjp("Tile")
def _tile(ctx: Ctx, node, gy):
    """``y = tile(x, r)``: ``y[..., t n_i + j, ...] = x[..., j, ...]``, so ``dx`` sums the ``r_i`` tiles.

    ``dy`` is reshaped to ``[..., r_i, n_i, ...]`` (one extra axis per repeated axis) and summed over
    the ``r_i`` axes.
    """
    x, b = node.input[0], ctx.b
    reps = ctx.require_const(node.input[1], "repeats").tolist()
    shape = ctx.g.shape(x)
    if shape is None:
        raise Unsupported("the input shape is unknown", "run shape inference / static export")
    dims, axes = [], []
    for n, r in zip(shape, reps):
        if r != 1:
            axes.append(len(dims))
            dims.append(r)
        dims.append(n if isinstance(n, int) else -1)
    if dims.count(-1) > 1:
        raise Unsupported("Tile backward needs static input dims (a dynamic batch is fine)",
                          "export with static shapes")
    if not axes:
        return [gy[0], None]
    g = b.op("Reshape", gy[0], b.ints(dims))
    return [b.reduce("ReduceSum", g, axes, keepdims=0), None]


@vjp("Transpose")
def _transpose(ctx: Ctx, node, gy):
    rank = ctx.g.rank(node.input[0])
    perm = node_attr(node, "perm", None) or list(reversed(range(rank)))
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return [ctx.b.op("Transpose", gy[0], perm=inv)]


def _axis_len(ctx: Ctx, t: str, axis: int):
    s = ctx.g.shape(t)
    return s[axis] if s is not None and isinstance(s[axis], int) else None


@vjp("Concat")
def _concat(ctx: Ctx, node, gy):
    b = ctx.b
    rank = ctx.g.rank(node.output[0])
    axis = node_attr(node, "axis") % rank
    res, off = [], b.ints([0])
    static_off = 0
    for i, x in enumerate(node.input):
        n = _axis_len(ctx, x, axis)
        if static_off is not None and n is not None:
            start, end = b.ints([static_off]), b.ints([static_off + n])
            static_off += n
        else:
            if static_off is not None:
                off, static_off = b.ints([static_off]), None
            ln = b.op("Slice", b.shape_of(x), b.ints([axis]), b.ints([axis + 1]))
            start, end = off, b.op("Add", off, ln)
            off = end
        res.append(b.op("Slice", gy[0], start, end, b.ints([axis])) if ctx.needs[i] else None)
    return res


@vjp("Split")
def _split(ctx: Ctx, node, gy):
    b = ctx.b
    rank = ctx.g.rank(node.input[0])
    axis = node_attr(node, "axis", 0) % rank
    parts = [g if g is not None else b.zeros_like(o) for g, o in zip(gy, node.output)]
    return [b.op("Concat", *parts, axis=axis)] + [None] * (len(node.input) - 1)


def axis_matmul(ctx: Ctx, t: str, axis: int, rank: int, m: np.ndarray) -> str:
    """``out[..., j, ...] = sum_i t[..., i, ...] m[i, j]`` along ``axis`` of a rank-``rank`` tensor."""
    b = ctx.b
    perm = [i for i in range(rank) if i != axis] + [axis]
    inv = [perm.index(i) for i in range(rank)]
    dt = helper.tensor_dtype_to_np_dtype(ctx.g.dtype(t) or 1)
    moved = b.op("Transpose", t, perm=perm) if axis != rank - 1 else t
    out = b.op("MatMul", moved, b.const(m.astype(dt)))
    return b.op("Transpose", out, perm=inv) if axis != rank - 1 else out


def _select_matrix(index_map, n_in: int) -> np.ndarray:
    """``M[i, j] = 1`` where output position ``j`` reads input position ``i`` (``index_map[j]``, -1 for none)."""
    m = np.zeros((n_in, len(index_map)))
    for j, i in enumerate(index_map):
        if i >= 0:
            m[i, j] = 1.0
    return m


def _adjoint_select(ctx: Ctx, g: str, axis: int, rank: int, index_map, n_in: int) -> str:
    return axis_matmul(ctx, g, axis, rank, _select_matrix(index_map, n_in).T)


@vjp("Slice")
def _slice(ctx: Ctx, node, gy):
    x = node.input[0]
    shape = ctx.g.shape(x)
    rank = len(shape)
    starts = ctx.require_const(node.input[1], "starts").tolist()
    ends = ctx.require_const(node.input[2], "ends").tolist()
    axes = ctx.require_const(node.input[3], "axes").tolist() if len(node.input) > 3 and node.input[3] \
        else list(range(len(starts)))
    steps = ctx.require_const(node.input[4], "steps").tolist() if len(node.input) > 4 and node.input[4] \
        else [1] * len(starts)
    g, b = gy[0], ctx.b
    pads = [0] * (2 * rank)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax %= rank
        n = shape[ax]
        if not isinstance(n, int):
            raise Unsupported(f"slicing along axis {ax} whose size is not static", "export with static shapes")
        idx = list(range(*slice(st, en, sp).indices(n)))
        if sp == 1:
            pads[ax] = idx[0] if idx else 0
            pads[rank + ax] = n - (idx[-1] + 1) if idx else n - pads[ax]
        else:
            g = _adjoint_select(ctx, g, ax, rank, idx, n)
    if any(pads):
        g = b.op("Pad", g, b.ints(pads))
    return [g] + [None] * (len(node.input) - 1)


def _pad_index_map(n: int, pb: int, pe: int, mode: str) -> list:
    base = np.arange(n)
    if mode == "constant":
        return [j - pb if 0 <= j - pb < n else -1 for j in range(n + pb + pe)]
    if pb < 0 or pe < 0:
        raise Unsupported(f"negative pads in mode '{mode}'", "use non-negative pads")
    return np.pad(base, (pb, pe), mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode]).tolist()


@vjp("Pad")
def _pad(ctx: Ctx, node, gy):
    x, b = node.input[0], ctx.b
    rank = ctx.g.rank(x)
    pads = ctx.require_const(node.input[1], "pads").tolist()
    axes = ctx.require_const(node.input[3], "axes").tolist() if len(node.input) > 3 and node.input[3] \
        else list(range(rank))
    axes = [a % rank for a in axes]
    k = len(axes)
    mode = node_attr(node, "mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    g = gy[0]
    if mode == "constant" and min(pads) >= 0:
        starts = [pads[i] for i in range(k)]
        ends = [-pads[k + i] if pads[k + i] > 0 else _INT64_MAX for i in range(k)]
        return [b.op("Slice", g, b.ints(starts), b.ints(ends), b.ints(axes))] + [None] * (len(node.input) - 1)
    shape = ctx.static_shape(x, node)
    for i, ax in enumerate(axes):
        if pads[i] or pads[k + i]:
            g = _adjoint_select(ctx, g, ax, rank, _pad_index_map(shape[ax], pads[i], pads[k + i], mode), shape[ax])
    return [g] + [None] * (len(node.input) - 1)


@vjp("Gather")
def _gather(ctx: Ctx, node, gy):
    """``y = x.take(idx, axis)``: ``dx`` adds ``dy`` back at the gathered positions.

    Constant ``idx`` (any rank): ``dx = dy M^T`` along ``axis`` with ``M[i, j] = 1`` where flat
    index position ``j`` reads ``x`` position ``i`` (negative indices wrap; repeats accumulate); the
    index axes of ``dy`` are first merged into one.  Run-time ``idx``: :func:`_gather_scatter`.
    """
    x, b = node.input[0], ctx.b
    shape = ctx.g.shape(x)
    if shape is None or ctx.g.rank(node.input[1]) is None:
        raise Unsupported("the ranks of the Gather data and indices are unknown", "run shape inference")
    rank = len(shape)
    axis = node_attr(node, "axis", 0) % rank
    idx = ctx.const(node.input[1])
    n, rest = _axis_len(ctx, x, axis), shape[axis + 1:]
    if idx is None or n is None or (idx.ndim > 1 and not all(isinstance(d, int) for d in rest)):
        return [_gather_scatter(ctx, x, node.input[1], gy[0], axis, rank), None]
    g = gy[0]
    if idx.ndim == 0:
        g = b.unsqueeze(g, [axis])
    elif idx.ndim > 1:
        g = b.op("Reshape", g, b.ints([0] * axis + [-1] + list(rest)))
    flat = (idx.reshape(-1) % n).tolist()
    return [_adjoint_select(ctx, g, axis, rank, flat, n), None]


def _gather_scatter(ctx: Ctx, x: str, idx: str, g: str, axis: int, rank: int) -> str:
    """``dx = ScatterElements(0, idx', dy', axis, reduction='add')`` for indices known at run time only.

    ``idx'`` is ``idx`` broadcast over the non-gathered axes of ``dy``; ``idx'`` and ``dy'`` get their
    index axes merged into one, so that they have the rank of ``x``.
    """
    b = ctx.b
    q = ctx.g.rank(idx)
    if q == 0:
        idx, g, q = b.unsqueeze(idx, [0]), b.unsqueeze(g, [axis]), 1
    ones = lambda k: [b.ints([1] * k)] if k else []  # noqa: E731
    idx = b.op("Reshape", idx, b.op("Concat", *ones(axis), b.shape_of(idx), *ones(rank - axis - 1), axis=0))
    idx = b.op("Expand", idx, b.shape_of(g))
    if q > 1:
        sx = b.shape_of(x)
        merged = b.op("Concat", b.op("Slice", sx, b.ints([0]), b.ints([axis])), b.ints([-1]),
                      b.op("Slice", sx, b.ints([axis + 1]), b.ints([rank])), axis=0)
        idx, g = b.op("Reshape", idx, merged), b.op("Reshape", g, merged)
    return b.op("ScatterElements", b.zeros_like(x), idx, g, axis=axis, reduction="add")


def _resize_matrix(node, n_in: int, n_out: int, scale) -> np.ndarray:
    """``R[i, j]``: weight of input ``i`` in output ``j`` along one axis, from ONNX's reference Resize.

    With ``scale`` None the 1-D resize is specified by its output length ``n_out`` instead.
    """
    from onnx.reference import ReferenceEvaluator

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in ("axes",)}
    eye = np.eye(n_in, dtype=np.float32)
    if scale is not None:
        n = helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)
        feeds = {"x": eye, "scales": np.array([1.0, scale], np.float32)}
    else:
        n = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)
        feeds = {"x": eye, "sizes": np.array([n_in, n_out], np.int64)}
    return np.asarray(ReferenceEvaluator(n).run(None, feeds)[0], np.float64)


def _resize_scales(ctx: Ctx, node, rank: int) -> list:
    """Per-axis scale of a Resize given by ``scales`` (None where the size is what counts).

    ``align_corners`` maps ``x_out * (n_in - 1) / (n_out - 1)``, which depends on the integer output
    length only; ONNX's reference evaluator would use the unrounded ``n_in * scale`` there (ONNX
    Runtime and the spec use ``n_out``), so such axes are specified by their size.
    """
    res = [None] * rank
    if node.op_type != "Resize" or len(node.input) < 3 or not node.input[2]:
        return res
    scales = ctx.require_const(node.input[2], "scales")
    mode = node_attr(node, "coordinate_transformation_mode", "half_pixel")
    if not scales.size or mode in ("align_corners", b"align_corners"):
        return res
    axes = node_attr(node, "axes", None) or list(range(rank))
    for a, v in zip(axes, scales.tolist()):
        res[a % rank] = float(v)
    return res


@vjp("Resize", "Upsample")
def _resize(ctx: Ctx, node, gy):
    """``y = x R_1 ... R_k`` (separable along each resized axis): ``dx = dy R_k^T ... R_1^T``."""
    x = node.input[0]
    mode = node_attr(node, "coordinate_transformation_mode", "half_pixel")
    policy = node_attr(node, "keep_aspect_ratio_policy", "stretch")
    if mode in ("tf_crop_and_resize", b"tf_crop_and_resize") or policy not in ("stretch", b"stretch"):
        raise Unsupported("Resize with tf_crop_and_resize or a keep_aspect_ratio_policy",
                          "use another coordinate_transformation_mode")
    s_in = ctx.static_shape(x, node)
    s_out = ctx.static_shape(node.output[0], node, "output")
    g, rank = gy[0], len(s_in)
    scales = _resize_scales(ctx, node, rank)
    for ax in range(1, rank):
        sc = scales[ax]
        if s_in[ax] == s_out[ax] and (sc is None or sc == 1.0):
            continue
        r = _resize_matrix(node, s_in[ax], s_out[ax], sc)
        g = axis_matmul(ctx, g, ax, rank, r.T)
    return [g] + [None] * (len(node.input) - 1)
