"""Convolution weights inside the ``Loop`` bodies of integrated gradients and SmoothGrad.

The sampling methods evaluate their points in an ONNX ``Loop`` (:mod:`onnxplain.compiler.sampling`)
whose body reads the model's weights from the main graph (outer scope).  ONNX Runtime's CPU layout
optimizer (the NCHWc transformer) and its constant folding only use initializers of the graph a node
is in: convolutions in the body whose weights live outside it run in the plain NCHW kernels, about 20%
slower than the same convolutions in the main graph (ResNet-50, 2 threads).  :func:`localize_loop_weights`
gives each body its own copy of the constants its convolutions read (the weights, biases and the
constants their modified versions are computed from), under new names, so that the body is optimized
like the main graph.  The price is a second copy of those weights in the file and in memory, so it is
done only up to :data:`LIMIT_BYTES` per body.
"""
from __future__ import annotations

import onnx

from .graph import all_names, fresh_name

#: Largest total size of the constants copied into one Loop body (bytes).
LIMIT_BYTES = 256 * 2 ** 20

_CONV_OPS = ("Conv", "ConvTranspose")


def localize_loop_weights(model: onnx.ModelProto, limit: int = LIMIT_BYTES) -> int:
    """Copy the outer-scope constants read by the convolutions of each top-level ``Loop`` body into it.

    Parameters
    ----------
    model : onnx.ModelProto
        A compiled model, changed in place.
    limit : int
        Skip a body whose constants would exceed this many bytes.

    Returns
    -------
    int
        The number of initializers copied (all bodies together).
    """
    inits = {t.name: t for t in model.graph.initializer}
    taken = all_names(model.graph)
    copied = 0
    for node in model.graph.node:
        for a in node.attribute:
            if node.op_type == "Loop" and a.name == "body" and a.type == onnx.AttributeProto.GRAPH:
                copied += _localize(a.g, inits, taken, limit)
    return copied


def _localize(body: onnx.GraphProto, inits: dict, taken: set, limit: int) -> int:
    needed = _constants_of_convolutions(body, inits)
    if not needed or sum(_nbytes(inits[n]) for n in needed) > limit:
        return 0
    rename = {}
    for name in sorted(needed):
        new = fresh_name(f"{name}/in_loop", taken)
        t = onnx.TensorProto()
        t.CopyFrom(inits[name])
        t.name = new
        body.initializer.append(t)
        rename[name] = new
    for n in body.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    return len(rename)


def _constants_of_convolutions(body: onnx.GraphProto, inits: dict) -> set:
    """Outer initializers from which the weight/bias inputs of the body's convolutions are computed
    by constant-only chains (e.g. ``Slice(Transpose(W))``, the flipped kernel of a backward pass)."""
    local = {i.name for i in body.input} | {t.name for t in body.initializer}
    prod = {o: n for n in body.node for o in n.output if o}
    memo: dict = {}

    def sources(name: str):
        """The outer initializers ``name`` is computed from, or None if it depends on anything else."""
        if name in memo:
            return memo[name]
        memo[name] = None  # guards against cycles (none in a valid graph)
        if name in inits and name not in prod and name not in local:
            out = {name}
        elif name in prod and not any(a.type == onnx.AttributeProto.GRAPH for a in prod[name].attribute):
            parts = [sources(i) for i in prod[name].input if i]
            out = None if any(p is None for p in parts) else set().union(*parts)
        else:
            out = None
        memo[name] = out
        return out

    needed: set = set()
    for n in body.node:
        if n.op_type in _CONV_OPS:
            for i in n.input[1:]:
                found = sources(i) if i else None
                needed |= found or set()
    return needed


def _nbytes(t: onnx.TensorProto) -> int:
    return len(t.raw_data) if t.raw_data else t.ByteSize()
