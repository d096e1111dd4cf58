#!/usr/bin/env python3
"""Generate the ONNX test fixtures of onnxplain and their float64 PyTorch references.

Run with the reference virtual environment (see models/README.md)::

    /work/venv-ref/bin/python models/make_fixtures.py

For every small architecture built from torchvision's own classes and blocks it
writes into ``models/fixtures/``:

* ``<arch>_legacy.onnx`` - TorchScript ("legacy") exporter, opset 17, dynamic batch;
* ``<arch>_dynamo.onnx`` - torch.export based exporter, dynamic batch;
* ``<arch>.npz``         - inputs and float64 reference results (logits, input
  gradients, integrated gradients, guided backprop / deconvnet where defined).

It also writes ``resnet_fixedbatch_legacy.onnx`` (batch fixed to 2), verifies every
file with onnxruntime, and rewrites ``models/README.md`` with a summary.
Everything is seeded, so reruns produce the same weights and references.
"""

from __future__ import annotations

import collections
import copy
import os
import sys
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from torch import nn
from torchvision.models import convnext, densenet, efficientnet
from torchvision.models import mobilenetv2, mobilenetv3, regnet, resnet
from torchvision.models import shufflenetv2, squeezenet, vgg
from torchvision.models.googlenet import BasicConv2d, Inception
from torchvision.ops.misc import Conv2dNormActivation

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
README = os.path.join(HERE, "README.md")
sys.path.insert(0, HERE)
NUM_CLASSES = 10
INPUT_SHAPE = (3, 64, 64)
CALIB_BATCHES, CALIB_BATCH_SIZE = 20, 16
IG_STEPS = 8
MAX_IR_VERSION = 10
LEGACY_OPSET = 17
NONLINEAR_OPS = {"Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Gelu", "Erf", "Tanh",
                 "LayerNormalization", "Softmax", "LeakyRelu", "Elu", "Selu", "PRelu"}


# ----------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------

def build_vgg() -> nn.Module:
    """torchvision VGG with a small batch-normalised ``make_layers`` config."""
    cfg = [8, "M", 16, "M", 32, 32, "M", 48, 48, "M"]
    model = vgg.VGG(vgg.make_layers(cfg, batch_norm=True), num_classes=NUM_CLASSES)
    model.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    model.classifier = nn.Sequential(
        nn.Linear(48 * 2 * 2, 32), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(32, NUM_CLASSES))
    for m in model.classifier.modules():
        if isinstance(m, nn.Linear):  # same init as VGG's own classifier
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)
    return model


