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


def for_cuda(model: onnx.ModelProto) -> int:
    """Replace every ``MaxUnpool`` of ``model`` (subgraphs included) in place; return how many.

    ``MaxUnpool(dy, I, shape)`` becomes ``Reshape(ScatterElements(zeros[prod(shape)], I.flat, dy.flat,
    axis=0), shape)``: the same numbers (each index appears once), and kernels the CUDA provider has.
    """
    return _rewrite(model.graph, _Names(model.graph))


class _Names:
    def __init__(self, graph: onnx.GraphProto):
        self.taken = set()
        self._collect(graph)
        self.k = 0

    def _collect(self, graph):
        for n in graph.node:
            self.taken.update(n.input)
            self.taken.update(n.output)
            self.taken.add(n.name)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    self._collect(a.g)
        self.taken.update(t.name for t in graph.initializer)
        self.taken.update(v.name for v in list(graph.input) + list(graph.output))

    def fresh(self, base: str) -> str:
        while True:
            self.k += 1
            name = f"{base}/cuda_{self.k}"
            if name not in self.taken:
                self.taken.add(name)
                return name


def _rewrite(graph: onnx.GraphProto, names: _Names) -> int:
    count, nodes = 0, []
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                count += _rewrite(a.g, names)
        if n.op_type != "MaxUnpool" or len(n.input) < 3 or not n.input[2]:
            nodes.append(n)
            continue
        dy, idx, shape = n.input[0], n.input[1], n.input[2]
        base = n.name or n.output[0]
        flat_shape = names.fresh(base)
        graph.initializer.append(helper.make_tensor(flat_shape, TensorProto.INT64, [1], [-1]))
        size, zeros32, zeros, i_flat, g_flat, scat = (names.fresh(base) for _ in range(6))
        nodes += [
            helper.make_node("ReduceProd", [shape], [size], keepdims=1, name=names.fresh(base)),
            helper.make_node("ConstantOfShape", [size], [zeros32], name=names.fresh(base),
                             value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])),
            helper.make_node("Reshape", [idx, flat_shape], [i_flat], name=names.fresh(base)),
            helper.make_node("Reshape", [dy, flat_shape], [g_flat], name=names.fresh(base)),
            # the gradient's element type (float16 models): a no-op Cast in float32, which ORT removes
            helper.make_node("CastLike", [zeros32, g_flat], [zeros], name=names.fresh(base)),
            helper.make_node("ScatterElements", [zeros, i_flat, g_flat], [scat], axis=0, name=names.fresh(base)),
            helper.make_node("Reshape", [scat, shape], [n.output[0]], name=names.fresh(base)),
        ]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count
