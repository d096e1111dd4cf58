"""Modified copies of a linear layer for the LRP rules: ``layer(x_t; W_t, b_t)`` and its transpose.

:class:`Layer` wraps one Conv/ConvTranspose/Gemm/MatMul/BatchNormalization node: the modified inputs
(``x+``, ``x-``, unit inputs, the bounds of z^B, as batch-1 constants where ONNX Runtime can fold them),
the modified weights and biases (emitted as ops on the initializers, folded at session creation, so the
file holds no copies), the modified forward (an optional ``shift`` goes into the bias) and the exact
transpose (the op's backward adapter).  :func:`nonnegative` decides from the graph whether a tensor is
``>= 0`` by construction (then the rules skip their negative-input terms).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
from onnx import helper

from .base import VJP, Ctx, Unsupported, clip_bounds, node_attr

if TYPE_CHECKING:  # annotations only (lrp.py imports this module)
    from .lrp import LinearRule, Term

#: term inputs that do not depend on the data: unit inputs and the bounds of z^B (batch-1 constants that
#: ONNX Runtime folds)
CONSTANT_INPUTS = ("ones", "low", "high")

#: stack the transposes of one layer's modified weights into one convolution up to this many output channels
STACK_CHANNELS = 16

#: ops whose output is >= 0 whatever their input, and ops that keep non-negativity
_NONNEG_OUT = {"Relu", "Sigmoid", "Softplus", "Exp", "Abs", "Softmax", "HardSigmoid", "ReduceL2", "ReduceL1",
               "ReduceSumSquare"}
_NONNEG_KEEP = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose",
                "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Identity", "Dropout", "Resize", "Add", "Mul",
                "ReduceMean", "ReduceSum", "ReduceMax", "Pad", "Gather", "Expand", "Tile", "Max"}


def nonnegative(g, tensor: str, depth: int = 0) -> bool:
    """Whether ``tensor`` is >= 0 by construction (e.g. a ReLU output, pooled): then ``x- = 0`` and
    the rules' negative-input terms vanish, so they are not emitted."""
    if depth > 30:
        return False
    v = g.const(tensor)
    if v is not None:
        return bool(np.all(v >= 0))
    n = g.producers().get(g.resolve(tensor))
    if n is None:
        return False
    if n.op_type in _NONNEG_OUT:
        return True
    if n.op_type == "Clip":
        lo = clip_bounds(g, n)[0]
        return lo is not None and lo >= 0  # False for NaN (not a constant scalar)
    if n.op_type in _NONNEG_KEEP:
        data = [i for i in n.input[:1]] if n.op_type not in ("Add", "Mul", "Concat", "Max") else list(n.input)
        if n.op_type == "Pad" and len(n.input) > 2 and n.input[2]:
            data.append(n.input[2])
        return all(nonnegative(g, i, depth + 1) for i in data if i)
    return False


def _modify(w: np.ndarray, how: str, gamma: float) -> Optional[np.ndarray]:
    if how in ("w", "b"):
        return w
    if how == "pos":
        return np.maximum(w, 0)
    if how == "neg":
        return np.minimum(w, 0)
    if how == "square":
        return w * w
    if how == "ones":
        return np.ones_like(w)
    if how == "scaled_pos":
        return gamma * np.maximum(w, 0)
    if how == "gamma_pos":
        return w + gamma * np.maximum(w, 0)
    if how == "gamma_neg":
        return w + gamma * np.minimum(w, 0)
    if how == "none":
        return None
    raise ValueError(how)


def _modify_op(ctx: Ctx, name: str, how: str, gamma: float, scale: float = 1.0) -> Optional[str]:
    """The modified parameter ``how(scale * param)`` as ops on the initializer ``name``.

    Emitted as ops rather than new initializers: ONNX Runtime folds them once when the session is
    created, and the compiled file holds no modified copies of the weights.
    """
    if how == "none":
        return None
    b = ctx.b
    t = name if scale == 1.0 else b.op("Mul", name, b.scalar_like(scale, name))
    if how in ("w", "b"):
        out = t
    elif how == "pos":
        out = b.op("Relu", t)
    elif how == "neg":
        out = b.op("Min", t, b.scalar_like(0.0, name))
    elif how == "square":
        out = b.op("Mul", t, t)
    elif how == "ones":
        out = b.op("ConstantOfShape", b.shape_of(name),
                   value=helper.make_tensor("value", ctx.g.dtype(name), [1], [1]))
    elif how == "scaled_pos":
        out = b.op("Mul", b.op("Relu", t), b.scalar_like(gamma, name))
    elif how in ("gamma_pos", "gamma_neg"):
        part = b.op("Relu", t) if how == "gamma_pos" else b.op("Min", t, b.scalar_like(0.0, name))
        out = b.op("Add", t, b.op("Mul", part, b.scalar_like(gamma, name)))
    else:
        raise ValueError(how)
    ctx.g.alias(out, name)
    return out