class SmallResNet(resnet.ResNet):
    """torchvision ResNet with 16..128 channels, mixing BasicBlock and Bottleneck.

    ``ResNet.__init__`` hard-codes 64..512 channels, so this sets up the same
    attributes by hand, builds the stages with ``ResNet._make_layer`` and reuses
    ``ResNet.forward`` unchanged.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = 16, 1, 1, 64
        self.conv1 = nn.Conv2d(3, 16, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(resnet.BasicBlock, 16, 2)
        self.layer2 = self._make_layer(resnet.BasicBlock, 32, 1, stride=2)
        self.layer3 = self._make_layer(resnet.Bottleneck, 16, 2, stride=2)
        self.layer4 = self._make_layer(resnet.Bottleneck, 32, 1, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32 * resnet.Bottleneck.expansion, num_classes)
        for m in self.modules():  # same init as ResNet.__init__
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build_densenet() -> nn.Module:
    """torchvision DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16)."""
    return densenet.DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16,
                             num_classes=NUM_CLASSES)


def build_mobilenet_v2() -> nn.Module:
    """torchvision MobileNetV2, width 0.5, 5 short stages, last conv 256 channels."""
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2], [6, 64, 2, 2], [6, 96, 1, 1]]
    model = mobilenetv2.MobileNetV2(num_classes=NUM_CLASSES, width_mult=0.5,
                                    inverted_residual_setting=setting)
    last_in = model.features[-1][0].in_channels
    model.features[-1] = Conv2dNormActivation(last_in, 256, kernel_size=1,
                                              activation_layer=nn.ReLU6)
    model.last_channel = 256
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(256, NUM_CLASSES))
    nn.init.kaiming_normal_(model.features[-1][0].weight, mode="fan_out")
    nn.init.normal_(model.classifier[1].weight, 0, 0.01)  # as MobileNetV2.__init__
    nn.init.zeros_(model.classifier[1].bias)
    return model


def build_mobilenet_v3_small() -> nn.Module:
    """torchvision MobileNetV3 small config, width 0.5, first 6 of 11 blocks."""
    setting, _ = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
    return mobilenetv3.MobileNetV3(setting[:6], last_channel=128, num_classes=NUM_CLASSES)


def build_efficientnet() -> nn.Module:
    """torchvision EfficientNet, b0 config at width/depth 0.25 without its last stage."""
    setting, last_channel = efficientnet._efficientnet_conf(
        "efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return efficientnet.EfficientNet(setting[:6], dropout=0.2, stochastic_depth_prob=0.2,
                                     num_classes=NUM_CLASSES, last_channel=last_channel)


def build_squeezenet() -> nn.Module:
    """torchvision SqueezeNet 1.1 layout with every Fire module at 1/4 width."""
    model = squeezenet.SqueezeNet(version="1_1", num_classes=NUM_CLASSES)
    fire, pool = squeezenet.Fire, partial(nn.MaxPool2d, kernel_size=3, stride=2, ceil_mode=True)
    model.features = nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, stride=2), nn.ReLU(inplace=True), pool(),
        fire(16, 4, 16, 16), fire(32, 4, 16, 16), pool(),
        fire(32, 8, 32, 32), fire(64, 8, 32, 32), pool(),
        fire(64, 12, 48, 48), fire(96, 12, 48, 48), fire(96, 16, 64, 64), fire(128, 16, 64, 64))
    final_conv = nn.Conv2d(128, NUM_CLASSES, kernel_size=1)
    model.classifier[1] = final_conv
    for m in model.modules():  # same init as SqueezeNet.__init__
        if isinstance(m, nn.Conv2d):
            if m is final_conv:
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
            else:
                nn.init.kaiming_uniform_(m.weight)
            nn.init.constant_(m.bias, 0)
    return model


class SmallGoogLeNet(nn.Module):
    """GoogLeNet-style net from torchvision's ``BasicConv2d`` and ``Inception`` blocks.

    Same layout as the first half of ``torchvision.models.GoogLeNet`` (stem,
    inception 3a/3b, pool, inception 4a) with small channel counts, no aux logits.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        conv, incep = BasicConv2d, Inception
        pool = partial(nn.MaxPool2d, 3, stride=2, ceil_mode=True)
        self.features = nn.Sequential(
            conv(3, 16, kernel_size=7, stride=2, padding=3), pool(),
            conv(16, 16, kernel_size=1), conv(16, 32, kernel_size=3, padding=1), pool(),
            incep(32, 8, 12, 16, 4, 8, 8), incep(40, 16, 16, 24, 4, 12, 12), pool(),
            incep(64, 24, 12, 32, 4, 8, 16))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.2)
        self.fc = nn.Linear(80, num_classes)
        for m in self.modules():  # same init as GoogLeNet.__init__
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and inception blocks, global average pool, dropout, linear."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.fc(self.dropout(x))


def build_shufflenet_v2() -> nn.Module:
    """torchvision ShuffleNetV2 with stages [2, 2, 2] and channels [16, 32, 64, 128, 256]."""
    return shufflenetv2.ShuffleNetV2([2, 2, 2], [16, 32, 64, 128, 256],
                                     num_classes=NUM_CLASSES)


def build_regnet() -> nn.Module:
    """torchvision RegNet (X-style: no squeeze-excitation) with small BlockParams."""
    params = regnet.BlockParams(depths=[1, 1, 2, 1], widths=[16, 32, 48, 96],
                                group_widths=[8, 8, 16, 16],
                                bottleneck_multipliers=[1.0] * 4, strides=[2] * 4)
    return regnet.RegNet(params, num_classes=NUM_CLASSES, stem_width=16)


def build_convnext() -> nn.Module:
    """torchvision ConvNeXt with a tiny CNBlockConfig list and layer_scale 0.5.

    The default layer_scale of 1e-6 would make every block an identity to float
    precision, hiding the block branch from gradient tests.
    """
    cfg = convnext.CNBlockConfig
    setting = [cfg(8, 16, 1), cfg(16, 32, 1), cfg(32, 64, 2), cfg(64, None, 1)]
    return convnext.ConvNeXt(setting, stochastic_depth_prob=0.0, layer_scale=0.5,
                             num_classes=NUM_CLASSES)


