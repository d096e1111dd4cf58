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

The noise ``z`` is generated in the graph by a counter-based generator built only
from int64 ``Mul``/``Add``/``Div``/``Mod`` on non-negative values below 2^63
(exact integer arithmetic, with CUDA kernels in ONNX Runtime), so a seed gives the
same integers on CPU and CUDA and across runs.  It depends on the seed, the sample
``k`` and the element ``e`` (of the ``D`` elements of one batch item) only, not on
the batch: every item of a batch gets the same ``z_k`` (scaled by its own
``sigma``), so explaining images together or one by one gives the same maps.  With
counter ``c = (k D + e) mod 2^32`` and ``key = seed * 0x9E3779B9 mod 2^32``::

    y = c * K1,   t = y + key * K2,   x_0 = t mod 2^31
    x_r = floor((x_{r-1}^2 + (y if r is odd else t)) / 2^16) mod 2^31,  r = 1 ... 5
    u1 = U(x_4),  u2 = U(x_5),  z = sqrt(-2 ln u1) cos(2 pi u2)   (Box-Muller)

with ``K1 = 0x1B873593``, ``K2 = 0x165667B1`` and ``U(x) = (floor(x / 2^7) + 0.5) / 2^24``
(the top 24 of the 31 bits; the integer is exact in float32, ``+ 0.5`` rounds in
float32).  Every intermediate stays below 2^63 (``c < 2^32``, ``K1, K2 < 2^29``,
``x < 2^31``).  The rounds are middle-square steps with a Weyl-like term, as in
Widynski's "Squares" counter-based generator, on a 31-bit state so that the square
fits in int64.  ``Log``, ``Sqrt`` and ``Cos`` are float32 and may differ in the last
bits between devices; the integers and ``u1``, ``u2`` do not.
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


#: Multipliers of the noise generator (odd, below 2^29: every intermediate stays below 2^63).
NOISE_K1, NOISE_K2 = 0x1B873593, 0x165667B1
#: Squaring rounds of the noise generator before ``u1`` (``u2`` takes one more).
NOISE_ROUNDS = 4


def noise_key(seed: int) -> int:
    """The 32-bit key of a noise seed.

    Parameters
    ----------
    seed : int
        The ``seed`` parameter of SmoothGrad/VarGrad.

    Returns
    -------
    int
        ``seed * 0x9E3779B9 mod 2^32``.
    """
    return (int(seed) * 0x9E3779B9) & 0xFFFFFFFF


def element_index(b: Builder, x: str) -> tuple:
    """The element counter of one batch item of ``x`` (emit it once, outside the Loop).

    Parameters
    ----------
    b : Builder
        Where the nodes go.
    x : str
        The input tensor, of shape ``[N, *tail]``.

    Returns
    -------
    tuple of str
        ``(e, d)``: int64 ``e`` of shape ``[1, *tail]`` holding ``0 ... D-1`` in
        row-major order, and the scalar ``d = D`` (also valid for ``N = 0``).
    """
    b = b.scoped(f"{b.prefix}/noise")
    tail = b.op("Slice", b.op("Shape", x), b.ints([1]), b.ints([_INT64_MAX]))
    one_item = b.op("Concat", b.ints([1]), tail, axis=0)
    d = b.op("Size", b.op("ConstantOfShape", one_item, value=helper.make_tensor("v", TensorProto.BOOL, [1], [0])))
    return b.op("Reshape", b.op("Range", b.ints(0), d, b.ints(1)), one_item), d


def noise_counter(b: Builder, it: str, chunk: int, elems: str, size: str, rank: int) -> str:
    """The noise counters ``c = (k D + e) mod 2^32`` of one loop iteration.

    Parameters
    ----------
    b : Builder
        Where the nodes go.
    it : str
        The int64 loop iteration; it holds samples ``k = it * chunk + j``, ``j < chunk``.
    chunk : int
        Samples per iteration.
    elems, size : str
        ``(e, D)`` from :func:`element_index` of the input.
    rank : int
        The rank of the input.

    Returns
    -------
    str
        int64 counters of shape ``[chunk, 1, *tail]``: no batch dependence.
    """
    b = b.scoped(f"{b.prefix}/noise")
    ks = b.ints(np.arange(chunk).reshape([chunk] + [1] * rank))
    k = b.op("Add", b.op("Mul", it, b.ints(chunk)), ks)
    return b.op("Mod", b.op("Add", b.op("Mul", k, size), elems), b.ints(2 ** 32))


