"""Scheduling hints: a rule's work on forward activations runs when the backward pass reaches the rule.

ONNX Runtime's default execution order (a depth-first walk back from the graph outputs) runs a node as
soon as its inputs exist.  Much of what the LRP rules emit reads only forward activations: the modified
forward passes (``W+ x`` of z+, ``gamma (W+ x + b+)`` of gamma), the stabilised denominators, the
``[z > 0]`` masks, the residual branches read as ``y - b`` (:func:`onnxplain.rules.support.residual_operand`).
Without a hint ONNX Runtime computes all of them during the forward pass and keeps their outputs, each
as large as the layer's own, until the backward pass consumes them: ResNet-50's ε-z+-flat held about
0.7 GB more than needed at batch 8.

:func:`delay_forward_work` looks at the nodes one rule emitted for one forward node: those that depend on
run-time data but not on the relevance arriving at the node ("early" work) read their forward inputs
through :func:`after`, a view of the tensor (``Reshape`` with an unchanged shape, no copy) that exists
only once the relevance does.  The numbers do not change.  CUDA sessions drop the hints again
(:func:`onnxplain.runtime.cuda_rewrite.for_cuda`): their integer shape arithmetic would synchronise the
GPU with the host once per layer, and GPU memory is ample.
"""
from __future__ import annotations

from onnx import TensorProto

from .graph import Builder, Graph

#: scope suffix of the nodes :func:`after` emits (found by ``runtime.cuda_rewrite``)
SCHEDULE_SCOPE = "onnxplain.schedule"


def after(b: Builder, g: Graph, x: str, zero: str) -> str:
    """``x`` itself, as a tensor that exists only once ``zero`` (:func:`zero_after` of some ``r``) does.

    ``Reshape(x, Shape(x) + zero)`` with ``zero = ReduceSum(Cast(e > e))`` and ``e`` the first element of
    ``r`` (none for an empty ``r``): ``e > e`` is false, also for NaN, so the shape is ``x``'s own and
    the ``Reshape`` is a view.  The data dependency goes through ``e``, not through ``Shape(r)``: ONNX
    Runtime merges ``Shape`` nodes of tensors with equal symbolic shapes, which would remove it.
    """
    out = b.op("Reshape", x, b.op("Add", b.shape_of(x), zero))
    g.alias(out, x)
    return out


def zero_after(b: Builder, r: str) -> str:
    """An int64 ``[0]`` computed from the first element of ``r`` (see :func:`after`)."""
    first = b.op("Slice", b.op("Reshape", r, b.ints([-1])), b.ints([0]), b.ints([1]))
    return b.op("ReduceSum", b.op("Cast", b.op("Greater", first, first), to=TensorProto.INT64), keepdims=1)


def delay_forward_work(g: Graph, out: list, start: int, relevance: list, prefix: str) -> int:
    """Make the early work among ``out[start:]`` (one rule's nodes) wait for ``relevance``; return hints added.

    A node is *early* when some input is run-time data (not a constant: constant work is folded by ONNX
    Runtime at session creation) and none depends on ``relevance``.  Every run-time input of an early
    node that comes from outside ``out[start:]`` is replaced by :func:`after` of it (one per tensor); the
    hint nodes go in front of the rule's nodes, so the list stays topologically sorted.
    """
    rel = [r for r in relevance if r]
    if not rel:
        return 0
    new = out[start:]
    produced = {o for n in new for o in n.output}
    dep_rel, runtime, early = set(rel), set(), []
    for n in new:
        ins = [i for i in n.input if i]
        if any(i in dep_rel for i in ins):
            dep_rel.update(n.output)
            continue
        if any(i in runtime or (i not in produced and g.const(i) is None) for i in ins):
            runtime.update(n.output)
            early.append(n)
    hints: list = []
    late: dict = {}
    b = Builder(g, hints, f"{prefix}/{SCHEDULE_SCOPE}")
    zero = None
    for n in early:
        for k, i in enumerate(n.input):
            if i and i not in produced and g.const(i) is None:
                if i not in late:
                    zero = zero or zero_after(b, rel[0])
                    late[i] = after(b, g, i, zero)
                n.input[k] = late[i]
    out[start:start] = hints
    return len(late)
