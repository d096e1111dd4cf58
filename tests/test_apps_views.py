"""Applications analyse, compare-methods, compare-models and sweep: the numbers in the captions equal a direct
ONNX Runtime + NumPy softmax computation, the maps equal Explainer output, the cells of the PNG show them."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from PIL import Image

from nets import small_cnn
from onnxplain import Explainer
from onnxplain.apps.analyse import analyse
from onnxplain.apps.compare import compare_methods, compare_models
from onnxplain.apps.sweep import sweep
from onnxplain.cli import main
from onnxplain.runtime import visualize as vz

LABELS = ["ant", "bee", "cat", "dog", "eel"]
SCALE, OFFSET = 2.0 / 255, -1.0  # pixels 0..255 -> [-1, 1]


def spec_meta(layout):
    return {"onnxplain.preprocess": json.dumps({"layout": layout, "channels": 3, "height": 8, "width": 8,
                                                "pixel_scale": SCALE, "pixel_offset": OFFSET}),
            "onnxplain.labels": json.dumps(LABELS), "onnxplain.input_range": json.dumps([-1.0, 1.0])}


def with_meta(model, meta):
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    return model


def relayout(model, layout):
    """The same network behind an NHWC ([N, 8, 8, 3]) or flat NF ([N, 192]) input."""
    g = model.graph
    old = g.input[0]
    if layout == "NHWC":
        pre = helper.make_node("Transpose", ["x_in"], ["x"], perm=[0, 3, 1, 2], name="to_nchw")
        shape = ["N", 8, 8, 3]
    else:
        g.initializer.append(onnx.numpy_helper.from_array(np.array([-1, 3, 8, 8], np.int64), "shape_nchw"))
        pre = helper.make_node("Reshape", ["x_in", "shape_nchw"], ["x"], name="to_nchw")
        shape = ["N", 192]
    g.node.insert(0, pre)
    g.input.remove(old)
    g.input.insert(0, helper.make_tensor_value_info("x_in", onnx.TensorProto.FLOAT, shape))
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("apps")
    paths = {}
    for layout in ("NCHW", "NHWC", "NF"):
        m = small_cnn(seed=3)  # ends in Softmax: the logit is its input
        if layout != "NCHW":
            m = relayout(m, layout)
        paths[layout] = str(d / f"cnn_{layout}.onnx")
        onnx.save(with_meta(m, spec_meta(layout)), paths[layout])
    paths["logits"] = str(d / "cnn_logits.onnx")  # the same weights without the Softmax: the reference logits
    onnx.save(small_cnn(seed=3, softmax=False), paths["logits"])
    pix = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    for i, p in enumerate(pix):
        Image.fromarray(p).save(d / f"img{i}.png")
    paths["images"] = [str(d / f"img{i}.png") for i in range(3)]
    paths["pixels"] = pix
    paths["dir"] = d
    return paths


def direct(files, x):
    """Logits from the Softmax-free copy, probabilities from the model's own Softmax output and from NumPy."""
    logits = ort.InferenceSession(files["logits"]).run(None, {"x": x})[0].astype(np.float64)
    probs = ort.InferenceSession(files["NCHW"]).run(None, {"x": x})[0].astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    assert np.allclose(probs, e / e.sum(1, keepdims=True), atol=1e-6)
    return logits, e / e.sum(1, keepdims=True)


def nchw(files):
    return (files["pixels"].astype(np.float64) * SCALE + OFFSET).transpose(0, 3, 1, 2).astype(np.float32)


def cell_pixels(png, box):
    img = np.asarray(Image.open(png).convert("RGB"))
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


def tile(rgb, size):
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.NEAREST))


def test_analyse_top5_numbers_maps_and_cells(files, tmp_path):
    x = nchw(files)[:1]
    out = str(tmp_path / "a.png")
    res = analyse(files["NCHW"], x, ["gradient", "lrp.epsilon"], out=out, cell_size=32, label=2)
    logits, probs = direct(files, x)
    order = np.argsort(-logits[0])
    assert [r["class"] for r in res["rows"]] == order.tolist()
    assert [r["label"] for r in res["rows"]] == [LABELS[c] for c in order]
    for r in res["rows"]:
        assert r["logit"] == pytest.approx(logits[0, r["class"]], rel=1e-5, abs=1e-5)
        assert r["prob"] == pytest.approx(probs[0, r["class"]], rel=1e-5, abs=1e-7)
    exp = Explainer(files["NCHW"], ["gradient", "lrp.epsilon"])
    want = exp.explain(np.repeat(x, 5, 0), order.astype(np.int64))
    for m in ("gradient", "lrp.epsilon"):
        assert np.allclose(res["maps"][m], want[m], rtol=1e-5, atol=1e-7)
    w, h = Image.open(out).size
    assert w >= 3 * 32 and h >= 5 * 32
    for k in range(5):
        assert np.array_equal(cell_pixels(out, res["boxes"][k][0]), tile(vz.input_image(x[0], -1.0, 1.0), 32))
        assert np.array_equal(cell_pixels(out, res["boxes"][k][2]), tile(vz.heatmap(want["lrp.epsilon"][k]), 32))


