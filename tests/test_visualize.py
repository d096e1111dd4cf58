"""runtime/visualize.py against NumPy formulas written out here (colour maps, scaling, masks, projection, grids)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from onnxplain.runtime import visualize as vz


def rng(seed=0):
    return np.random.default_rng(seed)


def u8(v):
    return np.round(np.clip(v, 0, 1) * 255).astype(np.uint8)


def test_reduce_channels_sum_norm_maxabs():
    r = rng().standard_normal((3, 5, 4))
    assert np.allclose(vz.reduce_channels(r, "sum"), r[0] + r[1] + r[2])
    assert np.allclose(vz.reduce_channels(r, "norm"), np.sqrt(r[0] ** 2 + r[1] ** 2 + r[2] ** 2))
    expect = np.empty((5, 4))
    for i in range(5):
        for j in range(4):
            c = max(range(3), key=lambda k: abs(r[k, i, j]))
            expect[i, j] = r[c, i, j]
    assert np.array_equal(vz.reduce_channels(r, "maxabs"), expect)
    with pytest.raises(ValueError, match="maxabs"):
        vz.reduce_channels(r, "mean")


def test_robust_scale_is_the_percentile_of_abs():
    r = rng().standard_normal(1000)
    a = np.sort(np.abs(r))
    # numpy's linear interpolation: position p/100 * (n - 1)
    pos = 0.9 * 999
    expect = a[int(pos)] + (pos - int(pos)) * (a[int(pos) + 1] - a[int(pos)])
    assert vz.robust_scale(r, 90) == pytest.approx(expect)
    assert vz.robust_scale(r, 100) == pytest.approx(a[-1])
    assert vz.robust_scale(np.zeros(5)) == 1.0
    sparse = np.zeros(1000)
    sparse[3] = -2.0
    assert vz.robust_scale(sparse, 50) == 2.0  # percentile 0 -> falls back to the maximum


def test_heatmap_symmetric_white_red_blue_and_percentile_clipping():
    s = 4.0
    m = np.array([[0.0, s, -s, s / 2], [-s / 2, 10 * s, -10 * s, s / 4]])
    img = vz.heatmap(m, percentile=100)
    big = 10 * s  # percentile 100 -> scale = max |m|
    v = np.clip(m / big, -1, 1)
    expect = np.stack([1 - np.clip(-v, 0, 1), 1 - np.abs(v), 1 - np.clip(v, 0, 1)], -1)
    assert np.array_equal(img, u8(expect))
    # with a robust scale s: 0 white, +s red, -s blue; beyond s clipped
    q = float(np.percentile(np.abs(m), 50))
    img = vz.heatmap(m, percentile=50)
    v = np.clip(m / q, -1, 1)
    expect = np.stack([1 - np.clip(-v, 0, 1), 1 - np.abs(v), 1 - np.clip(v, 0, 1)], -1)
    assert np.array_equal(img, u8(expect))
    white, red, blue = img[0, 0], img[1, 1], img[1, 2]
    assert white.tolist() == [255, 255, 255] and red.tolist() == [255, 0, 0] and blue.tolist() == [0, 0, 255]


def test_heatmap_reduces_channels_by_sum_and_coldnhot_stops():
    r = rng().standard_normal((3, 6, 6))
    assert np.array_equal(vz.heatmap(r), vz.heatmap(r.sum(0)))
    m = np.array([[-1.0, -0.75, 0.0, 0.75, 1.0, 0.375]])
    img = vz.heatmap(m, percentile=100, cmap="coldnhot")
    assert img[0, :5].tolist() == [[0, 255, 255], [0, 0, 255], [0, 0, 0], [255, 0, 0], [255, 255, 0]]
    assert img[0, 5].tolist() == [128, 0, 0]  # half way from black to red
    with pytest.raises(ValueError, match="bwr"):
        vz.heatmap(m, cmap="viridis")


def test_graymap_is_abs_norm_over_robust_scale():
    r = rng(1).standard_normal((3, 7, 5))
    n = np.sqrt((r ** 2).sum(0))
    s = np.percentile(n, 99)
    img = vz.graymap(r, percentile=99)
    assert np.array_equal(img[..., 0], u8(n / s)) and np.array_equal(img[..., 0], img[..., 2])


def test_input_image_ranges_gray_and_rgb():
    x = rng(2).uniform(-1, 2, (3, 4, 4))
    img = vz.input_image(x, -1.0, 2.0)
    assert np.array_equal(img, u8(np.moveaxis((x + 1) / 3, 0, -1)))
    lo, hi = np.array([-1.0, 0.0, 0.5]), np.array([2.0, 1.0, 1.5])
    img = vz.input_image(x, lo, hi)
    for c in range(3):
        assert np.array_equal(img[..., c], u8((x[c] - lo[c]) / (hi[c] - lo[c])))
    g = rng(3).uniform(0, 1, (1, 4, 4))
    img = vz.input_image(g)  # min..max
    expect = u8((g[0] - g.min()) / (g.max() - g.min()))
    assert all(np.array_equal(img[..., c], expect) for c in range(3))


def test_scaled_input_multiplies_by_normalized_magnitude():
    x = rng(4).uniform(0, 1, (3, 5, 5))
    r = rng(5).standard_normal((3, 5, 5))
    w = np.clip(np.sqrt((r ** 2).sum(0)) / np.percentile(np.sqrt((r ** 2).sum(0)), 95), 0, 1)
    img = vz.scaled_input(x, r, 0.0, 1.0, percentile=95)
    base = u8(np.moveaxis(x, 0, -1)).astype(np.float64) / 255
    assert np.array_equal(img, u8(base * w[..., None]))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_masked_input_keeps_exactly_the_top_fraction(fraction):
    x = rng(6).uniform(0.2, 1, (1, 10, 10))
    r = rng(7).standard_normal((10, 10))
    r[0, :4] = 5.0  # ties
    img = vz.masked_input(x, r, fraction, 0.0, 1.0, fill=0)
    k = int(round(fraction * 100))
    kept = img[..., 0] > 0
    assert kept.sum() == k
    if 0 < k < 100:
        assert r[kept].min() >= r[~kept].max()
    assert np.array_equal(img[kept], vz.input_image(x, 0.0, 1.0)[kept])


def test_blend_is_a_convex_combination():
    x = rng(8).uniform(0, 1, (3, 6, 6))
    r = rng(9).standard_normal((3, 6, 6))
    base = vz.input_image(x, 0.0, 1.0).astype(np.float64)
    heat = vz.heatmap(r).astype(np.float64)
    for a in (0.0, 0.3, 1.0):
        assert np.array_equal(vz.blend(x, r, a, 0.0, 1.0), u8(((1 - a) * base + a * heat) / 255))
    with pytest.raises(ValueError, match="alpha"):
        vz.blend(x, r, 1.5)


def test_project_into_input_range_as_innvestigate():
    s = rng(10).standard_normal((3, 8, 8))
    p = vz.project(s, -2.0, 3.0)
    m = np.abs(s).max()
    assert np.allclose(p, -2.0 + 5.0 * (s / m + 1) / 2)
    assert p.min() >= -2.0 and p.max() <= 3.0
    assert np.isclose(p.flat[np.abs(s).argmax()], 3.0 if s.flat[np.abs(s).argmax()] > 0 else -2.0)
    lo, hi = np.array([0.0, -1.0, 10.0]), np.array([1.0, 1.0, 20.0])
    p = vz.project(s, lo, hi)
    for c in range(3):
        assert np.allclose(p[c], lo[c] + (hi[c] - lo[c]) * (s[c] / m + 1) / 2)
    assert np.allclose(vz.project(np.zeros((2, 2)), 0.0, 1.0), 0.5)
    img = vz.signal_image(s, -2.0, 3.0)
    assert np.array_equal(img, vz.input_image(vz.project(s, -2.0, 3.0), -2.0, 3.0))


def test_grid_places_every_cell_and_writes_atomically(tmp_path):
    cells = [[np.full((4, 4, 3), 10 * (i * 3 + j), np.uint8) for j in range(3)] for i in range(2)]
    cells[1][2] = vz.heatmap(rng(11).standard_normal((5, 5)))
    path = tmp_path / "g.png"
    boxes = vz.grid(cells, str(path), ["row a", "row b\nsecond line"], ["c1", "c2", "a very long column title"],
                    cell=20, captions=[["x", "y", "z"], ["p=0.5", "", "q"]], title="title")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert len(boxes) == 2 and all(len(b) == 3 for b in boxes)
    for i in range(2):
        for j in range(3):
            x0, y0, x1, y1 = boxes[i][j]
            assert (x1 - x0, y1 - y0) == (20, 20)
            expect = np.asarray(Image.fromarray(cells[i][j]).resize((20, 20), Image.NEAREST))
            assert np.array_equal(img[y0:y1, x0:x1], expect)
    right = max(b[2] for row in boxes for b in row)
    bottom = max(b[3] for row in boxes for b in row)
    assert img.shape[1] >= right and img.shape[0] >= bottom
    assert [f for f in os.listdir(tmp_path) if f != "g.png"] == []  # no temporary file left


def test_grid_failure_leaves_no_file(tmp_path):
    path = tmp_path / "g.png"
    with pytest.raises(ValueError, match="uint8"):
        vz.grid([[np.zeros((4, 4, 3), np.float32)]], str(path))
    assert os.listdir(tmp_path) == []


def test_render_dispatches_to_the_drawing_functions():
    x = rng(12).uniform(0, 1, (3, 6, 6))
    r = rng(13).standard_normal((3, 6, 6))
    assert np.array_equal(vz.render("heatmap", x, r, 0.0, 1.0), vz.heatmap(r))
    assert np.array_equal(vz.render("graymap", x, r, 0.0, 1.0), vz.graymap(r))
    assert np.array_equal(vz.render("scaled", x, r, 0.0, 1.0), vz.scaled_input(x, r, 0.0, 1.0))
    assert np.array_equal(vz.render("masked", x, r, 0.0, 1.0), vz.masked_input(x, r, low=0.0, high=1.0))
    assert np.array_equal(vz.render("blend", x, r, 0.0, 1.0), vz.blend(x, r, low=0.0, high=1.0))
    assert np.array_equal(vz.render("signal", x, r, 0.0, 1.0), vz.signal_image(r, 0.0, 1.0))
    with pytest.raises(ValueError, match="heatmap"):
        vz.render("contour", x, r)
