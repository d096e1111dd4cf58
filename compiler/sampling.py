"""Sampling methods built inside the graph: integrated gradients, SmoothGrad, VarGrad.

All three average gradients over points ``x_k`` derived from the input.  The
compiled graph evaluates them in one inference with an ONNX ``Loop`` over chunks
of ``C`` points: each iteration expands the batch to ``C*N`` samples, runs a copy
of the forward pass (sharing the weights) and the gradient backward pass, and
accumulates the weighted gradients.  ``C`` (the ``chunk`` parameter) bounds the
memory; models with a fixed batch size use ``C = 1``.

Points and weights:

* integrated gradients: ``x_k = x' + a_k (x - x')``, result
  ``(x - x') * sum_k w_k grad(x_k)`` with the Riemann points ``a_k`` and weights
  ``w_k`` of :func:`riemann_points`.
* SmoothGrad: ``x_k = x + sigma z_k`` with ``sigma = noise_scale * (max x - min x)``
  per sample; result ``mean_k post(grad(x_k))`` with ``post`` none/abs/square.
* VarGrad: ``mean_k grad(x_k)^2 - (mean_k grad(x_k))^2``.

The noise ``z`` is generated in the graph by a counter-based generator, so a
seed gives the same noise on CPU and CUDA and across runs: for global element
index ``i = (k N + n) D + e`` (sample ``k``, batch item ``n``, element ``e`` of
``D``), ``u1 = U(h(2i + key))``, ``u2 = U(h(2i + 1 + key))`` (arguments modulo
2^32), ``z = sqrt(-2 ln u1) cos(2 pi u2)`` (Box-Muller), with
``key = seed * 0x9E3779B9 mod 2^32``, ``U(v) = ((v >> 8) + 0.5) / 2^24`` and ``h`` the
"lowbias32" integer hash (``x ^= x>>16; x *= 0x7feb352d; x ^= x>>15;
x *= 0x846ca68b; x ^= x>>16``, all modulo 2^32).
"""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper

from .emit import emit_backward
from .graph import Builder, Graph
from .head import one_hot_seed

_INT64_MAX = np.iinfo(np.int64).max


def riemann_points(steps: int, kind: str) -> tuple:
    """Path positions ``a_k`` and weights ``w_k`` (summing to 1) of the integrated-gradients sum."""
    k = np.arange(steps, dtype=np.float64)
    if kind == "trapezoid":
        if steps < 2:
            raise ValueError("the trapezoid rule needs steps >= 2")
        w = np.full(steps, 1.0 / (steps - 1))
        w[0] = w[-1] = 0.5 / (steps - 1)
        return k / (steps - 1), w
    offset = {"left": 0.0, "right": 1.0, "middle": 0.5}[kind]
    return (k + offset) / steps, np.full(steps, 1.0 / steps)


def noise_key(seed: int) -> int:
    return (int(seed) * 0x9E3779B9) & 0xFFFFFFFF


def _hash(b: Builder, x: str) -> str:
    """lowbias32 on a uint32 tensor."""
    def u32(v):
        return b.const(np.array([v], np.uint32))
    for shift, mul in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = b.op("BitwiseXor", x, b.op("BitShift", x, u32(shift), direction="RIGHT"))
        x = b.op("Mul", x, u32(mul))
    return b.op("BitwiseXor", x, b.op("BitShift", x, u32(16), direction="RIGHT"))


def _uniform(b: Builder, counter: str) -> str:
    h = _hash(b, b.op("Cast", counter, to=TensorProto.UINT32))
    top = b.op("Cast", b.op("BitShift", h, b.const(np.array([8], np.uint32)), direction="RIGHT"),
               to=TensorProto.FLOAT)
    return b.op("Mul", b.op("Add", top, b.const(np.float32(0.5))), b.const(np.float32(2.0 ** -24)))


def gaussian_noise(b: Builder, it: str, chunk: int, x: str, seed: int) -> str:
    """Standard normal noise of shape ``[chunk, *shape(x)]`` for loop iteration ``it`` (float32)."""
    shp = b.op("Shape", x)
    total = b.op("ReduceProd", b.op("Concat", b.ints([chunk]), shp, axis=0), keepdims=0)
    idx = b.op("Range", b.ints(0), total, b.ints(1))
    base = b.op("Mul", it, total)  # it * C * N * D
    gi = b.op("Add", idx, base)
    two = b.op("Add", b.op("Mul", gi, b.ints(2)), b.ints(noise_key(seed)))
    u1 = _uniform(b, two)
    u2 = _uniform(b, b.op("Add", two, b.ints(1)))
    r = b.op("Sqrt", b.op("Mul", b.op("Log", u1), b.const(np.float32(-2.0))))
    z = b.op("Mul", r, b.op("Cos", b.op("Mul", u2, b.const(np.float32(2 * math.pi)))))
    return b.op("Reshape", z, b.op("Concat", b.ints([chunk]), shp, axis=0))


