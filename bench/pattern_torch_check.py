"""Cross-check the compiled PatternNet / PatternAttribution against PyTorch autograd on a real model.

Run with the reference venv from the repository root::

    /work/venv-ref/bin/python bench/pattern_torch_check.py [MODEL.onnx PATTERNS.npz DATA.npz]

(default: the bundled MNIST CNN, its bundled patterns, 64 bundled test digits). PyTorch runs the ONNX
graph node by node (Conv, Relu, MaxPool, Flatten, Gemm, MatMul, Add) in float64; each linear layer
computes ``L(x; W).detach() + L(x; P) - L(x; P).detach()``: the forward value of the real layer and
the gradient of the layer with weight ``P`` (``P = A`` for PatternNet, ``W * A`` for
PatternAttribution). Autograd of ``sum(logit * onehot * logit.detach())`` then gives the pattern
backward (seed = the logit's value) through the real ReLU masks and max-pool routing. Prints the
relative L2 error of onnxplain's float32 maps.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "onnxplain", "data")


def attr(n, name, default=None):
    for a in n.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def torch_maps(model: onnx.ModelProto, x: np.ndarray, patterns: dict, attribution: bool) -> np.ndarray:
    inits = {t.name: torch.tensor(numpy_helper.to_array(t).astype(np.float64)) for t in model.graph.initializer}
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    env = {model.graph.input[0].name: xt}
    for n in model.graph.node:
        i = [env.get(k, inits.get(k)) for k in n.input]
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            w = i[1]
            p = torch.tensor(patterns[n.name].astype(np.float64))
            p = w * p if attribution else p
            if n.op_type == "Conv":
                pads = attr(n, "pads", [0, 0, 0, 0])
                kw = dict(stride=attr(n, "strides", [1, 1]), padding=(pads[0], pads[1]),
                          dilation=attr(n, "dilations", [1, 1]), groups=attr(n, "group", 1))
                assert pads[:2] == pads[2:]
                f = lambda k, bias: F.conv2d(i[0], k, bias, **kw)  # noqa: E731
            elif n.op_type == "Gemm":
                alpha = attr(n, "alpha", 1.0)
                tb = attr(n, "transB", 0)
                f = lambda k, bias: alpha * (i[0] @ (k.T if tb else k)) + (0 if bias is None else bias)  # noqa: E731
            else:
                f = lambda k, bias: i[0] @ k  # noqa: E731
            b = i[2] if len(i) > 2 else None
            real, pat = f(w, b), f(p, None)
            out = real.detach() + pat - pat.detach()
        elif n.op_type == "Relu":
            out = torch.relu(i[0])
        elif n.op_type == "MaxPool":
            pads = attr(n, "pads", [0, 0, 0, 0])
            out = F.max_pool2d(i[0], attr(n, "kernel_shape"), attr(n, "strides"), padding=(pads[0], pads[1]))
        elif n.op_type == "Flatten":
            out = torch.flatten(i[0], attr(n, "axis", 1))
        elif n.op_type == "Add":
            out = i[0] + i[1]
        elif n.op_type == "Softmax" and n.output[0] == model.graph.output[0].name:
            env["__logits__"] = i[0]  # explained: the pre-softmax logit
            break
        else:
            raise SystemExit(f"op {n.op_type} not handled by this check")
        env[n.output[0]] = out
    logits = env.get("__logits__", env.get(model.graph.output[0].name))
    hot = F.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype)
    (logits * hot * logits.detach()).sum().backward()
    return xt.grad.numpy()


def main() -> None:
    import onnxplain
    from onnxplain.rules.pattern import load_patterns

    args = sys.argv[1:]
    model_path = args[0] if args else os.path.join(DATA, "mnist_cnn.onnx")
    pat_path = args[1] if len(args) > 1 else model_path.replace(".onnx", "_patterns.npz")
    if len(args) > 2:
        x = np.load(args[2])
        x = x[x.files[0]] if hasattr(x, "files") else x
    else:
        x = np.load(os.path.join(DATA, "mnist_test.npz"))["images"][:64]
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    x = x[:, None] if x.ndim == 3 else x
    model = onnx.load(model_path)
    pats = load_patterns(pat_path)
    maps = onnxplain.Explainer(model, ["pattern.net", "pattern.attribution"], patterns=pats,
                               progress=False).explain(x)
    for name, att in (("pattern.net", False), ("pattern.attribution", True)):
        ref = torch_maps(model, x, pats, att)
        err = np.linalg.norm(maps[name] - ref) / np.linalg.norm(ref)
        print(f"{os.path.basename(model_path)} {name}: {len(x)} samples, relative L2 error vs PyTorch float64 "
              f"autograd {err:.2e}")


if __name__ == "__main__":
    main()
