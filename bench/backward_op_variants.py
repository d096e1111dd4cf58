#!/usr/bin/env python3
"""Micro-benchmark: ONNX Runtime CPU cost of alternative ONNX formulations of the backward ops that
dominate onnxplain's compiled gradient (ReLU mask, Conv data-gradient, MaxPool with indices).

Needs only numpy, onnx and onnxruntime (any Python with those)::

    python bench/backward_op_variants.py            # ~1-2 min on 2 cores

Every variant is checked against the first one of its group (max abs difference printed), then
timed: median of 7 ``session.run`` calls after 1 warm-up, 2 intra-op threads, default graph
optimisations. Results: ``bench/results/backward_op_variants.{json,md}``.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
THREADS = 2
RUNS = 7
F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, F, None) for n in outputs],
                          [numpy_helper.from_array(a, n) for n, a in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return m


def session(m):
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def timeit(sess, feeds):
    out = sess.run(None, feeds)
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out[0]


def relu_group(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    y = np.maximum(x, 0)
    g = rng.standard_normal(shape, dtype=np.float32)
    zero = ("zero", np.zeros((), np.float32))
    variants = {
        "Where(Greater(x, 0), g, 0)  [onnxplain before be73be2]": model(
            [helper.make_node("Greater", ["x", "zero"], ["m"]), helper.make_node("Where", ["m", "g", "zero"], ["d"])],
            [("x", shape), ("g", shape)], ["d"], [zero]),
        "Mul(g, Cast(Greater(x, 0)))": model(
            [helper.make_node("Greater", ["x", "zero"], ["m"]), helper.make_node("Cast", ["m"], ["mf"], to=F),
             helper.make_node("Mul", ["g", "mf"], ["d"])],
            [("x", shape), ("g", shape)], ["d"], [zero]),
        "Mul(g, Sign(y)), y = Relu(x)  [onnxplain now]": model(
            [helper.make_node("Sign", ["y"], ["s"]), helper.make_node("Mul", ["g", "s"], ["d"])],
            [("y", shape), ("g", shape)], ["d"]),
        "Where(Greater(y, 0), g, 0)": model(
            [helper.make_node("Greater", ["y", "zero"], ["m"]), helper.make_node("Where", ["m", "g", "zero"], ["d"])],
            [("y", shape), ("g", shape)], ["d"], [zero]),
        "Mul(g, Cast(Greater(y, 0)))": model(
            [helper.make_node("Greater", ["y", "zero"], ["m"]), helper.make_node("Cast", ["m"], ["mf"], to=F),
             helper.make_node("Mul", ["g", "mf"], ["d"])],
            [("y", shape), ("g", shape)], ["d"], [zero]),
        "Mul(g, Ceil(Min(y, 1)))": model(
            [helper.make_node("Min", ["y", "one"], ["c"]), helper.make_node("Ceil", ["c"], ["m"]),
             helper.make_node("Mul", ["g", "m"], ["d"])],
            [("y", shape), ("g", shape)], ["d"], [("one", np.ones((), np.float32))]),
        "Mul(g, y) (one-op floor: not a ReLU backward, cost only)": model(
            [helper.make_node("Mul", ["g", "y"], ["d"])], [("y", shape), ("g", shape)], ["d"]),
    }
    feeds = {"x": x, "g": g, "y": y}
    return variants, feeds


def conv_group(n, c, k, hw, kernel, stride):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((k, c, kernel, kernel)) / np.sqrt(c * kernel * kernel)).astype(np.float32)
    pad = kernel // 2
    out_hw = (hw + 2 * pad - kernel) // stride + 1
    gshape = [n, k, out_hw, out_hw]
    g = rng.standard_normal(gshape, dtype=np.float32)
    x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
    outpad = hw - ((out_hw - 1) * stride - 2 * pad + kernel)
    ct_attrs = dict(strides=[stride, stride], pads=[pad] * 4)
    if outpad:
        ct_attrs["output_padding"] = [outpad, outpad]
    variants = {
        "forward Conv x -> y (reference cost)": model(
            [helper.make_node("Conv", ["x", "w"], ["d"], strides=[stride, stride], pads=[pad] * 4)],
            [("x", [n, c, hw, hw])], ["d"], [("w", w)]),
        "ConvTranspose(g, W)  [onnxplain: stride > 1; before: all]": model(
            [helper.make_node("ConvTranspose", ["g", "w"], ["d"], **ct_attrs)],
            [("g", gshape)], ["d"], [("w", w)]),
    }
    if stride == 1:
        wt = np.ascontiguousarray(np.flip(w.transpose(1, 0, 2, 3), axis=(2, 3)))
        variants["Conv(g, flip(W^T)) stored weight"] = model(
            [helper.make_node("Conv", ["g", "wt"], ["d"], pads=[kernel - 1 - pad] * 4)],
            [("g", gshape)], ["d"], [("wt", wt)])
        variants["Conv(g, Slice(Transpose(W))) in-graph, same initializer  [onnxplain now, stride 1]"] = model(
            [helper.make_node("Transpose", ["w"], ["wT"], perm=[1, 0, 2, 3]),
             helper.make_node("Slice", ["wT", "st", "en", "ax", "sp"], ["wt"]),
             helper.make_node("Conv", ["g", "wt"], ["d"], pads=[kernel - 1 - pad] * 4)],
            [("g", gshape)], ["d"],
            [("w", w), ("st", np.array([-1, -1], np.int64)), ("en", np.array([-2 ** 62, -2 ** 62], np.int64)),
             ("ax", np.array([2, 3], np.int64)), ("sp", np.array([-1, -1], np.int64))])
    return variants, {"g": g, "x": x}


def maxpool_group(shape, kernel, stride, pad):
    rng = np.random.default_rng(2)
    x = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0)
    attrs = dict(kernel_shape=[kernel] * 2, strides=[stride] * 2, pads=[pad] * 4)
    variants = {
        "forward MaxPool -> Y": model([helper.make_node("MaxPool", ["x"], ["d"], **attrs)], [("x", shape)], ["d"]),
        "forward MaxPool -> Y, Indices  [onnxplain now]": model(
            [helper.make_node("MaxPool", ["x"], ["d", "i"], **attrs),
             helper.make_node("Cast", ["i"], ["fi"], to=F)], [("x", shape)], ["d", "fi"]),
    }
    return variants, {"x": x}


def maxpool_backward_group(shape, kernel, stride, pad):
    """Backward given the forward indices: ScatterElements (now) vs MaxUnpool (exact when windows do not
    overlap, kernel == stride) vs the Equal-mask formulation (kernel == stride, no padding; ties aside)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape, dtype=np.float32)
    attrs = dict(kernel_shape=[kernel] * 2, strides=[stride] * 2, pads=[pad] * 4)
    fwd = model([helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)], [("x", shape)], ["y"])
    fwd.graph.output.append(helper.make_tensor_value_info("i", TensorProto.INT64, None))
    y, idx = session(fwd).run(["y", "i"], {"x": x})
    g = rng.standard_normal(y.shape, dtype=np.float32)
    size = np.array([int(np.prod(shape))], np.int64)
    scatter = model(
        [helper.make_node("ConstantOfShape", ["size"], ["z"], value=helper.make_tensor("v", F, [1], [0.0])),
         helper.make_node("Reshape", ["idx", "m1"], ["fi"]), helper.make_node("Reshape", ["g", "m1"], ["fg"]),
         helper.make_node("ScatterElements", ["z", "fi", "fg"], ["flat"], axis=0, reduction="add"),
         helper.make_node("Reshape", ["flat", "shape"], ["d"])],
        [("g", list(y.shape))], ["d"],
        [("size", size), ("m1", np.array([-1], np.int64)), ("shape", np.array(shape, np.int64))])
    scatter.graph.input.append(helper.make_tensor_value_info("idx", TensorProto.INT64, list(y.shape)))
    variants = {"ScatterElements(zeros, I, g, add)  [onnxplain now]": scatter}
    if kernel == stride:
        unpool = model([helper.make_node("MaxUnpool", ["g", "idx"], ["d"], kernel_shape=[kernel] * 2,
                                         strides=[stride] * 2)], [("g", list(y.shape))], ["d"])
        unpool.graph.input.append(helper.make_tensor_value_info("idx", TensorProto.INT64, list(y.shape)))
        variants["MaxUnpool(g, I)"] = unpool
        if pad == 0:
            variants["Mul(Upsample(g), Equal(x, Upsample(y)))"] = model(
                [helper.make_node("Resize", ["g", "", "sc"], ["gu"], mode="nearest"),
                 helper.make_node("Resize", ["y", "", "sc"], ["yu"], mode="nearest"),
                 helper.make_node("Equal", ["x", "yu"], ["m"]), helper.make_node("Cast", ["m"], ["mf"], to=F),
                 helper.make_node("Mul", ["gu", "mf"], ["d"])],
                [("g", list(y.shape)), ("x", shape), ("y", list(y.shape))], ["d"],
                [("sc", np.array([1, 1, stride, stride], np.float32))])
    return variants, {"g": g, "idx": idx, "x": x, "y": y}


