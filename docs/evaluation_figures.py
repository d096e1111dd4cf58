"""Make the figures and numbers of docs/evaluation.md (perturbation analysis and data-set audit).

Run from the repository root (CPU; about 10-15 minutes on a contended 2-core machine)::

    python docs/evaluation_figures.py mnist          # 200 digits, 8 methods + random -> docs/perturbation-mnist.png
    python docs/evaluation_figures.py efficientnet   # 20 views of the 5 bundled photos -> docs/perturbation-efficientnet.png
    python docs/evaluation_figures.py audit          # poisoned vs clean MNIST CNN, several methods -> docs/audit-*.png

Each part prints its table (Markdown) and writes a JSON beside the figure in /tmp/onnxplain-eval/.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TMP = "/tmp/onnxplain-eval"
MNIST_METHODS = ["gradient", "input_t_gradient", "integrated_gradients", "guided_backprop", "lrp.epsilon_plus_flat",
                 "lrp.epsilon_gamma_box", "occlusion:patch=4", "lime:segmentation=grid:segments=49"]
PHOTO_METHODS = ["gradient", "input_t_gradient", "integrated_gradients:steps=32", "guided_backprop",
                 "lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box"]


def _save(res, name: str, title: str) -> None:
    from onnxplain.apps.perturbation import plot_curves

    os.makedirs(TMP, exist_ok=True)
    plot_curves(res, os.path.join(HERE, name + ".png"), title=title)
    with open(os.path.join(TMP, name + ".json"), "w") as fh:
        json.dump(res.to_dict(), fh)
    print(res.table())


def mnist() -> None:
    from onnxplain import bundled
    from onnxplain.apps.perturbation import compare_methods

    d = bundled.mnist_test()
    x = bundled.preprocess(d["images"][:200], bundled.preprocess_spec(bundled.path("mnist_cnn")))
    res = compare_methods(bundled.path("mnist_cnn"), x, MNIST_METHODS, params={"lrp.epsilon_gamma_box.low": 0.0,
                          "lrp.epsilon_gamma_box.high": 1.0}, region=4, value_range=(0.0, 1.0), seed=0)
    _save(res, "perturbation-mnist", "MNIST CNN, 200 test digits: 4x4 regions, most relevant first, uniform noise")


def photo_views() -> np.ndarray:
    """Each bundled photo 4 times: as loaded, mirrored, a centered 80 % crop, the crop mirrored (uint8 NHWC)."""
    from PIL import Image

    from onnxplain import bundled

    spec = bundled.preprocess_spec(bundled.path("efficientnet_lite0"))
    views = []
    for f in bundled.photos():
        img = Image.fromarray(bundled.load_image(f, spec))
        w, h = img.size
        crop = img.crop((w // 10, h // 10, w - w // 10, h - h // 10)).resize((w, h), Image.BICUBIC)
        for v in (img, img.transpose(Image.FLIP_LEFT_RIGHT), crop, crop.transpose(Image.FLIP_LEFT_RIGHT)):
            views.append(np.asarray(v))
    return bundled.preprocess(np.stack(views), spec)


def efficientnet() -> None:
    from onnxplain import bundled
    from onnxplain.apps.perturbation import compare_methods

    model = bundled.path("efficientnet_lite0")
    lo, hi = bundled.input_range(model)
    res = compare_methods(model, photo_views(), PHOTO_METHODS, params={"lrp.epsilon_gamma_box.low": lo,
                          "lrp.epsilon_gamma_box.high": hi}, region=16, per_step=4, steps=25, value_range=(lo, hi),
                          seed=0, batch_size=32, explain_batch_size=4)
    _save(res, "perturbation-efficientnet", "EfficientNet-Lite0, 20 views of 5 photos: 16x16 regions, 4 per step, "
          "MoRF, noise")


def audit() -> None:
    from onnxplain import bundled
    from onnxplain.apps.audit import audit as run_audit
    from onnxplain.apps.evaluation_plots import plot_audit

    rows = []
    for model_name in ("mnist_cnn_poisoned", "mnist_cnn"):
        model = bundled.path(model_name)
        for images in ("poisoned", "clean"):
            d = bundled.mnist_test(poisoned=images == "poisoned")
            x = bundled.preprocess(d["images"], bundled.preprocess_spec(model))
            for method in ("lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "gradient", "integrated_gradients"):
                params = {"low": 0.0, "high": 1.0} if method == "lrp.epsilon_gamma_box" else {}
                t0 = time.perf_counter()
                res = run_audit(model, x, d["boxes"], labels=d["labels"], method=method, params=params,
                                regions={"artefact": list(d["artefact_box"])}, progress=False)
                sec = time.perf_counter() - t0
                rows.append(_audit_row(model_name, images, method, res, d["poison_class"], sec))
                if method == "lrp.epsilon_plus_flat" and images == "poisoned":
                    plot_audit(res, x, os.path.join(HERE, f"audit-{model_name.replace('_', '-')}.png"), worst=8)
    print("| model | images | method | class 7: share in digit box | other classes (min..max) | gap | "
          "class 7: share in artefact box | others (max) | class-7 map peak in artefact | seconds |")
    print("|" + " --- |" * 10)
    for r in rows:
        print("| " + " | ".join(str(v) for v in r) + " |")


def _audit_row(model, images, method, res, poison, sec) -> list:
    table = {r["class"]: r for r in res.class_table()}
    others = [table[k]["mean_share"] for k in table if k != poison]
    art = [table[k]["region_share"]["artefact"] for k in table if k != poison]
    sep = res.separation()
    gap = f"{min(others) - table[poison]['mean_share']:+.3f}"
    return [model, images, method, f"{table[poison]['mean_share']:.3f}", f"{min(others):.3f}..{max(others):.3f}",
            gap + (" (lowest)" if sep["lowest_class"] == poison else ""),
            f"{table[poison]['region_share']['artefact']:.3f}", f"{max(art):.3f}",
            "yes" if table[poison]["peak_in"]["artefact"] else "no", f"{sec:.1f}"]


if __name__ == "__main__":
    for part in sys.argv[1:] or ["mnist", "efficientnet", "audit"]:
        {"mnist": mnist, "efficientnet": efficientnet, "audit": audit}[part]()