class Layer:
    """A linear node seen as ``z = layer(x; W, b)``: its data input, weight and bias positions."""

    def __init__(self, node, data: int, weight: Optional[int], bias: Optional[int]):
        self.node, self.data, self.weight, self.bias = node, data, weight, bias
        self._cache: dict = {}

    @classmethod
    def of(cls, ctx: Ctx, node) -> "Layer":
        path = [i for i, need in enumerate(ctx.needs) if need]
        if len(path) != 1:
            raise Unsupported("a linear rule needs exactly one input on the explained path "
                              f"(this node has {len(path)})", "use the gradient or a proportional rule here")
        data = path[0]
        if node.op_type == "BatchNormalization":
            return cls(node, 0, None, None)
        others = [i for i in range(len(node.input)) if i != data and node.input[i]]
        for i in others:
            ctx.require_const(node.input[i], "weight")
        weight = 1 if data == 0 else 0
        bias = 2 if len(node.input) > 2 and node.input[2] else None
        return cls(node, data, weight, bias)

    def x(self) -> str:
        return self.node.input[self.data]

    def has_bias(self) -> bool:
        """Whether the layer adds a bias (BatchNormalization always has its shift)."""
        return self.bias is not None or self.node.op_type == "BatchNormalization"

    def _batch1_shape(self, ctx: Ctx) -> Optional[list]:
        """``[1] + x.shape[1:]`` when those dims are static (a constant input can then be folded)."""
        s = ctx.g.shape(self.x())
        if s is None or len(s) < 2 or not all(isinstance(d, int) and d > 0 for d in s[1:]):
            return None
        return [1] + list(s[1:])

    def input(self, ctx: Ctx, how: str, rule: LinearRule) -> str:
        """The modified input ``x_t``.  Constant inputs (ones, the bounds) get batch size 1 where the
        shape is static: every op on them is then folded by ONNX Runtime at session creation, and
        their layer outputs broadcast over the batch."""
        b, x = ctx.b, self.x()
        key = ("in", how)
        if key in self._cache:
            return self._cache[key]
        shape1 = self._batch1_shape(ctx) if how in CONSTANT_INPUTS else None
        if how == "x" or (how == "pos" and nonnegative(ctx.g, x)):
            t = x
        elif how == "pos":
            t = b.op("Relu", x)
        elif how == "neg":
            t = b.op("Min", x, b.scalar_like(0.0, x))
        elif how == "ones" and shape1 is not None:
            t = b.op("ConstantOfShape", b.ints(shape1), value=helper.make_tensor("value", ctx.g.dtype(x), [1], [1]))
        elif how == "ones":
            t = b.op("Add", b.op("Mul", x, b.scalar_like(0.0, x)), b.scalar_like(1.0, x))
        elif how in ("low", "high"):
            value = rule.low if how == "low" else rule.high
            t = b.op("Expand", _bound_const(ctx, value, x), b.ints(shape1) if shape1 else b.shape_of(x))
        else:
            raise ValueError(how)
        if shape1 is not None:
            ctx.g.set_info(t, ctx.g.dtype(x), shape1)
        else:
            ctx.g.alias(t, x)
        self._cache[key] = t
        return t

    def multiplier(self, ctx: Ctx, how: str, rule: LinearRule) -> Optional[str]:
        """What ``layer_t^T(s)`` is multiplied with: ``x_t``; nothing for unit inputs; the (scalar or
        per-channel) bound itself rather than its expansion to the input's shape."""
        if how == "ones":
            return None
        if how in ("low", "high"):
            return _bound_const(ctx, rule.low if how == "low" else rule.high, self.x())
        return self.input(ctx, how, rule)

    def _scales(self) -> tuple:
        """Gemm's ``alpha`` and ``beta``: the layer's matrix is ``alpha B`` and its bias ``beta C``."""
        if self.node.op_type != "Gemm":
            return 1.0, 1.0
        return float(node_attr(self.node, "alpha", 1.0)), float(node_attr(self.node, "beta", 1.0))

    def _params(self, ctx: Ctx, w_how: str, b_how: str, rule: LinearRule) -> tuple:
        gamma = rule.gamma if rule is not None else 0.0
        if self.node.op_type == "BatchNormalization":
            return _bn_affine(ctx, self.node, w_how, b_how, gamma)
        key = ("params", w_how, b_how)
        if key in self._cache:
            return self._cache[key]
        alpha, beta = self._scales()
        wm = _modify_op(ctx, self.node.input[self.weight], w_how, gamma, alpha)
        bm = None
        if self.bias is not None:
            bm = _modify_op(ctx, self.node.input[self.bias], b_how, gamma, beta)
        self._cache[key] = (wm, bm)
        return wm, bm

    def _copy(self, xt: str, wm: str, bm: Optional[str]):
        n = helper.make_node(self.node.op_type, [], [self.node.output[0]], name=self.node.name)
        if self._scales() != (1.0, 1.0) and wm != self.node.input[self.weight]:
            n.attribute.extend(a for a in self.node.attribute if a.name not in ("alpha", "beta"))
        else:
            n.attribute.extend(self.node.attribute)
        ins = list(self.node.input)
        ins[self.data], ins[self.weight] = xt, wm
        if self.bias is not None:
            ins[self.bias] = bm or ""
        while ins and not ins[-1]:
            ins.pop()
        n.input.extend(ins)
        return n

    def can_shift(self, ctx: Ctx, t: Term) -> bool:
        """Whether :meth:`forward` of term ``t`` can add a constant to its output through the bias: a
        Conv on the (non-constant) data input whose forward is not the layer's own output."""
        return self.node.op_type == "Conv" and self.data == 0 and self.weight == 1 and \
            t.inp in ("x", "pos") and not (t.weight == "w" and t.bias in ("b", "none") and t.inp == "x") and \
            isinstance((ctx.g.shape(self.node.input[1]) or [None])[0], int)

    def forward(self, ctx: Ctx, xt: str, w_how: str, b_how: str, rule: LinearRule, shift: float = 0.0) -> str:
        """``layer(xt; W_mod, b_mod) + shift``: the node's own op with modified constants (``shift``, see
        :meth:`can_shift`, is added to the bias: ONNX Runtime folds it, no extra pass over the output)."""
        if xt == self.x() and w_how == "w" and (b_how == "b" or self.bias is None) and not shift and \
                self.node.op_type != "BatchNormalization":
            return ctx.value(self.node.output[0])  # the forward pass already computed it
        wm, bm = self._params(ctx, w_how, b_how, rule)
        if self.node.op_type == "BatchNormalization":
            y = ctx.b.op("Mul", xt, wm)
            return ctx.b.op("Add", y, bm) if bm is not None else y
        if shift:
            dt = helper.tensor_dtype_to_np_dtype(ctx.g.dtype(self.x()))
            cout = ctx.g.shape(self.node.input[1])[0]
            bm = ctx.b.const(np.full(cout, shift, dt)) if bm is None else \
                ctx.b.op("Add", bm, ctx.b.scalar_like(shift, bm))
        c = self._copy(xt, wm, bm)
        if shift and self.bias is None:
            c.input.append(bm)
        out = ctx.b.op(c.op_type, *c.input, **{a.name: helper.get_attribute_value(a) for a in c.attribute})
        if ctx.g.resolve(xt) == ctx.g.resolve(self.x()):
            ctx.g.alias(out, self.node.output[0])
        else:  # a batch-1 constant input: same dtype, batch 1
            shape = ctx.g.shape(self.node.output[0])
            ctx.g.set_info(out, ctx.g.dtype(self.node.output[0]), None if shape is None else [1] + list(shape[1:]))
        return out

    def forward_plus(self, ctx: Ctx, xt: str, t: "Term", rule: "LinearRule", eps: float) -> str:
        """``layer(xt; W_t, b_t) + eps``: through the bias where :meth:`can_shift` (no extra pass), else an ``Add``."""
        if self.can_shift(ctx, t):
            return self.forward(ctx, xt, t.weight, t.bias, rule, eps)
        z = self.forward(ctx, xt, t.weight, t.bias, rule)
        return ctx.b.op("Add", z, ctx.b.scalar_like(eps, z))

    def transpose(self, ctx: Ctx, s: str, w_how: str, rule: LinearRule) -> str:
        """The exact VJP of ``layer(.; W_mod)`` applied to ``s`` (the op's backward adapter)."""
        if w_how == "ones":
            flat = self._transpose_ones(ctx, s)
            if flat is not None:
                return flat
        wm, _ = self._params(ctx, w_how, "none", rule)
        if self.node.op_type == "BatchNormalization":
            return ctx.b.op("Mul", s, wm)
        c = self._copy(self.x(), wm, None)
        needs = [i == self.data for i in range(len(c.input))]
        sub = Ctx(ctx.b, ctx.g, needs)
        return VJP[c.op_type](sub, c, [s])[self.data]

    def transposes(self, ctx: Ctx, s: str, hows: list, rule: LinearRule) -> list:
        """:meth:`transpose` of ``s`` for each weight modification in ``hows`` (repeats computed once).

        An ungrouped Conv with few input channels (the first layer: ``C_in k <= STACK_CHANNELS``) gets
        one transposed convolution of the weights stacked along the input-channel axis, sliced after:
        a backward convolution with 3 output channels costs as much as one with 16 in ONNX Runtime, so
        z^B's three transposes (``W``, ``W+``, ``W-``) cost one.
        """
        unique = list(dict.fromkeys(hows))
        stacked = self._stacked_transposes(ctx, s, unique, rule) if len(unique) > 1 else None
        done = stacked if stacked is not None else {h: self.transpose(ctx, s, h, rule) for h in unique}
        return [done[h] for h in hows]

    def _stacked_transposes(self, ctx: Ctx, s: str, hows: list, rule: LinearRule) -> Optional[dict]:
        node, b = self.node, ctx.b
        wshape = ctx.g.shape(node.input[self.weight]) if self.weight is not None else None
        if node.op_type != "Conv" or self.data != 0 or node_attr(node, "group", 1) != 1 or wshape is None or \
                not all(isinstance(d, int) for d in wshape) or "ones" in hows or \
                wshape[1] * len(hows) > STACK_CHANNELS:
            return None
        cin = wshape[1]
        mods = [self._params(ctx, h, "none", rule)[0] for h in hows]
        weight = b.op("Concat", *mods, axis=1)
        ctx.g.set_info(weight, ctx.g.dtype(node.input[self.weight]), [wshape[0], cin * len(hows)] + list(wshape[2:]))
        c = self._copy(self.x(), weight, None)
        both = VJP["Conv"](Ctx(b, ctx.g, [True] + [False] * (len(c.input) - 1)), c, [s])[0]
        out = {}
        for k, h in enumerate(hows):
            out[h] = b.op("Slice", both, b.ints([k * cin]), b.ints([(k + 1) * cin]), b.ints([1]))
            ctx.g.alias(out[h], self.x())
        return out

    def _transpose_ones(self, ctx: Ctx, s: str) -> Optional[str]:
        """A Conv's transpose with unit weights, ``sum_o conv^T(s_o, 1)``, as the transpose of a 1-channel
        unit kernel applied to ``sum_o s_o`` and broadcast to every input channel (Cout times fewer
        operations; ungrouped Conv with static shapes, else None)."""
        node, b = self.node, ctx.b
        wshape, xshape = ctx.g.shape(node.input[self.weight]), ctx.g.shape(self.x())
        if node.op_type != "Conv" or node_attr(node, "group", 1) != 1 or wshape is None or xshape is None or \
                not all(isinstance(d, int) for d in list(wshape) + list(xshape[1:])):
            return None
        dt = helper.tensor_dtype_to_np_dtype(ctx.g.dtype(self.x()))
        ones = b.const(np.ones([1, 1] + list(wshape[2:]), dt))
        c = self._copy(self.x(), ones, None)
        summed = b.reduce("ReduceSum", s, [1], keepdims=1)
        one = VJP["Conv"](Ctx(b, ctx.g, [True] + [False] * (len(c.input) - 1)), c, [summed])[0]
        return b.op("Expand", one, b.shape_of(self.x()))