@dataclass
class Arch:
    """One fixture architecture: name, builder, seed, ReLU-only flag, description."""

    name: str
    build: Callable[[], nn.Module]
    seed: int
    relu_only: bool
    what: str
    results: dict = field(default_factory=dict)


ARCHS = [
    Arch("vgg", build_vgg, 1, True,
         "VGG (torchvision `VGG` + `make_layers`, cfg [8,M,16,M,32,32,M,48,48,M], BN), "
         "AdaptiveAvgPool 2x2, replacement classifier Linear-ReLU-Dropout-Linear"),
    Arch("resnet", SmallResNet, 2, True,
         "ResNet (`ResNet._make_layer`/`forward`, 2 BasicBlock(16), BasicBlock(32), "
         "2 Bottleneck(16->64), Bottleneck(32->128)); own `__init__` since ResNet's "
         "hard-codes 64..512 channels"),
    Arch("densenet", build_densenet, 3, False,
         "torchvision `DenseNet(growth_rate=8, block_config=(2,2,2), num_init_features=16)`"
         " (functional relu at the end, so no GBP/deconvnet)"),
    Arch("mobilenet_v2", build_mobilenet_v2, 4, False,
         "torchvision `MobileNetV2(width_mult=0.5)` with a 5-stage inverted_residual_setting;"
         " last 1x1 conv replaced (1280 -> 256 channels) and classifier resized (ReLU6)"),
    Arch("mobilenet_v3_small", build_mobilenet_v3_small, 5, False,
         "torchvision `MobileNetV3` with the first 6 blocks of the small config at width "
         "0.5, last_channel 128 (ReLU, Hardswish, SE with Hardsigmoid)"),
    Arch("efficientnet", build_efficientnet, 6, False,
         "torchvision `EfficientNet` from `_efficientnet_conf('efficientnet_b0', "
         "width_mult=0.25, depth_mult=0.25)`, first 6 of its 7 stages (SiLU, SE with Sigmoid, "
         "stochastic depth)"),
    Arch("squeezenet1_1", build_squeezenet, 7, True,
         "torchvision `SqueezeNet(version='1_1')` with its `features` rebuilt from `Fire` "
         "modules at 1/4 width (and the final conv resized)"),
    Arch("googlenet", SmallGoogLeNet, 8, False,
         "small GoogLeNet-style net from torchvision `BasicConv2d` + 3 `Inception` blocks, "
         "no aux logits (BasicConv2d uses functional relu, so no GBP/deconvnet)"),
    Arch("shufflenet_v2", build_shufflenet_v2, 9, True,
         "torchvision `ShuffleNetV2(stages_repeats=[2,2,2], "
         "stages_out_channels=[16,32,64,128,256])`"),
    Arch("regnet", build_regnet, 10, True,
         "torchvision `RegNet` with `BlockParams(depths=[1,1,2,1], widths=[16,32,48,96], "
         "group_widths=[8,8,16,16])`, stem 16, no SE (grouped convs)"),
    Arch("convnext", build_convnext, 11, False,
         "torchvision `ConvNeXt` with CNBlockConfig (8,16,1),(16,32,1),(32,64,2),(64,None,1),"
         " layer_scale 0.5 (LayerNorm, GELU, depthwise 7x7, permutes)"),
]


# ----------------------------------------------------------------------------
# Model preparation
# ----------------------------------------------------------------------------

@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, seed: int) -> None:
    """Set BatchNorm running statistics from random batches, then switch to eval.

    Momentum is temporarily ``None`` (cumulative average), so the stored stats are
    the exact average over the CALIB_BATCHES batches.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    gen = torch.Generator().manual_seed(1000 + seed)
    model.train()
    for _ in range(CALIB_BATCHES):
        model(torch.randn(CALIB_BATCH_SIZE, *INPUT_SHAPE, generator=gen))
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.eval()


def last_affine_layer(model: nn.Module) -> nn.Module:
    """The last registered Linear or Conv2d module (the one producing the logits)."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]


