"""Model-agnostic methods (occlusion, LIME): they only need the model's predictions.

They run the ORIGINAL model in ONNX Runtime on many perturbed copies of the input,
in memory-bounded batches, so they work on any model ONNX Runtime can run, including
models no propagation rule covers. :class:`onnxplain.Explainer` accepts their names
alongside the compiled methods; parameters use the same mechanism
(``occlusion.patch=8`` or ``patch=8``).

The registry :data:`AGNOSTIC` is shaped like :data:`onnxplain.rules.methods.METHODS`
(name, summary, reference, parameters with defaults), so ``onnxplain methods`` lists both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..compiler.errors import CompileError, InputError, Problem
from ..rules.methods import METHODS, Param, parse_reference
from .batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_BYTES, ModelRunner


def _ints(value, allow_none: bool = False):
    if value is None or (isinstance(value, str) and value.lower() in ("none", "patch", "")):
        if allow_none:
            return None
        raise ValueError("needs a number")
    if isinstance(value, str):
        parts = [int(p) for p in value.replace(",", " ").replace("x", " ").split()]
        return parts[0] if len(parts) == 1 else tuple(parts)
    if np.ndim(value) == 0:
        if float(value) != int(value):
            raise ValueError(f"must be an integer, got {value!r}")
        return int(value)
    return tuple(int(v) for v in np.ravel(value))


def _bytes(value) -> int:
    if isinstance(value, str):
        v = value.strip().upper().rstrip("B")
        mult = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}.get(v[-1:], 1)
        return int(float(v[:-1] if mult > 1 else v) * mult)
    return int(value)


class AgnosticParam(Param):
    """A :class:`~onnxplain.rules.methods.Param` with the value kinds the agnostic methods need."""

    def parse(self, value):
        if self.kind == "ints":
            return _ints(value)
        if self.kind == "ints_or_none":
            return _ints(value, allow_none=True)
        if self.kind == "value":
            return parse_reference(value, self.choices)
        if self.kind == "bytes":
            v = _bytes(value)
            if v < 0:
                raise ValueError(f"must be >= 0, got {value!r}")
            return v
        if self.kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(f"must be true or false, got {value!r}")
            return bool(value)
        return super().parse(value)


@dataclass(frozen=True)
class AgnosticMethod:
    """A model-agnostic method: ``run(runner, feeds, input_name, target, **params) -> map``."""

    name: str
    summary: str
    params: tuple
    run: Callable
    reference: str = ""
    kind: str = "agnostic"

    def param(self, name: str) -> Optional[Param]:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


def _occlusion(*args, **kwargs):
    from .occlusion import occlusion
    return occlusion(*args, **kwargs)


def _lime(*args, **kwargs):
    from .lime import lime
    return lime(*args, **kwargs)


_BATCH = (AgnosticParam("max_batch", DEFAULT_MAX_BATCH, "perturbed inputs per ONNX Runtime call (bounds "
                        "memory: the model's activations grow with it); 0 = no bound", "int"),
          AgnosticParam("max_bytes", DEFAULT_MAX_BYTES, "bytes of perturbed input per ONNX Runtime call "
                        "(accepts 64M, 1G); 0 = no bound", "bytes"))

AGNOSTIC = {m.name: m for m in [
    AgnosticMethod("occlusion", "slide a patch over the input, replace it by a reference, record the drop of "
                   "the score; each element gets the mean drop of the windows covering it", (
                       AgnosticParam("patch", 8, "window size per slid axis (8 or 8,8); images [N,C,H,W]: H,W "
                                     "and all channels; [N,C,L]: L; [N,F]: features; C,H,W to window channels "
                                     "too", "ints"),
                       AgnosticParam("stride", None, "step per axis, <= patch (default: the patch, no overlap); "
                                     "the last window of an axis may be cut off by the border", "ints_or_none"),
                       AgnosticParam("reference", "zeros", "replacement: zeros, mean (each sample's mean per "
                                     "channel), a number, or an array (.npy)", "value", ("zeros", "mean")),
                       AgnosticParam("normalize", False, "divide by |f(x)|, the unoccluded score (relative "
                                     "drop)", "bool"),
                   ) + _BATCH, _occlusion, "Zeiler & Fergus 2014"),
    AgnosticMethod("lime", "LIME: segments switched on/off at random, a kernel-weighted linear fit of the "
                   "score; each segment gets its coefficient", (
                       AgnosticParam("segmentation", "auto", "super-pixels: slic, quickshift (RGB) or grid; "
                                     "auto = slic for [N,C,H,W] images, grid otherwise", "choice",
                                     ("auto", "slic", "quickshift", "grid")),
                       AgnosticParam("segments", 50, "about how many segments (slic n_segments, grid cells)",
                                     "int"),
                       AgnosticParam("compactness", 10.0, "slic compactness (image scaled to [0,1])"),
                       AgnosticParam("cell", 0, "grid cell size per slid axis (0 = from segments)", "ints"),
                       AgnosticParam("samples", 500, "perturbed inputs per sample (lime package: 1000); at "
                                     "least the number of segments", "int"),
                       AgnosticParam("kernel_width", 0.25, "kernel sqrt(exp(-d^2/w^2)) on the cosine distance "
                                     "d to the unperturbed input"),
                       AgnosticParam("fill", "gray", "value of a switched-off segment: gray (channel "
                                     "mid-range), mean (segment mean, the lime package's), blur, zeros or a "
                                     "number", "value", ("gray", "mean", "blur", "zeros")),
                       AgnosticParam("blur_sigma", 5.0, "Gaussian sigma (elements) of fill=blur"),
                       AgnosticParam("regressor", "ridge", "scikit-learn Ridge or Lasso with sample weights",
                                     "choice", ("ridge", "lasso")),
                       AgnosticParam("alpha", 1.0, "regularization strength of the regressor"),
                       AgnosticParam("seed", 0, "seed of the random masks (same seed, same result)", "int"),
                   ) + _BATCH, _lime, "Ribeiro et al. 2016"),
]}


def split_request(methods, params: Optional[dict] = None, source: str = "model") -> tuple:
    """Split a request into its compiled and its agnostic part.

    Returns
    -------
    tuple
        ``(compiled_methods, compiled_params, agnostic)``: the compiled method names (list,
        or dict name -> params when ``methods`` is a dict), the parameters left for
        :func:`onnxplain.compile`, and ``[(AgnosticMethod, full params)]``.

    Raises
    ------
    CompileError
        Every problem of the agnostic part (unknown methods, parameters, values).
    """
    if isinstance(methods, str):
        methods = [methods]
    as_dict = isinstance(methods, dict)
    per = {m: dict(p or {}) for m, p in methods.items()} if as_dict else {m: {} for m in methods}
    problems = [Problem(source, None, None, f"unknown method '{m}'",
                        f"choose from {', '.join(list(METHODS) + list(AGNOSTIC))} (see `onnxplain methods`)")
                for m in per if m not in METHODS and m not in AGNOSTIC]
    agn = [m for m in per if m in AGNOSTIC]
    comp = [m for m in per if m not in AGNOSTIC]
    cparams, general = {}, {}
    for key, value in (params or {}).items():
        head = key.rsplit(".", 1)[0] if "." in key else None
        if head in AGNOSTIC:
            if head in per:
                per[head][key.rsplit(".", 1)[1]] = value
            else:
                problems.append(Problem(source, None, None, f"parameter '{key}' for a method not requested",
                                        f"add -m {head}"))
        elif head is None and any(AGNOSTIC[m].param(key) for m in agn):
            general[key] = value
            if any(METHODS[m].param(key) for m in comp if m in METHODS):
                cparams[key] = value
        elif head is None and not comp:
            problems.append(Problem(source, None, None, f"no requested method has a parameter '{key}'",
                                    "; ".join(_accepted(AGNOSTIC[m]) for m in agn)))
        else:
            cparams[key] = value
    result = []
    for name in agn:
        m, full = AGNOSTIC[name], AGNOSTIC[name].defaults()
        for key, value in list(general.items()) + list(per[name].items()):
            p = m.param(key)
            if p is None:
                if key in per[name]:
                    problems.append(Problem(source, None, None, f"method '{name}' has no parameter '{key}'",
                                            _accepted(m)))
                continue
            try:
                full[key] = p.parse(value)
            except (TypeError, ValueError) as exc:
                problems.append(Problem(source, None, None, f"parameter '{key}' of '{name}': {exc}", p.doc))
        result.append((m, full))
    if problems:
        raise CompileError(problems)
    compiled = {m: per[m] for m in comp} if as_dict else comp
    return compiled, cparams, result


def _accepted(m) -> str:
    return f"'{m.name}' accepts {', '.join(p.name for p in m.params)}"


class AgnosticEngine:
    """Runs the requested agnostic methods on the original model (used by :class:`onnxplain.Explainer`).

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
    requests : list of (AgnosticMethod, dict)
        From :func:`split_request`.
    output, inputs, strip_softmax
        As in :func:`onnxplain.compile` (explained output, explained inputs, logit or output).
    providers, threads, progress
        As in :class:`onnxplain.Explainer`.
    """

    def __init__(self, model, requests, output=None, inputs=None, strip_softmax=True, providers=None,
                 threads=None, progress=None):
        self.runner = ModelRunner(model, output, strip_softmax, providers, threads)
        self.requests = list(requests)
        self.progress = progress
        floats = self.runner.float_inputs()
        bad = [i for i in (inputs or []) if i not in floats]
        if bad:
            raise CompileError([Problem(self.runner.source, None, None, f"no float input named '{i}'",
                                        f"choose from {floats}") for i in bad])
        self.inputs = list(inputs) if inputs else floats
        if not self.inputs:
            raise CompileError([Problem(self.runner.source, None, None, "the model has no floating-point input "
                                        "to explain", "explanations are computed w.r.t. float inputs")])

    def explain(self, inputs: dict, target=None) -> dict:
        """``method -> map`` (or ``method -> {input: map}`` with several explained inputs)."""
        feeds = self.runner.feeds(inputs)
        out = {}
        for m, params in self.requests:
            maps = {name: m.run(self.runner, feeds, name, target, progress=self.progress, **params)
                    for name in self.inputs}
            out[m.name] = next(iter(maps.values())) if len(maps) == 1 else maps
        return out


__all__ = ["AGNOSTIC", "AgnosticMethod", "AgnosticEngine", "ModelRunner", "split_request", "InputError"]
