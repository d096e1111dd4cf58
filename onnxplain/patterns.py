"""Fit the patterns of PatternNet / PatternAttribution (Kindermans et al. 2018) on a data set.

:func:`fit_patterns` runs the model on the data in batches with ONNX Runtime and streams, per
linear layer and output neuron ``c``, float64 sums over the samples where the neuron counts
(``z_c > 0`` for the two-component ``"relu"`` estimator, every sample for ``"linear"``)::

    n_c = sum 1,   Sx_c = sum x,   Sy_c = sum y_c,   Sxy_c = sum x y_c          (y_c = w_c^T x, no bias)

and finally ``cov_c = Sxy_c / n_c - (Sx_c / n_c)(Sy_c / n_c)`` and ``a_c = cov_c / (w_c^T cov_c)``
(see :mod:`onnxplain.rules.pattern` for the maths).  Memory holds one batch of layer inputs and
outputs plus the sums (two arrays of each weight's size per layer), never the data set's
activations.  For a Conv layer ``x`` is the receptive-field patch (im2col, built from strided
slices of the padded input, in chunks); every output position of every sample is one sample.

The model is canonicalized exactly as :func:`onnxplain.compile` does (same node names, BatchNorm
folded the same way), so the patterns match the compiled graph's weights; each pattern is stored
with its weight's fingerprint.

Example
-------
>>> from onnxplain.patterns import fit_patterns  # doctest: +SKIP
>>> pats = fit_patterns("model.onnx", x_train, estimator="relu")  # doctest: +SKIP
>>> pats.save("patterns.npz")  # doctest: +SKIP
>>> onnxplain.compile("model.onnx", "pattern.attribution", patterns="patterns.npz")  # doctest: +SKIP
"""
from __future__ import annotations

import itertools
import os
from typing import Iterable, Optional

import numpy as np
from onnx import helper

from ._version import __version__
from .compiler.errors import CompileError, InputError, Problem
from .rules.base import Ctx
from .rules.ops_linear import conv_geometry
from .rules.pattern import ESTIMATORS, FORMAT_VERSION, PATTERN_OPS, PatternLayer, PatternSet, fingerprint, \
    pattern_layer, save_patterns

__all__ = ["fit_patterns", "save_patterns", "PatternSet"]

#: patch elements processed at once per layer (float64: 32 MiB)
_CHUNK_ELEMENTS = 1 << 22


