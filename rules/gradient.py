"""Backward rules of the gradient family: the exact gradient, Deconvnet and Guided Backprop.

A rule maps the gradients (or relevances) arriving at a node's outputs to
contributions at its inputs.  :class:`Gradient` is the exact vector-Jacobian
product from the per-op adapters; the two others differ only at ReLU nodes:

* Deconvnet (Zeiler & Fergus, 2014, "Visualizing and understanding
  convolutional networks"): at a ReLU pass ``relu(r)`` back, ignoring the
  forward mask.
* Guided Backprop (Springenberg et al., 2015, "Striving for simplicity: the all
  convolutional net"): at a ReLU pass ``relu(r) * [x > 0]``, i.e. the gradient
  mask *and* the positive part of the arriving signal.

Every other op keeps its exact gradient, as in iNNvestigate and Zennit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import ops_elementwise, ops_linear, ops_pool, ops_shape  # noqa: F401 - register adapters
from .base import VJP, Ctx, Unsupported


@dataclass(frozen=True)
class Rule:
    """Base class: a named backward mapping for one node."""

    name: str = "rule"
    #: at ops that only relabel elements (Reshape, Flatten, ...), the relevance of an input element is the
    #: relevance of the output element it becomes (the gradient and ``lrp.pass`` do this)
    passes_relevance: ClassVar[bool] = False
    #: the emitter makes this rule's work on forward activations wait for the relevance
    #: (:mod:`onnxplain.compiler.schedule`); not for the gradient, whose masks are as large as the
    #: activations they replace
    delays_forward_work: ClassVar[bool] = True

    def handles(self, op_type: str) -> bool:
        """Whether this rule can be assigned to nodes of ``op_type``."""
        return op_type in VJP

    def backward(self, ctx: Ctx, node, gy: list) -> list:  # pragma: no cover - interface
        raise NotImplementedError

    def scales_input(self, node, i: int) -> bool:
        """Whether the contribution to ``node.input[i]`` is ``x_i (.) c`` (``c`` finite): zero where
        ``x_i = 0``.  LRP rules that redistribute in proportion to the inputs say yes."""
        return False


@dataclass(frozen=True)
class Gradient(Rule):
    """The exact gradient (vector-Jacobian product) of the node."""

    name: str = "gradient"
    passes_relevance: ClassVar[bool] = True
    delays_forward_work: ClassVar[bool] = False

    def backward(self, ctx: Ctx, node, gy: list) -> list:
        fn = VJP.get(node.op_type)
        if fn is None:
            raise Unsupported(f"no backward mapping for op type {node.op_type}",
                              "see `onnxplain check` for the supported ops; rewrite the op or open an issue")
        return fn(ctx, node, gy)


@dataclass(frozen=True)
class DeconvReLU(Rule):
    """Deconvnet at a ReLU: ``dx = relu(dy)``."""

    name: str = "deconvnet"

    def handles(self, op_type: str) -> bool:
        return op_type == "Relu"

    def backward(self, ctx: Ctx, node, gy: list) -> list:
        return [ctx.b.op("Relu", gy[0])]


@dataclass(frozen=True)
class GuidedReLU(Rule):
    """Guided Backprop at a ReLU: ``dx = relu(dy) * [x > 0]``."""

    name: str = "guided_backprop"

    def handles(self, op_type: str) -> bool:
        return op_type == "Relu"

    def backward(self, ctx: Ctx, node, gy: list) -> list:
        return [ctx.b.op("Mul", ctx.b.op("Relu", gy[0]), ops_elementwise.relu_mask(ctx, node.output[0]))]


GRADIENT = Gradient()
DECONV_RELU = DeconvReLU()
GUIDED_RELU = GuidedReLU()


def supported_ops() -> list:
    """Op types with an exact backward adapter."""
    return sorted(VJP)
