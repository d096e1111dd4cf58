"""Shared helpers of the onnxplain benchmarks (reference venv only: needs torch and torchvision).

Nothing here is imported by the package. See bench/README.md.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
MAX_IR_VERSION = 10
LEGACY_OPSET = 17
INPUT_SHAPE = (3, 224, 224)

#: name -> (seed, builder). Builders are looked up lazily so that importing this file needs no torch.
ARCHS = {
    "vgg16": 101, "resnet50": 102, "densenet121": 103, "mobilenet_v2": 104,
    "mobilenet_v3_large": 105, "efficientnet_b0": 106, "squeezenet1_1": 107, "googlenet": 108,
    "shufflenet_v2_x1_0": 109, "regnet_y_400mf": 110, "convnext_tiny": 111,
    "efficientnet_lite0": 112,  # efficientnet-lite-pytorch (not torchvision); see build()
}
#: The bundled, pretrained EfficientNet-Lite0 (dynamo export, BatchNorm folded by the exporter).
BUNDLED_EFFICIENTNET_LITE0 = os.path.join(os.path.dirname(HERE), "onnxplain", "data", "efficientnet_lite0.onnx")


def build(name: str):
    """A torchvision architecture with random (seeded) weights, in eval mode after BN calibration."""
    import torch
    import torchvision

    torch.manual_seed(ARCHS[name])
    if name == "efficientnet_lite0":  # pip install efficientnet-lite-pytorch (pure Python)
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0").eval()
    kwargs = {"weights": None}
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(torchvision.models, name)(**kwargs)
    model.eval()
    return model


def calibrate_batchnorm(model, seed: int, batches: int = 10, batch_size: int = 8) -> int:
    """Set BatchNorm running statistics to the exact average over random batches (train mode, no_grad).

    Returns the number of BatchNorm modules (0: nothing to do, no forward passes are run).
    """
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        saved = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average
        gen = torch.Generator().manual_seed(1000 + batches)
        model.train()
        with torch.no_grad():
            for _ in range(batches):
                model(torch.randn(batch_size, *INPUT_SHAPE, generator=gen))
        for bn, m in zip(bns, saved):
            bn.momentum = m
    model.eval()
    return len(bns)


def ensure_nondegenerate(model, x) -> tuple:
    """(mean over samples of the std of the logits across classes, rescaled?, finite?).

    Rescales the last Linear/Conv2d when the logits hardly vary across classes (std < 1e-3).
    """
    import torch
    from torch import nn

    with torch.no_grad():
        out = model(x)
        std = float(out.std(dim=1).mean())
        finite = bool(torch.isfinite(out).all())
        if std >= 1e-3 or not finite:
            return std, False, finite
        layer = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        scale = 1.0 / max(std, 1e-12)
        layer.weight.mul_(scale)
        if layer.bias is not None:
            layer.bias.mul_(scale)
        out = model(x)
        return float(out.std(dim=1).mean()), True, bool(torch.isfinite(out).all())


def export_legacy(model, path: str, batch: int = 2) -> None:
    """TorchScript exporter, opset 17, dynamic batch axis, weights embedded."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(batch, *INPUT_SHAPE),), path, dynamo=False,
                          opset_version=LEGACY_OPSET, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})


def export_dynamo(model, path: str, external_data: bool = False, batch: int = 2) -> None:
    """torch.export based exporter, dynamic batch axis (Dim N in [1, 1024])."""
    import torch

    n = torch.export.Dim("N", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.randn(batch, *INPUT_SHAPE),), dynamo=True,
                                    input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: n},), verbose=False)
    program.save(path, external_data=external_data)


def cap_ir_version(path: str) -> int:
    """Lower ir_version to 10 and drop per-node debug metadata (dynamo); keep external data as it was.

    Returns the ir_version the exporter wrote.
    """
    proto = onnx.load(path)
    original = proto.ir_version
    external = any(t.data_location == onnx.TensorProto.EXTERNAL
                   for t in onnx.load(path, load_external_data=False).graph.initializer)
    proto.ir_version = min(original, MAX_IR_VERSION)
    for node in proto.graph.node:
        del node.metadata_props[:]
    if external:
        data = os.path.basename(path) + ".data"
        if os.path.exists(path + ".data"):
            os.remove(path + ".data")
        onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                  size_threshold=1024)
    else:
        onnx.save(proto, path)
    return original


