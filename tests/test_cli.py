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


def test_explain_bundled_default(tmp_path):
    """The README's main job: `onnxplain explain` with no arguments writes a PNG grid and a summary."""
    out = tmp_path / "grid.png"
    proc = subprocess.run([sys.executable, "-m", "onnxplain", "explain", "-o", str(out)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from PIL import Image
    img = Image.open(out)
    assert img.size[0] > 600 and img.size[1] > 600
    summary = (tmp_path / "grid.txt").read_text()
    assert "integrated_gradients" in summary
    rows = [li.split() for li in summary.splitlines() if li.strip()[:1].isdigit()]
    assert len(rows) == 10 and sum(int(r[0]) == int(r[1]) for r in rows) >= 9  # digit i predicted as i


def test_explain_rejects_missing_data(tmp_path, capsys):
    code = main(["explain", "--data", str(tmp_path / "nothing"), "-o", str(tmp_path / "g.png")])
    assert code == 2 and "no such file" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()
