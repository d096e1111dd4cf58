"""Data-set audit: inside-box shares of |relevance| against float64 loops written from the formula."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxplain import Explainer
from onnxplain.apps.audit import audit, audit_maps, box_masks, inside_share
from onnxplain.cli import build_parser, main
from onnxplain.compiler.errors import InputError
from nets import small_cnn
from reference import make_model


def reference_share(maps, box):
    """sum over channels and box pixels of |R| / sum of |R|, by explicit loops (box already clipped)."""
    r0, c0, r1, c1 = box
    inside = total = 0.0
    for c in range(maps.shape[0]):
        for i in range(maps.shape[1]):
            for j in range(maps.shape[2]):
                v = abs(float(maps[c, i, j]))
                total += v
                if r0 <= i < r1 and c0 <= j < c1:
                    inside += v
    return inside / total


def test_shares_equal_the_formula_for_boxes_and_masks():
    r = np.random.default_rng(0)
    maps = r.standard_normal((6, 3, 7, 9)).astype(np.float32)
    boxes = np.array([[0, 0, 7, 9], [1, 2, 4, 5], [3, 3, 4, 4], [0, 5, 7, 9], [2, 0, 6, 1], [5, 6, 7, 8]])
    res = audit_maps(maps, np.zeros(6, int), boxes=boxes)
    ref = [reference_share(maps[i], boxes[i]) for i in range(6)]
    np.testing.assert_allclose(res.share, ref, rtol=1e-12)
    assert res.share[0] == pytest.approx(1.0)
    masks = r.random((6, 7, 9)) > 0.5
    res_m = audit_maps(maps, np.zeros(6, int), masks=masks)
    for i in range(6):
        a = np.abs(maps[i].astype(np.float64)).sum(0)
        assert res_m.share[i] == pytest.approx(a[masks[i]].sum() / a.sum(), rel=1e-12)
    # one mask for every image broadcasts
    corner = np.zeros((7, 9), bool)
    corner[:2, :3] = True
    np.testing.assert_allclose(inside_share(np.abs(maps.astype(np.float64)).sum(1), corner),
                               [reference_share(maps[i], [0, 0, 2, 3]) for i in range(6)], rtol=1e-12)
    # [N, H, W] maps: no channel axis
    np.testing.assert_allclose(audit_maps(maps[:, 0], np.zeros(6, int), boxes=boxes).share,
                               [reference_share(maps[i, :1], boxes[i]) for i in range(6)], rtol=1e-12)


def test_box_clipping_and_bad_boxes():
    with pytest.warns(UserWarning, match="clipped 2 box"):
        m = box_masks([[-2, 1, 5, 40], [1, 1, 3, 3], [6, -1, 9, 2]], 8, 8)
    expect = np.zeros((3, 8, 8), bool)
    expect[0, 0:5, 1:8] = expect[1, 1:3, 1:3] = expect[2, 6:8, 0:2] = True
    np.testing.assert_array_equal(m, expect)
    with pytest.raises(InputError, match="rows \\[1, 2\\]"):
        box_masks([[0, 0, 2, 2], [9, 0, 12, 3], [3, 3, 3, 5]], 8, 8)
    with pytest.raises(InputError, match="whole pixel"):
        box_masks([[0.5, 0, 2, 2]], 8, 8)
    with pytest.raises(InputError, match="\\[N, 4\\]"):
        box_masks([[0, 0, 2]], 8, 8)
    maps = np.ones((3, 1, 8, 8))
    with pytest.raises(InputError, match="one box per image"):
        audit_maps(maps, [0, 0, 0], boxes=[[0, 0, 2, 2]] * 2)
    with pytest.raises(InputError, match="select no pixel"):
        audit_maps(maps, [0, 0, 0], masks=np.zeros((3, 8, 8), bool))
    with pytest.raises(InputError, match="labels for 3"):
        audit_maps(maps, [0, 0, 0], labels=[1, 2], boxes=[[0, 0, 2, 2]] * 3)
    with pytest.raises(InputError, match="either boxes or masks"):
        audit_maps(maps, [0, 0, 0])


def test_per_class_aggregation_ranking_and_maps():
    r = np.random.default_rng(3)
    n = 12
    maps = r.standard_normal((n, 1, 5, 5))
    maps[4] = 0.0                                       # an all-zero map: NaN share, left out
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    pred = np.array([0, 1, 2, 2, 1, 0, 0, 1, 2, 0, 2, 2])
    boxes = np.array([[1, 1, 4, 4]] * n)
    with pytest.warns(UserWarning, match="all zero"):
        res = audit_maps(maps, pred, labels, boxes=boxes, regions={"corner": [0, 0, 2, 2]})
    share = [np.nan if i == 4 else reference_share(maps[i], boxes[i]) for i in range(n)]
    np.testing.assert_allclose(res.share, share, rtol=1e-12)
    rows = {row["class"]: row for row in res.class_table()}
    for k in range(3):
        vals = [share[i] for i in range(n) if labels[i] == k and i != 4]
        assert rows[k]["mean_share"] == pytest.approx(sum(vals) / len(vals), rel=1e-12)
        assert rows[k]["n"] == 4
        corner = [reference_share(maps[i], [0, 0, 2, 2]) for i in range(n) if labels[i] == k and i != 4]
        assert rows[k]["region_share"]["corner"] == pytest.approx(np.mean(corner), rel=1e-12)
        normed = [np.abs(maps[i, 0]) / np.abs(maps[i, 0]).sum() for i in range(n) if labels[i] == k and i != 4]
        np.testing.assert_allclose(res.class_maps[k], np.mean(normed, 0), rtol=1e-12)
        peak = np.unravel_index(np.argmax(np.mean(normed, 0)), (5, 5))
        assert rows[k]["peak"] == list(peak) and rows[k]["peak_in"]["corner"] == (peak[0] < 2 and peak[1] < 2)
    means = [rows[k]["mean_share"] for k in range(3)]
    assert [row["class"] for row in res.class_table()] == list(np.argsort(means, kind="stable"))
    order = sorted(range(n), key=lambda i: (np.inf if np.isnan(share[i]) else share[i], i))
    assert res.image_ranking().tolist() == order
    sep = res.separation()
    assert sep["gap_to_next"] == pytest.approx(sorted(means)[1] - sorted(means)[0])
    with pytest.warns(UserWarning, match="all zero"):
        by_pred = audit_maps(maps, pred, labels, boxes=boxes, by="predicted")
    vals = [share[i] for i in range(n) if pred[i] == 2 and i != 4]
    assert {r_["class"]: r_ for r_ in by_pred.class_table()}[2]["mean_share"] == pytest.approx(np.mean(vals))
    json.dumps(res.to_dict())


def clever_hans_model():
    """Linear [N,1,6,6] -> 2 logits: class 0 sums the centre 4x4, class 1 reads only pixel (0, 0) (x4)."""
    w = np.zeros((2, 36), np.float32)
    centre = np.zeros((6, 6), np.float32)
    centre[1:5, 1:5] = 1
    w[0] = centre.ravel()
    w[1, 0] = 4.0
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1, name="fc")]
    return make_model(nodes, [("x", ["N", 1, 6, 6])], [("logits", ["N", 2])], {"w": w})


def clever_hans_data(n=10, seed=0):
    r = np.random.default_rng(seed)
    x = np.zeros((n, 1, 6, 6), np.float32)
    labels = np.arange(n) % 2
    x[:, 0, 1:5, 1:5] = r.uniform(0.0, 0.2, (n, 4, 4))
    x[labels == 0, 0, 1:5, 1:5] += 0.5
    x[labels == 1, 0, 0, 0] = 1.0                     # the artefact of class 1
    return x, labels, np.array([[1, 1, 5, 5]] * n)


def test_audit_finds_the_artefact_of_a_clever_hans_model():
    x, labels, boxes = clever_hans_data()
    res = audit(clever_hans_model(), x, boxes, labels=labels, method="input_t_gradient",
                regions={"artefact": [0, 0, 1, 1]}, progress=False)
    # input x gradient of a linear logit = x * w: class 0 lies in the box, class 1 only on the artefact pixel
    assert res.predicted.tolist() == labels.tolist()
    np.testing.assert_allclose(res.share, np.where(labels == 0, 1.0, 0.0), atol=1e-7)
    rows = res.class_table()
    assert rows[0]["class"] == 1 and rows[0]["peak"] == [0, 0] and rows[0]["peak_in"]["artefact"]
    assert rows[0]["region_share"]["artefact"] == pytest.approx(1.0) and rows[1]["region_share"]["artefact"] == 0


def test_audit_uses_the_explainer_maps():
    model = small_cnn(seed=2)
    r = np.random.default_rng(1)
    x = r.random((7, 3, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0, 1])
    boxes = np.array([[0, 0, 4, 4], [2, 2, 8, 8], [1, 0, 7, 3], [0, 0, 8, 8], [3, 3, 5, 5], [0, 4, 8, 8], [5, 0, 8, 8]])
    res = audit(model, x, boxes, labels=labels, method="lrp.epsilon", explain="true", batch_size=3, progress=False)
    maps = Explainer(model, "lrp.epsilon").explain(x, labels)["lrp.epsilon"]
    np.testing.assert_allclose(res.share, [reference_share(maps[i], boxes[i]) for i in range(7)], rtol=1e-5)
    with pytest.raises(InputError, match="needs labels"):
        audit(model, x, boxes, explain="true")


def test_cli_writes_json_text_and_png(tmp_path, capsys):
    x, labels, boxes = clever_hans_data(8)
    onnx.save(clever_hans_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", images=x, labels=labels)
    (tmp_path / "boxes.json").write_text(json.dumps({"boxes": (boxes + [0, 0, 0, 3]).tolist()}))  # cols reach 8 > 6
    out = tmp_path / "audit.png"
    args = ["audit", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--boxes", str(tmp_path / "boxes.json"),
            "-m", "input_t_gradient", "--region", "artefact=0,0,1,1", "--worst", "3", "-o", str(out)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args) == 0
    assert any("clipped 8 box" in str(w.message) for w in caught)
    data = json.loads((tmp_path / "audit.json").read_text())
    assert data["separation"]["lowest_class"] == 1
    np.testing.assert_allclose(data["share"], np.where(labels == 0, 1.0, 0.0), atol=1e-7)
    assert "lowest class 1" in (tmp_path / "audit.txt").read_text()
    from PIL import Image
    assert Image.open(out).size[0] > 100
    capsys.readouterr()


def test_cli_bad_input_exits_2_without_output(tmp_path, capsys):
    x, labels, boxes = clever_hans_data(4)
    onnx.save(clever_hans_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", images=x, labels=labels)
    out = tmp_path / "audit.png"
    base = ["audit", str(tmp_path / "m.onnx"), "-m", "input_t_gradient", "-o", str(out)]
    np.save(tmp_path / "three.npy", boxes[:3])
    np.save(tmp_path / "outside.npy", boxes + 10)
    (tmp_path / "empty").mkdir()
    cases = [(["--data", str(tmp_path / "d.npz"), "--boxes", str(tmp_path / "three.npy")], "3 boxes for 4"),
             (["--data", str(tmp_path / "d.npz"), "--boxes", str(tmp_path / "outside.npy")], "hold no pixel"),
             (["--data", str(tmp_path / "d.npz")], "no boxes"),
             (["--data", str(tmp_path / "empty"), "--boxes", str(tmp_path / "three.npy")], "no images"),
             (["--data", str(tmp_path / "d.npz"), "--boxes", str(tmp_path / "three.npy"), "--region", "a=1,2"],
              "NAME=R0,C0,R1,C1")]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err, err
    assert not list(tmp_path.glob("audit*")) and not list(tmp_path.glob(".onnxplain-*"))


@pytest.mark.parametrize("command", ["audit", "perturb"])
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    for opt in ("--data", "--range", "--limit", "--method", "--param", "--out", "--batch-size", "--output"):
        assert opt in text