@torch.no_grad()
def ensure_nondegenerate(model: nn.Module, seed: int) -> tuple[float, bool]:
    """Rescale the last layer if logits barely vary across classes.

    Returns (mean std of logits across classes, whether a rescale was done).
    """
    x = torch.randn(CALIB_BATCH_SIZE, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))
    std = model(x).std(dim=1).mean().item()
    if std > 1e-3:
        return std, False
    layer = last_affine_layer(model)
    layer.weight.mul_(1.0 / max(std, 1e-12))
    if layer.bias is not None:
        layer.bias.mul_(1.0 / max(std, 1e-12))
    return model(x).std(dim=1).mean().item(), True


def prepare_model(arch: Arch) -> nn.Module:
    """Build the architecture with its seed, calibrate BatchNorm, check logits."""
    torch.manual_seed(arch.seed)
    model = arch.build()
    calibrate_batchnorm(model, arch.seed)
    std, rescaled = ensure_nondegenerate(model, arch.seed)
    arch.results.update(logit_std=std, rescaled=rescaled,
                        params=sum(p.numel() for p in model.parameters()))
    return model


# ----------------------------------------------------------------------------
# Export and onnxruntime checks
# ----------------------------------------------------------------------------

def cap_ir_version(path: str) -> int:
    """Lower ir_version to MAX_IR_VERSION and drop per-node debug metadata; re-save.

    The dynamo exporter stores stack traces (with local file paths), FX node text
    and module scopes in every node's ``metadata_props``; they carry no semantics,
    roughly double the file size and would make the files machine-dependent.
    Returns the ir_version the exporter wrote.
    """
    proto = onnx.load(path)
    original = proto.ir_version
    proto.ir_version = min(original, MAX_IR_VERSION)
    for node in proto.graph.node:
        del node.metadata_props[:]
    onnx.save(proto, path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    return original


def export_legacy(model: nn.Module, path: str, dynamic: bool = True) -> None:
    """TorchScript exporter, opset 17, optionally with a dynamic batch axis."""
    axes = {"input": {0: "N"}, "logits": {0: "N"}} if dynamic else None
    batch = 1 if dynamic else 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(batch, *INPUT_SHAPE),), path, dynamo=False,
                          opset_version=LEGACY_OPSET, input_names=["input"],
                          output_names=["logits"], dynamic_axes=axes)


def export_dynamo(model: nn.Module, path: str) -> None:
    """torch.export based exporter with a dynamic batch dim, weights embedded."""
    batch = torch.export.Dim("N", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.randn(2, *INPUT_SHAPE),), dynamo=True,
                                    input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), verbose=False)
    program.save(path, external_data=False)
    if os.path.exists(path + ".data"):
        raise RuntimeError(f"{path}: weights were written as external data")


def ort_logits(path: str, x: np.ndarray) -> np.ndarray:
    """Run an ONNX file on the CPU with onnxruntime and return its logits."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L2 error ||a - b|| / ||b|| over the whole array."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def check_onnx(path: str, model: nn.Module, refs: dict, batches=(2, 3)) -> float:
    """Compare onnxruntime logits with torch (batch sizes in ``batches``) and logits64.

    Returns the relative error against the float64 reference on ``refs['x']``.
    Raises if any comparison is off by more than ~1e-4 relative.
    """
    err64 = rel_err(ort_logits(path, refs["x"]), refs["logits64"])
    if err64 > 1e-4:
        raise AssertionError(f"{path}: rel err vs logits64 {err64:.2e}")
    gen = torch.Generator().manual_seed(77)
    for n in batches:
        x = torch.randn(n, *INPUT_SHAPE, generator=gen)
        with torch.no_grad():
            want = model(x).numpy()
        got = ort_logits(path, x.numpy())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                   err_msg=path)
    return err64


def export_all(arch: Arch, model: nn.Module, refs: dict) -> None:
    """Export with both exporters, cap ir_version, verify with onnxruntime."""
    for kind, export in (("legacy", export_legacy), ("dynamo", export_dynamo)):
        path = os.path.join(FIXTURES, f"{arch.name}_{kind}.onnx")
        try:
            export(model, path)
            arch.results[f"{kind}_ir"] = cap_ir_version(path)
            arch.results[f"{kind}_err64"] = check_onnx(path, model, refs)
            arch.results[f"{kind}_ok"] = "ok"
        except Exception as exc:  # record and keep going, as documented in README
            arch.results[f"{kind}_ok"] = f"FAILED: {type(exc).__name__}: {exc}"[:300]
            print(f"[{arch.name}] {kind} export failed: {exc}", file=sys.stderr)
            if os.path.exists(path):
                os.remove(path)


# ----------------------------------------------------------------------------
# Float64 / float32 references
# ----------------------------------------------------------------------------

def input_grad(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gradient of sum_n model(x)[n, target[n]] with respect to x."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x).gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(out, x)
    return grad.detach()


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IG with zero baseline, IG_STEPS steps, right Riemann sum (alphas k/IG_STEPS, k=1..)."""
    total = torch.zeros_like(x)
    for k in range(1, IG_STEPS + 1):
        total += input_grad(model, x * (k / IG_STEPS), target)
    return x * total / IG_STEPS


