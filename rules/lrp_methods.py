"""LRP and Deep Taylor methods of the registry: single rules, presets, Zennit composites, rule specs.

Defaults follow the library whose name a method carries:

* iNNvestigate names (``lrp.z``, ``lrp.epsilon`` with ``epsilon=1e-7``, ``lrp.alpha_beta``, ...,
  ``deep_taylor``, ``deep_taylor.bounded``, ``lrp.sequential_preset_a/b[_flat]`` with
  ``epsilon=0.1``) apply their rule(s) to the linear layers as iNNvestigate's analyzers do;
* Zennit composites (``lrp.epsilon_plus``, ``lrp.epsilon_plus_flat``, ``lrp.epsilon_gamma_box``,
  ``lrp.epsilon_alpha2_beta1``, ``lrp.epsilon_alpha2_beta1_flat``) use Zennit's defaults
  (``epsilon=1e-6``, ``gamma=0.25``) and its layer map.

All of them start from the explained logit's value (relevance = logit at the target), so
that conservation compares the input relevance with the logit.
"""
from __future__ import annotations

import json
import os

from ..compiler.errors import CompileError, Problem
from . import composites as comp
from . import selectors as sel
from .methods import Method, Param

_EPS7 = Param("epsilon", 1e-7, "stabilizer of the epsilon rule: z + epsilon * sign(z)")
_EPS6 = Param("epsilon", 1e-6, "stabilizer of the epsilon rule on dense layers (Zennit's default)")
_EPS_PRESET = Param("epsilon", 0.1, "epsilon of the dense layers (iNNvestigate's preset default)")
_GAMMA = Param("gamma", 0.25, "weight of the added positive (negative) parts: W + gamma W+")
_LOW = Param("low", 0.0, "lowest input value, scalar or one per channel (z^B rule)", "range")
_HIGH = Param("high", 1.0, "highest input value, scalar or one per channel (z^B rule)", "range")
_REQ_LOW = Param("low", None, "lowest input value, scalar or one per channel (required)", "range")
_REQ_HIGH = Param("high", None, "highest input value, scalar or one per channel (required)", "range")
_ALPHA = Param("alpha", 2.0, "weight of the positive contributions (alpha - beta = 1)")
_BETA = Param("beta", 1.0, "weight of the negative contributions")


def _single(name: str):
    def make(actx, p):
        if name == "lrp.alpha_beta":
            problems = comp.check_rule_params(name, {"alpha": p["alpha"], "beta": p["beta"]}, actx.g.source)
            if problems:
                raise CompileError(problems)
        return comp.single_rule_composite(name, p, actx.batchnorm).assigner(actx)
    return make


def _preset(kind: str):
    """iNNvestigate's presets and Deep Taylor, in iNNvestigate's formulation (see ZENNIT_NOTES.md, 8)."""
    def make(actx, p):
        first = sel.all_of(sel.first(), sel.linear())
        conv = sel.all_of(sel.op(*comp.CONV), sel.linear())
        dense = sel.all_of(sel.op(*comp.DENSE), sel.linear())
        inn = comp.innvestigate_rule
        if kind.startswith("deep_taylor"):
            entries = [(sel.linear(), inn("lrp.z_plus"))]
            if kind == "deep_taylor.bounded":
                if p.get("low") is None or p.get("high") is None:
                    raise CompileError([Problem(actx.g.source, None, None, "deep_taylor.bounded needs the input "
                                                "range: low and high", "e.g. --param low=0 --param high=1")])
                entries.insert(0, (first, inn("lrp.bounded", low=p["low"], high=p["high"])))
            return comp.Composite(kind, entries, base=comp.innvestigate_base_map(deep_taylor=True)).assigner(actx)
        conv_rule = inn("lrp.alpha_1_beta_0" if "_a" in kind else "lrp.alpha_2_beta_1")
        entries = [(dense, inn("lrp.epsilon", epsilon=p["epsilon"])), (conv, conv_rule),
                   (sel.op("BatchNormalization"), comp.batchnorm_rule(actx.batchnorm, p["epsilon"]))]
        if kind.endswith("_flat"):
            entries.insert(0, (first, inn("lrp.flat")))
        return comp.Composite(kind, entries, base=comp.innvestigate_base_map()).assigner(actx)
    return make


def _zennit(name: str):
    def make(actx, p):
        if name == "lrp.epsilon_gamma_box" and (p.get("low") is None or p.get("high") is None):
            raise CompileError([Problem(actx.g.source, None, None,
                                        "lrp.epsilon_gamma_box needs the input range: low and high",
                                        "e.g. --param low=0 --param high=1 for images in [0, 1], or one value "
                                        "per channel for normalised inputs")])
        return comp.zennit_composite(name, p, actx.batchnorm).assigner(actx)
    return make


def load_rule_spec(spec, where: str = "rules spec") -> dict:
    """Read a rule spec: a dict, a JSON string, or a path to a .json / .yaml file."""
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, list):
        return {"rules": spec}
    text, where = spec, where
    if isinstance(spec, str) and os.path.isfile(spec):
        where = spec
        with open(spec) as fh:
            text = fh.read()
        if spec.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise CompileError([Problem(where, None, None, "YAML rule specs need PyYAML",
                                            "pip install pyyaml, or write the spec as JSON")]) from None
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise CompileError([Problem(where, None, None, f"malformed YAML: {exc}", "fix the file")]) from None
            return {"rules": data} if isinstance(data, list) else data
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise CompileError([Problem(where, None, None, f"malformed rule spec ({exc})",
                                    "give a JSON/YAML file or mapping: {\"base\": ..., \"rules\": [{\"select\": "
                                    "{...}, \"rule\": ...}]}")]) from None
    return {"rules": data} if isinstance(data, list) else data