class _Stats:
    """Streaming float64 sums of one layer (see the module docstring)."""

    def __init__(self, layer: PatternLayer, geo: Optional[dict], relu: bool):
        self.layer, self.geo, self.relu = layer, geo, relu
        self.filters = layer.filters()  # [K, C]
        k, c = self.filters.shape
        self.n = np.zeros(c)
        self.sx = np.zeros((c, k))
        self.sxy = np.zeros((c, k))
        self.sy = np.zeros(c)
        self.samples = 0

    def update(self, x: np.ndarray, z: np.ndarray) -> None:
        """Add one batch: ``x`` the layer's input, ``z`` its output (bias included)."""
        self.samples += len(x)
        if self.layer.op_type == "Conv":
            per = int(np.prod(z.shape[2:])) * int(np.prod(x.shape[1:2] + self.layer.w.shape[2:]))
            step = max(1, _CHUNK_ELEMENTS // max(per, 1))
            for s in range(0, len(x), step):
                self._update_conv(x[s:s + step], z[s:s + step])
        else:
            k = x.shape[-1]
            x2, z2 = x.reshape(-1, k), z.reshape(-1, z.shape[-1])
            step = max(1, _CHUNK_ELEMENTS // max(k, 1))
            for s in range(0, len(x2), step):
                self._add(x2[s:s + step].astype(np.float64), z2[s:s + step], slice(None))

    def _add(self, xs: np.ndarray, zs: np.ndarray, rows: slice) -> None:
        """Sums for output channels ``rows`` whose filters read patch ``xs`` [S, K]; ``zs`` [S, C_rows]."""
        y = xs @ self.filters[:, rows]
        m = (zs > 0).astype(np.float64) if self.relu else np.ones_like(y)
        my = m * y
        self.n[rows] += m.sum(0)
        self.sy[rows] += my.sum(0)
        self.sx[rows] += m.T @ xs
        self.sxy[rows] += my.T @ xs

    def _update_conv(self, x: np.ndarray, z: np.ndarray) -> None:
        layer, geo = self.layer, self.geo
        cout, cin_g = layer.w.shape[:2]
        kernel = list(layer.w.shape[2:])
        nd = len(kernel)
        pads = [(0, 0), (0, 0)] + [(geo["pads"][i], geo["pads"][i + nd]) for i in range(nd)]
        xp = np.pad(x.astype(np.float64), pads)
        out = tuple(z.shape[2:])
        offsets = list(itertools.product(*[range(k) for k in kernel]))
        n = len(x)
        patches = np.empty((n,) + out + (x.shape[1], len(offsets)))  # [N, out..., C_in, prod(kernel)]
        for k, off in enumerate(offsets):
            idx = tuple(slice(o * d, o * d + s * (m - 1) + 1, s)
                        for o, d, s, m in zip(off, geo["dilations"], geo["strides"], out))
            patches[..., k] = np.moveaxis(xp[(slice(None), slice(None)) + idx], 1, -1)
        patches = patches.reshape(n * int(np.prod(out)), x.shape[1], len(offsets))
        zs = np.moveaxis(z, 1, -1).reshape(-1, cout)
        cout_g = cout // layer.group
        for g in range(layer.group):
            xs = patches[:, g * cin_g:(g + 1) * cin_g, :].reshape(len(zs), -1)
            rows = slice(g * cout_g, (g + 1) * cout_g)
            self._add(xs, zs[:, rows], rows)

    def pattern(self) -> tuple:
        """The pattern in the weight's layout, and the number of neurons that got none."""
        n = np.maximum(self.n, 1.0)[:, None]
        cov = self.sxy / n - (self.sx / n) * (self.sy[:, None] / n)
        den = np.einsum("kc,ck->c", self.filters, cov)
        ok = (self.n > 0) & (den != 0) & np.isfinite(den)
        a = np.where(ok[:, None], cov / np.where(ok, den, 1.0)[:, None], 0.0)
        return self.layer.to_layout(a.T), int((~ok).sum())


def _layers(g) -> list:
    """Every linear node with a constant weight; CompileError listing those that cannot get a pattern."""
    layers, problems = [], []
    for n in g.nodes:
        if n.op_type not in PATTERN_OPS + ("ConvTranspose",):
            continue
        if len([i for i in n.input[:2] if i and not g.is_const(i)]) != 1:
            continue  # no constant weight: not a linear layer (e.g. x @ y)
        layer, why = pattern_layer(g, n)
        if layer is None:
            problems.append(Problem(g.source, n.name, n.op_type, why, "PatternNet needs Conv/Gemm/MatMul layers"))
        else:
            layers.append(layer)
    if problems:
        raise CompileError(problems)
    if not layers:
        raise CompileError([Problem(g.source, None, None, "the model has no linear layer (Conv, Gemm, MatMul with a "
                                    "constant weight) to fit patterns for", "PatternNet needs linear layers")])
    return layers


def _mask_tensor(g, z: str) -> str:
    """The tensor whose sign gates the neuron: ``z`` after a following bias (Add/Sub of a constant) or
    inference BatchNormalization, as long as ``z`` feeds nothing else (iNNvestigate's search for the
    layer's activation)."""
    consumers = g.consumers()
    outputs = set(g.output_names())
    for _ in range(8):
        users = consumers.get(z, [])
        if len(users) != 1 or z in outputs:
            return z
        n = users[0]
        if n.op_type == "BatchNormalization" and n.input[0] == z and all(g.is_const(i) for i in n.input[1:5]):
            z = n.output[0]
            continue
        if n.op_type in ("Add", "Sub") and len(n.input) == 2:
            other = n.input[1] if n.input[0] == z else n.input[0]
            if n.op_type == "Sub" and n.input[0] != z:
                return z  # c - z flips the sign
            if other != z and g.is_const(other) and g.shape(n.output[0]) == g.shape(z):
                z = n.output[0]
                continue
        return z
    return z


def _fit_model(g, layers: list):
    """The canonical model with every layer's input and output as extra graph outputs (Identity copies)."""
    names, outs = {}, []
    for layer in layers:
        for t in (layer.x, layer.mask):
            if t in names:
                continue
            names[t] = g.fresh(f"onnxplain/fit/{t}")
            g.nodes.append(helper.make_node("Identity", [t], [names[t]], name=g.fresh(f"onnxplain/fit/{t}/Identity")))
            outs.append(helper.make_tensor_value_info(names[t], g.dtype(t), None))
    model = g.to_model(extra_outputs=outs)
    from .compiler.export import set_versions
    set_versions(model)
    return model, names


def _batches(data, names: list, batch_size: int) -> Iterable:
    """Yield dicts input name -> array from an array, a dict of arrays or an iterable of batches."""
    if isinstance(data, np.ndarray) or (isinstance(data, dict) and all(hasattr(v, "shape") for v in data.values())):
        feeds = data if isinstance(data, dict) else {names[0]: data} if len(names) == 1 else None
        if feeds is None:
            raise InputError(f"the model has inputs {names}: pass a dict input name -> array")
        n = {len(v) for v in feeds.values()}
        if len(n) != 1:
            raise InputError("all inputs must have the same number of samples")
        total = n.pop()
        for s in range(0, total, batch_size):
            yield {k: v[s:s + batch_size] for k, v in feeds.items()}
        return
    for batch in data:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]  # (x, y) pairs: the inputs
        if isinstance(batch, dict):
            yield batch
        elif len(names) == 1:
            yield {names[0]: batch}
        else:
            raise InputError(f"the model has inputs {names}: yield dicts input name -> array")


def _length(data, batch_size: int) -> Optional[int]:
    if isinstance(data, np.ndarray):
        return -(-len(data) // batch_size)
    if isinstance(data, dict):
        v = next(iter(data.values()), None)
        return None if v is None else -(-len(v) // batch_size)
    return len(data) if hasattr(data, "__len__") else None


def _check_batch(batch: dict, specs: dict) -> dict:
    from .runtime.session import check_array

    missing = [k for k in specs if k not in batch]
    extra = [k for k in batch if k not in specs]
    if missing or extra:
        raise InputError(f"the data must provide the model inputs {list(specs)}"
                         + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
    return {k: check_array(k, batch[k], specs[k][0], specs[k][1]) for k in specs}


def fit_patterns(model, data, *, estimator: str = "relu", batch_size: int = 64, batchnorm: str = "fold",
                 limit: Optional[int] = None, progress: Optional[bool] = None, providers=None,
                 threads: Optional[int] = None, source: Optional[str] = None) -> PatternSet:
    """Fit the PatternNet / PatternAttribution patterns of every linear layer of ``model`` on ``data``.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The model (as given to :func:`onnxplain.compile`).
    data : numpy.ndarray, dict or iterable
        Inputs ``[N, ...]`` (one input), a dict input name -> array, or an iterable of such batches
        (e.g. a generator reading from disk; ``(x, y)`` pairs are accepted, ``y`` is ignored).
        Use data like the training data (the patterns estimate the signal in it).
    estimator : {"relu", "linear"}
        ``"relu"`` (default): the two-component estimator, statistics over the samples where the
        neuron's output (bias included) is positive; ``"linear"``: over every sample.
    batch_size : int
        Samples per inference (for arrays; iterables yield their own batches).
    batchnorm : str
        BatchNorm treatment; must match the one used when compiling (default ``"fold"``).
    limit : int, optional
        Use at most this many samples.
    progress : bool, optional
        Show a tqdm progress bar (default: when there is more than one batch).
    providers, threads
        ONNX Runtime execution providers and intra-op threads.

    Returns
    -------
    PatternSet
        Node name -> pattern (the weight's shape and dtype), with metadata; ``.save(path)`` writes
        the ``.npz`` atomically.

    Raises
    ------
    CompileError
        The model has no linear layer or one that cannot get a pattern.
    InputError
        The data does not match the model's inputs (names, rank, static dims, NaN/Inf) or is empty.
    """
    from tqdm.auto import tqdm

    from .compiler.api import _check_batchnorm, prepare
    from .runtime.session import _NP_TYPES, make_session

    src = source or (str(model) if isinstance(model, str) or hasattr(model, "__fspath__") else "model")
    if estimator not in ESTIMATORS:
        raise InputError(f"unknown estimator '{estimator}'; choose one of {', '.join(ESTIMATORS)}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    _check_batchnorm(batchnorm, src)
    g = prepare(model, src, batchnorm)
    layers = _layers(g)
    for layer in layers:
        layer.mask = _mask_tensor(g, layer.z)
    stats = [_Stats(layer, _conv_geo(g, layer), estimator == "relu") for layer in layers]
    fit_model, names = _fit_model(g, layers)
    sess = make_session(fit_model, providers, threads)
    specs = {i.name: (i.shape, _NP_TYPES.get(i.type)) for i in sess.get_inputs()}
    wanted = sorted(set(names.values()))
    seen = 0
    batches = _batches(data, list(specs), int(batch_size))
    total = _length(data, int(batch_size))
    show = progress if progress is not None else (total is None or total > 1)
    for batch in tqdm(batches, total=total, desc="fitting patterns", unit="batch", disable=not show):
        feeds = _check_batch(batch, specs)
        if limit is not None:
            feeds = {k: v[:max(int(limit) - seen, 0)] for k, v in feeds.items()}
        n = len(next(iter(feeds.values())))
        if n == 0:
            break
        out = dict(zip(wanted, sess.run(wanted, feeds)))
        for st in stats:
            st.update(out[names[st.layer.x]], out[names[st.layer.mask]])
        seen += n
        if limit is not None and seen >= limit:
            break
    if seen == 0:
        raise InputError("the data set is empty: no sample to fit patterns on")
    return _finish(stats, estimator, batchnorm, seen, src)


def _conv_geo(g, layer: PatternLayer) -> Optional[dict]:
    if layer.op_type != "Conv":
        return None
    node = next(n for n in g.nodes if n.name == layer.name)
    try:
        geo = conv_geometry(Ctx(None, g, []), node, layer.x, list(layer.w.shape[2:]))
    except Exception as exc:  # noqa: BLE001 - Unsupported: no static shape
        raise CompileError([Problem(g.source, layer.name, "Conv", getattr(exc, "message", str(exc)),
                                    getattr(exc, "fix", ""))]) from None
    if min(geo["pads"]) < 0:
        raise CompileError([Problem(g.source, layer.name, "Conv", "negative pads are not supported for patterns",
                                    "re-export without negative pads")])
    return geo


def _finish(stats: list, estimator: str, batchnorm: str, seen: int, src: str) -> PatternSet:
    arrays, layers = {}, {}
    for st in stats:
        a, dead = st.pattern()
        arrays[st.layer.name] = a
        layers[st.layer.name] = {"op": st.layer.op_type, "shape": list(st.layer.w.shape),
                                 "weight": fingerprint(st.layer.w), "neurons": int(len(st.n)),
                                 "without_pattern": dead, "min_active": int(st.n.min()),
                                 "mean_active": float(st.n.mean())}
    meta = {"format": FORMAT_VERSION, "onnxplain": __version__, "model": os.path.basename(str(src)),
            "estimator": estimator,
            "batchnorm": batchnorm, "samples": int(seen), "layers": layers}
    return PatternSet(arrays, meta, source=os.path.basename(str(src)))


def summary(patterns: PatternSet) -> str:
    """One line per layer: shape, active samples per neuron, neurons without a pattern."""
    meta = patterns.meta
    lines = [f"{len(patterns)} patterns from {meta.get('samples', '?')} samples "
             f"(estimator {meta.get('estimator', '?')}, batchnorm {meta.get('batchnorm', '?')})"]
    for name, info in meta.get("layers", {}).items():
        note = (f", {info['without_pattern']} neuron(s) with pattern 0 (never active, or a constant output when "
                f"active)" if info.get("without_pattern") else "")
        unit = "positions per channel" if info["op"] == "Conv" else "samples per neuron"
        lines.append(f"  {name} ({info['op']}) {info['shape']}: active {unit} min "
                     f"{info['min_active']}, mean {info['mean_active']:.0f}{note}")
    return "\n".join(lines)


def fit_patterns_file(model, data, out_path, **kwargs) -> PatternSet:
    """:func:`fit_patterns` and write the result to ``out_path`` atomically."""
    patterns = fit_patterns(model, data, **kwargs)
    save_patterns(patterns, out_path)
    return patterns