def modified_relu_grad(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                       guided: bool) -> tuple[torch.Tensor, int]:
    """Guided backprop (guided=True) or deconvnet gradient via hooks on nn.ReLU.

    Guided: grad_in = relu(grad_out) * (input > 0); deconvnet: grad_in = relu(grad_out).
    Returns the gradient and the number of ReLU module calls seen in the forward.
    """
    model = copy.deepcopy(model)
    calls = [0]

    def backward_hook(_module, grad_input, grad_output):
        # grad_input[0] == grad_out * (input > 0), so relu of it is the guided rule.
        source = grad_input[0] if guided else grad_output[0]
        return (torch.clamp(source, min=0.0),)

    def count_hook(_module, _inputs, _output):
        calls[0] += 1

    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
            m.register_full_backward_hook(backward_hook)
            m.register_forward_hook(count_hook)
    return input_grad(model, x, target), calls[0]


def count_relu_nodes(path: str) -> tuple[int, set]:
    """Number of Relu nodes and set of other non-linear op types in an ONNX graph."""
    ops = [n.op_type for n in onnx.load(path).graph.node]
    return ops.count("Relu"), set(ops) & NONLINEAR_OPS


KINK_MARGINS = (1e-6, 3e-7, 1e-7, 3e-8)


def pick_input(arch: Arch, model: nn.Module, model64: nn.Module) -> torch.Tensor:
    """Two samples (fixed seeds) whose input and IG points are away from kinks.

    At every ReLU/Clip pre-activation and max-pool window, for the input and each
    integrated-gradients point, float64 values must be at least ``margin`` times (the largest of ``KINK_MARGINS`` for which
    two such samples are found) the
    layer's largest magnitude away from the kink (see ``kinks.py``).  Closer than that,
    float32 arithmetic of any implementation (PyTorch's included) may take the other
    branch, and the comparison would measure luck instead of the implementation.
    """
    import tempfile

    from kinks import KinkProbe

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.onnx")
        export_legacy(model, path)
        probe = KinkProbe(path)
        try:
            probe.margin(torch.zeros(1, *INPUT_SHAPE).double().numpy())
        except Exception as exc:  # noqa: BLE001 - ONNX's reference evaluator lacks some op variants
            print(f"{arch.name}: kink probe unavailable ({type(exc).__name__}); inputs not screened", flush=True)
            arch.results["kink_margin"] = float("nan")
            return torch.randn(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(500 + arch.seed))
        for margin in KINK_MARGINS:
            chosen = []
            for attempt in range(40):
                seed = 500 + arch.seed + 1000 * attempt
                x = torch.randn(1, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))
                pts = [x.double().numpy() * (k / IG_STEPS) for k in range(1, IG_STEPS + 1)]
                if min(probe.margin(p) for p in pts) >= margin:
                    chosen.append(x)
                    if len(chosen) == 2:
                        arch.results["kink_margin"] = margin
                        return torch.cat(chosen)
    raise RuntimeError(f"{arch.name}: no input away from kinks found")


def integrated_gradients32_err(model: nn.Module, ig64: torch.Tensor, x: torch.Tensor,
                               target: torch.Tensor) -> np.ndarray:
    """Per-sample relative L2 error of float32 PyTorch IG against float64 IG."""
    ig32 = integrated_gradients(model, x, target).double()
    return ((ig32 - ig64).flatten(1).norm(dim=1) / ig64.flatten(1).norm(dim=1)).numpy()


