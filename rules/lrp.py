"""Layer-wise relevance propagation rules, as data over the per-op adapters.

Every rule for a linear layer ``z = W x + b`` (Conv, ConvTranspose, Gemm, MatMul
with a constant operand, inference BatchNormalization) is written in one form,
the "modified gradient" form of Zennit's ``BasicHook`` (Anders et al., 2021,
"Software for dataset-wide XAI"): a list of *groups*, each a list of *terms*
``(sign, input modifier, weight modifier, bias modifier)``.  For a group,

    z_g   = sum_t sign_t * layer(x_t; W_t, b_t)                 (forward of modified copies)
    s_g   = R_out / stab(z_g)
    R_in  = sum_g coef_g * sum_t sign_t * x_t (.) layer_t^T(s_g)  (their transposes)

where ``layer(.; W_t, b_t)`` is the node itself with modified constants (the op's
own forward) and ``layer_t^T`` its exact vector-Jacobian product (the op's
backward adapter), so a rule never needs to know which op it is applied to.
Weight and bias modifiers run at compile time on the initializers; input
modifiers become ops.  ``stab(z) = z + eps * sign(z)`` with ``sign(0) = +1``, and a
zero denominator gives zero relevance (never NaN).

The rules (Bach et al. 2015, "On pixel-wise explanations ..."; Montavon et al.
2017, "Explaining nonlinear classification decisions with deep Taylor
decomposition"; Montavon et al. 2019, "Layer-wise relevance propagation: an
overview"):

* ``lrp.z``:        R_i = x_i w_ij R_j / z_j,  z_j = sum_i x_i w_ij + b_j
* ``lrp.epsilon``:  as z with ``z_j + eps sign(z_j)``
* ``lrp.z_plus``:   only positive contributions: z_j^+ = sum_i (x_i w_ij)^+
* ``lrp.alpha_beta``: alpha * (positive contributions, normalised by their sum)
  - beta * (negative contributions, normalised by their sum), alpha - beta = 1
* ``lrp.gamma``:    weights ``w + gamma w^+`` on positive inputs (and ``w + gamma w^-`` on negative ones)
* ``lrp.w_square``: R_i = w_ij^2 R_j / sum_i w_ij^2
* ``lrp.flat``:     R_i = R_j / (number of inputs of j), uniformly
* ``lrp.bounded`` (z^B): z_j = sum_i x_i w_ij - l_i w_ij^+ - h_i w_ij^-, for inputs in [l, h]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np
from onnx import helper

from .base import VJP, Ctx, Unsupported, mask_mul, node_attr
from .gradient import GRADIENT, Rule
from .support import relu_support

#: ops a linear rule applies to (the data input is the single input on the path)
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")


@dataclass(frozen=True)
class Term:
    """One modified copy of a layer: ``sign * layer(input_mod(x); weight_mod(W), bias_mod(b))``."""

    sign: float
    inp: str = "x"       # x | pos | neg | ones | low | high
    weight: str = "w"    # w | pos | neg | square | ones | gamma_pos | gamma_neg
    bias: str = "b"      # b | pos | neg | none | gamma_pos | gamma_neg


@dataclass(frozen=True)
class Group:
    """Terms sharing one denominator ``z_g``, and the group's weight in the result.

    ``mask`` restricts the group to outputs where the unmodified layer output ``z`` is
    positive (``"zpos"``) or negative (``"zneg"``), as the generalized gamma rule does.
    """

    coef: float
    terms: tuple
    mask: str = "all"


@dataclass(frozen=True)
class LinearRule(Rule):
    """An LRP rule for linear layers, given as groups of modified terms (see the module docstring)."""

    name: str = "lrp.z"
    groups: tuple = (Group(1.0, (Term(1.0),)),)
    epsilon: float = 1e-6
    stabilizer: str = "sign"  # "sign": z + eps sign(z) (Zennit); "zero": z + eps [z == 0] (iNNvestigate)
    gamma: float = 0.0
    low: object = None
    high: object = None
    params: dict = field(default_factory=dict, compare=False, hash=False)

    def handles(self, op_type: str) -> bool:
        return op_type in LINEAR_OPS

    def scales_input(self, node, i: int) -> bool:
        """Every term multiplies by ``x``, ``x+`` or ``x-`` (zero where ``x`` is): not flat, w^2 or z^B."""
        return all(t.inp in ("x", "pos", "neg") for g in self.groups for t in g.terms)

    def backward(self, ctx: Ctx, node, gy: list) -> list:
        if node.op_type not in LINEAR_OPS:
            raise Unsupported(f"rule {self.name} applies to linear layers ({', '.join(LINEAR_OPS)}), "
                              f"not to {node.op_type}", "assign another rule to this node")
        layer = _Layer.of(ctx, node)
        nonneg = nonnegative(ctx.g, layer.x())
        support = relu_support(ctx, node.output[0])  # R = 0 wherever z <= 0
        if nonneg and self.groups == GAMMA_GROUPS and self.gamma > 0 and self.epsilon > 0 and \
                self.stabilizer == "sign":
            out = _gamma_nonnegative(ctx, layer, gy[0], self, support)
        else:
            out = None
            for group in self.groups:
                if support is not None and group.mask == "zneg":
                    continue  # its masked relevance R [z < 0] is zero
                out = self._group(ctx, layer, group, gy[0], nonneg, out, support)
        res = [None] * len(node.input)
        res[layer.data] = out
        return res

    def _group(self, ctx: Ctx, layer: "_Layer", group: Group, r: str, nonneg: bool, out: Optional[str],
               support: Optional[str] = None):
        """Add one group's contribution ``coef_g sum_t sign_t x_t (.) layer_t^T(R / stab(z_g))`` to ``out``.

        ``support``: ``relu(z)`` when ``R`` vanishes wherever ``z <= 0`` (:func:`relu_support`); then the
        ``[z > 0]`` mask is a no-op and the unmodified layer's ``stab(z)`` may be ``relu(z) + eps``.
        """
        b = ctx.b
        # x- = 0 after a ReLU: a bias-free term of it contributes nothing
        terms = [t for t in group.terms
                 if not (nonneg and t.inp == "neg" and (t.bias == "none" or not layer.has_bias()))]
        if not terms:
            return out
        positive = all(_term_sign(ctx, layer, t, self, nonneg) > 0 for t in terms)
        # one modified convolution that is >= 0 (z+ after a ReLU): its stabiliser "+ eps" goes into its bias
        shift = self.epsilon if len(terms) == 1 and positive and terms[0].sign > 0 and self.epsilon > 0 and \
            self.stabilizer == "sign" and layer.can_shift(ctx, terms[0]) else 0.0
        z, xs = None, []
        for t in terms:
            xt = layer.input(ctx, t.inp, self)
            zt = layer.forward(ctx, xt, t.weight, t.bias, self, shift)
            zt = zt if t.sign > 0 else b.op("Neg", zt)
            z = zt if z is None else b.op("Add", z, zt)
            xs.append(xt)
        r = r if support is not None and group.mask == "zpos" else _masked(ctx, layer, r, group.mask)
        if support is not None and z == layer.node.output[0]:
            z, positive = support, True  # the plain layer output: equal where R != 0
        s = b.op("Div", r, z) if shift else divide(ctx, r, z, self.epsilon, self.stabilizer, nonneg=positive)
        for t, xt in zip(terms, xs):
            c = layer.transpose(ctx, s, t.weight, self)
            factor = layer.multiplier(ctx, t.inp, self)
            if factor is not None:
                c = b.op("Mul", factor, c)
            coef = group.coef * t.sign
            if coef != 1.0:
                c = b.op("Mul", c, b.scalar_like(coef, c))
            out = c if out is None else b.op("Add", out, c)
        return out


#: the groups of the generalized gamma rule (see :func:`onnxplain.rules.composites.rule`)
GAMMA_GROUPS = (
    Group(1.0, (Term(1, "pos", "gamma_pos", "gamma_pos"), Term(1, "neg", "gamma_neg", "none")), "zpos"),
    Group(1.0, (Term(1, "pos", "gamma_neg", "gamma_neg"), Term(1, "neg", "gamma_pos", "none")), "zneg"))

_SIGN = {"pos": 1, "neg": -1, "square": 1, "ones": 1}


def _term_sign(ctx: Ctx, layer: "_Layer", t: Term, rule: LinearRule, nonneg: bool) -> int:
    """+1 when the term ``sign * layer(x_t; W_t, b_t)`` is >= 0 for every input (by the signs of its
    input, weight and bias modifiers), else 0 (unknown)."""
    if t.inp == "x":
        sx = 1 if nonneg else 0
    elif t.inp in ("low", "high"):
        v = np.asarray(rule.low if t.inp == "low" else rule.high, dtype=np.float64)
        sx = 1 if np.all(v >= 0) else -1 if np.all(v <= 0) else 0
    else:
        sx = _SIGN.get(t.inp, 0)
    s = int(np.sign(t.sign)) * sx * _SIGN.get(t.weight, 0)
    if s > 0 and layer.has_bias() and t.bias != "none" and int(np.sign(t.sign)) * _SIGN.get(t.bias, 0) <= 0:
        return 0
    return max(s, 0)


def _gamma_nonnegative(ctx: Ctx, layer: "_Layer", r: str, rule: LinearRule, support: Optional[str] = None) -> str:
    """The generalized gamma rule on a non-negative input ``x``, by linearity, with one extra forward.

    With ``z = W x + b`` (the layer's own output) and ``zp = W+ x + b+ >= 0``, the two groups'
    denominators are ``z_1 = z + gamma zp`` (used where ``z > 0``, where ``z_1 > 0``) and
    ``z_2 = z + gamma (z - zp)`` (used where ``z < 0``, where ``z_2 < 0``), so that
    ``stab(z_1) = relu(z + gamma zp) + eps`` and ``stab(z_2) = min((1 + gamma) z - gamma zp, 0) - eps``
    there (relu/min keep both away from zero elsewhere: no 0/0 under the masks).  Then
    ``R_in = x (.) (layer^T_{W + gamma W+}(R [z > 0] / stab(z_1)) + layer^T_{W + gamma W-}(R [z < 0] / stab(z_2)))``,
    exactly Zennit's ``Gamma`` (its four terms, of which the two on ``x-`` vanish), with one modified
    forward (``gamma zp``) instead of two and no ``Where``.  With ``support`` (``relu(z)``, given when
    ``R = 0`` wherever ``z <= 0``, :func:`relu_support`) both masks are no-ops, the second group
    vanishes and ``relu(z) + gamma zp + eps`` (``eps`` in ``zp``'s bias) is ``stab(z_1)`` wherever
    ``R != 0`` and ``>= eps`` elsewhere: ``R_in = x (.) layer^T_{W + gamma W+}(R / (relu(z) + gamma zp + eps))``,
    and the layer's pre-activation ``z`` is not read (its ReLU fuses into the convolution).
    """
    b, z, x = ctx.b, layer.node.output[0], layer.x()
    if support is not None:
        # where z > 0: relu(z) + gamma zp + eps = stab(z_1); elsewhere R = 0 and the sum is >= eps > 0
        t = Term(1, "x", "scaled_pos", "scaled_pos")
        shift = rule.epsilon if layer.can_shift(ctx, t) else 0.0
        zp = layer.forward(ctx, x, "scaled_pos", "scaled_pos", rule, shift)  # gamma (W+ x + b+) (+ eps)
        den = b.op("Add", support, zp if shift else b.op("Add", zp, b.scalar_like(rule.epsilon, zp)))
        return b.op("Mul", x, layer.transpose(ctx, b.op("Div", r, den), "gamma_pos", rule))
    zp = layer.forward(ctx, x, "scaled_pos", "scaled_pos", rule)  # gamma (W+ x + b+)
    zero, eps = b.scalar_like(0.0, z), b.scalar_like(rule.epsilon, z)
    den1 = b.op("Add", b.op("Relu", b.op("Add", z, zp)), eps)
    den2 = b.op("Sub", b.op("Min", b.op("Sub", b.op("Mul", z, b.scalar_like(1.0 + rule.gamma, z)), zp), zero), eps)
    dt = ctx.g.dtype(r)
    s1 = b.op("Div", b.op("Mul", r, b.op("Cast", b.op("Greater", z, zero), to=dt)), den1)
    s2 = b.op("Div", b.op("Mul", r, b.op("Cast", b.op("Less", z, zero), to=dt)), den2)
    back = b.op("Add", layer.transpose(ctx, s1, "gamma_pos", rule), layer.transpose(ctx, s2, "gamma_neg", rule))
    return b.op("Mul", x, back)


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
        lo = g.const(n.input[1]) if len(n.input) > 1 and n.input[1] else None
        return lo is not None and float(np.min(lo)) >= 0
    if n.op_type in _NONNEG_KEEP:
        data = [i for i in n.input[:1]] if n.op_type not in ("Add", "Mul", "Concat", "Max") else list(n.input)
        if n.op_type == "Pad" and len(n.input) > 2 and n.input[2]:
            data.append(n.input[2])
        return all(nonnegative(g, i, depth + 1) for i in data if i)
    return False


def _masked(ctx: Ctx, layer: "_Layer", r: str, mask: str) -> str:
    if mask == "all":
        return r
    b = ctx.b
    z = layer.node.output[0]
    return mask_mul(ctx, b.op("Greater" if mask == "zpos" else "Less", z, b.scalar_like(0.0, z)), r)


def stabilize(ctx: Ctx, z: str, eps: float, kind: str = "sign", nonneg: bool = False) -> str:
    """``z + eps * sign(z)`` with ``sign(0) = +1`` (``kind="sign"``, Zennit), or ``z + eps [z == 0]``
    (``kind="zero"``, iNNvestigate's ``safe_divide``); a no-op for ``eps = 0``.

    Written without ``Where`` (ONNX Runtime's CPU ``Where`` costs ~10 multiplications): ``eps sign(z)``
    is ``2 eps [z >= 0] - eps`` (exactly +-eps), and ``z + eps`` alone where ``z`` is known to be
    ``>= 0`` (``nonneg``).
    """
    if eps == 0:
        return z
    b = ctx.b
    zero, dt = b.scalar_like(0.0, z), ctx.g.dtype(z)
    if kind == "zero":
        return b.op("Add", z, b.op("Mul", b.op("Cast", b.op("Equal", z, zero), to=dt), b.scalar_like(eps, z)))
    if nonneg:
        return b.op("Add", z, b.scalar_like(eps, z))
    pm = b.op("Add", b.op("Mul", b.op("Cast", b.op("GreaterOrEqual", z, zero), to=dt), b.scalar_like(2 * eps, z)),
              b.scalar_like(-eps, z))
    return b.op("Add", z, pm)


def divide(ctx: Ctx, r: str, z: str, eps: float, kind: str = "sign", nonneg: bool = False) -> str:
    """``r / stab(z)``; a stabilised denominator is never zero (``|z + eps sign(z)| >= eps``,
    ``z + eps [z == 0] != 0``), so only ``eps = 0`` needs :func:`safe_divide`."""
    den = stabilize(ctx, z, eps, kind, nonneg)
    return ctx.b.op("Div", r, den) if eps > 0 else safe_divide(ctx, r, den)


def safe_divide(ctx: Ctx, num: str, den: str) -> str:
    """``num / den`` where ``den != 0``, else 0 (a zero denominator carries no relevance)."""
    b = ctx.b
    zero = b.scalar_like(0.0, den)
    nz = b.op("Not", b.op("Equal", den, zero))
    safe = b.op("Where", nz, den, b.scalar_like(1.0, den))
    return b.op("Where", nz, b.op("Div", num, safe), zero)


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


class _Layer:
    """A linear node seen as ``z = layer(x; W, b)``: its data input, weight and bias positions."""

    def __init__(self, node, data: int, weight: Optional[int], bias: Optional[int]):
        self.node, self.data, self.weight, self.bias = node, data, weight, bias
        self._cache: dict = {}

    @classmethod
    def of(cls, ctx: Ctx, node) -> "_Layer":
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
        shape1 = self._batch1_shape(ctx) if how in ("ones", "low", "high") else None
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
            return self.node.output[0]  # the forward pass already computed it
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


@dataclass(frozen=True)
class Pass(Rule):
    """Relevance passes unchanged through an element-wise op: ``R_in = R_out`` (Zennit's ``Pass``)."""

    name: str = "lrp.pass"
    passes_relevance: ClassVar[bool] = True

    def handles(self, op_type: str) -> bool:
        return True

    def backward(self, ctx: Ctx, node, gy: list) -> list:
        res = [None] * len(node.input)
        path = [i for i, need in enumerate(ctx.needs) if need]
        if len(path) != 1:
            raise Unsupported("pass-through needs exactly one input on the path", "use lrp.norm or gradient")
        res[path[0]] = ctx.b.reshape_like(gy[0], node.input[path[0]]) if _shape_differs(ctx, node, path[0]) \
            else gy[0]
        return res


def _shape_differs(ctx: Ctx, node, i: int) -> bool:
    a, o = ctx.g.shape(node.input[i]), ctx.g.shape(node.output[0])
    return a is None or o is None or list(a) != list(o)


@dataclass(frozen=True)
class Norm(Rule):
    """Proportional redistribution over the inputs of a bias-free linear op (sum, average pooling).

    ``R_i = x_i (.) J_i^T (R / stab(z))`` with ``z`` the node's own output: each input receives
    relevance in proportion to its contribution (Zennit's ``Norm``; Add, Sum, AveragePool,
    GlobalAveragePool, ReduceMean/ReduceSum, Concat).
    """

    name: str = "lrp.norm"
    epsilon: float = 1e-6
    stabilizer: str = "sign"

    def handles(self, op_type: str) -> bool:
        return op_type in VJP

    def scales_input(self, node, i: int) -> bool:
        return True

    def backward(self, ctx: Ctx, node, gy: list) -> list:
        y = relu_support(ctx, node.output[0])  # R = 0 where z <= 0: divide by relu(z) + eps
        z = node.output[0] if y is None else y
        s = divide(ctx, gy[0], z, self.epsilon, self.stabilizer, y is not None or nonnegative(ctx.g, z))
        grads = GRADIENT.backward(ctx, node, [s] + [None] * (len(node.output) - 1))
        return [None if g is None else ctx.b.op("Mul", node.input[i], g) for i, g in enumerate(grads)]


PASS = Pass()
NORM = Norm()


@dataclass(frozen=True)
class BatchNormTwoMaps(Rule):
    """Inference BatchNorm as two linear maps, each with the epsilon rule (``batchnorm="linear2"``).

    ``m = x - mu`` (a shift), then ``y = s m + beta`` with ``s = gamma / sqrt(var + eps_bn)``:
    ``R_m = m s R / stab(y)`` and ``R_x = x R_m / stab(m)``.
    """

    name: str = "lrp.batchnorm_two_maps"
    epsilon: float = 1e-6

    def handles(self, op_type: str) -> bool:
        return op_type == "BatchNormalization"

    def scales_input(self, node, i: int) -> bool:
        return i == 0

    def backward(self, ctx: Ctx, node, gy: list) -> list:
        b, x, y = ctx.b, node.input[0], node.output[0]
        gamma, beta, mean, var = (ctx.require_const(node.input[i], "parameter").astype(np.float64)
                                  for i in range(1, 5))
        rank = ctx.g.rank(x) or 4
        shape = (-1,) + (1,) * (rank - 2)
        dt = helper.tensor_dtype_to_np_dtype(ctx.g.dtype(x))
        s = (gamma / np.sqrt(var + node_attr(node, "epsilon", 1e-5))).reshape(shape).astype(dt)
        m = b.op("Sub", x, b.const(mean.reshape(shape).astype(dt)))
        r_m = b.op("Mul", b.op("Mul", m, b.const(s)), divide(ctx, gy[0], y, self.epsilon))
        r_x = b.op("Mul", x, divide(ctx, r_m, m, self.epsilon))
        return [r_x] + [None] * (len(node.input) - 1)


@dataclass(frozen=True)
class MaxPoolProportional(Rule):
    """Max pooling redistributing in proportion to the inputs instead of winner-take-all.

    Each window is treated as a sum: ``R_i = x_i sum_{windows o containing i} R_o / stab(sum_{j in o} x_j)``
    (the ``Norm`` rule on the window sum; padded positions count as zero).  The default for max
    pooling in every composite is the gradient (winner-take-all), as in Zennit and iNNvestigate.
    """

    name: str = "lrp.maxpool_proportional"
    epsilon: float = 1e-6

    def handles(self, op_type: str) -> bool:
        return op_type == "MaxPool"

    def scales_input(self, node, i: int) -> bool:
        return i == 0

    def backward(self, ctx: Ctx, node, gy: list) -> list:
        b, x = ctx.b, node.input[0]
        keep = ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in keep}
        avg = b.op("AveragePool", x, count_include_pad=1, **attrs)
        ctx.g.alias(avg, node.output[0])
        s = divide(ctx, gy[0], avg, self.epsilon, nonneg=nonnegative(ctx.g, x))
        clone = helper.make_node("AveragePool", [x], [avg], name=node.name, count_include_pad=1, **attrs)
        return [b.op("Mul", x, VJP["AveragePool"](ctx, clone, [s])[0])]
