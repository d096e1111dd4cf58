"""Per-op gradient tests, continued: pooling, reductions, normalizations and shape/selection ops.

Same harness and tolerance as ``test_ops_gradient.py`` (see its docstring): a tiny
model ``x -> op -> random Gemm head``, ``gradient/x`` of the compiled model in ONNX
Runtime against float64 central differences on ONNX's reference evaluator.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import onnxplain
from reference import rel_err, run
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from test_ops_gradient import (FIXED_OPS, TOL, Case, _label, away, check_case, dynamic_batch, ints, node, reference, w,
                               with_head, xn, xpos)

X4 = (2, 3, 4, 5)
f32 = np.float32


# --------------------------------------------------------------------------- pooling
def _explicit_pool_attrs(spatial, attrs):
    """``attrs`` with auto_pad resolved to pads and ceil_mode dropped where it changes nothing.

    Returns None where ceil_mode adds a window that starts in the end padding: ONNX Runtime
    (and the spec) drop it, ONNX's shape inference keeps it, so such a model fails the checker.
    """
    nd, out = len(spatial), dict(attrs)
    k, s = attrs["kernel_shape"], attrs.get("strides") or [1] * nd
    d = attrs.get("dilations") or [1] * nd
    eff = [(k[i] - 1) * d[i] + 1 for i in range(nd)]
    auto = out.pop("auto_pad", "NOTSET")
    pads = list(attrs.get("pads") or [0] * (2 * nd))
    if auto.startswith("SAME"):
        for i in range(nd):
            total = max((-(-spatial[i] // s[i]) - 1) * s[i] + eff[i] - spatial[i], 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[nd + i] = (small, big) if auto == "SAME_UPPER" else (big, small)
    out["pads"] = pads
    if out.pop("ceil_mode", 0):
        for i in range(nd):
            span = spatial[i] + pads[i] + pads[nd + i] - eff[i]
            if span % s[i]:
                if (span // s[i] + 1) * s[i] >= spatial[i] + pads[i]:
                    return None
                out["ceil_mode"] = 1
    return out


def pool_case(op, spatial, c=2, batch=None, opset=18, **attrs):
    """``op`` on ``x [2, c, *spatial]`` (standard normal: no ties in max pooling), or None (see above).

    ONNX's reference MaxPool gets SAME_LOWER and some ceil-mode sizes wrong, so the finite
    differences run on the same pooling with explicit pads and without a needless ceil_mode.
    """
    ref_attrs = _explicit_pool_attrs(spatial, attrs) if "kernel_shape" in attrs else attrs
    if ref_attrs is None:
        return None
    ref = ([node(op, ["x"], **ref_attrs)], {}) if ref_attrs != attrs else None
    if op == "GlobalMaxPool":  # ONNX's reference GlobalMaxPool handles 2-D images only
        ref = ([node("ReduceMax", ["x", "ax"])], {"ax": ints(*range(2, 2 + len(spatial)))})
    return Case(_label(f"{op}{len(spatial)}d", **attrs), [node(op, ["x"], **attrs)], {}, xn(2, c, *spatial),
                batch=batch, opset=opset, ref=ref)


def _maxpool_cases():
    cases = []
    for (k, s), p, ceil, d in itertools.product([(3, 2), (2, 2), (3, 1)], ([0] * 4, [1] * 4, [0, 1, 1, 0]),
                                                [0, 1], [1, 2]):
        cases.append(pool_case("MaxPool", (5, 6), kernel_shape=[k, k], strides=[s, s], pads=p, ceil_mode=ceil,
                               dilations=[d, d]))
    cases.append(pool_case("MaxPool", (8, 6), kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1))
    cases += [
        pool_case("MaxPool", (7, 6), kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 0, 1]),
        pool_case("MaxPool", (7, 6), kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        pool_case("MaxPool", (7, 6), kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER"),
        pool_case("MaxPool", (9,), kernel_shape=[3], strides=[2], pads=[1, 1]),
        pool_case("MaxPool", (9,), kernel_shape=[3], strides=[2], ceil_mode=1),
        pool_case("MaxPool", (5, 4, 5), c=2, kernel_shape=[2, 2, 3], strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0]),
        pool_case("MaxPool", (7, 6), batch="N", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    return [c for c in cases if c is not None]


def _avgpool_cases():
    cases = []
    for (k, s), p, ceil, cip in itertools.product([(3, 2), (2, 2), (3, 1)], ([0] * 4, [1] * 4, [0, 1, 1, 0]),
                                                  [0, 1], [0, 1]):
        cases.append(pool_case("AveragePool", (5, 6), kernel_shape=[k, k], strides=[s, s], pads=p, ceil_mode=ceil,
                               count_include_pad=cip))
    for cip, ceil in itertools.product([0, 1], [0, 1]):
        cases.append(pool_case("AveragePool", (7, 6), opset=19, kernel_shape=[3, 2], strides=[2, 2],
                               pads=[1, 1, 1, 1], dilations=[2, 2], count_include_pad=cip, ceil_mode=ceil))
    cases += [
        pool_case("AveragePool", (7, 6), kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        pool_case("AveragePool", (7, 6), kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER",
                  count_include_pad=1),
        pool_case("AveragePool", (9,), kernel_shape=[3], strides=[2], pads=[1, 2], count_include_pad=1),
        pool_case("AveragePool", (5, 4, 5), c=2, kernel_shape=[2, 2, 3], strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0]),
        pool_case("AveragePool", (7, 6), batch="N", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        pool_case("AveragePool", (8, 6), kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1, count_include_pad=1),
        pool_case("AveragePool", (8, 6), kernel_shape=[3, 2], strides=[2, 2], pads=[0, 1, 0, 1], ceil_mode=1),
    ]
    return [c for c in cases if c is not None]


def _global_and_reduce_cases():
    cases = [pool_case(op, sp) for op in ("GlobalAveragePool", "GlobalMaxPool") for sp in ((4, 5), (7,), (2, 3, 4))]
    for op, keep, axes in itertools.product(["ReduceMean", "ReduceSum"], [0, 1], [[1], [2, 3], [-1], [1, 3]]):
        cases.append(Case(_label(op, keepdims=keep, axes=axes), [node(op, ["x", "ax"], keepdims=keep)],
                          {"ax": ints(*axes)}, xn(*X4)))
    cases += [
        Case("ReduceMean-noop-empty-axes", [node("ReduceMean", ["x"], noop_with_empty_axes=1)], {}, xn(*X4)),
        Case("ReduceSum-noop-empty-axes-input", [node("ReduceSum", ["x", "ax"], noop_with_empty_axes=1)],
             {"ax": np.zeros(0, np.int64)}, xn(*X4)),
        Case("ReduceMean-opset17-attr", [node("ReduceMean", ["x"], axes=[2, -1], keepdims=0)], {}, xn(*X4), opset=17),
        Case("ReduceSum-opset13-input", [node("ReduceSum", ["x", "ax"], keepdims=1)], {"ax": ints(1)}, xn(*X4),
             opset=13),
    ]
    return cases


def _norm_cases():
    def bn(shape, eps=1e-5):
        c = shape[1]
        inits = {"g": w(c), "b": w(c), "m": w(c), "v": xpos(c, lo=0.5, hi=1.5)}
        return Case(f"BatchNormalization-after-Relu-{len(shape)}d", [
            node("Relu", ["x"], "r"), node("BatchNormalization", ["r", "g", "b", "m", "v"], epsilon=eps)],
            inits, xn(*shape, kinks=(0.0,)))
    cases = [bn(X4), bn((2, 6)), bn((2, 3, 7), eps=1e-3)]
    conv_bn = Case("BatchNormalization-after-shared-Conv", [
        node("Conv", ["x", "W"], "c"), node("BatchNormalization", ["c", "g", "b", "m", "v"], "n"),
        node("Add", ["n", "c"])], {"W": w(3, 3, 1, 1), "g": w(3), "b": w(3), "m": w(3), "v": xpos(3)}, xn(*X4))
    cases.append(conv_bn)
    for size in (1, 3, 5):  # ONNX Runtime rejects even sizes
        cases.append(Case(f"LRN-size{size}", [node("LRN", ["x"], size=size, alpha=0.5, beta=0.75, bias=1.5)], {},
                          xn(2, 6, 3, 3)))
    cases.append(Case("LRN-defaults", [node("LRN", ["x"], size=3)], {}, xn(2, 6, 3, 3)))
    return cases


# --------------------------------------------------------------------------- shape ops
def _reshape_cases():
    c = [
        Case("Flatten-axis1", [node("Flatten", ["x"], axis=1)], {}, xn(*X4)),
        Case("Flatten-axis2", [node("Flatten", ["x"], "f", axis=2), node("Tanh", ["f"], "t"),
                               node("Reshape", ["t", "s"])], {"s": ints(-1, 60)}, xn(*X4)),
        Case("Reshape-0,-1", [node("Reshape", ["x", "s"])], {"s": ints(0, -1)}, xn(*X4)),
        Case("Reshape-0,6,-1", [node("Reshape", ["x", "s"], "r"), node("Softmax", ["r"], axis=1)],
             {"s": ints(0, 6, -1)}, xn(*X4)),
        Case("Transpose-0231", [node("Transpose", ["x"], "t", perm=[0, 2, 3, 1]), node("Mul", ["t", "k"])],
             {"k": w(4, 5, 3)}, xn(*X4)),
        Case("Transpose-default-twice", [node("Transpose", ["x"], "t"), node("Mul", ["t", "k"], "m"),
                                         node("Transpose", ["m"])], {"k": w(5, 4, 3, 1)}, xn(*X4)),
        Case("Squeeze-axes", [node("Squeeze", ["x", "ax"], "s"), node("Mul", ["s", "k"])], {"ax": ints(2),
             "k": w(3, 5)}, xn(2, 3, 1, 5)),
        Case("Squeeze-all", [node("Squeeze", ["x"], "s"), node("Mul", ["s", "k"])], {"k": w(3, 5)}, xn(2, 3, 1, 5, 1)),
        Case("Unsqueeze-1,-1", [node("Unsqueeze", ["x", "ax"], "u"), node("Mul", ["u", "k"])],
             {"ax": ints(1, -1), "k": w(2, 3, 4, 1)}, xn(2, 3, 4)),
        Case("Expand-middle", [node("Expand", ["x", "s"], "e"), node("Mul", ["e", "k"])],
             {"s": ints(1, 3, 4, 1), "k": w(3, 4, 5)}, xn(2, 3, 1, 5)),
        Case("Expand-lead", [node("Expand", ["x", "s"], "e"), node("Mul", ["e", "k"], "m"),
                             node("Transpose", ["m"], perm=[1, 0, 2, 3])], {"s": ints(4, 1, 1, 5),
                                                                            "k": w(4, 1, 3, 5)}, xn(2, 3, 1)),
        Case("Cast-f64-chain", [node("Cast", ["x"], "d", to=11), node("Mul", ["d", "k"], "m"),
                                node("Cast", ["m"], to=1)], {"k": np.float64(1.7) * np.ones((1, 5))}, xn(*X4)),
        Case("Identity", [node("Identity", ["x"], "i"), node("Tanh", ["i"])], {}, xn(*X4)),
        Case("Dropout", [node("Dropout", ["x"], "d"), node("Tanh", ["d"])], {}, xn(*X4)),
        Case("Dropout-mask-output", [node("Dropout", ["x", "r"], ["d", "mask"]), node("Tanh", ["d"])],
             {"r": np.array(0.3, f32)}, xn(*X4)),
    ]
    return c


def _concat_split_cases():
    t = [node("Tanh", ["x"], "t")]
    c = [Case(f"Concat-x-fx-axis{ax}", t + [node("Concat", ["x", "t", "x"], axis=ax)], {}, xn(*X4))
         for ax in (1, 2, -1)]
    c += [
        Case("Split-equal", [node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3),
                             node("Mul", ["a", "c"], "m"), node("Sub", ["m", "b"])], {}, xn(2, 6, 2, 3)),
        Case("Split-sizes-unused", [node("Split", ["x", "sp"], ["a", "b", "c"], axis=-1), node("Tanh", ["b"])],
             {"sp": ints(1, 3, 1)}, xn(*X4)),
        Case("Split-sizes-first-only", [node("Split", ["x", "sp"], ["a", "b"], axis=2), node("Tanh", ["a"])],
             {"sp": ints(3, 1)}, xn(*X4)),
        Case("Split-opset13", [node("Split", ["x", "sp"], ["a", "b"], axis=1), node("Concat", ["b", "a"], axis=1)],
             {"sp": ints(2, 1)}, xn(*X4), opset=13),
    ]
    return c


def _slice_cases():
    big = np.iinfo(np.int64).max
    specs = {
        "basic": ([1], [3], [2], None),
        "negative": ([-3, 1], [-1, -1], [3, 1], None),
        "step2": ([0, 1], [big, 5], [2, 3], [2, 2]),
        "step-1": ([-1], [-big], [3], [-1]),
        "step-2-axes": ([3, -1], [0, -big], [2, -1], [-2, -2]),
        "several": ([0, 1, 4], [2, 3, 0], [1, 2, 3], [1, 1, -2]),
        "clamped": ([-10, 2], [10, 100], [2, 3], [1, 1]),
    }
    c = []
    for name, (st, en, ax, sp) in specs.items():
        inits = {"st": ints(*st), "en": ints(*en), "ax": ints(*ax)}
        ins = ["x", "st", "en", "ax"]
        if sp is not None:
            inits["sp"] = ints(*sp)
            ins.append("sp")
        c.append(Case(f"Slice-{name}", [node("Slice", ins)], inits, xn(*X4)))
    return c


def _pad_cases():
    c = []
    for mode, pads in (("constant", [0, 0, 1, 2, 0, 0, 2, 0]), ("reflect", [0, 0, 2, 1, 0, 0, 1, 3]),
                       ("edge", [0, 0, 2, 1, 0, 0, 1, 3]), ("wrap", [0, 0, 2, 1, 0, 0, 1, 3])):
        c.append(Case(_label("Pad", mode=mode, pads=pads), [node("Pad", ["x", "p", "v"], mode=mode)],
                      {"p": ints(*pads), "v": np.array(0.5, f32)}, xn(*X4), opset=19))
    c.append(Case("Pad-axes", [node("Pad", ["x", "p", "", "ax"], mode="reflect")],
                  {"p": ints(1, 2, 2, 1), "ax": ints(-1, 2)}, xn(*X4)))
    # negative pads crop; ONNX's reference Pad rejects them, so the reference crops with Slice
    crop = lambda st, en, ax, pads, pax: ([node("Slice", ["x", "st", "en", "sax"], "s"),  # noqa: E731
                                           node("Pad", ["s", "pp", "", "pax"])],
                                          {"st": ints(*st), "en": ints(*en), "sax": ints(*ax), "pp": ints(*pads),
                                           "pax": ints(*pax)})
    c.append(Case("Pad-constant-negative", [node("Pad", ["x", "p"])], {"p": ints(0, 0, 1, -1, 0, 0, -2, 2)},
                  xn(*X4), ref=crop([1, 0], [5, -2], [3, 2], [1, 0, 0, 2], [2, 3])))
    c.append(Case("Pad-constant-axes-negative", [node("Pad", ["x", "p", "", "ax"])],
                  {"p": ints(-1, 2, 1, -2), "ax": ints(3, 1)}, xn(*X4),
                  ref=crop([1, 0], [5, 1], [3, 1], [0, 2, 1, 0], [3, 1])))
    return c


def _runtime_gather(name, idx, axis) -> Case:
    """Gather with indices ``0 * N + idx``: constant values, but computed at run time (N is the dynamic batch)."""
    body = [node("Shape", ["x"], "n", start=0, end=1), node("Mul", ["n", "zero"], "z"),
            node("Reshape", ["z", "scalar"], "z0"), node("Add", ["z0", "i"], "idx"),
            node("Gather", ["x", "idx"], axis=axis)]
    inits = {"zero": ints(0), "scalar": np.zeros(0, np.int64), "i": np.asarray(idx, np.int64)}
    return Case(f"Gather-runtime-{name}", body, inits, xn(*X4), batch="N")


def _gather_cases():
    return [
        _runtime_gather("scalar", -2, 1), _runtime_gather("1d", [0, -1, 2, 0], 2),
        _runtime_gather("2d", [[0, 3], [-1, 0]], -1), _runtime_gather("3d", np.zeros((2, 1, 2)) + [1, 2], 1),
        Case("Gather-scalar", [node("Gather", ["x", "i"], axis=1)], {"i": np.array(-2, np.int64)}, xn(*X4)),
        Case("Gather-1d-neg-dup", [node("Gather", ["x", "i"], axis=2)], {"i": ints(0, -1, 2, 0)}, xn(*X4)),
        Case("Gather-1d-last", [node("Gather", ["x", "i"], axis=-1)], {"i": ints(4, 1)}, xn(*X4)),
        Case("Gather-2d", [node("Gather", ["x", "i"], axis=2)], {"i": np.array([[0, 3], [-1, 0]], np.int64)},
             xn(*X4)),
    ]


def _resize(mode, by, x, ref_by=None, **attrs) -> Case:
    """Resize ``x`` by ``("scales", [...])`` or ``("sizes", [...])`` of its last two axes."""
    def body(spec):
        kind, vals = spec
        ins = ["x", "", "r"] if kind == "scales" else ["x", "", "", "r"]
        val = np.array(vals, f32 if kind == "scales" else np.int64)
        return [node("Resize", ins, mode=mode, axes=[2, 3], **attrs)], {"r": val}
    name = _label(f"Resize-{mode}", **attrs, by=f"{by[0]}{_label('', v=by[1])[2:]}")
    return Case(name, *body(by), x, ref=body(ref_by) if ref_by else None)


def _resize_cases():
    c = []
    x = xn(2, 3, 4, 3)
    for nm, ctm in itertools.product(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"],
                                     ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"]):
        # ONNX's reference evaluator uses the unrounded size 3 * 2.5 for align_corners (ONNX Runtime: 7)
        ref_by = ("sizes", [6, 7]) if ctm == "align_corners" else None
        c.append(_resize("nearest", ("scales", [1.5, 2.5]), x, ref_by, nearest_mode=nm,
                         coordinate_transformation_mode=ctm))
    for ctm, by in itertools.product(["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"],
                                     [("scales", [2.0, 1.5]), ("scales", [1.5, 2.5]), ("sizes", [7, 5]),
                                      ("sizes", [3, 2]), ("scales", [0.6, 0.7])]):
        ref_by = ("sizes", [int(4 * by[1][0]), int(3 * by[1][1])]) if ctm == "align_corners" and \
            by[0] == "scales" else None
        c.append(_resize("linear", by, x, ref_by, coordinate_transformation_mode=ctm))
    c += [
        Case("Resize-linear-half_pixel_symmetric", [node("Resize", ["x", "", "sc"], mode="linear", axes=[2, 3],
                                                         coordinate_transformation_mode="half_pixel_symmetric")],
             {"sc": np.array([1.5, 2.5], f32)}, x, opset=19),
        _resize("cubic", ("scales", [2.0, 2.0]), x),
        _resize("cubic", ("sizes", [5, 6]), x, coordinate_transformation_mode="asymmetric", cubic_coeff_a=-0.5),
        _resize("linear", ("sizes", [3, 2]), xn(2, 3, 6, 5), antialias=1),
        Case("Resize-full-rank-scales", [node("Resize", ["x", "", "sc"], mode="linear")],
             {"sc": np.array([1, 1, 2, 1.5], f32)}, x),
        Case("Resize-axes-reversed", [node("Resize", ["x", "", "sc"], mode="linear", axes=[3, 2])],
             {"sc": np.array([2.0, 1.5], f32)}, x),
        Case("Resize-axes-last-sizes", [node("Resize", ["x", "", "", "sz"], mode="nearest", axes=[-1])],
             {"sz": ints(7)}, x, ref=([node("Resize", ["x", "", "", "sz"], mode="nearest", axes=[3])],
                                      {"sz": ints(7)})),  # ONNX's reference Resize rejects axes=[-1]
        Case("Resize-dynbatch", [node("Resize", ["x", "", "sc"], mode="linear")],
             {"sc": np.array([1, 1, 2, 2], f32)}, x, batch="N"),
    ]
    return c


# --------------------------------------------------------------------------- further adapters
def _more_elementwise_cases():
    u = lambda op, x, opset=18, **a: Case(_label(op, **a) if a else op, [node(op, ["x"], **a)], {}, x,  # noqa: E731
                                          opset=opset)
    t = [node("Tanh", ["x"], "t")]
    return [
        u("Softsign", xn(*X4, scale=2)), u("Mish", xn(*X4, scale=2)), u("Celu", xn(*X4, kinks=(0.0,))),
        u("Celu", xn(*X4, kinks=(0.0,)), alpha=0.5), u("ThresholdedRelu", xn(*X4, kinks=(1.0,))),
        u("ThresholdedRelu", xn(*X4, kinks=(0.3,)), alpha=0.3), u("Sin", xn(*X4, scale=2)),
        u("Cos", xn(*X4, scale=2)),
        Case("Max-x-const", [node("Max", ["x", "k"])], {"k": w(3, 1, 5)}, xn(*X4)),
        Case("Min-x-fx-const", t + [node("Min", ["x", "t", "k"])], {"k": w(1, 5)}, xn(*X4)),
        Case("Max-xsmall-x", [node("ReduceMean", ["x", "ax"], "r"), node("Max", ["r", "x"])], {"ax": ints(2)},
             xn(*X4)),
        Case("Max-1", [node("Max", ["x"])], {}, xn(*X4)),
        Case("Pow-exponent-of-x", t + [node("Exp", ["x"], "e"), node("Pow", ["e", "t"])], {}, xn(*X4)),
    ]


def _more_reduce_cases():
    c = []
    for op, keep, axes in itertools.product(["ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare",
                                             "ReduceLogSumExp", "ReduceLogSum"], [0, 1], [[1], [2, -1]]):
        x = xpos(*X4) if op == "ReduceLogSum" else xn(*X4, kinks=(0.0,) if op == "ReduceL1" else None)
        c.append(Case(_label(op, keepdims=keep, axes=axes), [node(op, ["x", "ax"], keepdims=keep)],
                      {"ax": ints(*axes)}, x))
    c.append(Case("ReduceMax-noop-empty-axes", [node("ReduceMax", ["x"], noop_with_empty_axes=1)], {}, xn(*X4)))
    c.append(Case("ReduceMax-opset13-attr", [node("ReduceMax", ["x"], axes=[1])], {}, xn(*X4), opset=13))
    return c


def _more_cases():
    inorm = lambda x: Case(f"InstanceNormalization-{x.ndim - 2}d", [  # noqa: E731
        node("InstanceNormalization", ["x", "g", "b"], epsilon=1e-3)], {"g": w(x.shape[1]), "b": w(x.shape[1])}, x)
    mm = lambda eq, *ins: [node("Einsum", list(ins), equation=eq)]  # noqa: E731
    return [
        inorm(xn(*X4)), inorm(xn(2, 3, 7)), inorm(xn(2, 2, 3, 2, 3)),
        Case("Tile-2d", [node("Tile", ["x", "r"])], {"r": ints(1, 2, 1, 3)}, xn(2, 3, 2, 2)),
        Case("Tile-all-ones", [node("Tile", ["x", "r"], "u"), node("Tanh", ["u"])], {"r": ints(1, 1, 1, 1)}, xn(*X4)),
        Case("Tile-dynbatch", [node("Tile", ["x", "r"])], {"r": ints(1, 3, 2)}, xn(2, 3, 2), batch="N"),
        Case("Einsum-bij,jk", mm("bij,jk->bik", "x", "W"), {"W": w(4, 2)}, xn(2, 3, 4)),
        Case("Einsum-jk,bij", mm("jk,bij->bki", "W", "x"), {"W": w(4, 2)}, xn(2, 3, 4)),
        Case("Einsum-attention", mm("bij,bkj->bik", "x", "x"), {}, xn(2, 3, 4)),
        Case("Einsum-ellipsis", mm("...ij,jk->...ik", "x", "W"), {"W": w(5, 2)}, xn(*X4)),
        Case("Einsum-implicit", mm("bij,jk", "x", "W"), {"W": w(4, 2)}, xn(2, 3, 4)),
        Case("Einsum-sum-out", mm("bij->bi", "x"), {}, xn(2, 3, 4)),
        Case("Einsum-3-operands", mm("bi,ij,bj->bj", "x", "W", "x"), {"W": w(4, 4)}, xn(2, 4)),
    ]


CASES = (_maxpool_cases() + _avgpool_cases() + _global_and_reduce_cases() + _norm_cases() + _reshape_cases()
         + _concat_split_cases() + _slice_cases() + _pad_cases() + _gather_cases() + _resize_cases()
         + _more_elementwise_cases() + _more_reduce_cases() + _more_cases())
CASES += dynamic_batch(CASES, {
    "GlobalAveragePool2d-", "GlobalMaxPool3d-", "ReduceMean-keep0-axes2,3", "BatchNormalization-after-Relu-3d",
    "LRN-size3", "Flatten-axis1", "Reshape-0,6,-1", "Expand-lead", "Concat-x-fx-axis-1",
    "Split-sizes-unused", "Slice-step-2-axes", "Pad-modereflect-p0,0,2,1,0,0,1,3", "Pad-constant-negative",
    "Gather-2d", "Resize-linear-align_corners-byscales1.5,2.5", "Max-xsmall-x", "ReduceMax-keep0-axes2,-1",
    "ReduceL2-keep1-axes1", "InstanceNormalization-2d", "Einsum-ellipsis", "Einsum-sum-out"})


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_gradient(case):
    check_case(case)


def test_clip_bounds_depending_on_x():
    """Clip bounds must be scalars (ONNX Runtime enforces it), so bounds computed from ``x`` mix the
    whole batch; with batch 1 the per-sample finite differences of ``check_case`` do not apply and
    the gradient is checked against differences of single-sample evaluations."""
    body = [node("ReduceMean", ["x"], "m", keepdims=0), node("Sub", ["m", "d"], "lo"), node("Add", ["m", "d"], "hi"),
            node("Clip", ["x", "lo", "hi"])]
    case = Case("Clip-bounds-of-x", body, {"d": np.array(0.4, f32)}, away(xn(1, 2, 3, 4), (0.0,), 0.1))
    model = with_head(case)
    ref = reference(model)
    x = case.x.astype(np.float64)
    target = ref({"x": x}).reshape(-1).argmax()
    want = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[i] = 1e-5
        want[i] = (ref({"x": x + e}).reshape(-1)[target] - ref({"x": x - e}).reshape(-1)[target]) / 2e-5
    got = run(onnxplain.compile(model, "gradient"), {"x": case.x})["gradient/x"]
    assert rel_err(got, want) < TOL


class OneHot(OpRun):
    """``OneHot`` accepting a depth of shape [1], as the spec allows (ONNX's reference wants a scalar)."""

    op_domain = ""

    def _run(self, indices, depth, values, axis=-1):
        depth = int(np.asarray(depth).reshape(-1)[0])
        hot = np.arange(depth) == np.where(indices < 0, indices + depth, indices)[..., None]
        return (np.moveaxis(np.where(hot, values[1], values[0]), -1, axis).astype(values.dtype),)


@pytest.mark.parametrize("size", [2, 4])
def test_lrn_even_size(size):
    """ONNX Runtime rejects even LRN sizes (the window is then asymmetric: ``c - (size-1)//2 ...
    c + ceil((size-1)/2)``), so the compiled model runs in ONNX's reference evaluator instead."""
    case = Case(f"LRN-size{size}", [node("LRN", ["x"], size=size, alpha=0.5, beta=0.75, bias=1.5)], {},
                xn(2, 6, 3, 3))
    model = with_head(case)
    ref = reference(model)
    compiled = onnxplain.compile(model, "gradient")
    ev = ReferenceEvaluator(compiled, new_ops=FIXED_OPS + [OneHot])
    target = ref({"x": case.x}).argmin(1)
    got = ev.run(["gradient/x"], {"x": case.x, "target": target})[0]
    assert rel_err(got, ref.logit_gradient(case.x, target)) < TOL


def test_unsupported_einsum_diagonal():
    """A diagonal (repeated index within one term) is reported, not silently mis-differentiated."""
    model = with_head(Case("Einsum-diag", [node("Einsum", ["x"], equation="bii->bi")], {}, xn(2, 3, 3)))
    with pytest.raises(onnxplain.CompileError, match="repeats an index"):
        onnxplain.compile(model, "gradient")
