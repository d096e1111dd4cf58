"""Relevance support: where the relevance arriving at a tensor is known to be zero.

LRP rules that redistribute in proportion to their inputs (z+, gamma, epsilon, alpha-beta on ``x``,
``lrp.norm``) give no relevance to inputs that are zero.  Below a ReLU whose output only feeds such
rules, the relevance arriving at the ReLU's input ``z`` is therefore zero wherever ``z <= 0``.  The
rule of the node that produced ``z`` can use this: it divides by ``relu(z) + eps`` (the ReLU's own
output, already computed) instead of the sign-stabilised ``z`` (4 fewer element-wise passes), drops
its ``[z > 0]`` masks and skips the terms of the generalized gamma rule that act where ``z < 0`` (one
transposed convolution fewer per layer).  The results are the same numbers: only factors that
multiply a zero change.
"""
from __future__ import annotations

from typing import Optional

from .base import Ctx, clip_bounds
from .gradient import Gradient

#: ops that only relabel elements: an output element is zero exactly where its input element is
_RELABEL = ("Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Transpose")
#: ops whose gradient routes each output's relevance to an input element equal to that output (the max)
_ROUTE_TO_EQUAL = ("MaxPool", "GlobalMaxPool")


def relevance_vanishes_at_zero(ctx: Ctx, t: str, depth: int = 0) -> bool:
    """Whether the relevance arriving at ``t`` is zero wherever ``t`` is zero, by the rules of its consumers.

    True when every consumer redistributes in proportion to ``t`` (``R_t = t (.) c``: z+, gamma, epsilon
    and alpha-beta on ``x``/``x+``/``x-``, ``lrp.norm``; see :meth:`Rule.scales_input`), possibly through
    ops that only relabel elements, or is a max pooling under the gradient (winner-take-all) rule whose
    own output's relevance vanishes where that output is zero: it hands a window's relevance to an
    element equal to the window's maximum, so a zero element receives relevance only from a zero
    maximum, which has none.  False for graph outputs, unassigned nodes and rules such as flat,
    w^2, z^B or the winner-take-all max pool, which give relevance to zero inputs.
    """
    if ctx.assign is None or ctx.consumers is None or depth > 8 or t in ctx.g.output_names():
        return False
    consumers = ctx.consumers.get(t, [])
    if not consumers:
        return False
    for c in consumers:
        rule = ctx.assign(c)
        if rule is None:
            return False
        if all(rule.scales_input(c, k) for k, i in enumerate(c.input) if i == t):
            continue
        if c.op_type in _RELABEL and rule.passes_relevance and \
                relevance_vanishes_at_zero(ctx, c.output[0], depth + 1):
            continue
        if c.op_type in _ROUTE_TO_EQUAL and isinstance(rule, Gradient) and \
                relevance_vanishes_at_zero(ctx, c.output[0], depth + 1):
            continue  # winner-take-all: relevance reaches a zero input only from a zero maximum
        return False
    return True


def relu_support(ctx: Ctx, z: str, computed: bool = True) -> Optional[str]:
    """``relu(z)`` when the relevance arriving at ``z`` is zero wherever ``z <= 0``, else None.

    That holds when ``z``'s only consumer is a ReLU (or a ``Clip`` with lower bound 0 and a positive upper
    bound, ReLU6) whose rule is the gradient (``R_z = R_y [z > 0]``, strict for ``Clip`` too) or passes
    relevance through while ``R_y`` vanishes where ``y = 0`` (:func:`relevance_vanishes_at_zero`): in
    ResNets every block's sum and every convolution before a ReLU, in MobileNets/EfficientNet-Lite every
    convolution before a ReLU6, under z+/gamma/epsilon consumers.  A rule may then divide by
    ``relu(z) + eps`` instead of the sign-stabilised ``z``, drop masks ``[z > 0]`` and skip terms that only
    act where ``z < 0``: the same numbers, fewer operations.

    For a ReLU (or a ``Clip`` without upper bound) the returned tensor is its output; below a bounded
    ``Clip`` it is a ``Relu(z)`` emitted here (the clipped output differs from ``relu(z)`` above the
    bound), or None when ``computed`` is False.
    """
    value = support_of(ctx, z)
    if value is None or (not computed and value.emits):
        return None
    return value()


