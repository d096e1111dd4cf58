"""What every rule and per-op adapter shares: the emission context and the adapter registry.

A *per-op adapter* knows the maths of one ONNX op: its exact backward
(vector-Jacobian product, VJP) expressed as standard ONNX ops.  A *rule* decides
how relevance or gradient flows backward through a node; the plain gradient rule
simply calls the op's adapter.  Adapters are registered with :func:`vjp`.

Adapter signature::

    fn(ctx: Ctx, node: onnx.NodeProto, gy: list[str | None]) -> list[str | None]

``gy[k]`` is the name of the gradient tensor of ``node.output[k]`` (or None when
nothing flows back into that output); the result holds one entry per
``node.input`` (None where no gradient is needed or it is identically zero).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import onnx

from ..compiler.graph import Builder, Graph, attr, node_label

#: op type -> VJP adapter
VJP: dict = {}
#: op types whose float output has a zero derivative almost everywhere
ZERO_GRAD = {"Floor", "Ceil", "Round", "Sign", "Shape", "Size", "ArgMax", "ArgMin", "NonZero",
             "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "IsNaN", "IsInf",
             "RandomNormalLike", "RandomUniformLike", "EyeLike", "ConstantOfShape", "Range"}


class Unsupported(Exception):
    """Raised by an adapter that cannot handle one particular node; the message says why and what to do."""

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.message = message
        self.fix = fix


def vjp(*op_types: str) -> Callable:
    """Register the decorated function as the VJP adapter of ``op_types``."""
    def deco(fn):
        for t in op_types:
            VJP[t] = fn
        return fn
    return deco


@dataclass
class Ctx:
    """What an adapter or rule may use while emitting the backward of one node.

    Attributes
    ----------
    b : Builder
        Emits nodes named ``<forward node>/<rule>/<op>``.
    g : Graph
        Static shapes, dtypes and constant values.
    needs : list of bool
        ``needs[i]`` is True when ``node.input[i]`` lies on the differentiated path.
    assign : callable, optional
        The rule assignment of the whole graph (None outside the emitter).
    consumers : dict, optional
        Tensor name -> forward nodes on the path that read it (None outside the emitter).
    """

    b: Builder
    g: Graph
    needs: list
    #: ``assign(node) -> Rule or None`` for every node (set by the emitter; lets a rule look at the rules
    #: of the consumers of its output, see :mod:`onnxplain.rules.support`)
    assign: Optional[Callable] = None
    #: tensor -> the forward nodes on the differentiated path that read it (set by the emitter)
    consumers: Optional[dict] = None
    #: forward tensor -> the tensor rules read in its place (shared by one emission, see :meth:`value`)
    values: Optional[dict] = None

    def value(self, name: str) -> str:
        """The forward tensor ``name`` as an LRP rule whose contributions vanish with the relevance should read it.

        Usually ``name`` itself.  A residual branch ``a`` that is only summed, ``y = relu(a + b)``, is
        read as ``y - b`` (:func:`onnxplain.rules.support.residual_operand`): equal wherever relevance
        reaches ``a``, and ``a`` need not be kept from the forward pass to the backward pass.
        """
        if self.values is None:
            return name
        if name not in self.values:
            from .support import residual_operand  # support imports this module
            self.values[name] = residual_operand(self, name) or name
        return self.values[name]

    def shape(self, name: str):
        return self.g.shape(name)

    def static_shape(self, name: str, node: onnx.NodeProto, what: str = "input") -> list:
        """The fully static shape of ``name``; raise :class:`Unsupported` if any dim is unknown."""
        s = self.g.shape(name)
        if s is None or not all(isinstance(d, int) for d in s[1:]):
            raise Unsupported(f"the {what} shape {s} of this node is not static",
                              "export the model with fixed spatial sizes (a dynamic batch is fine)")
        return s

    def const(self, name: str) -> Optional[np.ndarray]:
        return self.g.const(name)

    def require_const(self, name: str, what: str) -> np.ndarray:
        v = self.g.const(name) if name else None
        if v is None:
            raise Unsupported(f"its {what} is computed at run time; only constant {what}s are supported",
                              "make it a constant (initializer) when exporting")
        return v


def node_attr(node, name, default=None):
    return attr(node, name, default)


def clip_bounds(g: Graph, node) -> tuple:
    """The constant ``(min, max)`` of a ``Clip`` node as floats: from its inputs (opset >= 11) or its
    attributes (opset 6); None where a bound is absent, NaN where it is not a constant scalar."""
    out = []
    for k, name in ((1, "min"), (2, "max")):
        if len(node.input) > k and node.input[k]:
            v = g.const(node.input[k])
            out.append(float("nan") if v is None or np.size(v) != 1 else float(np.asarray(v).reshape(())))
        else:
            value = node_attr(node, name)
            out.append(None if value is None else float(value))
    return tuple(out)


def label(node) -> str:
    return node_label(node)


def unbroadcast(ctx: Ctx, grad: str, inp: str, out: str) -> str:
    """Sum ``grad`` (shaped like ``out``) over the axes along which ``inp`` was broadcast."""
    s_in, s_out = ctx.g.shape(inp), ctx.g.shape(out)
    b = ctx.b
    if s_in is not None and s_out is not None and list(s_in) == list(s_out):
        return grad
    if s_in is None or s_out is None:
        raise Unsupported("the shapes of its inputs are unknown (broadcasting cannot be undone)",
                          "run ONNX shape inference on the model or export it with static shapes")
    lead = len(s_out) - len(s_in)
    axes = list(range(lead))
    for i, d in enumerate(s_in):
        if d == 1 and s_out[lead + i] != 1:
            axes.append(lead + i)
    if not axes:
        return grad
    summed = b.reduce("ReduceSum", grad, axes, keepdims=1)
    if lead:
        summed = b.squeeze(summed, list(range(lead)))
    return summed


def mask_mul(ctx: Ctx, cond: str, value: str) -> str:
    """``Where(cond, value, 0)`` written as ``value * Cast(cond)``.

    The same numbers for finite ``value`` (``v * 1 = v``, ``v * 0 = 0``); ONNX Runtime's CPU ``Where``
    with a scalar branch costs about 4x the ``Cast`` and ``Mul`` (ReLU6's backward on
    EfficientNet-Lite0 spent 46% of its time in ``Where``).
    """
    return ctx.b.op("Mul", value, float_mask(ctx, cond, value))


def float_mask(ctx: Ctx, cond: str, like: str) -> str:
    """The boolean ``cond`` as 0/1 in the element type of ``like``."""
    dt = ctx.g.dtype(like)
    return ctx.b.op("Cast", cond, to=dt) if dt else ctx.b.op("CastLike", cond, like)


def select(ctx: Ctx, cond: str, then: str, other: str) -> str:
    """``Where(cond, then, other)`` as ``then m + other (1 - m)`` with ``m = Cast(cond)``.

    Exact for finite operands: one term is multiplied by 1, the other by 0, and ``a + 0 = a``.
    """
    b = ctx.b
    m = float_mask(ctx, cond, then)
    rest = b.op("Sub", b.scalar_like(1.0, then), m)
    return b.op("Add", b.op("Mul", then, m), b.op("Mul", other, rest))


def where_positive(ctx: Ctx, x: str, then: str, other: Optional[str] = None) -> str:
    """``Where(x > 0, then, other or 0)`` (as :func:`mask_mul` / :func:`select`)."""
    b = ctx.b
    mask = b.op("Greater", x, b.scalar_like(0.0, x))
    return mask_mul(ctx, mask, then) if other is None else select(ctx, mask, then, other)