def test_analyse_given_targets_and_out_of_range(files):
    x = nchw(files)[1]
    res = analyse(files["NCHW"], x, ["gradient"], targets=[4, 0])
    assert [r["class"] for r in res["rows"]] == [4, 0]
    from onnxplain.compiler.errors import InputError
    with pytest.raises(InputError, match="out of range"):
        analyse(files["NCHW"], x, ["gradient"], targets=[7])


def test_compare_methods_numbers_targets_and_stats(files, tmp_path):
    x = nchw(files)
    out = str(tmp_path / "m.png")
    methods = ["gradient", "integrated_gradients", "lrp.epsilon_gamma_box"]
    res = compare_methods(files["NCHW"], x, methods, targets=[1, -1, 3], params={"steps": 8}, out=out, cell_size=24)
    logits, probs = direct(files, x)
    top = logits.argmax(1)
    tgt = np.array([1, top[1], 3])
    for i, s in enumerate(res["samples"]):
        assert s["class"] == top[i] and s["label"] == LABELS[top[i]]
        assert s["prob"] == pytest.approx(probs[i, top[i]], rel=1e-5)
        assert s["target"] == tgt[i] and s["target_logit"] == pytest.approx(logits[i, tgt[i]], rel=1e-5, abs=1e-5)
        assert [t["class"] for t in s["top"]] == np.argsort(-logits[i])[:5].tolist()
    exp = Explainer(files["NCHW"], {"gradient": {}, "integrated_gradients": {"steps": 8, "low": -1.0, "high": 1.0},
                                    "lrp.epsilon_gamma_box": {"low": -1.0, "high": 1.0}})
    want = exp.explain(x, tgt)
    for m in methods:
        assert np.allclose(res["maps"][m], want[m], rtol=1e-5, atol=1e-7)
        for i in range(3):
            assert res["samples"][i]["stats"][m]["sum"] == pytest.approx(float(want[m][i].astype(np.float64).sum()),
                                                                          rel=1e-4, abs=1e-6)
    for i in range(3):
        cell_ig = cell_pixels(out, res["boxes"][i][2])
        assert np.array_equal(cell_ig, tile(vz.heatmap(want["integrated_gradients"][i]), 24))


