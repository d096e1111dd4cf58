"""docs/views.png: every picture of one map (EfficientNet-Lite0, chelsea.jpg). Run from the repository root:
``python docs/views_figure.py`` (the PNG is quantized to 256 colours for the repository)."""
from PIL import Image
from onnxplain.apps.common import open_model
from onnxplain.apps.compare import explain_batch
from onnxplain.images import load_inputs
from onnxplain.runtime import visualize as vz

info = open_model("onnxplain/data/efficientnet_lite0.onnx")
x, _ = load_inputs("onnxplain/data/images/chelsea.jpg", info.spec)
maps = explain_batch(info, x, ["lrp.epsilon_plus", "integrated_gradients"], params={"steps": 16})
lo, hi = info.spec.low, info.spec.high
rows, titles = [], []
for m in ("lrp.epsilon_plus", "integrated_gradients"):
    r = maps[m][0]
    rows.append([vz.input_image(x[0], lo, hi), vz.heatmap(r), vz.heatmap(r, cmap="coldnhot"), vz.graymap(r),
                 vz.scaled_input(x[0], r, lo, hi), vz.masked_input(x[0], r, 0.1, lo, hi), vz.blend(x[0], r, 0.6, lo, hi),
                 vz.signal_image(r, lo, hi)])
    titles.append(m.replace("_", "_\n", 1) if m.startswith("integrated") else m)
cols = ["input", "heatmap bwr", "heatmap coldnhot", "graymap (norm)", "scaled input", "masked input 10%", "blend alpha=0.6",
        "projected (signal view)"]
vz.grid(rows, "docs/views.png", titles, cols, cell=112, title="visualize: one map, every picture (EfficientNet-Lite0, class Egyptian cat)")
im = Image.open("docs/views.png").convert("RGB")
im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save("docs/views.png", optimize=True)