class _ReluOf:
    """``relu(z)`` on demand: the activation's own output, or one ``Relu(z)`` emitted at the first call
    (emitting it unused would keep ``z`` alive and stop the convolution from fusing with its ReLU6)."""

    def __init__(self, ctx: Ctx, z: str, act, emits: bool):
        self.ctx, self.z, self.act, self.emits, self._name = ctx, z, act, emits, None

    def __call__(self) -> str:
        if self._name is None:
            self._name = self.ctx.b.op("Relu", self.ctx.value(self.z)) if self.emits else self.act.output[0]
        return self._name


def support_of(ctx: Ctx, z: str) -> Optional[_ReluOf]:
    """As :func:`relu_support`, but returns a callable that yields ``relu(z)`` only when a rule needs it."""
    if ctx.assign is None or ctx.consumers is None or z in ctx.g.output_names():
        return None
    consumers = ctx.consumers.get(z, [])
    if len(consumers) != 1 or consumers[0].op_type not in ("Relu", "Clip"):
        return None
    act = consumers[0]
    bounded = False
    if act.op_type == "Clip":
        lo, hi = clip_bounds(ctx.g, act)
        if lo != 0.0 or (hi is not None and not hi > 0.0):
            return None
        bounded = hi is not None and hi != float("inf")
    rule = ctx.assign(act)
    if rule is None:
        return None
    if isinstance(rule, Gradient) or (rule.passes_relevance and relevance_vanishes_at_zero(ctx, act.output[0])):
        return _ReluOf(ctx, z, act, bounded)
    return None


def residual_operand(ctx: Ctx, a: str) -> Optional[str]:
    """``y - b`` for a residual branch ``a`` of ``y = relu(a + b)``, where it may replace ``a``; else None.

    When ``a``'s only consumer is a two-input sum ``a + b`` of equal shapes whose rule maps zero output
    relevance to zero input relevance element by element (``lrp.norm``, the gradient), and the relevance
    at the sum vanishes wherever ``a + b <= 0`` (:func:`relu_support` gives ``y = relu(a + b)``), then
    relevance reaches ``a`` only where ``y > 0``, and there ``a = y - b``.  Rules whose contributions are
    proportional to the relevance at ``a`` (``lrp.norm`` at the sum, the linear rules of ``a``'s producer)
    may read ``y - b`` instead: the same numbers up to float rounding (``y = a + b`` rounded), and the
    forward pass need not keep ``a`` (in ResNets the largest tensors, each block's last convolution,
    which can then fuse with the sum and the ReLU).  Of two eligible inputs only the first is replaced.
    """
    if ctx.assign is None or ctx.consumers is None:
        return None
    add = (ctx.consumers.get(a) or [None])[0]
    if add is None or add.op_type not in ("Add", "Sum") or len(add.input) != 2 or not _only_summed(ctx, a, add):
        return None
    k = list(add.input).index(a)
    other = add.input[1 - k]
    shapes = [ctx.g.shape(t) for t in (add.input[0], add.input[1], add.output[0])]
    if other == a or any(s is None for s in shapes) or not shapes[0] == shapes[1] == shapes[2]:
        return None
    if k == 1 and _only_summed(ctx, other, add):
        return None  # the first input is replaced, this one is read as it is
    rule = ctx.assign(add)
    if rule is None or not (isinstance(rule, Gradient) or rule.scales_input(add, k)):
        return None
    y = relu_support(ctx, add.output[0], computed=False)
    if y is None:
        return None
    out = ctx.b.op("Sub", y, other)
    ctx.g.alias(out, a)
    return out


def _only_summed(ctx: Ctx, t: str, add) -> bool:
    """Whether ``t`` is no graph output and ``add`` is its only consumer on the path."""
    return t not in ctx.g.output_names() and ctx.consumers.get(t, []) == [add]