def file_bytes(path: str) -> int:
    """Size of an ONNX file plus its external-data file, if any."""
    total = os.path.getsize(path)
    if os.path.exists(path + ".data"):
        total += os.path.getsize(path + ".data")
    return total


def ort_session(model, threads: int = 2, profile_prefix=None):
    """A CPU InferenceSession for a path, bytes or ModelProto."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def rel_err_per_sample(a, b) -> list:
    """||a_n - b_n|| / ||b_n|| for each sample n (float64)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return (np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-300)).tolist()


# ----------------------------------------------------------------------------
# Shared by the benchmark scripts (bench_gradient, bench_lrp, run_all)
# ----------------------------------------------------------------------------

def make_input(batch: int) -> np.ndarray:
    """The benchmark input: ``batch`` x 3x224x224 float32 N(0, 1), seed 0 (the same in every script)."""
    return np.random.default_rng(0).standard_normal((batch, *INPUT_SHAPE), dtype=np.float32)


def _status_kib(key: str):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def maxrss_mib() -> float:
    """Peak resident set size of this process in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process image (resettable with
    :func:`reset_peak_rss`). ``ru_maxrss`` is not used there: Linux keeps that maximum across
    ``fork`` + ``exec``, so every child would report at least the RSS of its parent at the fork.
    Elsewhere: ``ru_maxrss``.
    """
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2 ** 20


def rss_mib() -> float:
    """Current resident set size in MiB (``VmRSS``; 0 where /proc is missing)."""
    return (_status_kib("VmRSS") or 0) / 1024


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc ``malloc_trim``, as ``make_session`` does)."""
    import gc

    from onnxplain.runtime.heap import release_freed_heap

    gc.collect()
    release_freed_heap()


def git_state() -> str:
    """Short HEAD and the tracked files with uncommitted changes (read-only git commands)."""
    repo = os.path.dirname(HERE)
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return "?"
    dirty = [ln[3:] for ln in dirty if ln.strip()]
    more = f" and {len(dirty) - 8} more files" if len(dirty) > 8 else ""
    return (head or "?") + (f" + uncommitted changes in {', '.join(dirty[:8])}{more}" if dirty else "")


def machine() -> str:
    """Architecture, CPU count and CPU model name."""
    text = f"{platform.machine()}, {os.cpu_count()} CPUs"
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if names:
            text += f", {names[0]}"
    except OSError:
        pass
    return text


def versions(packages=("onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "torch", "torchvision", "zennit",
                       "captum", "onnxplain")) -> dict:
    """Installed versions, read in a child process (the caller stays free of torch/onnxruntime)."""
    code = ("import json, importlib.metadata as m\nout = {}\n"
            f"for k in {list(packages)!r}:\n"
            "    try:\n        out[k] = m.version(k)\n    except Exception:\n        pass\n"
            "print(json.dumps(out))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return {}


def wait_idle(max_wait: float, threshold: float = 0.6) -> dict:
    """Wait (at most ``max_wait`` s) until the 1-minute load average drops below ``threshold``."""
    t0 = time.perf_counter()
    while os.getloadavg()[0] >= threshold and time.perf_counter() - t0 < max_wait:
        time.sleep(10)
    return {"waited_s": round(time.perf_counter() - t0), "loadavg": list(os.getloadavg())}


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def prepare(arch: str, workdir: str, threads: int = 2) -> dict:
    """Build, calibrate and export one architecture (legacy exporter); save its state dict for the torch peers."""
    import torch

    torch.set_num_threads(threads)
    model = build(arch)
    calibrate_batchnorm(model, ARCHS[arch])
    std, rescaled, finite = ensure_nondegenerate(
        model, torch.randn(8, *INPUT_SHAPE, generator=torch.Generator().manual_seed(5)))
    path = os.path.join(workdir, f"{arch}_legacy.onnx")
    t0 = time.perf_counter()
    export_legacy(model, path)
    export_s = time.perf_counter() - t0
    cap_ir_version(path)
    state = os.path.join(workdir, f"{arch}.pt")
    torch.save(model.state_dict(), state)
    return {"path": path, "state": state, "export_s": export_s, "logit_std": std, "rescaled": rescaled,
            "params": sum(p.numel() for p in model.parameters())}
