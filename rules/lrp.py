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
from typing import Callable, ClassVar, Optional

import numpy as np
from onnx import helper

from .base import VJP, Ctx, Unsupported, float_mask, mask_mul, node_attr
from .gradient import GRADIENT, Rule
from .lrp_layer import CONSTANT_INPUTS, Layer, nonnegative
from .support import relu_support, support_of

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
        layer = Layer.of(ctx, node)
        nonneg = nonnegative(ctx.g, layer.x())
        support = support_of(ctx, node.output[0])  # R = 0 wherever z <= 0; support() = relu(z)
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

    def _group(self, ctx: Ctx, layer: "Layer", group: Group, r: str, nonneg: bool, out: Optional[str],
               support: Optional[Callable[[], str]] = None):
        """Add one group's contribution ``coef_g sum_t sign_t x_t (.) layer_t^T(R / stab(z_g))`` to ``out``.

        ``support``: a callable giving ``relu(z)``, when ``R`` vanishes wherever ``z <= 0`` (:func:`support_of`); then the
        ``[z > 0]`` mask is a no-op and the unmodified layer's ``stab(z)`` may be ``relu(z) + eps``.
        """
        b = ctx.b
        # x- = 0 after a ReLU: a bias-free term of it contributes nothing
        terms = [t for t in group.terms
                 if not (nonneg and t.inp == "neg" and (t.bias == "none" or not layer.has_bias()))]
        if not terms:
            return out
        positive = all(_term_sign(ctx, layer, t, self, nonneg) > 0 for t in terms)
        # one modified layer that is >= 0 (z+ after a ReLU): stab(z) = z + eps, added through its bias
        plus = len(terms) == 1 and positive and terms[0].sign > 0 and self.epsilon > 0 and self.stabilizer == "sign"
        z, zc, xs = None, None, []
        for t in terms:
            xt = layer.input(ctx, t.inp, self)
            zt = layer.forward_plus(ctx, xt, t, self, self.epsilon) if plus else \
                layer.forward(ctx, xt, t.weight, t.bias, self)
            zt = zt if t.sign > 0 else b.op("Neg", zt)
            if t.inp in CONSTANT_INPUTS:  # z^B's bound terms: summed first, folded into one constant
                zc = zt if zc is None else b.op("Add", zc, zt)
            else:
                z = zt if z is None else b.op("Add", z, zt)
            xs.append(xt)
        z = zc if z is None else z if zc is None else b.op("Add", z, zc)
        r = r if support is not None and group.mask == "zpos" else _masked(ctx, layer, r, group.mask)
        if support is not None and z == ctx.value(layer.node.output[0]):
            z, positive = support(), True  # the plain layer output: equal where R != 0
        s = b.op("Div", r, z) if plus else divide(ctx, r, z, self.epsilon, self.stabilizer, nonneg=positive)
        for t, xt, c in zip(terms, xs, layer.transposes(ctx, s, [t.weight for t in terms], self)):
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


def _term_sign(ctx: Ctx, layer: "Layer", t: Term, rule: LinearRule, nonneg: bool) -> int:
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


def _gamma_nonnegative(ctx: Ctx, layer: "Layer", r: str, rule: LinearRule,
                       support: Optional[Callable[[], str]] = None) -> str:
    """The generalized gamma rule on a non-negative input ``x``, by linearity, with one extra forward.

    With ``z = W x + b`` (the layer's own output) and ``zp = W+ x + b+ >= 0``, the two groups'
    denominators are ``z_1 = z + gamma zp`` (used where ``z > 0``, where ``z_1 > 0``) and
    ``z_2 = z + gamma (z - zp)`` (used where ``z < 0``, where ``z_2 < 0``), so that
    ``stab(z_1) = relu(z + gamma zp) + eps`` and ``stab(z_2) = min((1 + gamma) z - gamma zp, 0) - eps``
    there (relu/min keep both away from zero elsewhere: no 0/0 under the masks).  Then
    ``R_in = x (.) (layer^T_{W + gamma W+}(R [z > 0] / stab(z_1)) + layer^T_{W + gamma W-}(R [z < 0] / stab(z_2)))``,
    exactly Zennit's ``Gamma`` (its four terms, of which the two on ``x-`` vanish), with one modified
    forward (``gamma zp``) instead of two and no ``Where``.  With ``support`` (giving ``relu(z)``, passed when
    ``R = 0`` wherever ``z <= 0``, :func:`support_of`) both masks are no-ops, the second group
    vanishes and ``relu(z) + gamma zp + eps`` (``eps`` in ``zp``'s bias) is ``stab(z_1)`` wherever
    ``R != 0`` and ``>= eps`` elsewhere: ``R_in = x (.) layer^T_{W + gamma W+}(R / (relu(z) + gamma zp + eps))``,
    and the layer's pre-activation ``z`` is not read below a ReLU (it fuses into the convolution; below a
    ReLU6, ``relu(z)`` is computed from ``z``).
    """
    b, z, x = ctx.b, ctx.value(layer.node.output[0]), layer.x()
    if support is not None:
        # where z > 0: relu(z) + gamma zp + eps = stab(z_1); elsewhere R = 0 and the sum is >= eps > 0
        zp = layer.forward_plus(ctx, x, Term(1, "x", "scaled_pos", "scaled_pos"), rule, rule.epsilon)
        den = b.op("Add", support(), zp)  # zp = gamma (W+ x + b+) + eps
        return b.op("Mul", x, layer.transpose(ctx, b.op("Div", r, den), "gamma_pos", rule))
    zp = layer.forward(ctx, x, "scaled_pos", "scaled_pos", rule)  # gamma (W+ x + b+)
    zero, eps = b.scalar_like(0.0, z), b.scalar_like(rule.epsilon, z)
    den1 = b.op("Add", b.op("Relu", b.op("Add", z, zp)), eps)
    den2 = b.op("Sub", b.op("Min", b.op("Sub", b.op("Mul", z, b.scalar_like(1.0 + rule.gamma, z)), zp), zero), eps)
    s1 = b.op("Div", _masked(ctx, layer, r, "zpos"), den1)
    s2 = b.op("Div", _masked(ctx, layer, r, "zneg"), den2)
    back = b.op("Add", layer.transpose(ctx, s1, "gamma_pos", rule), layer.transpose(ctx, s2, "gamma_neg", rule))
    return b.op("Mul", x, back)


def _masked(ctx: Ctx, layer: "Layer", r: str, mask: str) -> str:
    if mask == "all":
        return r
    b = ctx.b
    z = ctx.value(layer.node.output[0])
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
    zero = b.scalar_like(0.0, z)
    if kind == "zero":
        return b.op("Add", z, b.op("Mul", float_mask(ctx, b.op("Equal", z, zero), z), b.scalar_like(eps, z)))
    if nonneg:
        return b.op("Add", z, b.scalar_like(eps, z))
    pm = b.op("Add", b.op("Mul", float_mask(ctx, b.op("GreaterOrEqual", z, zero), z), b.scalar_like(2 * eps, z)),
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
        return [None if g is None else ctx.b.op("Mul", ctx.value(node.input[i]), g) for i, g in enumerate(grads)]


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