def spec_composite(spec, defaults: dict, batchnorm: str = "fold") -> comp.Composite:
    """A composite from a rule spec: its entries first, then the ``base`` composite (if any)."""
    where = spec if isinstance(spec, str) and os.path.isfile(spec) else "rules spec"
    data = load_rule_spec(spec, where)
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise CompileError([Problem(where, None, None, "the spec must be a mapping with a 'rules' list",
                                    "see the README's rule-spec example")])
    problems, entries = [], []
    for k, item in enumerate(data.get("rules", [])):
        try:
            if not isinstance(item, dict) or set(item) - {"select", "rule"} or "rule" not in item:
                raise CompileError([Problem(where, None, None, f"entry {k}: expected {{select: ..., rule: ...}}, "
                                            f"got {item!r}", "give 'select' (optional) and 'rule'")])
            s = sel.from_spec(item["select"], where) if "select" in item else sel.linear()
            entries.append((s, comp.rule_from_spec(item["rule"], where, defaults)))
        except CompileError as exc:
            problems.extend(exc.problems)
    base = None
    if data.get("base"):
        try:
            base = comp.zennit_composite(data["base"], defaults, batchnorm)
        except KeyError:
            problems.append(Problem(where, None, None, f"unknown base composite '{data['base']}'",
                                    f"use one of {', '.join(ZENNIT)}"))
    if problems:
        raise CompileError(problems)
    if base is None:
        entries.append((sel.op("BatchNormalization"), comp.batchnorm_rule(batchnorm, defaults.get("epsilon", 1e-6))))
    return comp.with_overrides(base, entries, "lrp")


def _custom(actx, p):
    if not p.get("rules"):
        raise CompileError([Problem(actx.g.source, None, None, "method 'lrp' needs a rule spec",
                                    "pass --rules spec.json (or rules=... in Python), or use a named composite")])
    return spec_composite(p["rules"], p, actx.batchnorm).assigner(actx)


ZENNIT = ("lrp.epsilon_plus", "lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "lrp.epsilon_alpha2_beta1",
          "lrp.epsilon_alpha2_beta1_flat")

_SUMMARY = {
    "lrp.z": "LRP-z on every linear layer", "lrp.epsilon": "LRP-epsilon on every linear layer",
    "lrp.w_square": "LRP-w^2 on every linear layer", "lrp.flat": "LRP-flat on every linear layer",
    "lrp.alpha_beta": "LRP-alpha-beta on every linear layer", "lrp.alpha_2_beta_1": "LRP-alpha2-beta1 everywhere",
    "lrp.alpha_1_beta_0": "LRP-alpha1-beta0 everywhere", "lrp.z_plus": "LRP-z+ on every linear layer",
    "lrp.gamma": "LRP-gamma on every linear layer", "lrp.bounded": "z^B on the first layer, LRP-z elsewhere",
}
_PARAMS = {"lrp.epsilon": (_EPS7,), "lrp.alpha_beta": (_ALPHA, _BETA), "lrp.gamma": (_GAMMA,),
           "lrp.bounded": (_LOW, _HIGH)}


def lrp_methods() -> list:
    """Every LRP / Deep Taylor method of the registry."""
    out = [Method(n, _SUMMARY[n], "backward", params=_PARAMS.get(n, ()), make_assign=_single(n), seed="logit",
                  reference="Bach et al. 2015; Montavon et al. 2019") for n in _SUMMARY]
    out += [
        Method("deep_taylor", "Deep Taylor: z+ on every linear layer", "backward", make_assign=_preset("deep_taylor"),
               seed="relu_logit", reference="Montavon et al. 2017"),
        Method("deep_taylor.bounded", "Deep Taylor with z^B on the input layer, z+ elsewhere", "backward",
               params=(_REQ_LOW, _REQ_HIGH), make_assign=_preset("deep_taylor.bounded"), seed="relu_logit",
               reference="Montavon et al. 2017"),
    ]
    for kind, conv in (("a", "alpha1-beta0"), ("b", "alpha2-beta1")):
        for flat in ("", "_flat"):
            n = f"lrp.sequential_preset_{kind}{flat}"
            out.append(Method(n, f"iNNvestigate preset: epsilon on dense, {conv} on conv layers"
                              + (", flat on the first layer" if flat else ""), "backward", params=(_EPS_PRESET,),
                              make_assign=_preset(n), seed="logit", reference="Kohlbrenner et al. 2020"))
    zsum = {"lrp.epsilon_plus": "z+ on conv, epsilon on dense",
            "lrp.epsilon_plus_flat": "flat on the first layer, z+ on conv, epsilon on dense",
            "lrp.epsilon_gamma_box": "z^B on the first layer, gamma on conv, epsilon on dense",
            "lrp.epsilon_alpha2_beta1": "alpha2-beta1 on conv, epsilon on dense",
            "lrp.epsilon_alpha2_beta1_flat": "flat on the first layer, alpha2-beta1 on conv, epsilon on dense"}
    for n in ZENNIT:
        params = (_EPS6,) + ((_GAMMA, _REQ_LOW, _REQ_HIGH) if n == "lrp.epsilon_gamma_box" else ())
        out.append(Method(n, f"Zennit composite: {zsum[n]}", "backward", params=params, make_assign=_zennit(n),
                          seed="logit", reference="Anders et al. 2021 (Zennit)"))
    out.append(Method("lrp", "LRP with rules from a spec (--rules FILE): selectors -> rules, first match wins",
                      "backward", params=(Param("rules", None, "rule spec: a JSON/YAML file or mapping", "spec"),
                                          _EPS6, _GAMMA, _REQ_LOW, _REQ_HIGH),
                      make_assign=_custom, seed="logit", reference="Montavon et al. 2019"))
    return out