def _bn_affine(ctx: Ctx, node, w_how: str, b_how: str, gamma: float) -> tuple:
    """Inference BatchNorm as ``y = s x + c`` per channel, with modified ``s`` and ``c``."""
    gamma, beta, mean, var = (ctx.require_const(node.input[i], "parameter").astype(np.float64) for i in range(1, 5))
    s = gamma / np.sqrt(var + node_attr(node, "epsilon", 1e-5))
    c = beta - s * mean
    rank = ctx.g.rank(node.input[0]) or 4
    shape = (-1,) + (1,) * (rank - 2)
    dt = helper.tensor_dtype_to_np_dtype(ctx.g.dtype(node.input[0]))
    wm = ctx.b.const(_modify(s, w_how, gamma).reshape(shape).astype(dt))
    cm = _modify(c, b_how, gamma)
    bm = None if cm is None else ctx.b.const(cm.reshape(shape).astype(dt))
    return wm, bm


def _bound_const(ctx: Ctx, value, like: str) -> str:
    if value is None:
        raise Unsupported("lrp.bounded needs the input range low/high", "give low and high")
    dt = helper.tensor_dtype_to_np_dtype(ctx.g.dtype(like))
    arr = np.asarray(value, dtype=np.float64)
    shape = ctx.g.shape(like) or []
    rank = len(shape) or 4
    if arr.ndim == 1 and arr.size > 1:
        channels = shape[1] if len(shape) > 1 else None
        if isinstance(channels, int) and arr.size != channels:
            raise Unsupported(f"low/high has {arr.size} values but the layer's input has {channels} channels "
                              "(axis 1)", "give a scalar or one value per channel")
    if arr.ndim == 1 and rank > 2:
        arr = arr.reshape((1, -1) + (1,) * (rank - 2))
    return ctx.b.const(arr.astype(dt))