def compute_references(arch: Arch, model: nn.Module) -> dict:
    """Float64 (and float32) PyTorch references for one architecture."""
    model64 = copy.deepcopy(model).double()
    x = pick_input(arch, model, model64)
    x64 = x.double()
    with torch.no_grad():
        logits64 = model64(x64)
    target = logits64.argmax(dim=1)
    target_alt = (target + 3) % NUM_CLASSES
    grad64 = input_grad(model64, x64, target)
    grad32 = input_grad(model, x, target)
    diff = (grad32.double() - grad64).flatten(1).norm(dim=1)
    refs = {
        "x": x.numpy(), "logits64": logits64.numpy(), "target": target.numpy(),
        "grad64": grad64.numpy(), "grad32": grad32.numpy(),
        "torch32_err": (diff / grad64.flatten(1).norm(dim=1)).numpy(),
        "target_alt": target_alt.numpy(),
        "grad64_alt": input_grad(model64, x64, target_alt).numpy(),
        "ig64": integrated_gradients(model64, x64, target).numpy(),
    }
    refs["ig32_err"] = integrated_gradients32_err(model, torch.from_numpy(refs["ig64"]), x, target)
    refs["kink_margin"] = np.float64(arch.results["kink_margin"])
    if arch.relu_only:
        refs["gbp64"], calls = modified_relu_grad(model64, x64, target, guided=True)
        refs["deconv64"], _ = modified_relu_grad(model64, x64, target, guided=False)
        refs["gbp64"], refs["deconv64"] = refs["gbp64"].numpy(), refs["deconv64"].numpy()
        arch.results["relu_calls"] = calls
    assert refs["target"].dtype == np.int64 and refs["x"].dtype == np.float32
    return refs


def check_relu_only(arch: Arch) -> None:
    """For ReLU-only archs, the legacy graph must have exactly one Relu per ReLU call."""
    path = os.path.join(FIXTURES, f"{arch.name}_legacy.onnx")
    if not arch.relu_only or not os.path.exists(path):
        return
    relus, others = count_relu_nodes(path)
    if relus != arch.results["relu_calls"] or others:
        raise AssertionError(f"{arch.name}: {relus} Relu nodes vs "
                             f"{arch.results['relu_calls']} nn.ReLU calls, other: {others}")


# ----------------------------------------------------------------------------
# Op census and README
# ----------------------------------------------------------------------------

def graph_op_types(graph: onnx.GraphProto, counter: collections.Counter) -> None:
    """Count node op types in a graph and, recursively, in its subgraphs."""
    for node in graph.node:
        counter[node.op_type if not node.domain or node.domain == "ai.onnx"
                else f"{node.domain}.{node.op_type}"] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                graph_op_types(attr.g, counter)
            for sub in attr.graphs:
                graph_op_types(sub, counter)


def op_census() -> dict[str, collections.Counter]:
    """Op type counts per exporter over all fixture files (functions included)."""
    census = {"legacy": collections.Counter(), "dynamo": collections.Counter()}
    for name in sorted(os.listdir(FIXTURES)):
        if not name.endswith(".onnx"):
            continue
        proto = onnx.load(os.path.join(FIXTURES, name))
        counter = census["dynamo" if name.endswith("_dynamo.onnx") else "legacy"]
        graph_op_types(proto.graph, counter)
        for func in proto.functions:
            graph_op_types(func, counter)  # FunctionProto also has .node
    return census


def file_kb(name: str) -> str:
    """Size of a fixture file in KB, or '-' if it does not exist."""
    path = os.path.join(FIXTURES, name)
    return f"{os.path.getsize(path) / 1024:.0f}" if os.path.exists(path) else "-"


def opset_of(name: str) -> str:
    """Default-domain opset and ir_version of a fixture file, e.g. '17/8'."""
    path = os.path.join(FIXTURES, name)
    if not os.path.exists(path):
        return "-"
    proto = onnx.load(path, load_external_data=False)
    opset = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    return f"{opset[0] if opset else '?'}/{proto.ir_version}"


