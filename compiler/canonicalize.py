"""Meaning-preserving rewrites run before rules are assigned.

Each pass takes a :class:`~onnxplain.compiler.graph.Graph`, rewrites it in place
and returns the number of changes. None of them changes what the model computes
(up to float rounding where BatchNormalization is folded); the test-suite checks
every pass by running the original and the canonical model in ONNX Runtime.

Passes:

* :func:`upgrade_opset` - bring the default-domain opset to at least
  :data:`MIN_OPSET` with ONNX's version converter, so that emitters need to
  know only one signature of each op.
* :func:`infer_shapes` - ONNX shape inference with data propagation.
* :func:`remove_identities` - drop Identity and (inference-mode) Dropout.
* :func:`fold_constants` - evaluate nodes whose inputs are all constant.
* :func:`~onnxplain.compiler.shapes.fold_reshape_shapes` - make run-time Reshape
  targets constant where they are known up to copied dimensions.
* :func:`fold_batchnorm` - fold inference BatchNormalization into the preceding
  Conv / ConvTranspose / Gemm when that layer feeds nothing else (exact in real
  arithmetic: ``BN(Wx + b) = (s W) x + s (b - mu) + beta`` with
  ``s = gamma / sqrt(var + eps)``).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import CompileError, Problem
from .graph import Graph, TensorInfo, attr, _info_from_vi
from .shapes import fold_reshape_shapes

#: The smallest default-domain opset of a compiled model.
MIN_OPSET = 18

_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}
_FOLD_MAX_ELEMENTS = 1 << 24


def upgrade_opset(model: onnx.ModelProto, source: str = "model") -> onnx.ModelProto:
    """Return ``model`` converted to opset :data:`MIN_OPSET` when it is older."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset >= MIN_OPSET:
        return model
    try:
        from onnx import version_converter
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # noqa: BLE001
        raise CompileError([Problem(source, None, None,
                                    f"cannot convert opset {opset} to {MIN_OPSET} ({exc})",
                                    f"re-export the model with opset >= {MIN_OPSET}")]) from None
    return converted


def infer_shapes(g: Graph) -> None:
    """Run ONNX shape inference (with data propagation) and store the results in ``g.info``."""
    model = g.to_model()
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - fall back to what the file declares
        return
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        ti = _info_from_vi(vi)
        old = g.info.get(vi.name)
        if old is None or old.shape is None or (ti.shape is not None and _more_static(ti.shape, old.shape)):
            g.info[vi.name] = ti


def _more_static(new, old) -> bool:
    if len(new) != len(old):
        return False
    return sum(isinstance(d, int) for d in new) > sum(isinstance(d, int) for d in old)


def remove_identities(g: Graph) -> int:
    """Remove Identity and Dropout nodes (rewiring their consumers to their input)."""
    outputs = set(g.output_names())
    rename: dict = {}
    keep, changed = [], 0
    for n in g.nodes:
        n.input[:] = [rename.get(i, i) for i in n.input]
        removable = n.op_type in ("Identity", "Dropout") and n.output[0] not in outputs
        if n.op_type == "Dropout" and len(n.output) > 1 and n.output[1]:
            removable = False  # somebody may read the mask
        if removable:
            rename[n.output[0]] = n.input[0]
            changed += 1
        else:
            keep.append(n)
    g.nodes = keep
    return changed


def fold_constants(g: Graph) -> int:
    """Replace nodes whose inputs are all constants by initializers; also fold static Shape."""
    from onnx.reference import ReferenceEvaluator

    keep, changed = [], 0
    for n in g.nodes:
        values = _foldable_inputs(g, n)
        if values is None:
            keep.append(n)
            continue
        try:
            if n.op_type == "Shape":
                outs = [_static_shape(g, n)]
            else:
                ev = ReferenceEvaluator(n)
                outs = ev.run(None, dict(zip([i for i in n.input if i], values)))
        except Exception:  # noqa: BLE001 - leave the node alone
            keep.append(n)
            continue
        if any(np.asarray(o).size > _FOLD_MAX_ELEMENTS for o in outs):
            keep.append(n)
            continue
        for name, val in zip(n.output, outs):
            if name:
                t = numpy_helper.from_array(np.asarray(val), name)
                g.inits[name] = t
                g.info[name] = TensorInfo(t.data_type, list(t.dims))
                g._const_cache.pop(name, None)
        changed += 1
    g.nodes = keep
    g.remove_unused()
    return changed


