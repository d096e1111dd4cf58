"""Rewrites of a compiled model for ONNX Runtime's CUDA provider.

ONNX Runtime's CUDA execution provider has no ``MaxUnpool`` kernel (``docs/OperatorKernels.md`` of
onnxruntime lists ``MaxPool`` with ``Indices`` and ``ScatterElements`` for CUDA, not ``MaxUnpool``), so a
compiled model that uses it for the backward of disjoint max-pool windows (VGG's 2x2/2, the CPU's faster
choice) would run that node on the CPU, copying the pool's gradient and indices to the host and the
full-resolution result back at every call. :func:`for_cuda` replaces each ``MaxUnpool`` by the equivalent
``ScatterElements`` into zeros (indices of disjoint windows are distinct, so a plain scatter is exact).
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..compiler.graph import all_names, all_nodes, fresh_name


def needs_cuda_rewrite(model: onnx.ModelProto) -> bool:
    """Whether ``model`` (subgraphs included) has an op :func:`for_cuda` replaces."""
    return any(n.op_type == "MaxUnpool" for n in all_nodes(model.graph))


def for_cuda(model: onnx.ModelProto) -> int:
    """Replace every ``MaxUnpool`` of ``model`` (subgraphs included) in place; return how many.

    ``MaxUnpool(dy, I, shape)`` becomes ``Reshape(ScatterElements(zeros[prod(shape)], I.flat, dy.flat,
    axis=0), shape)``: the same numbers (each index appears once), and kernels the CUDA provider has.
    """
    return _rewrite(model.graph, all_names(model.graph))


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