def summary_table() -> list[str]:
    """Markdown table rows: sizes, float32 error, exporter status per architecture."""
    rows = ["| arch | params | legacy KB | dynamo KB | npz KB | opset/IR (legacy, dynamo) "
            "| torch32_err (per sample) | legacy | dynamo | GBP | last layer rescaled |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in ARCHS:
        r = a.results
        err = ", ".join(f"{e:.1e}" for e in r["torch32_err"])
        rows.append(
            f"| {a.name} | {r['params']} | {file_kb(a.name + '_legacy.onnx')} "
            f"| {file_kb(a.name + '_dynamo.onnx')} | {file_kb(a.name + '.npz')} "
            f"| {opset_of(a.name + '_legacy.onnx')}, {opset_of(a.name + '_dynamo.onnx')} "
            f"| {err} | {r['legacy_ok']} | {r['dynamo_ok']} "
            f"| {'yes' if a.relu_only else 'no'} | {'yes' if r['rescaled'] else 'no'} |")
    return rows


def census_table(census: dict[str, collections.Counter]) -> list[str]:
    """Markdown table of op type counts per exporter."""
    ops = sorted(set(census["legacy"]) | set(census["dynamo"]))
    rows = ["| op type | legacy | dynamo |", "|---|---|---|"]
    rows += [f"| {op} | {census['legacy'][op]} | {census['dynamo'][op]} |" for op in ops]
    return rows


README_HEAD = """# Test fixtures

Small ONNX models exported from PyTorch plus float64 PyTorch reference results,
used to test onnxplain. Everything in `fixtures/` is generated by
`make_fixtures.py`; do not edit the files by hand.

## Regenerating

```sh
python3 -m venv /work/venv-ref
/work/venv-ref/bin/pip install torch==2.14.1 torchvision==0.29.1
/work/venv-ref/bin/pip install onnx==1.23.2 onnxscript onnxruntime numpy
/work/venv-ref/bin/python models/make_fixtures.py
```

Generated with torch {torch}, torchvision {tv}, onnx {onnx}, onnxscript {oscript},
onnxruntime {ort}, numpy {np}. Seeds are fixed; the script also checks every
`.onnx` with onnxruntime (CPU) against the float64 logits (relative L2 error
< 1e-4) and against float32 PyTorch at batch sizes 2 and 3 (rtol 1e-4).

## Files

* `<arch>_legacy.onnx`: `torch.onnx.export(dynamo=False, opset_version=17)`,
  input `input` [N,3,64,64] float32, output `logits` [N,10], batch axis dynamic (`N`).
* `<arch>_dynamo.onnx`: `torch.onnx.export(dynamo=True)` (default opset, optimizer on),
  dynamic batch via `dynamic_shapes` (`torch.export.Dim("N", min=1, max=1024)`),
  weights embedded (no external data). The per-node `metadata_props` the dynamo
  exporter writes (stack traces with local paths, FX node text, module scopes) are
  removed: they have no semantics, doubled the file size and made files machine-dependent.
* All files: `ir_version` capped at 10 (the dynamo exporter writes a higher one),
  `onnx.checker.check_model(full_check=True)` passes.
* `resnet_fixedbatch_legacy.onnx`: the resnet fixture, legacy exporter, batch fixed to 2.
* `<arch>.npz` (shared by both exports, computed in PyTorch, model in eval mode):
  * `x` float32 [2,3,64,64]: input (torch.randn, fixed seeds; inputs whose float64 ReLU/Clip pre-activations or max-pool
    winners are within 1e-6 (relative) of a kink at the input or an IG point are skipped: see `kinks.py`)
  * `logits64` float64 [2,10]: logits of the float64 copy of the model on `x`
  * `target` int64 [2]: argmax of `logits64` per sample
  * `grad64` float64: d(sum_n logits[n, target[n]])/dx in float64
  * `grad32` float32: the same computed in float32 PyTorch
  * `torch32_err` float64 [2]: per-sample ||grad32 - grad64|| / ||grad64||
  * `target_alt` int64 [2] = (target + 3) % 10, `grad64_alt`: gradient for those targets
  * `ig32_err` float64 [2]: per-sample relative L2 error of float32 PyTorch IG against `ig64`
  * `ig64`: integrated gradients, zero baseline, 8 steps, right Riemann sum:
    x * mean_{{k=1..8}} grad(x * k/8) for `target`
  * `gbp64`, `deconv64` (only archs whose only non-linearities are `nn.ReLU` modules):
    guided backprop (grad_in = relu(grad_out) * (input > 0)) and deconvnet
    (grad_in = relu(grad_out)) at every ReLU, via backward hooks on the modules.
    The script checks that the legacy graph has exactly one `Relu` per nn.ReLU call
    and no other activation op.

Gradient conventions are PyTorch's: relu'(0) = 0, and MaxPool sends the gradient to
the first maximum of a window (row-major). Vanilla gradients and GBP do not depend on
MaxPool ties (tied maxima after a ReLU are zeros whose ReLU gradient is 0), but
`deconv64` does: deconvnet passes gradient through ReLUs with non-positive input, so
in vgg, resnet, squeezenet1_1 and shufflenet_v2 (ReLU followed by MaxPool) an
implementation must break ties among all-zero pooling windows the same way (for
vgg, taking the last maximum instead changes `deconv64` by 32% relative L2 error).

All models: BatchNorm running stats calibrated on 20 random N(0,1) batches of 16
(cumulative average), then `eval()`; logits checked non-degenerate (std over classes
> 1e-3, otherwise the last layer is rescaled to std ~1). Dropout / stochastic depth
are inactive (eval mode).

## Models

"""

README_TAIL = """
## Licence

All weights are random (seeded) and were generated here; no pretrained or
third-party weights are used. The architectures are built from torchvision
classes (torchvision is BSD-3-Clause licensed, (c) Soumith Chintala and
contributors); the fixture files are produced by this repository's script.
"""


def ops_per_file() -> list[str]:
    """Markdown list of the distinct op types of every fixture .onnx file."""
    rows = []
    for name in sorted(os.listdir(FIXTURES)):
        if name.endswith(".onnx"):
            counter = collections.Counter()
            graph_op_types(onnx.load(os.path.join(FIXTURES, name)).graph, counter)
            rows.append(f"* `{name}`: {', '.join(sorted(counter))}")
    return rows


def write_readme(census: dict[str, collections.Counter], total_kb: float) -> None:
    """Write models/README.md: how to regenerate, models, summary, op census, licence."""
    import onnxscript
    head = README_HEAD.format(torch=torch.__version__, tv=torchvision.__version__,
                              onnx=onnx.__version__, oscript=onnxscript.__version__,
                              ort=ort.__version__, np=np.__version__)
    models = [f"* **{a.name}** (seed {a.seed}): {a.what}" for a in ARCHS]
    lines = [head.rstrip("\n"), "", *models, "", "## Summary", "",
             f"Total size of `fixtures/`: {total_kb / 1024:.2f} MB. "
             "`opset/IR` is the default-domain opset and the (capped) ir_version.", "",
             *summary_table(), "", "## Op types in the exported graphs", "",
             "Node counts summed over all files of each exporter (the legacy column "
             "includes `resnet_fixedbatch_legacy.onnx`), including function bodies "
             "and subgraphs.", "", *census_table(census), "",
             "Distinct op types per file:", "", *ops_per_file(), README_TAIL]
    with open(README, "w") as f:
        f.write("\n".join(lines))


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def make_arch(arch: Arch) -> None:
    """Build, reference, export and verify one architecture."""
    model = prepare_model(arch)
    refs = compute_references(arch, model)
    np.savez_compressed(os.path.join(FIXTURES, f"{arch.name}.npz"), **refs)
    arch.results["torch32_err"] = refs["torch32_err"]
    export_all(arch, model, refs)
    check_relu_only(arch)
    if arch.name == "resnet":
        path = os.path.join(FIXTURES, "resnet_fixedbatch_legacy.onnx")
        export_legacy(model, path, dynamic=False)
        cap_ir_version(path)
        check_onnx(path, model, refs, batches=(2,))
    r = arch.results
    print(f"{arch.name:20s} params={r['params']:7d} legacy={r['legacy_ok'][:40]} "
          f"dynamo={r['dynamo_ok'][:40]} torch32_err={refs['torch32_err']}", flush=True)


def main() -> None:
    """Generate every fixture, then the README summary."""
    os.makedirs(FIXTURES, exist_ok=True)
    torch.set_num_threads(1)  # fixed reduction order for reproducible references
    for arch in ARCHS:
        make_arch(arch)
    census = op_census()
    total_kb = sum(os.path.getsize(os.path.join(FIXTURES, f))
                   for f in os.listdir(FIXTURES)) / 1024
    print("\n".join(summary_table()))
    print(f"total {total_kb / 1024:.2f} MB")
    write_readme(census, total_kb)


if __name__ == "__main__":
    main()
