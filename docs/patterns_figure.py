"""Draw ``docs/patterns-<model>.png``: inputs, the PatternNet signal (projected into the input range),
PatternAttribution, the gradient and LRP (heat maps), with the bundled patterns.

    python docs/patterns_figure.py digits      # 8 held-out digits of the bundled MLP
    python docs/patterns_figure.py mnist       # 8 bundled MNIST test digits, the bundled CNN
"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "onnxplain", "data")


def main(which: str) -> None:
    import onnxplain
    from onnxplain.runtime.visualize import grid, heatmap, input_image, signal_image

    if which == "digits":
        model = os.path.join(DATA, "digits_mlp.onnx")
        x = np.load(os.path.join(DATA, "digits_samples.npz"))["images"][:8].astype(np.float32)
    else:
        model = os.path.join(DATA, "mnist_cnn.onnx")
        with np.load(os.path.join(DATA, "mnist_test.npz")) as z:
            x = z["images" if "images" in z.files else z.files[0]][:8]
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        x = x[:, None] if x.ndim == 3 else x
    patterns = os.path.join(DATA, os.path.basename(model).replace(".onnx", "_patterns.npz"))
    methods = ["pattern.net", "pattern.attribution", "gradient", "lrp.epsilon_plus_flat"]
    exp = onnxplain.Explainer(model, methods, patterns=patterns, progress=False)
    maps = exp.explain(x)
    rows = []
    for i in range(len(x)):
        row = [input_image(x[i], 0.0, 1.0), signal_image(maps["pattern.net"][i], 0.0, 1.0)]
        row += [heatmap(maps[m][i]) for m in methods[1:]]
        rows.append(row)
    out = os.path.join(HERE, f"patterns-{which}.png")
    grid(rows, out, col_titles=["input", "PatternNet (signal)", "PatternAttribution", "gradient",
                                "LRP eps+flat"], cell=96)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "digits")
