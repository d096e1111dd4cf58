"""Exact backward adapters of the linear layers: Conv, ConvTranspose, Gemm, MatMul, Einsum, BatchNormalization.

The transpose of a convolution is a transposed convolution with the same weight
tensor (no copy): for ``y = conv(x, W)`` with strides ``s``, dilations ``d``, pads
``(p_b, p_e)`` and groups ``G``, ``dx = conv_transpose(dy, W)`` with the same
``s, d, G``.  Output sizes are matched exactly (see :func:`transpose_pads`).
"""
from __future__ import annotations

import string

import numpy as np

from .base import Ctx, Unsupported, node_attr, unbroadcast, vjp


def conv_geometry(ctx: Ctx, node, x: str, kernel) -> dict:
    """Explicit strides, dilations and pads of a Conv/pool ``node`` over input ``x``.

    ``auto_pad`` is resolved with the static spatial input shape.
    """
    shape = ctx.static_shape(x, node)
    spatial = shape[2:]
    nd = len(spatial)
    strides = list(node_attr(node, "strides", [1] * nd))
    dil = list(node_attr(node, "dilations", [1] * nd))
    pads = list(node_attr(node, "pads", [0] * (2 * nd)))
    auto = node_attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max((out - 1) * strides[i] + eff[i] - spatial[i], 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    return {"strides": strides, "dilations": dil, "pads": pads, "eff": eff, "spatial": spatial, "nd": nd}


def transpose_pads(geo: dict, out_spatial) -> tuple:
    """Pads and output_padding for a ConvTranspose that maps the forward output back to the input size.

    The forward window ``o`` covers input positions ``o*s - p_b ... o*s - p_b + eff - 1``.  A
    ConvTranspose with begin pad ``p_b`` and end pad ``e`` yields ``s*(out-1) + eff - p_b - e + op``
    elements; we pick ``e >= 0`` and ``0 <= op < s`` so that this equals the input size (rows that no
    window covers get ``op`` zeros; windows that run past the input, as in ceil mode, get cropped by ``e``).
    """
    nd = geo["nd"]
    pads, outpad = list(geo["pads"][:nd]) + [0] * nd, [0] * nd
    for i in range(nd):
        s, eff, n_in, pb = geo["strides"][i], geo["eff"][i], geo["spatial"][i], geo["pads"][i]
        end = s * (out_spatial[i] - 1) + eff - pb - n_in
        if end >= 0:
            pads[nd + i] = end
        else:
            outpad[i] = -end
        if pb < 0 or outpad[i] >= max(s, geo["dilations"][i]):
            raise Unsupported(f"cannot invert the geometry (pads {geo['pads']}, strides {geo['strides']})",
                              "use non-negative pads")
    return pads, outpad


def _out_spatial(ctx: Ctx, node, geo) -> list:
    s = ctx.g.shape(node.output[0])
    if s is not None and all(isinstance(d, int) for d in s[2:]):
        return list(s[2:])
    nd, out = geo["nd"], []
    for i in range(nd):
        pb, pe = geo["pads"][i], geo["pads"][i + nd]
        out.append((geo["spatial"][i] + pb + pe - geo["eff"][i]) // geo["strides"][i] + 1)
    return out


def flipped_weight(ctx: Ctx, weight: str, wshape, group: int) -> str:
    """``W'[i, o] = W[o, i]`` flipped along every spatial axis (per group): the kernel whose correlation
    is the transpose of a stride-1 convolution.  Emitted as Transpose/Slice on the initializer, which
    ONNX Runtime folds when the session is created (the file holds no copy)."""
    b = ctx.b
    cout, cin_g, kernel = wshape[0], wshape[1], list(wshape[2:])
    nd = len(kernel)
    if group == 1:
        t = b.op("Transpose", weight, perm=[1, 0] + list(range(2, 2 + nd)))
    else:
        grouped = b.op("Reshape", weight, b.ints([group, cout // group, cin_g] + kernel))
        t = b.op("Transpose", grouped, perm=[0, 2, 1] + list(range(3, 3 + nd)))
        t = b.op("Reshape", t, b.ints([group * cin_g, cout // group] + kernel))
    axes = list(range(2, 2 + nd))
    return b.op("Slice", t, b.ints([-1] * nd), b.ints([np.iinfo(np.int64).min] * nd), b.ints(axes), b.ints([-1] * nd))


def conv_transpose_of(ctx: Ctx, node, x: str, g: str, weight: str, kernel, group: int) -> str:
    """``dx`` of a convolution-like map with weight tensor ``weight`` (layout [Cout, Cin/G, k...]).

    Stride 1: a convolution of ``dy`` with the flipped, transposed kernel and pads ``eff - 1 - p``
    (ONNX Runtime's Conv is much faster than its ConvTranspose); otherwise a ConvTranspose.
    """
    geo = conv_geometry(ctx, node, x, kernel)
    wshape = ctx.g.shape(weight)
    nd = geo["nd"]
    back = [e - 1 - p for e, p in zip(geo["eff"] * 2, geo["pads"])]
    if all(s == 1 for s in geo["strides"]) and min(back) >= 0 and wshape is not None and \
            all(isinstance(d, int) for d in wshape):
        wf = flipped_weight(ctx, weight, wshape, group)
        return ctx.b.op("Conv", g, wf, dilations=geo["dilations"], pads=back[:nd] + back[nd:], group=group)
    pads, outpad = transpose_pads(geo, _out_spatial(ctx, node, geo))
    return ctx.b.op("ConvTranspose", g, weight, strides=geo["strides"], dilations=geo["dilations"],
                    pads=pads, output_padding=outpad if any(outpad) else None, group=group)


@vjp("Conv")
def _conv(ctx: Ctx, node, gy):
    x, w = node.input[0], node.input[1]
    if any(ctx.needs[1:]):
        raise Unsupported("its weight or bias depends on the explained input; only constant weights are supported",
                          "export with the weights as initializers")
    wv = ctx.g.shape(w)
    if wv is None:
        raise Unsupported("the weight shape is unknown", "export with constant weights")
    dx = conv_transpose_of(ctx, node, x, gy[0], w, wv[2:], node_attr(node, "group", 1))
    return [dx] + [None] * (len(node.input) - 1)


@vjp("ConvTranspose")
def _conv_transpose(ctx: Ctx, node, gy):
    """``dx = conv(dy, W)`` with the same strides, dilations, pads and groups.

    That Conv yields ``in + floor(output_padding / stride)`` positions per axis; the first ``in``
    are ``dx`` (the rest only exist when ``output_padding >= stride``, and are cropped).
    """
    x, w = node.input[0], node.input[1]
    if any(ctx.needs[1:]):
        raise Unsupported("its weight or bias depends on the explained input", "export with constant weights")
    shape = ctx.static_shape(x, node)
    out = ctx.static_shape(node.output[0], node, "output")
    kernel = ctx.g.shape(w)[2:]
    nd = len(kernel)
    strides = list(node_attr(node, "strides", [1] * nd))
    dil = list(node_attr(node, "dilations", [1] * nd))
    pads = node_attr(node, "pads", None)
    if pads is None or node_attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            total = strides[i] * (shape[2 + i] - 1) + (kernel[i] - 1) * dil[i] + 1 - out[2 + i] + \
                node_attr(node, "output_padding", [0] * nd)[i]
            auto = node_attr(node, "auto_pad", "NOTSET")
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto in ("SAME_UPPER", b"SAME_UPPER") else (big, small)
    dx = ctx.b.op("Conv", gy[0], w, strides=strides, dilations=dil, pads=list(pads),
                  group=node_attr(node, "group", 1))
    outpad = node_attr(node, "output_padding", [0] * nd)
    long_axes = [2 + i for i in range(nd) if outpad[i] >= strides[i]]
    if long_axes:  # output_padding >= stride (allowed when dilation > stride): the Conv yields extra rows
        dx = ctx.b.op("Slice", dx, ctx.b.ints([0] * len(long_axes)), ctx.b.ints([shape[a] for a in long_axes]),
                      ctx.b.ints(long_axes))
    return [dx] + [None] * (len(node.input) - 1)


@vjp("Gemm")
def _gemm(ctx: Ctx, node, gy):
    """``Y = alpha op(A) op(B) + beta C``: ``dA = alpha dY op(B)^T`` (transposed back when transA)."""
    a, bm = node.input[0], node.input[1]
    ta, tb = node_attr(node, "transA", 0), node_attr(node, "transB", 0)
    alpha, beta = node_attr(node, "alpha", 1.0), node_attr(node, "beta", 1.0)
    b, g = ctx.b, gy[0]
    res = [None] * len(node.input)
    if ctx.needs[0]:
        res[0] = (b.op("Gemm", g, bm, alpha=alpha, transB=1 - tb) if not ta
                  else b.op("Gemm", bm, g, alpha=alpha, transA=tb, transB=1))
    if ctx.needs[1]:
        res[1] = (b.op("Gemm", a, g, alpha=alpha, transA=1 - ta) if not tb
                  else b.op("Gemm", g, a, alpha=alpha, transA=1, transB=ta))
    if len(node.input) > 2 and ctx.needs[2]:
        gc = unbroadcast(ctx, g, node.input[2], node.output[0])
        res[2] = b.op("Mul", gc, b.scalar_like(beta, gc)) if beta != 1.0 else gc
    return res


def _swap_last(ctx: Ctx, t: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return ctx.b.op("Transpose", t, perm=perm)


@vjp("MatMul")
def _matmul(ctx: Ctx, node, gy):
    """``Y = A @ B`` (batched, broadcasting): ``dA = dY @ B^T``, ``dB = A^T @ dY``, summed over broadcast axes.

    As in NumPy, a 1-D ``A`` [K] is read as [1, K] and a 1-D ``B`` [K] as [K, 1]; ``dY`` gets the
    dropped axis back as a unit axis, and ``dA`` / ``dB`` lose it again.
    """
    a, bm = node.input
    sa, sb, so = ctx.g.shape(a), ctx.g.shape(bm), ctx.g.shape(node.output[0])
    if sa is None or sb is None or so is None:
        raise Unsupported("the ranks of the MatMul operands are unknown", "run shape inference / static export")
    b, g = ctx.b, gy[0]
    a2, b2, sa, sb, so = a, bm, list(sa), list(sb), list(so)
    if len(sb) == 1:
        b2, sb, so, g = b.unsqueeze(bm, [1]), sb + [1], so + [1], b.unsqueeze(g, [-1])
    if len(sa) == 1:
        a2, sa, so, g = b.unsqueeze(a, [0]), [1] + sa, so[:-1] + [1] + so[-1:], b.unsqueeze(g, [-2])
    res = [None, None]
    if ctx.needs[0]:
        da = _unbroadcast_batch(ctx, b.op("MatMul", g, _swap_last(ctx, b2, len(sb))), sa, so)
        res[0] = b.squeeze(da, [0]) if a2 != a else da
    if ctx.needs[1]:
        db = _unbroadcast_batch(ctx, b.op("MatMul", _swap_last(ctx, a2, len(sa)), g), sb, so)
        res[1] = b.squeeze(db, [1]) if b2 != bm else db
    return res


def _unbroadcast_batch(ctx: Ctx, grad: str, s_in: list, s_out: list) -> str:
    """Sum ``grad`` (batch dims ``s_out[:-2]``) back to the batch dims ``s_in[:-2]`` of a MatMul operand."""
    if len(s_in) == len(s_out) and list(s_in[:-2]) == list(s_out[:-2]):
        return grad
    lead = len(s_out) - len(s_in)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(s_in[:-2]) if d == 1 and s_out[lead + i] != 1]
    if not axes:
        return grad
    r = ctx.b.reduce("ReduceSum", grad, axes, keepdims=1)
    return ctx.b.squeeze(r, list(range(lead))) if lead else r


@vjp("BatchNormalization")
def _batchnorm(ctx: Ctx, node, gy):
    """Inference BatchNorm is ``y = s (x - mu) + beta`` with ``s = gamma / sqrt(var + eps)``: ``dx = s dy``."""
    if node_attr(node, "training_mode", 0):
        raise Unsupported("BatchNormalization in training mode", "export the model in eval mode")
    gamma = ctx.require_const(node.input[1], "scale")
    var = ctx.require_const(node.input[4], "variance")
    s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + node_attr(node, "epsilon", 1e-5))
    rank = ctx.g.rank(node.input[0]) or 4
    s = s.reshape((-1,) + (1,) * (rank - 2)).astype(gamma.dtype)
    return [ctx.b.op("Mul", gy[0], ctx.b.const(s))] + [None] * (len(node.input) - 1)


def _einsum_terms(ctx: Ctx, node) -> tuple:
    """``(input terms, output term)`` of an Einsum equation, ``...`` replaced by unused letters.

    The implicit form (no ``->``) gets NumPy's output: the ellipsis, then the letters used once, sorted.
    """
    eq = node_attr(node, "equation")
    eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
    lhs, out = eq.split("->") if "->" in eq else (eq, None)
    terms = lhs.split(",")
    free = [c for c in string.ascii_letters if c not in eq]
    shapes, ell = [ctx.g.shape(i) for i in node.input], None
    for t, s in zip(terms, shapes):
        if "..." not in t:
            continue
        if s is None:
            raise Unsupported("an Einsum operand with '...' has an unknown rank", "run shape inference")
        dims = list(s[t.index("."):len(s) - (len(t) - t.index(".") - 3)])
        if ell is not None and dims != ell:
            raise Unsupported("the '...' dims of the Einsum operands differ (broadcasting)",
                              "expand the operands to the same shape")
        ell = dims
    letters = "".join(free[:len(ell or [])])
    terms = [t.replace("...", letters) for t in terms]
    if out is None:
        counts = "".join(terms)
        out = letters + "".join(sorted(c for c in set(counts) if counts.count(c) == 1 and c not in letters))
    return terms, out.replace("...", letters)


@vjp("Einsum")
def _einsum(ctx: Ctx, node, gy):
    """``y = einsum(t_1, ..., t_k -> o)`` is linear in each operand: ``dx_i = einsum(o, t_j (j != i) -> t_i)``.

    Letters of ``t_i`` found in no other term nor in ``o`` were summed out of ``x_i`` alone; ``dx_i``
    is constant along them (computed without them, then expanded).  Repeated letters within one
    term (diagonals) are not supported.
    """
    terms, out = _einsum_terms(ctx, node)
    b, res = ctx.b, []
    for i, x in enumerate(node.input):
        t = terms[i]
        if not ctx.needs[i]:
            res.append(None)
            continue
        if len(set(t)) != len(t):
            raise Unsupported(f"Einsum term '{t}' repeats an index (a diagonal)", "rewrite the Einsum")
        others = [terms[j] for j in range(len(terms)) if j != i]
        seen = set(out).union(*others)
        keep = "".join(c for c in t if c in seen)
        d = b.op("Einsum", gy[0], *[node.input[j] for j in range(len(terms)) if j != i],
                 equation=",".join([out] + others) + "->" + keep)
        if keep != t:
            d = b.op("Expand", b.unsqueeze(d, [k for k, c in enumerate(t) if c not in seen]), b.shape_of(x))
        res.append(d)
    return res
