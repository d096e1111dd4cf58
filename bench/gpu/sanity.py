#!/usr/bin/env python3
"""Sanity checks of onnxplain on the GPU machine, before the benchmark (bench/gpu/device_run.sh, step 2).

On a small CNN (tests/nets.small_cnn: Conv, ReLU, overlapping MaxPool, AveragePool, Gemm) with batch 4:

1. ONNX Runtime's providers include CUDA (``--device cuda``);
2. the compiled ``gradient`` on CUDA against the same model on ONNX Runtime CPU and against PyTorch float64
   autograd of the same network (weights from the ONNX initializers); CUDA with ``use_tf32=0`` (exact
   float32) and with ONNX Runtime's defaults (TF32 convolutions/GEMMs where ``use_tf32`` is on);
3. IO binding: PyTorch CUDA tensors in, PyTorch CUDA tensors out (no copies: the output tensor's memory is
   ONNX Runtime's), equal to the NumPy path;
4. the 8 benchmarked methods on CUDA vs CPU, and which nodes ONNX Runtime placed on the CPU (profiling);
5. float16 compilation vs float32, per method.

``--device cpu`` (dry run without a GPU) runs the same code with the CPU provider where CUDA would be.
Writes ``<out>/sanity.json`` and prints one line per check; exit code 1 when a check fails.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.dirname(HERE)]

METHODS = {"gradient": {}, "integrated_gradients": {"steps": 8, "chunk": 4}, "smoothgrad": {"samples": 4, "chunk": 2},
           "guided_backprop": {}, "lrp.epsilon": {}, "lrp.epsilon_plus_flat": {},
           "lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0}, "deep_taylor": {}}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def torch_grad64(model, x, target):
    """PyTorch float64 autograd of small_cnn (weights from the ONNX initializers)."""
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper

    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float64)) for t in model.graph.initializer}
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    h = F.relu(F.conv2d(xt, w["w1"], w["b1"], padding=1))
    h = F.max_pool2d(h, 3, 2, 1)
    h = F.relu(F.conv2d(h, w["w2"], w["b2"], padding=1))
    h = F.avg_pool2d(h, 2, 2).flatten(1)
    h = F.relu(h @ w["w3"].T + w["b3"])
    logits = h @ w["w4"].T + w["b4"]
    logits.gather(1, torch.from_numpy(target).view(-1, 1)).sum().backward()
    return xt.grad.numpy()


def placement(model, providers) -> dict:
    """Op types ONNX Runtime ran on each provider (from a profile of one run)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = "/tmp/onnxplain-sanity-profile"
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    sess.run(None, {"x": np.zeros((2, 3, 8, 8), np.float32)})
    path = sess.end_profiling()
    with open(path) as fh:
        events = json.load(fh)
    os.remove(path)
    by = collections.defaultdict(collections.Counter)
    for e in events:
        a = e.get("args", {})
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and "provider" in a:
            by[a["provider"]][a.get("op_name", "?")] += 1
    return {p: dict(c) for p, c in by.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls") and args.device == "cuda":
        ort.preload_dlls()
    import onnxplain
    from nets import small_cnn
    from onnxplain.runtime.session import CompiledRunner

    report, ok = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}, True

    def check(name, value, limit):
        nonlocal ok
        good = value is not None and value <= limit
        ok &= good
        report.setdefault("checks", {})[name] = {"value": value, "limit": limit, "ok": good}
        print(f"{'ok  ' if good else 'FAIL'} {name}: {value!r} (limit {limit})", flush=True)

    print(f"onnxruntime {ort.__version__}, providers {report['providers']}", flush=True)
    if args.device == "cuda" and "CUDAExecutionProvider" not in report["providers"]:
        check("CUDAExecutionProvider available", 1.0, 0.0)
        _save(report, args.out)
        return 1
    exact = ([("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"] if args.device == "cuda"
             else ["CPUExecutionProvider"])
    default = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
    cpu = ["CPUExecutionProvider"]
    model = small_cnn(softmax=False)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    target = np.array([0, 1, 2, 3])
    grad = onnxplain.compile(model, "gradient")
    g_dev = CompiledRunner(grad, exact).run({"x": x}, target)["gradient/x"]
    g_cpu = CompiledRunner(grad, cpu).run({"x": x}, target)["gradient/x"]
    check("gradient: device (use_tf32=0) vs ORT CPU", rel(g_dev, g_cpu), 1e-5)
    if torch is not None:
        g64 = torch_grad64(model, x, target)
        check("gradient: device vs torch float64 autograd", rel(g_dev, g64), 1e-5)
        check("gradient: ORT CPU vs torch float64 autograd", rel(g_cpu, g64), 1e-5)
    runner = CompiledRunner(grad, default)
    if args.device == "cuda":
        used = runner.session.get_providers()
        check("session runs on CUDA (not a silent CPU fallback)", 0.0 if "CUDAExecutionProvider" in used else 1.0, 0.0)
    check("gradient: device, ORT default options (TF32 where on) vs ORT CPU",
          rel(runner.run({"x": x}, target)["gradient/x"], g_cpu), 1e-2)
    report["default_cuda_options"] = runner.session.get_provider_options().get("CUDAExecutionProvider")
    if args.device == "cuda" and torch is not None:
        xt = torch.from_numpy(x).cuda()
        out = runner.run({"x": xt}, torch.from_numpy(target).cuda())
        t = out["gradient/x"]
        check("IO binding: torch CUDA tensors out", 0.0 if (isinstance(t, torch.Tensor) and t.is_cuda) else 1.0, 0.0)
        check("IO binding: torch in/out vs NumPy path", rel(t.cpu().numpy(), runner.run({"x": x}, target)["gradient/x"]),
              1e-6)
        from onnxplain.runtime.device import DeviceArray

        ov = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        res = runner.run({"x": ov}, target)["gradient/x"]
        check("IO binding: OrtValue in, OrtValue on CUDA out",
              0.0 if isinstance(res, ort.OrtValue) and res.device_name().lower() == "cuda" else 1.0, 0.0)
        arr = DeviceArray(res)
        view = torch.as_tensor(arr, device="cuda")
        check("IO binding: DeviceArray shared with torch (no copy)",
              0.0 if view.data_ptr() == res.data_ptr() else 1.0, 0.0)
        check("IO binding: OrtValue path vs NumPy path", rel(view.cpu().numpy(), runner.run({"x": x}, target)["gradient/x"]),
              1e-6)
    report["methods"] = {}
    for method, params in METHODS.items():
        m32 = onnxplain.compile(model, method, **params)
        m16 = onnxplain.compile(model, method, precision="float16", **params)
        a = CompiledRunner(m32, exact).run({"x": x}, target)[f"{method}/x"]
        b = CompiledRunner(m32, cpu).run({"x": x}, target)[f"{method}/x"]
        c = CompiledRunner(m16, default).run({"x": x}, target)[f"{method}/x"]
        where = placement(m32, default)
        on_cpu = where.get("CPUExecutionProvider", {}) if args.device == "cuda" else {}
        report["methods"][method] = {"device_vs_cpu": rel(a, b), "fp16_vs_fp32": rel(c, a), "nodes_on_cpu": on_cpu,
                                     "placement": where}
        check(f"{method}: device vs ORT CPU", rel(a, b), 1e-5)
        print(f"     {method}: float16 vs float32 {rel(c, a):.2e}; nodes left on the CPU: {on_cpu or 'none'}",
              flush=True)
    _save(report, args.out)
    return 0 if ok else 1


def _save(report: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sanity.json"), "w") as fh:
        json.dump(report, fh, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
