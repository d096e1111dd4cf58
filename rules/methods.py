"""The method registry: names (as in iNNvestigate), parameters, defaults and descriptions.

A method is either

* a *backward* method: one modified backward pass from the shared forward pass,
  described by a rule assignment (which rule each node gets) and an optional
  multiplication by the input (``input_t_gradient``); or
* a *sampling* method: a gradient averaged over points built from the input
  (integrated gradients, SmoothGrad, VarGrad), computed inside the compiled graph
  by expanding along the batch axis, in chunks, within one inference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .gradient import DECONV_RELU, GRADIENT, GUIDED_RELU, Rule


@dataclass(frozen=True)
class Param:
    """One method parameter: name, default, meaning, and the accepted values."""

    name: str
    default: Any
    doc: str
    kind: str = "float"  # int | float | choice | reference | range
    choices: tuple = ()

    def parse(self, value):
        """Convert a CLI string or Python value; raise ValueError with the accepted values."""
        if self.kind == "int":
            v = int(value)
            if v < 0:
                raise ValueError(f"must be a non-negative integer, got {value!r}")
            return v
        if self.kind == "float":
            return float(value)
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}; got {value!r}")
            return value
        if self.kind == "range":
            return _parse_range(value)
        if self.kind == "reference":
            return parse_reference(value)
        return value


def _parse_range(value):
    if isinstance(value, str):
        parts = [p for p in value.replace(",", " ").split() if p]
        value = [float(p) for p in parts]
        return value[0] if len(value) == 1 else value
    if np.ndim(value) == 0:
        return float(value)
    return [float(v) for v in np.ravel(value)]


REFERENCE_NAMES = ("zeros", "black", "white", "gray", "mean")


def parse_reference(value, names: tuple = REFERENCE_NAMES):
    """A named reference (one of ``names``), a number, an array, or a ``.npy`` path (loaded)."""
    if isinstance(value, str):
        if value in names:
            return value
        if value.endswith(".npy"):
            return np.load(value)
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"must be one of {', '.join(names)}, a number, an array "
                             f"or a path to a .npy file; got {value!r}") from None
    if np.ndim(value) == 0:
        return float(value)
    return np.asarray(value)


@dataclass(frozen=True)
class Method:
    """A method of the registry.

    Attributes
    ----------
    name : str
        Registry name (iNNvestigate's where it has one).
    summary : str
        One line for ``onnxplain methods``.
    kind : str
        ``"backward"`` or ``"sampling"``.
    params : tuple of Param
    assign : callable or None
        For backward methods: ``assign(node) -> Rule``.
    times_input : bool
        Multiply the result by the input (input x gradient).
    seed : str
        ``"one_hot"`` (gradients: d logit / d x), ``"logit"`` (relevance methods start from the
        explained logit's value, so conservation compares with the logit) or ``"relu_logit"``
        (iNNvestigate's Deep Taylor: the positive part of the logit).
    make_assign : callable or None
        ``make_assign(AssignContext, params) -> assign`` for methods whose rules depend on a node's
        position (composites); may raise CompileError listing every problem.
    """

    name: str
    summary: str
    kind: str
    params: tuple = ()
    assign: Optional[Callable] = None
    times_input: bool = False
    key: str = ""
    reference: str = ""
    seed: str = "one_hot"
    make_assign: Optional[Callable] = None
    extra: dict = field(default_factory=dict)

    def param(self, name: str) -> Optional[Param]:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


def gradient_assign(node) -> Rule:
    return GRADIENT


def _relu_assign(rule: Rule) -> Callable:
    def assign(node) -> Rule:
        return rule if node.op_type == "Relu" else GRADIENT
    return assign


_CHUNK = Param("chunk", 0, "points evaluated per batch expansion (bounds memory); 0 = automatic "
               "(16, or 1 when the model has a fixed batch size)", "int")
_SEED = Param("seed", 0, "seed of the in-graph noise generator (same seed, same noise, on any device)", "int")
_NOISE = Param("noise_scale", 0.1, "noise standard deviation as a fraction of each sample's value range "
               "(max - min), as in the SmoothGrad paper")
_SAMPLES = Param("samples", 32, "number of noisy copies", "int")
_LOW = Param("low", 0.0, "lowest input value (scalar or one per channel): the 'black' reference", "range")
_HIGH = Param("high", 1.0, "highest input value (scalar or one per channel): the 'white' reference", "range")

METHODS = {m.name: m for m in [
    Method("gradient", "the gradient of the explained logit w.r.t. the input (saliency)", "backward",
           assign=gradient_assign, key="gradient", reference="Simonyan et al. 2014"),
    Method("input_t_gradient", "input times gradient", "backward", assign=gradient_assign,
           times_input=True, key="gradient", reference="Shrikumar et al. 2016"),
    Method("deconvnet", "Deconvnet: at ReLUs pass relu(signal) back, ignoring the forward mask", "backward",
           assign=_relu_assign(DECONV_RELU), key="deconvnet", reference="Zeiler & Fergus 2014"),
    Method("guided_backprop", "Guided Backprop: at ReLUs pass relu(signal) where the input was positive",
           "backward", assign=_relu_assign(GUIDED_RELU), key="guided_backprop",
           reference="Springenberg et al. 2015"),
    Method("integrated_gradients", "integrated gradients: (x - x') times the mean gradient on the straight "
           "path from the reference x' to x", "sampling", params=(
               Param("steps", 64, "number of points on the path", "int"),
               Param("reference", "zeros", "reference input x': zeros, black (=low), white (=high), gray "
                     "(=(low+high)/2), mean (per-sample channel mean), a number, or an array", "reference"),
               _LOW, _HIGH,
               Param("riemann", "right", "points of the Riemann sum: right (k/n, k=1..n), left (k=0..n-1), "
                     "middle ((k+1/2)/n) or trapezoid (n points from 0 to 1, end points weighted 1/2)",
                     "choice", ("right", "left", "middle", "trapezoid")),
               _CHUNK), reference="Sundararajan et al. 2017"),
    Method("smoothgrad", "SmoothGrad: the gradient averaged over noisy copies of the input", "sampling", params=(
        _SAMPLES, _NOISE,
        Param("postprocess", "none", "applied to each gradient before averaging", "choice",
              ("none", "abs", "square")), _SEED, _CHUNK), reference="Smilkov et al. 2017"),
    Method("vargrad", "VarGrad: the variance of the gradient over noisy copies of the input", "sampling",
           params=(_SAMPLES, _NOISE, _SEED, _CHUNK), reference="Adebayo et al. 2018"),
]}


def get_method(name: str) -> Method:
    """Look up a method; raise KeyError listing the known names."""
    if name not in METHODS:
        raise KeyError(f"unknown method '{name}'; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def _register_lrp() -> None:
    from .lrp_methods import lrp_methods
    for m in lrp_methods():
        METHODS[m.name] = m


_register_lrp()


def _register_pattern() -> None:
    from .pattern import pattern_methods
    for m in pattern_methods():
        METHODS[m.name] = m


_register_pattern()
