"""The target head: which value is explained, and the one-hot seed of the backward pass.

The explained value of sample ``n`` is ``z[n, t_n]`` where ``z`` is the explained
tensor flattened to ``[N, K]`` and ``t_n`` the target index.  ``t_n`` comes from the
optional int64 input ``target`` of shape ``[N]``; a negative entry (the default,
``[-1]``, used when the input is not fed) means "the top-scoring output".
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from .errors import CompileError, Problem
from .graph import Builder, Graph

TARGET_INPUT = "target"


def explained_tensor(g: Graph, output: str, strip_softmax: bool) -> tuple:
    """Return ``(tensor, note)``: the tensor to explain for graph output ``output``.

    With ``strip_softmax`` a final Softmax (or LogSoftmax) is looked through so the
    pre-softmax logit is explained, as iNNvestigate and Zennit do.
    """
    names = g.output_names()
    if output not in names:
        raise CompileError([Problem(g.source, None, None, f"the model has no output '{output}'",
                                    f"choose one of {names}")])
    if not g.is_float(output):
        raise CompileError([Problem(g.source, None, None, f"output '{output}' is not a float tensor",
                                    f"choose a float output among {names}")])
    if strip_softmax:
        n = final_softmax(g.producers(), output)
        if n is not None:
            return n.input[0], f"input of final {n.op_type} '{n.name}'"
    return output, "output"


def final_softmax(producers: dict, output: str):
    """The Softmax/LogSoftmax node that produces ``output`` (looking through Identity nodes), or None.

    ``producers`` maps tensor name -> producing node (:meth:`Graph.producers`, or
    :func:`producers_of` for a ``ModelProto``).
    """
    n = producers.get(output)
    while n is not None and n.op_type == "Identity":
        n = producers.get(n.input[0])
    return n if n is not None and n.op_type in ("Softmax", "LogSoftmax") else None


def producers_of(model) -> dict:
    """Tensor name -> producing node of a ``ModelProto``'s main graph."""
    return {o: n for n in model.graph.node for o in n.output}


def target_input_name(g: Graph) -> str:
    """``target``, or a fresh ``onnxplain_target...`` when the model already uses that name."""
    return TARGET_INPUT if TARGET_INPUT not in g._names else g.fresh("onnxplain_target")


def make_target_input(g: Graph) -> tuple:
    """The ``target`` graph input (int64 [N]) and its default initializer ``[-1]``."""
    name = target_input_name(g)
    g.reserve([name])
    vi = helper.make_tensor_value_info(name, TensorProto.INT64, ["N"])
    init = helper.make_tensor(name, TensorProto.INT64, [1], [-1])
    g.set_info(name, TensorProto.INT64, [1])
    return name, vi, init


def resolve_target(b: Builder, logits: str, target: str) -> str:
    """int64 [N]: ``target`` where it is >= 0, else the arg-max of ``logits`` (flattened per sample)."""
    flat = b.op("Reshape", logits, b.ints([0, -1]))
    top = b.op("ArgMax", flat, axis=1, keepdims=0)
    tgt = b.op("Expand", target, b.op("Shape", top))
    neg = b.op("Less", tgt, b.ints(0))
    return b.op("Where", neg, top, tgt)


def one_hot_seed(b: Builder, logits: str, target: str) -> str:
    """A tensor shaped like ``logits``: 1 at ``[n, target[n]]`` (flattened per sample), 0 elsewhere."""
    flat_shape = b.op("Shape", b.op("Reshape", logits, b.ints([0, -1])))
    depth = b.op("Slice", flat_shape, b.ints([1]), b.ints([2]))
    dt = b.g.dtype(logits) or TensorProto.FLOAT
    values = b.const(np.array([0, 1], dtype=helper.tensor_dtype_to_np_dtype(dt)))
    hot = b.op("OneHot", target, depth, values, axis=-1)
    return b.op("Reshape", hot, b.op("Shape", logits))


def explained_value(b: Builder, logits: str, target: str) -> str:
    """float [N]: ``logits[n, target[n]]`` (flattened per sample)."""
    flat = b.op("Reshape", logits, b.ints([0, -1]))
    picked = b.op("GatherElements", flat, b.op("Unsqueeze", target, b.ints([1])), axis=1)
    return b.op("Reshape", picked, b.ints([-1]))
