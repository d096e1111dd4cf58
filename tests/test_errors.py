"""Bad input: one clear message per problem, a non-zero exit code, and never a partial output file."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxplain
from onnxplain.cli import main
from nets import small_cnn
from reference import make_model, rng


@pytest.fixture()
def cnn_path(tmp_path):
    p = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), p)
    return p


def _cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _unsupported_model():
    """Two nodes without a backward mapping on the explained path (Det and Hardmax)."""
    w = rng().standard_normal((4, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("Reshape", ["a", "shp"], ["sq"], name="to_square"),
             helper.make_node("Det", ["sq"], ["d"], name="the_det"),
             helper.make_node("Hardmax", ["a"], ["h"], name="the_hardmax"),
             helper.make_node("Unsqueeze", ["d", "one"], ["d1"], name="unsq"),
             helper.make_node("Mul", ["h", "d1"], ["y"], name="mul")]
    return make_model(nodes, [("x", ["N", 4])], [("y", ["N", 4])],
                      {"w": w, "shp": np.array([-1, 2, 2], np.int64), "one": np.array([1], np.int64)})


def test_not_onnx(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a model")
    out = tmp_path / "out.onnx"
    code, _, err = _cli(["compile", bad, "-m", "gradient", "-o", out], capsys)
    assert code == 2 and "bad.onnx" in err and "not a readable ONNX model" in err
    assert not out.exists()


def test_truncated_file(tmp_path, cnn_path, capsys):
    data = cnn_path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.onnx"
    code, _, err = _cli(["compile", cut, "-m", "gradient", "-o", out], capsys)
    assert code == 2 and "cut.onnx" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".onnxplain")] == []


def test_missing_external_data(tmp_path, capsys):
    model = small_cnn()
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    os.remove(tmp_path / "ext.data")
    code, _, err = _cli(["compile", path, "-m", "gradient", "-o", tmp_path / "o.onnx"], capsys)
    assert code == 2 and "ext.data" in err and "missing" in err
    assert not (tmp_path / "o.onnx").exists()


def test_external_data_is_read(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(small_cnn(), path, save_as_external_data=True, location="ext.data", size_threshold=0)
    compiled = onnxplain.compile(str(path), "gradient")
    assert any(o.name == "gradient/x" for o in compiled.graph.output)


def test_every_unsupported_node_is_listed(tmp_path, capsys):
    path = tmp_path / "u.onnx"
    onnx.save(_unsupported_model(), path)
    with pytest.raises(onnxplain.CompileError) as info:
        onnxplain.compile(str(path), "gradient")
    problems = info.value.problems
    assert {(p.node, p.op_type) for p in problems} == {("the_det", "Det"), ("the_hardmax", "Hardmax")}
    assert all("u.onnx" in str(p) and p.fix for p in problems)
    code, out, err = _cli(["check", path], capsys)
    assert code == 2 and "the_det" in err and "the_hardmax" in err and "NO RULE" not in out
    assert "mm" in out and "MatMul" in out
    code, _, err = _cli(["compile", path, "-m", "gradient", "-o", tmp_path / "o.onnx"], capsys)
    assert code == 2 and "2 problems" in err and not (tmp_path / "o.onnx").exists()


def test_unknown_method_and_parameters_all_reported(cnn_path, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    code, _, err = _cli(["compile", cnn_path, "-m", "gradient", "-m", "lrp.nonsense", "--param", "steps=3",
                         "--param", "integrated_gradients.steps=4", "-o", out], capsys)
    assert code == 2
    assert "unknown method 'lrp.nonsense'" in err
    assert "no requested method has a parameter 'steps'" in err
    assert "not requested" in err
    assert not out.exists()
    with pytest.raises(onnxplain.CompileError, match="must be one of right, left, middle, trapezoid"):
        onnxplain.compile(small_cnn(), "integrated_gradients", riemann="simpson")
    with pytest.raises(onnxplain.CompileError, match="method 'gradient' has no parameter 'steps'"):
        onnxplain.compile(small_cnn(), {"gradient": {"steps": 3}})


def test_param_syntax_error(cnn_path, tmp_path, capsys):
    code, _, err = _cli(["compile", cnn_path, "-m", "gradient", "--param", "steps", "-o", tmp_path / "o"], capsys)
    assert code == 2 and "NAME=VALUE" in err


def test_unknown_output_and_input(cnn_path):
    with pytest.raises(onnxplain.CompileError, match="has no output 'nope'"):
        onnxplain.compile(str(cnn_path), "gradient", output="nope")
    with pytest.raises(onnxplain.CompileError, match="no float input named 'y'"):
        onnxplain.compile(str(cnn_path), "gradient", inputs=["y"])


@pytest.fixture(scope="module")
def explainer():
    return onnxplain.Explainer(small_cnn(), "gradient")


def test_target_out_of_range(explainer):
    x = rng().standard_normal((2, 3, 8, 8)).astype(np.float32)
    with pytest.raises(onnxplain.InputError, match=r"target \[5\] out of range.*5 entries"):
        explainer.explain(x, target=[1, 5])
    with pytest.raises(onnxplain.InputError, match="one entry per sample"):
        explainer.explain(x, target=[1, 2, 3])


def test_wrong_shape_and_dtype(explainer):
    with pytest.raises(onnxplain.InputError, match=r"expected shape \[N, 3, 8, 8\], got \(2, 3, 9, 8\)"):
        explainer.explain(np.zeros((2, 3, 9, 8), np.float32))
    with pytest.raises(onnxplain.InputError, match="expected 4 dimensions"):
        explainer.explain(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(onnxplain.InputError, match="numeric array"):
        explainer.explain(np.full((1, 3, 8, 8), "a"))


def test_nan_input_is_reported(explainer):
    x = rng().standard_normal((3, 3, 8, 8)).astype(np.float32)
    x[1, 0, 2, 2] = np.nan
    with pytest.raises(onnxplain.InputError, match=r"NaN or Inf \(samples \[1\]\)"):
        explainer.explain(x)


def test_explainer_matches_direct_run_and_batches(explainer):
    x = rng(8).standard_normal((5, 3, 8, 8)).astype(np.float32)
    small = onnxplain.Explainer(small_cnn(), "gradient", batch_size=2, progress=False)
    a = small.explain(x, target=3)["gradient"]
    b = explainer.explain(x, target=np.full(5, 3))["gradient"]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