class SamplingPlan:
    """Chunking of ``count`` points into a Loop of ``trips`` iterations of ``chunk`` points."""

    def __init__(self, count: int, chunk: int):
        self.count, self.chunk = count, chunk
        self.trips = -(-count // chunk)
        self.valid = (np.arange(self.trips * chunk) < count).astype(np.float64)

    def table(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(self.trips * self.chunk)
        out[: self.count] = values
        return out


def clone_forward(g: Graph, nodes: list, feeds: dict, out: list, tag: str) -> tuple:
    """Copy the nodes that depend on ``feeds`` into ``out`` with fresh names.

    Returns ``(cloned nodes, rename map, clone -> original node)``.  Cloned tensors
    share the static information of their originals (batch dimension aside).
    """
    rename = dict(feeds)
    cloned, origin = [], {}
    for n in nodes:
        if not any(i in rename for i in n.input if i):
            continue
        c = helper.make_node(n.op_type, [rename.get(i, i) for i in n.input], [], name=g.fresh(f"{tag}/{n.name}"),
                             domain=n.domain)
        c.attribute.extend(n.attribute)
        for o in n.output:
            if o:
                new = g.fresh(f"{tag}/{o}")
                rename[o] = new
                g.alias(new, o)
                c.output.append(new)
            else:
                c.output.append("")
        cloned.append(c)
        origin[c.name] = n
        out.append(c)
    return cloned, rename, origin


def _expand_points(b: Builder, g: Graph, method: str, x: str, params: dict, alphas_c: str, plan, it: str,
                   extras: dict) -> str:
    """The expanded batch ``[C*N, ...]`` of points for input ``x``."""
    rank = g.rank(x)
    if method == "integrated_gradients":
        a = b.op("CastLike", b.op("Reshape", alphas_c, b.ints([plan.chunk] + [1] * rank)), x)
        pts = b.op("Add", extras["ref"][x], b.op("Mul", a, extras["diff"][x]))
    else:
        z = gaussian_noise(b, it, plan.chunk, x, params["seed"])
        pts = b.op("Add", x, b.op("Mul", b.op("CastLike", z, x), extras["sigma"][x]))
    tail = b.op("Slice", b.op("Shape", x), b.ints([1]), b.ints([_INT64_MAX]))
    return b.op("Reshape", pts, b.op("Concat", b.ints([-1]), tail, axis=0))


def _accumulate(b: Builder, g: Graph, method: str, params: dict, grad: str, x: str, w_c: str, plan) -> list:
    """Weighted sums over the chunk of the per-point gradients (one or two accumulators)."""
    rank = g.rank(x)
    tail = b.op("Slice", b.op("Shape", x), b.ints([1]), b.ints([_INT64_MAX]))
    g5 = b.op("Reshape", grad, b.op("Concat", b.ints([plan.chunk, -1]), tail, axis=0))
    w = b.op("CastLike", b.op("Reshape", w_c, b.ints([plan.chunk] + [1] * rank)), g5)
    post = params.get("postprocess", "none")
    if post == "abs":
        g5 = b.op("Abs", g5)
    elif post == "square":
        g5 = b.op("Mul", g5, g5)
    parts = [g5] if method != "vargrad" else [g5, b.op("Mul", g5, g5)]
    return [b.reduce("ReduceSum", b.op("Mul", p, w), [0], keepdims=0) for p in parts]


def emit_sampling(g: Graph, main: list, method: str, params: dict, fwd_nodes: list, explained: str,
                  target: str, wrt: list, assign, rule_log: dict) -> dict:
    """Emit one sampling method; return ``{input: attribution tensor}`` (tensors of the main graph)."""
    count = params["steps"] if method == "integrated_gradients" else params["samples"]
    plan = SamplingPlan(count, params["chunk"])
    b = Builder(g, main, f"{method}")
    if method == "integrated_gradients":
        alphas, weights = riemann_points(count, params["riemann"])
    else:
        alphas, weights = np.zeros(count), np.full(count, 1.0 / count)
    alpha_t = b.const(plan.table(alphas).astype(np.float32))
    w_t = b.const(plan.table(weights).astype(np.float32))
    extras = _prepare(b, g, method, params, wrt)
    body: list = []
    bb = Builder(g, body, f"{method}/loop")
    it, cond = g.fresh(f"{method}/iter"), g.fresh(f"{method}/cond")
    n_acc = 2 if method == "vargrad" else 1
    accs_in = {x: [g.fresh(f"{method}/acc_in") for _ in range(n_acc)] for x in wrt}
    start = bb.op("Reshape", bb.op("Mul", it, bb.ints(plan.chunk)), bb.ints([1]))
    end = bb.op("Add", start, bb.ints([plan.chunk]))
    alphas_c = bb.op("Slice", alpha_t, start, end)
    w_c = bb.op("Slice", w_t, start, end)
    feeds = {x: _expand_points(bb, g, method, x, params, alphas_c, plan, it, extras) for x in wrt}
    for u in g.input_names():
        if u not in feeds:
            rank = g.rank(u) or 1
            feeds[u] = bb.op("Tile", u, bb.ints([plan.chunk] + [1] * (rank - 1)))
    for u, fed in feeds.items():
        g.alias(fed, u)
    cloned, rename, origin = clone_forward(g, fwd_nodes, feeds, body, f"{method}/fwd")
    ex = rename.get(explained, explained)
    seed = one_hot_seed(bb, ex, bb.op("Tile", target, bb.ints([plan.chunk])))
    log: dict = {}
    grads = emit_backward(g, cloned, {ex: seed}, [feeds[x] for x in wrt],
                          lambda n: assign(origin[n.name]), body, log, key=lambda n: origin[n.name].name)
    rule_log.update(log)
    outs_body = [bb.op("Identity", cond)]
    for x in wrt:
        gx = grads[feeds[x]] or bb.zeros_like(feeds[x])
        for acc, part in zip(accs_in[x], _accumulate(bb, g, method, params, gx, x, w_c, plan)):
            outs_body.append(bb.op("Add", acc, part))
    return _finish(b, g, method, params, wrt, body, it, cond, accs_in, outs_body, plan, extras)


def _prepare(b: Builder, g: Graph, method: str, params: dict, wrt: list) -> dict:
    from .references import reference_tensor

    extras: dict = {"ref": {}, "diff": {}, "sigma": {}}
    for x in wrt:
        if method == "integrated_gradients":
            ref = reference_tensor(b, g, x, params)
            extras["ref"][x] = ref
            extras["diff"][x] = b.op("Sub", x, ref)
        else:
            axes = list(range(1, g.rank(x)))
            span = b.op("Sub", b.reduce("ReduceMax", x, axes), b.reduce("ReduceMin", x, axes))
            extras["sigma"][x] = b.op("Mul", span, b.scalar_like(params["noise_scale"], x))
    return extras


def _finish(b: Builder, g: Graph, method, params, wrt, body, it, cond, accs_in, outs_body, plan, extras) -> dict:
    flat_in = [a for x in wrt for a in accs_in[x]]
    inputs = [helper.make_tensor_value_info(it, TensorProto.INT64, []),
              helper.make_tensor_value_info(cond, TensorProto.BOOL, [])]
    inputs += [helper.make_tensor_value_info(a, g.dtype(x), None) for x in wrt for a in accs_in[x]]
    outputs = [helper.make_tensor_value_info(outs_body[0], TensorProto.BOOL, [])]
    outputs += [helper.make_tensor_value_info(o, g.dtype(wrt[0]), None) for o in outs_body[1:]]
    graph = helper.make_graph(body, f"{method}_body", inputs, outputs)
    inits = [b.zeros_like(x) for x in wrt for _ in accs_in[x]]
    finals = b.op("Loop", b.ints(plan.trips), "", *inits, n_out=len(flat_in), body=graph)
    finals = [finals] if isinstance(finals, str) else finals
    result, k = {}, 0
    for x in wrt:
        if method == "integrated_gradients":
            result[x] = b.op("Mul", extras["diff"][x], finals[k])
        elif method == "smoothgrad":
            result[x] = finals[k]
        else:
            m = finals[k]
            result[x] = b.op("Sub", finals[k + 1], b.op("Mul", m, m))
        k += len(accs_in[x])
    return result