def _foldable_inputs(g: Graph, n: onnx.NodeProto):
    if n.op_type in _NONDETERMINISTIC or n.domain not in ("", "ai.onnx") or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
        return None
    if n.op_type == "Shape":
        s = g.shape(n.input[0])
        return [] if s is not None and all(isinstance(d, int) for d in s) else None
    vals = []
    for i in n.input:
        if not i:
            continue
        v = g.const(i)
        if v is None:
            return None
        vals.append(v)
    return vals


def _static_shape(g: Graph, n: onnx.NodeProto) -> np.ndarray:
    s = np.array(g.shape(n.input[0]), dtype=np.int64)
    start, end = attr(n, "start", 0), attr(n, "end", None)
    return s[start:end]


def fold_batchnorm(g: Graph) -> int:
    """Fold BatchNormalization into a preceding Conv/ConvTranspose/Gemm that feeds only it."""
    consumers = g.consumers()
    producers = g.producers()
    outputs = set(g.output_names())
    removed, changed = set(), 0
    for bn in g.nodes:
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        prev = producers.get(bn.input[0])
        if prev is None or prev.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        if len(consumers.get(prev.output[0], [])) != 1 or prev.output[0] in outputs:
            continue
        params = [g.const(i) for i in bn.input[1:5]]
        w = g.const(prev.input[1])
        if any(p is None for p in params) or w is None:
            continue
        if prev.op_type == "Gemm" and (attr(prev, "transA", 0) or w.ndim != 2):
            continue
        _fold_one(g, prev, bn, w, params)
        removed.add(id(bn))
        changed += 1
    g.nodes = [n for n in g.nodes if id(n) not in removed]
    if changed:
        g.remove_unused()
    return changed


def _fold_one(g: Graph, prev, bn, w, params) -> None:
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    eps = attr(bn, "epsilon", 1e-5)
    s = gamma / np.sqrt(var + eps)
    b = g.const(prev.input[2]) if len(prev.input) > 2 and prev.input[2] else None
    b = np.zeros_like(s) if b is None else b.astype(np.float64)
    w64 = w.astype(np.float64)
    if prev.op_type == "Conv":
        w_new = w64 * s.reshape((-1,) + (1,) * (w.ndim - 1))
    elif prev.op_type == "ConvTranspose":
        group = attr(prev, "group", 1)
        cin, cpg = w.shape[0], w.shape[1]
        w_new = (w64.reshape((group, cin // group, cpg) + w.shape[2:])
                 * s.reshape((group, 1, cpg) + (1,) * (w.ndim - 2))).reshape(w.shape)
    else:  # Gemm: y = alpha * x W' + beta * c
        alpha, beta_g = attr(prev, "alpha", 1.0), attr(prev, "beta", 1.0)
        wt = w64 if attr(prev, "transB", 0) else w64.T  # wt: [out, in]
        wt = wt * s[:, None] * alpha
        w_new = wt if attr(prev, "transB", 0) else wt.T
        b = b * beta_g
        _set_attr(prev, "alpha", 1.0)
        _set_attr(prev, "beta", 1.0)
    b_new = s * (b - mean) + beta
    wname = g.add_initializer(w_new.astype(w.dtype), f"{prev.name or 'layer'}/bnfold_W")
    bname = g.add_initializer(b_new.astype(w.dtype), f"{prev.name or 'layer'}/bnfold_B")
    ins = list(prev.input) + [""] * (3 - len(prev.input))
    ins[1], ins[2] = wname, bname
    prev.input[:] = ins
    prev.output[0] = bn.output[0]


def _set_attr(node, name, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def canonicalize(g: Graph, fold_bn: bool = True) -> dict:
    """Run the standard passes to a fixed point; return how often each one changed something."""
    counts = {"remove_identities": 0, "fold_constants": 0, "fold_reshape_shapes": 0, "fold_batchnorm": 0}
    for _ in range(50):
        changed = 0
        for name, fn in (("remove_identities", remove_identities), ("fold_constants", fold_constants),
                         ("fold_reshape_shapes", fold_reshape_shapes)):
            c = fn(g)
            counts[name] += c
            changed += c
        if fold_bn:
            c = fold_batchnorm(g)
            counts["fold_batchnorm"] += c
            changed += c
        if not changed:
            break
        infer_shapes(g)
    return counts
