"""The command line: compile, methods, check, explain (the bundled default), --help for every command."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxplain.cli import build_parser, main
from nets import small_cnn
from reference import Reference, rel_err, rng, run


def test_compile_writes_a_complete_model(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "e.onnx"
    onnx.save(small_cnn(), src)
    code = main(["compile", str(src), "-m", "gradient", "-m", "integrated_gradients", "--param",
                 "integrated_gradients.steps=3", "-o", str(out)])
    assert code == 0 and out.exists()
    model = onnx.load(out)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["onnxplain.methods"])["integrated_gradients"]["steps"] == 3
    x = rng().standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = Reference(small_cnn(), "logits")
    assert rel_err(run(model, {"x": x})["gradient/x"], ref.logit_gradient(x, ref.top({"x": x}))) < 1e-4


def test_methods_lists_every_method_with_parameters(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("gradient", "input_t_gradient", "integrated_gradients", "smoothgrad", "vargrad", "deconvnet",
                 "guided_backprop"):
        assert name in out
    assert "noise_scale" in out and "riemann" in out
    assert main(["methods", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| method |")


def test_check_prints_rule_table(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(small_cnn(), src)
    assert main(["check", str(src), "-m", "guided_backprop", "-m", "gradient"]) == 0
    out = capsys.readouterr().out
    line = next(li for li in out.splitlines() if li.startswith("relu1"))
    assert line.split()[1:] == ["Relu", "guided_backprop", "gradient"]


@pytest.mark.parametrize("command", [[], ["compile"], ["check"], ["methods"], ["explain"]])
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(command + ["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text
    if command in (["compile"], ["check"], ["explain"]):
        for opt in ("--method", "--param", "--output", "--input", "--no-strip-softmax"):
            assert opt in text


def _direct_scores(model_path, x):
    """Logits and probabilities straight from ONNX Runtime and NumPy (the softmax input when the model ends in one)."""
    import onnxruntime as ort

    m = onnx.load(model_path)
    last = m.graph.node[-1]
    name = m.graph.input[0].name
    out = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    out = out.astype(np.float64).reshape(len(x), -1)
    if last.op_type == "Softmax":
        return None, out
    e = np.exp(out - out.max(1, keepdims=True))
    return out, e / e.sum(1, keepdims=True)


def test_explain_bundled_default(tmp_path):
    """The README's main job: `onnxplain explain` on the bundled default model and inputs (two of them, one method
    to stay fast; the full default is the README command) writes a PNG grid, a text summary and JSON numbers that
    agree with a direct ONNX Runtime + NumPy softmax computation."""
    from onnxplain.explain_cmd import IMAGENET_MODEL, bundled_default

    out = tmp_path / "grid.png"
    proc = subprocess.run([sys.executable, "-m", "onnxplain", "explain", "--limit", "2", "-m", "gradient", "-o", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    model, _, _, _ = bundled_default()
    methods = ["gradient"]
    data = json.loads((tmp_path / "grid.json").read_text())
    assert data["methods"] == methods and len(data["samples"]) == 2
    if model == IMAGENET_MODEL:  # the photos, read by the bundled loader (independent of onnxplain.images)
        from onnxplain import bundled
        spec = bundled.preprocess_spec(model)
        x = bundled.preprocess(np.stack([bundled.load_image(f, spec) for f in bundled.photos()[:2]]), spec)
    else:
        x = np.load(model.replace("digits_mlp.onnx", "digits_samples.npz"))["images"][:2]
    logits, probs = _direct_scores(model, x)
    for i, s in enumerate(data["samples"]):
        assert s["class"] == int(probs[i].argmax())
        assert abs(s["prob"] - probs[i, s["class"]]) < 1e-4
        assert [t["class"] for t in s["top"]] == list(np.argsort(-probs[i], kind="stable")[:5])
        if logits is not None:
            assert abs(s["logit"] - logits[i, s["class"]]) < 1e-3 * max(1.0, abs(logits[i, s["class"]]))
        else:  # logit differences are log-probability ratios
            t0, t1 = s["top"][0], s["top"][1]
            assert abs((t0["logit"] - t1["logit"]) - np.log(probs[i, t0["class"]] / probs[i, t1["class"]])) < 1e-3
    from PIL import Image
    img = Image.open(out)
    assert img.size[0] > 128 * (len(methods) + 1) and img.size[1] > 2 * 128
    summary = (tmp_path / "grid.txt").read_text()
    assert all(m in summary for m in methods) and "top-k" in summary


def test_explain_rejects_missing_data(tmp_path, capsys):
    code = main(["explain", "--data", str(tmp_path / "nothing"), "-o", str(tmp_path / "g.png")])
    assert code == 2 and "no such file" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("method", ["gradient", "occlusion"])
def test_explain_rejects_wrong_shape_arrays(tmp_path, capsys, method):
    from onnxplain import bundled

    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 3, 10, 10), np.float32))
    out = tmp_path / "g.png"
    code = main(["explain", bundled.path("mnist_cnn.onnx"), str(bad), "-m", method, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "expected shape [?, 1, 28, 28]" in err and "(2, 3, 10, 10)" in err
    assert not any(tmp_path.glob("g*"))


def test_every_option_of_every_command_has_help():
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"compile", "check", "methods", "explain", "analyse", "compare-models", "sweep", "perturb", "audit",
            "fit-patterns"} <= set(sub.choices)
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in sub.choices.items()
               for a in p._actions if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []
