"""Shared helpers of the onnxplain benchmarks (reference venv only: needs torch and torchvision).

Nothing here is imported by the package. See bench/README.md.
"""
from __future__ import annotations

import os
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
}


def build(name: str):
    """A torchvision architecture with random (seeded) weights, in eval mode after BN calibration."""
    import torch
    import torchvision

    torch.manual_seed(ARCHS[name])
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
