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
* :func:`rewrite_ml_ops` - ``ai.onnx.ml`` ops with a default-domain equivalent.
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
from .graph import Graph, TensorInfo, _info_from_vi, attr
from .shapes import fold_reshape_shapes

#: The smallest default-domain opset of a compiled model.
MIN_OPSET = 18

_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}
_FOLD_MAX_ELEMENTS = 1 << 24


def upgrade_opset(model: onnx.ModelProto, source: str = "model") -> onnx.ModelProto:
    """Return ``model`` converted to opset :data:`MIN_OPSET` when it is older.

    Pass a light model (:func:`~onnxplain.compiler.graph.strip_weights`): the converter copies
    the whole model.
    """
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
    model = g.light_model()
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


def rewrite_ml_ops(g: Graph) -> int:
    """Replace ``ai.onnx.ml`` ops that have a default-domain equivalent (compiled models use only the
    default domain): ``ArrayFeatureExtractor(X, i)`` = ``Gather(X, i, axis=-1)`` (plus a leading unit
    axis for a 1-D ``X``, as ONNX Runtime's kernel produces), as scikit-learn exporters emit for labels."""
    from onnx import helper as h

    out, changed = [], 0
    for n in g.nodes:
        if n.domain == "ai.onnx.ml" and n.op_type == "ArrayFeatureExtractor" and g.rank(n.input[0]) is not None:
            one_d = g.rank(n.input[0]) == 1
            gathered = g.fresh(f"{n.name}/gather") if one_d else n.output[0]
            out.append(h.make_node("Gather", [n.input[0], n.input[1]], [gathered], axis=-1, name=g.fresh(n.name)))
            if one_d:
                axes = g.add_initializer(np.array([0], np.int64), f"{n.name}/axes")
                out.append(h.make_node("Unsqueeze", [gathered, axes], [n.output[0]], name=g.fresh(f"{n.name}/unsq")))
            changed += 1
        else:
            out.append(n)
    g.nodes = out
    return changed


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


def _fold_batchnorms(g: Graph, partner, fold) -> int:
    """Fold every BatchNorm for which ``partner(g, bn, consumers, producers)`` finds a layer.

    ``partner`` returns ``(layer, weight)`` or None; ``fold(g, bn, layer, weight, params)`` rewrites
    the layer so that it computes the pair; the BatchNorm is then dropped.
    """
    consumers, producers = g.consumers(), g.producers()
    removed, changed = set(), 0
    for bn in g.nodes:
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        params = [g.const(i) for i in bn.input[1:5]]
        found = partner(g, bn, consumers, producers)
        if found is None or any(p is None for p in params):
            continue
        fold(g, bn, found[0], found[1], params)
        removed.add(id(bn))
        changed += 1
    g.nodes = [n for n in g.nodes if id(n) not in removed]
    if changed:
        g.remove_unused()
    return changed


def _before(g: Graph, bn, consumers, producers):
    prev = producers.get(bn.input[0])
    if prev is None or prev.op_type not in ("Conv", "ConvTranspose", "Gemm"):
        return None
    if len(consumers.get(prev.output[0], [])) != 1 or prev.output[0] in set(g.output_names()):
        return None
    w = g.const(prev.input[1])
    if w is None or (prev.op_type == "Gemm" and (attr(prev, "transA", 0) or w.ndim != 2)):
        return None
    return prev, w


def fold_batchnorm(g: Graph) -> int:
    """Fold BatchNormalization into a preceding Conv/ConvTranspose/Gemm that feeds only it."""
    return _fold_batchnorms(g, _before, lambda g_, bn, prev, w, params: _fold_one(g_, prev, bn, w, params))


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


BATCHNORM_CHOICES = ("fold", "fold_after", "pass", "linear", "linear2")


def fold_batchnorm_after(g: Graph) -> int:
    """Fold inference BatchNormalization into the *following* Gemm, or Conv without padding (group 1).

    ``layer(s x + c) = (W s) x + (b + W c)``: exact only when the layer sees no padding (a
    padded border would be ``0`` instead of ``c``) and the BatchNorm feeds nothing else.
    """
    return _fold_batchnorms(g, _after, _fold_after_one)


def _after(g: Graph, bn, consumers, producers):
    users = consumers.get(bn.output[0], [])
    if len(users) != 1 or bn.output[0] in set(g.output_names()):
        return None
    nxt = users[0]
    w = g.const(nxt.input[1]) if len(nxt.input) > 1 else None
    if w is None or nxt.input[0] != bn.output[0] or not _after_ok(nxt, w):
        return None
    return nxt, w


def _after_ok(nxt, w) -> bool:
    if nxt.op_type == "Gemm":
        return not attr(nxt, "transA", 0) and w.ndim == 2
    if nxt.op_type != "Conv" or attr(nxt, "group", 1) != 1:
        return False
    auto = attr(nxt, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto in ("NOTSET", "VALID") and not any(attr(nxt, "pads", []) or [])


def _fold_after_one(g: Graph, bn, nxt, w, params) -> None:
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    s = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
    c = beta - s * mean
    w64 = w.astype(np.float64)
    b = g.const(nxt.input[2]) if len(nxt.input) > 2 and nxt.input[2] else None
    if nxt.op_type == "Conv":
        w_new = w64 * s.reshape((1, -1) + (1,) * (w.ndim - 2))
        shift = (w64 * c.reshape((1, -1) + (1,) * (w.ndim - 2))).sum(axis=tuple(range(1, w.ndim)))
    else:
        wt = w64.T if attr(nxt, "transB", 0) else w64  # [in, out]
        alpha = attr(nxt, "alpha", 1.0)
        w_new = (wt * s[:, None]).T if attr(nxt, "transB", 0) else wt * s[:, None]
        shift = alpha * (c @ wt)
        b = None if b is None else b * attr(nxt, "beta", 1.0)
        _set_attr(nxt, "beta", 1.0)
    b_new = shift + (0.0 if b is None else np.broadcast_to(b.astype(np.float64), shift.shape))
    ins = list(nxt.input) + [""] * (3 - len(nxt.input))
    ins[0] = bn.input[0]
    ins[1] = g.add_initializer(w_new.astype(w.dtype), f"{nxt.name or 'layer'}/bnfold_W")
    ins[2] = g.add_initializer(b_new.astype(w.dtype), f"{nxt.name or 'layer'}/bnfold_B")
    nxt.input[:] = ins


def canonicalize(g: Graph, batchnorm: str = "fold") -> dict:
    """Run the standard passes to a fixed point; return how often each one changed something.

    ``batchnorm``: ``"fold"`` folds BatchNorm into the preceding layer where exact (Zennit's
    canonizers); ``"fold_after"`` first into the following layer where exact, then into the
    preceding one; ``"pass"``, ``"linear"`` and ``"linear2"`` keep every BatchNorm (the rules decide).
    """
    counts = {"remove_identities": 0, "fold_constants": 0, "fold_reshape_shapes": 0, "fold_batchnorm": 0,
              "rewrite_ml_ops": rewrite_ml_ops(g)}
    for _ in range(50):
        changed = 0
        for name, fn in (("remove_identities", remove_identities), ("fold_constants", fold_constants),
                         ("fold_reshape_shapes", fold_reshape_shapes)):
            c = fn(g)
            counts[name] += c
            changed += c
        if batchnorm in ("fold", "fold_after"):
            c = (fold_batchnorm_after(g) if batchnorm == "fold_after" else 0) + fold_batchnorm(g)
            counts["fold_batchnorm"] += c
            changed += c
        if not changed:
            break
        infer_shapes(g)
    return counts
