"""onnxplain.images: specs (metadata or guessed), layouts, mode conversion, resizing, arrays, every bad file."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxplain.compiler.errors import InputError
from onnxplain.images import (Preprocess, find_images, labels, load_array, load_images, load_inputs, load_pixels,
                              read_spec)


def model_with(shape, meta=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in (meta or {}).items():
        m.metadata_props.add(key=k, value=json.dumps(v))
    return m


def save(path, arr, mode=None):
    Image.fromarray(arr, mode).save(path)
    return str(path)


def test_spec_from_metadata_per_channel_and_inverse():
    spec = read_spec(model_with(["N", 3, 4, 5], {"onnxplain.preprocess": {
        "layout": "NCHW", "channels": 3, "height": 4, "width": 5, "pixel_scale": [0.1, 0.2, 0.3],
        "pixel_offset": [-1, 0, 1]}}))
    pix = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
    x = spec.from_pixels(pix)
    assert x.shape == (2, 3, 4, 5) and x.dtype == np.float32
    for c, (s, o) in enumerate(zip([0.1, 0.2, 0.3], [-1, 0, 1])):
        assert np.allclose(x[:, c], pix[..., c] * s + o, atol=1e-5)
    assert np.allclose(spec.low, [-1, 0, 1]) and np.allclose(spec.high, [24.5, 51, 77.5])
    assert np.allclose(spec.to_pixels(x), pix, atol=1e-3)
    assert np.array_equal(spec.to_chw(x[1]), x[1])


@pytest.mark.parametrize("shape,layout,chw", [(["N", 1, 6, 7], "NCHW", (1, 6, 7)), (["N", 6, 7, 3], "NHWC", (3, 6, 7)),
                                              (["N", 6, 7], "NHW", (1, 6, 7)), (["N", 36], "NF", (1, 6, 6))])
def test_spec_guessed_from_shape_and_range(shape, layout, chw):
    spec = read_spec(model_with(shape), shape, (-1.0, 1.0))
    assert spec.layout == layout and (spec.channels, spec.height, spec.width) == chw and spec.source == "--range"
    c, h, w = chw
    pix = np.random.default_rng(1).integers(0, 256, (2, h, w, c)).astype(np.uint8)
    x = spec.from_pixels(pix)
    ref = pix.astype(np.float64) * (2 / 255) - 1  # [N, H, W, C]
    expect = {"NCHW": ref.transpose(0, 3, 1, 2), "NHWC": ref, "NHW": ref[..., 0],
              "NF": ref.transpose(0, 3, 1, 2).reshape(2, -1)}[layout]
    assert x.shape == expect.shape and np.allclose(x, expect, atol=1e-6)
    assert np.allclose(spec.to_chw(x[0]), ref[0].transpose(2, 0, 1), atol=1e-6)


def test_impossible_layout_and_malformed_spec():
    with pytest.raises(InputError, match="cannot read images"):
        read_spec(model_with(["N", 5, 5, 5]), ["N", 5, 5, 5])
    with pytest.raises(InputError, match="cannot read images"):
        read_spec(model_with(["N", 3, "H", "W"]), ["N", 3, "H", "W"])
    bad = {"onnxplain.preprocess": {"layout": "NCWH", "channels": 2, "height": 4, "width": 4, "pixel_scale": 0,
                                    "pixel_offset": 0}}
    with pytest.raises(InputError) as info:
        read_spec(model_with(["N", 2, 4, 4], bad))
    msg = str(info.value)
    assert "NCWH" in msg and "channels=2" in msg and "pixel_scale must not be 0" in msg


def test_labels_from_metadata_or_numbers():
    assert labels(model_with(["N", 3], {"onnxplain.labels": ["cat", "dog"]})) == ["cat", "dog"]
    assert labels(model_with(["N", 3]), 3) == ["0", "1", "2"]


def test_mode_conversion_resize_and_center_crop_with_warnings(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (20, 40, 3)).astype(np.uint8)
    f = save(tmp_path / "a.png", rgb)
    warnings = []
    gray_spec = Preprocess("NCHW", 1, 10, 10, (1 / 255,), (0.0,))
    pix = load_pixels([f], gray_spec, warnings.append)
    # reference: PIL's own gray conversion, scale by 1/2 to 20x10 (covers 10x10), crop the middle 10 columns
    ref = np.asarray(Image.fromarray(rgb).convert("L").resize((20, 10), Image.BILINEAR))[:, 5:15]
    assert pix.shape == (1, 10, 10, 1) and np.array_equal(pix[0, ..., 0], ref)
    assert any("gray" in w for w in warnings) and any("resized" in w and "40x20" in w for w in warnings)
    g = save(tmp_path / "g.png", rgb[..., 0], "L")
    warnings.clear()
    pix = load_pixels([g], Preprocess("NCHW", 3, 20, 40, (1.0,), (0.0,)), warnings.append)
    assert pix.shape == (1, 20, 40, 3) and all(np.array_equal(pix[0, ..., c], rgb[..., 0]) for c in range(3))
    assert warnings == []  # same size, gray -> RGB is lossless


def test_folder_and_files_in_sorted_order(tmp_path):
    a = np.full((8, 8), 10, np.uint8)
    b = np.full((8, 8), 200, np.uint8)
    save(tmp_path / "b.png", b, "L")
    save(tmp_path / "a.bmp", a, "L")
    (tmp_path / "notes.txt").write_text("not an image")
    spec = Preprocess("NCHW", 1, 8, 8, (2.0,), (-3.0,))
    x, names = load_images(str(tmp_path), spec)
    assert [n.rsplit("/", 1)[-1] for n in names] == ["a.bmp", "b.png"]
    assert np.allclose(x[:, 0, 0, 0], [10 * 2 - 3, 200 * 2 - 3])


def test_every_bad_file_is_listed(tmp_path):
    good = save(tmp_path / "ok.png", np.zeros((4, 4), np.uint8), "L")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError) as info:
        load_images([good, str(tmp_path / "broken.png"), str(tmp_path / "empty.jpg")],
                    Preprocess("NCHW", 1, 4, 4))
    msg = str(info.value)
    assert "2 unreadable" in msg and "broken.png" in msg and "empty.jpg" in msg and "ok.png" not in msg
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (tmp_path / "x.txt").write_text("text")
    with pytest.raises(InputError) as info:
        find_images([str(empty), str(tmp_path / "missing.png"), str(tmp_path / "x.txt")])
    msg = str(info.value)
    assert "folder holds no images" in msg and "no such file" in msg and "not an image file" in msg


def test_arrays_float_as_is_and_uint8_pixels_through_the_spec(tmp_path):
    x = np.random.default_rng(3).standard_normal((3, 1, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    spec = Preprocess("NCHW", 1, 4, 4, (0.5,), (1.0,))
    got, names = load_inputs(str(tmp_path / "x.npy"), spec)
    assert np.array_equal(got, x) and names == ["x.npy[0]", "x.npy[1]", "x.npy[2]"]
    pix = np.random.default_rng(4).integers(0, 256, (2, 4, 4)).astype(np.uint8)
    np.savez(tmp_path / "p.npz", images=pix, labels=np.array([1, 2]))
    got = load_array(str(tmp_path / "p.npz"), spec)
    assert np.allclose(got[:, 0], pix * 0.5 + 1.0)
    with pytest.raises(InputError, match="fit neither"):
        load_array(str(tmp_path / "p.npz"), Preprocess("NCHW", 1, 5, 5))
    with pytest.raises(InputError, match="not both"):
        load_inputs([str(tmp_path / "x.npy"), str(tmp_path)], spec)


def test_cli_explain_lists_bad_images_and_writes_nothing(tmp_path, capsys):
    from onnxplain.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(model_with(["N", 1, 4, 4]), src)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"garbage")
    (tmp_path / "imgs" / "b.jpg").write_bytes(b"garbage")
    code = main(["explain", str(src), str(tmp_path / "imgs"), "-m", "gradient", "-o", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 2 and "a.png" in err and "b.jpg" in err
    assert not (tmp_path / "g.png").exists()