def test_compare_models_across_layouts_reads_images_per_spec(files, tmp_path):
    out = str(tmp_path / "c.png")
    res = compare_models([files["NCHW"], files["NHWC"], files["NF"]], files["images"][:2], ["gradient"],
                         out=out, cell_size=16)
    x = nchw(files)[:2]
    logits, probs = direct(files, x)
    g = Explainer(files["NCHW"], "gradient").explain(x)["gradient"]
    layouts = {"NCHW": lambda a: a, "NHWC": lambda a: a.transpose(0, 3, 1, 2), "NF": lambda a: a.reshape(-1, 3, 8, 8)}
    for model, layout in zip(res["models"], ("NCHW", "NHWC", "NF")):
        for i, s in enumerate(model["samples"]):
            assert s["class"] == logits[i].argmax()
            assert s["prob"] == pytest.approx(probs[i].max(), rel=1e-5)
            assert s["logit"] == pytest.approx(logits[i].max(), rel=1e-5, abs=1e-5)
        assert np.allclose(layouts[layout](model["maps"]["gradient"]), g, rtol=1e-5, atol=1e-7)
    # rows: (image 0: NCHW, NHWC, NF), (image 1: ...); every model's heatmap is the same picture
    assert len(res["boxes"]) == 6
    for r in range(6):
        assert np.array_equal(cell_pixels(out, res["boxes"][r][1]), tile(vz.heatmap(g[r // 3]), 16))


def test_compare_models_from_a_pixel_array(files):
    np.savez(files["dir"] / "pix.npz", images=files["pixels"])
    res = compare_models([files["NCHW"], files["NF"]], str(files["dir"] / "pix.npz"), ["gradient"], index=[2])
    g = Explainer(files["NCHW"], "gradient").explain(nchw(files)[2:])["gradient"]
    assert np.allclose(res["models"][1]["maps"]["gradient"].reshape(1, 3, 8, 8), g, rtol=1e-5, atol=1e-7)


def test_sweep_maps_equal_explainer_with_the_same_parameters(files, tmp_path):
    x = nchw(files)[:1]
    out = str(tmp_path / "s.png")
    res = sweep(files["NCHW"], x, references=["black", "white"], noise_scales=[0.1, 0.5], postprocess=["abs"],
                steps=4, samples=3, out=out, cell_size=16)
    assert [(s["row"], s["caption"]) for s in res["settings"]] == [
        ("integrated_gradients", "reference=black"), ("integrated_gradients", "reference=white"),
        ("smoothgrad abs", "noise=0.1"), ("smoothgrad abs", "noise=0.5")]
    for s, m in zip(res["settings"], res["maps"]):
        p = dict(s["params"])
        if s["method"] == "integrated_gradients":
            p.update(low=-1.0, high=1.0)
        want = Explainer(files["NCHW"], {s["method"]: p}).explain(x)[s["method"]]
        assert np.allclose(m, want, rtol=1e-5, atol=1e-7)
    # black and white references differ: IG sums to f(x) - f(reference) (completeness, up to the Riemann error)
    assert not np.allclose(res["maps"][0], res["maps"][1])
    logits, probs = direct(files, x)
    assert res["samples"][0]["prob"] == pytest.approx(probs[0].max(), rel=1e-5)
    assert np.array_equal(cell_pixels(out, res["boxes"][1][2]), tile(vz.graymap(res["maps"][3][0], reduce="sum"), 16))


def test_cli_commands_write_figures_and_json(files, tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main(["analyse", files["NCHW"], files["images"][0], "-m", "gradient", "--target", "0,3",
                 "-o", str(out), "--cell", "16"]) == 0
    data = json.loads((tmp_path / "a.json").read_text())
    logits, probs = direct(files, nchw(files)[:1])
    assert [r["class"] for r in data["rows"]] == [0, 3]
    assert data["rows"][1]["prob"] == pytest.approx(probs[0, 3], rel=1e-5)
    assert main(["compare-models", files["NCHW"], files["NF"], "--data", files["images"][1], "-m", "gradient",
                 "-o", str(tmp_path / "c.png")]) == 0
    data = json.loads((tmp_path / "c.json").read_text())
    assert [m["samples"][0]["class"] for m in data["models"]] == [int(direct(files, nchw(files)[1:2])[0].argmax())] * 2
    assert main(["sweep", files["NCHW"], files["images"][2], "--references", "gray", "--noise", "0.2",
                 "--postprocess", "square", "--steps", "2", "--samples", "2", "-o", str(tmp_path / "s.png")]) == 0
    assert len(json.loads((tmp_path / "s.json").read_text())["settings"]) == 2
    capsys.readouterr()
    assert main(["compare-models", files["NCHW"], files["NF"], "-o", str(tmp_path / "x.png")]) == 2
    assert "--data" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert main(["explain", files["NCHW"], files["images"][0], "--health", "-o", str(tmp_path / "h.png")]) == 2
    assert "onnxplain compile --health" in capsys.readouterr().err
    assert main(["analyse", files["NF"], files["images"][0], "--input", "x", "-o", str(tmp_path / "h.png")]) == 2
    assert "x_in" in capsys.readouterr().err and not (tmp_path / "h.png").exists()
    out = tmp_path / "e.png"
    assert main(["explain", files["NF"], files["images"][0], "--input", "x_in", "-m", "gradient", "-o", str(out)]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["samples"][0]["class"] == int(
        direct(files, nchw(files)[:1])[0].argmax())


@pytest.mark.parametrize("command", ["analyse", "compare-models", "sweep"])
def test_help_explains_the_options(command, capsys):
    from onnxplain.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0 and "--out" in text and "--range" in text and "--cell" in text
    if command != "sweep":
        assert "--method" in text and "--param" in text and "--view" in text
    else:
        assert "--references" in text and "--noise" in text and "--postprocess" in text


def test_first_float_output_is_explained_when_the_first_output_is_a_label(files, tmp_path):
    """As a scikit-learn classifier exported by skl2onnx: outputs (int64 label, float probabilities)."""
    m = onnx.load(files["NCHW"])
    m.graph.node.append(helper.make_node("ArgMax", ["prob"], ["label"], axis=1, keepdims=0, name="argmax"))
    m.graph.output.insert(0, helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N"]))
    path = str(tmp_path / "labelled.onnx")
    onnx.save(m, path)
    x = nchw(files)
    res = compare_methods(path, x, ["gradient"])
    logits, probs = direct(files, x)
    for i, s in enumerate(res["samples"]):
        assert s["class"] == logits[i].argmax() and s["logit"] == pytest.approx(logits[i].max(), rel=1e-5, abs=1e-5)
    want = Explainer(files["NCHW"], "gradient").explain(x)["gradient"]
    assert np.allclose(res["maps"]["gradient"], want, rtol=1e-5, atol=1e-7)
