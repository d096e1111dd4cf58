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

from onnx import TensorProto, helper

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


#: activations recomputed from their input by :func:`recompute_activations`
RECOMPUTED = ("Relu", "Clip")


def recompute_activations(g: Graph, forward: list, out: list, start: int, seeds: list) -> int:
    """Read ``a = act(z)`` as a recomputed ``act(z)`` in the backward nodes ``out[start:]`` wherever ``z`` is
    kept for them anyway; return how many activations no longer wait for the backward pass.

    Below a ReLU6 the ε and γ rules divide by ``relu(z)`` (:func:`onnxplain.rules.support.support_of`),
    so the backward pass reads the pre-activation ``z`` of the layer; the next layer's rule reads the
    clipped output ``a = clip(z, 0, 6)`` as its input ``x`` (``x (.) c``, modified forwards).  The forward
    pass then keeps both, each as large as the layer.  ``Clip``/``Relu`` with constant bounds is cheap and
    exact to recompute (the same op on the same input: bit-identical), so every backward reader of ``a``
    reads ``act(z)`` computed when the relevance reaches it, and ``a`` is freed once the forward pass has
    used it.  MobileNetV2, ``lrp.epsilon``, batch 8: peak memory 493 → 300 MiB.

    Applied only where every backward reader of ``z`` and of ``a`` depends on the relevance (``seeds``),
    so that ``z`` lives until the readers of ``a`` anyway; the recomputation reads ``z`` through a
    scheduling hint (:func:`after`) unless the reader of ``a`` is such a hint itself.
    """
    late, dep = _late_readers(out, start, seeds)
    outputs = set(g.output_names())
    before, after_node, count = {}, {}, 0
    for act in forward:
        if act.op_type not in RECOMPUTED or not act.input or act.output[0] in outputs:
            continue
        z, a = act.input[0], act.output[0]
        if g.const(z) is not None or any(i and g.const(i) is None for i in act.input[1:]):
            continue
        if not (_reads_data(late.get(z)) and _reads_data(late.get(a))):
            continue
        recomputed = None
        for reader in late[a]:
            recomputed = _reread(g, act, reader, recomputed, dep, before, after_node)
        count += 1
    if count:
        rebuilt = []
        for n in out[start:]:
            rebuilt += before.get(id(n), []) + [n] + after_node.get(id(n), [])
        out[start:] = rebuilt
    return count


def _reads_data(readers) -> bool:
    """Whether ``readers`` (from :func:`_late_readers`) is a list with a reader other than ``Shape``."""
    return bool(readers) and any(n.op_type != "Shape" for n in readers)


def _late_readers(out: list, start: int, seeds: list) -> tuple:
    """tensor -> its readers among ``out[start:]`` in order, or False if one of them, other than a
    ``Shape`` (which reads no data), does not depend on ``seeds``; and the tensors that depend on them."""
    dep, readers = {s for s in seeds if s}, {}
    for n in out[start:]:
        is_late = any(i in dep for i in n.input if i)
        if is_late:
            dep.update(n.output)
        for i in dict.fromkeys(i for i in n.input if i):
            if readers.get(i) is not False:
                readers[i] = readers.get(i, []) + [n] if is_late or n.op_type == "Shape" else False
    return readers, dep


def _reread(g: Graph, act, reader, recomputed, dep: set, before: dict, after_node: dict):
    """Make ``reader`` read ``act(z)`` in place of ``act``'s output; return the recomputed tensor."""
    z, a = act.input[0], act.output[0]
    if reader.op_type == "Shape":  # the shape of a hint's tensor: z has the same
        reader.input[0] = z
        return recomputed
    attrs = {x.name: helper.get_attribute_value(x) for x in act.attribute}
    prefix = f"{act.name or a}/recomputed"
    if reader.op_type == "Reshape" and reader.input[0] == a and f"/{SCHEDULE_SCOPE}/" in reader.name:
        view = g.fresh(f"{prefix}/{SCHEDULE_SCOPE}/view")  # the hint's view, now of z
        g.alias(view, z)
        reader.input[0], result, reader.output[0] = z, reader.output[0], view
        after_node.setdefault(id(reader), []).append(
            helper.make_node(act.op_type, [view] + list(act.input[1:]), [result], name=g.fresh(prefix), **attrs))
        return recomputed or result
    if recomputed is None:
        r = next((i for i in reader.input if i in dep), None)
        if r is None:
            return None
        nodes: list = []
        hint = Builder(g, nodes, f"{prefix}/{SCHEDULE_SCOPE}")
        view = after(hint, g, z, zero_after(hint, r))
        recomputed = Builder(g, nodes, prefix).op(act.op_type, view, *act.input[1:], **attrs)
        g.alias(recomputed, a)
        before.setdefault(id(reader), []).extend(nodes)
    for k, i in enumerate(reader.input):
        if i == a:
            reader.input[k] = recomputed
    return recomputed