def run_group(name, variants, feeds):
    rows, ref = [], None
    for label, m in variants.items():
        sess = session(m)
        want = {i.name for i in sess.get_inputs()}
        secs, out = timeit(sess, {k: v for k, v in feeds.items() if k in want})
        diff = None
        if "forward" in label:
            pass  # the forward op, timed for scale only
        elif ref is None:
            ref = out
        elif ref.shape == out.shape:
            diff = float(np.max(np.abs(out - ref)))
        rows.append({"group": name, "variant": label, "ms": secs * 1e3, "max_abs_diff_vs_first": diff})
        print(f"{name:40s} {label:58s} {secs * 1e3:9.1f} ms  diff {diff}", flush=True)
    return rows


def main() -> int:
    rows = []
    for shape in ([8, 64, 112, 112], [8, 256, 56, 56]):
        rows += run_group(f"ReLU backward {shape}", *relu_group(shape))
    for n, c, k, hw, kernel, stride in ((8, 64, 64, 56, 3, 1), (8, 256, 256, 14, 3, 1), (8, 128, 128, 112, 3, 1),
                                        (8, 64, 128, 56, 3, 2)):
        rows += run_group(f"Conv data-gradient N{n} C{c}->K{k} {hw}x{hw} k{kernel} s{stride}",
                          *conv_group(n, c, k, hw, kernel, stride))
    rows += run_group("MaxPool 3x3/2 pad 1 [8, 64, 112, 112] (ResNet)", *maxpool_group([8, 64, 112, 112], 3, 2, 1))
    rows += run_group("MaxPool 2x2/2 [8, 64, 224, 224] (VGG)", *maxpool_group([8, 64, 224, 224], 2, 2, 0))
    rows += run_group("MaxPool backward 3x3/2 pad 1 [8, 64, 112, 112]",
                      *maxpool_backward_group([8, 64, 112, 112], 3, 2, 1))
    rows += run_group("MaxPool backward 2x2/2 [8, 64, 224, 224]", *maxpool_backward_group([8, 64, 224, 224], 2, 2, 0))
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "backward_op_variants.json"), "w") as fh:
        json.dump({"onnxruntime": ort.__version__, "threads": THREADS, "runs": RUNS, "rows": rows}, fh, indent=1)
    lines = ["# ONNX Runtime CPU cost of backward-op formulations", "",
             f"Generated by `bench/backward_op_variants.py` (onnxruntime {ort.__version__}, {THREADS} intra-op "
             f"threads, median of {RUNS} runs after 1 warm-up, default graph optimisations). `diff`: max abs "
             "difference from the group's first backward variant (numerical check).", "",
             "| group | variant | ms | diff |", "|---|---|---|---|"]
    for r in rows:
        d = "–" if r["max_abs_diff_vs_first"] is None else f"{r['max_abs_diff_vs_first']:.1e}"
        lines.append(f"| {r['group']} | {r['variant']} | {r['ms']:.1f} | {d} |")
    with open(os.path.join(RESULTS, "backward_op_variants.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