def noise_words(b: Builder, c: str, seed: int) -> tuple:
    """The hash of the noise generator (the rounds of the module docstring).

    Only int64 ``Mul``, ``Add``, ``Div`` and ``Mod`` on non-negative values below
    2^63: exact, hence bit-identical on every device.

    Parameters
    ----------
    b : Builder
        Where the nodes go.
    c : str
        int64 counters in ``[0, 2^32)``.
    seed : int
        The noise seed.

    Returns
    -------
    tuple of str
        The int64 24-bit words ``floor(x_4 / 2^7)`` and ``floor(x_5 / 2^7)``, shaped like ``c``.
    """
    b = b.scoped(f"{b.prefix}/noise")
    y = b.op("Mul", c, b.ints(NOISE_K1))
    t = b.op("Add", y, b.ints(noise_key(seed) * NOISE_K2))
    x = b.op("Mod", t, b.ints(2 ** 31))
    words = []
    for r in range(1, NOISE_ROUNDS + 2):
        s = b.op("Add", b.op("Mul", x, x), y if r % 2 else t)
        x = b.op("Mod", b.op("Div", s, b.ints(2 ** 16)), b.ints(2 ** 31))
        if r >= NOISE_ROUNDS:
            words.append(b.op("Div", x, b.ints(2 ** 7)))
    return tuple(words)


def noise_uniform(b: Builder, word: str) -> str:
    """Uniform numbers from 24-bit words.

    Parameters
    ----------
    b : Builder
        Where the nodes go.
    word : str
        int64 words in ``[0, 2^24)`` (exact in float32).

    Returns
    -------
    str
        float32 ``(word + 0.5) / 2^24`` (the sum rounded to float32), in ``(0, 1]``.
    """
    top = b.op("Cast", word, to=TensorProto.FLOAT)
    return b.op("Mul", b.op("Add", top, b.const(np.float32(0.5))), b.const(np.float32(2.0 ** -24)))


def gaussian_noise(b: Builder, it: str, chunk: int, elems: str, size: str, seed: int, rank: int) -> str:
    """Standard normal noise of shape ``[chunk, 1, *tail]`` for loop iteration ``it`` (float32).

    Parameters
    ----------
    b : Builder
        Where the nodes go (the Loop body).
    it : str
        The int64 loop iteration.
    chunk : int
        Samples per iteration: the noise holds samples ``it*chunk ... it*chunk + chunk - 1``.
    elems, size : str
        :func:`element_index` of the input (computed outside the Loop).
    seed : int
        The noise seed.
    rank : int
        The rank of the input.

    Returns
    -------
    str
        The noise; it broadcasts over the batch axis (one draw per sample and element).
    """
    v1, v2 = noise_words(b, noise_counter(b, it, chunk, elems, size, rank), seed)
    b = b.scoped(f"{b.prefix}/noise")
    u1, u2 = noise_uniform(b, v1), noise_uniform(b, v2)
    r = b.op("Sqrt", b.op("Mul", b.op("Log", u1), b.const(np.float32(-2.0))))
    return b.op("Mul", r, b.op("Cos", b.op("Mul", u2, b.const(np.float32(2 * math.pi)))))


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
        elems, size = extras["elems"][x]
        z = gaussian_noise(b, it, plan.chunk, elems, size, params["seed"], rank)  # [C, 1, ...]
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

    extras: dict = {"ref": {}, "diff": {}, "sigma": {}, "elems": {}}
    for x in wrt:
        if method == "integrated_gradients":
            ref = reference_tensor(b, g, x, params)
            extras["ref"][x] = ref
            extras["diff"][x] = b.op("Sub", x, ref)
        else:
            axes = list(range(1, g.rank(x)))
            span = b.op("Sub", b.reduce("ReduceMax", x, axes), b.reduce("ReduceMin", x, axes))
            extras["sigma"][x] = b.op("Mul", span, b.scalar_like(params["noise_scale"], x))
            extras["elems"][x] = element_index(b, x)
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
