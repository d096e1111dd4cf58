"""Rewrites of a compiled model for ONNX Runtime's CUDA provider.

ONNX Runtime's CUDA execution provider has no ``MaxUnpool`` kernel (``docs/OperatorKernels.md`` of
onnxruntime lists ``MaxPool`` with ``Indices`` and ``ScatterElements`` for CUDA, not ``MaxUnpool``), so a
compiled model that uses it for the backward of disjoint max-pool windows (VGG's 2x2/2, the CPU's faster
choice) would run that node on the CPU, copying the pool's gradient and indices to the host and the
full-resolution result back at every call. :func:`for_cuda` replaces each ``MaxUnpool`` by the equivalent
``ScatterElements`` into zeros (indices of disjoint windows are distinct, so a plain scatter is exact).

It also removes the scheduling hints of the LRP rules (:mod:`onnxplain.compiler.schedule`): on the CPU
they keep ONNX Runtime from computing the rules' work on forward activations during the forward pass
(memory), but their integer shape arithmetic would run on the host, so every hint would make the host
wait for the GPU once per layer; GPU memory is ample.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..compiler.graph import all_names, all_nodes, fresh_name
from ..compiler.schedule import SCHEDULE_SCOPE

_HINT = f"/{SCHEDULE_SCOPE}/"


def needs_cuda_rewrite(model: onnx.ModelProto) -> bool:
    """Whether ``model`` (subgraphs included) has an op :func:`for_cuda` replaces."""
    return any(n.op_type == "MaxUnpool" or _HINT in n.name for n in all_nodes(model.graph))


def for_cuda(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` (subgraphs included) in place for CUDA; return how many nodes were replaced or removed.

    ``MaxUnpool(dy, I, shape)`` becomes ``Reshape(ScatterElements(zeros[prod(shape)], I.flat, dy.flat,
    axis=0), shape)``: the same numbers (each index appears once), and kernels the CUDA provider has.
    Scheduling hints (``Reshape`` views of a tensor, see :func:`onnxplain.compiler.schedule.after`) are
    removed, their readers read the tensor itself: the same numbers.
    """
    return _drop_hints(model.graph) + _rewrite(model.graph, all_names(model.graph))


def _drop_hints(graph: onnx.GraphProto) -> int:
    count = sum(_drop_hints(a.g) for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
    hints = [n for n in graph.node if _HINT in n.name]
    if not hints:
        return count
    made = {o for h in hints for o in h.output}
    # the views: Reshape(x, Shape(x) + zero), not the Reshape that flattens the relevance
    same = {n.output[0]: n.input[0] for n in hints if n.op_type == "Reshape" and n.input[1] in made}
    keep = [n for n in graph.node if _HINT not in n.name]
    for n in keep:
        for k, i in enumerate(n.input):
            n.input[k] = same.get(i, i)
    del graph.node[:]
    graph.node.extend(keep)
    return count + len(hints)


def _rewrite(graph: onnx.GraphProto, taken: set) -> int:
    count, nodes = 0, []
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                count += _rewrite(a.g, taken)
        if n.op_type != "MaxUnpool" or len(n.input) < 3 or not n.input[2]:
            nodes.append(n)
            continue
        dy, idx, shape = n.input[0], n.input[1], n.input[2]
        base = f"{n.name or n.output[0]}/cuda"
        fresh = lambda: fresh_name(base, taken)  # noqa: E731
        flat_shape = fresh()
        graph.initializer.append(helper.make_tensor(flat_shape, TensorProto.INT64, [1], [-1]))
        size, zeros32, zeros, i_flat, g_flat, scat = (fresh() for _ in range(6))
        nodes += [
            helper.make_node("ReduceProd", [shape], [size], keepdims=1, name=fresh()),
            helper.make_node("ConstantOfShape", [size], [zeros32], name=fresh(),
                             value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])),
            helper.make_node("Reshape", [idx, flat_shape], [i_flat], name=fresh()),
            helper.make_node("Reshape", [dy, flat_shape], [g_flat], name=fresh()),
            # the gradient's element type (float16 models): a no-op Cast in float32, which ORT removes
            helper.make_node("CastLike", [zeros32, g_flat], [zeros], name=fresh()),
            helper.make_node("ScatterElements", [zeros, i_flat, g_flat], [scat], axis=0, name=fresh()),
            helper.make_node("Reshape", [scat, shape], [n.output[0]], name=fresh()),
        ]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count
