"""Composites: which rule each node gets, as ordered ``(selector, rule)`` lists (first match wins).

Named rules (the exact Zennit formulation, see :mod:`onnxplain.rules.lrp`):

=================  ==========================================================================
``lrp.z``          z = W x + b, no stabilizer (zero denominators give zero relevance)
``lrp.epsilon``    ``epsilon`` (default 1e-6), bias included
``lrp.z_plus``     x+ W+ (+ b+) and x- W- (no bias) over their sum (alpha=1, beta=0)
``lrp.alpha_beta`` ``alpha`` (x+ W+ + b+, x- W-) - ``beta`` (x+ W- + b-, x- W+), each over its own sum
``lrp.gamma``      generalized gamma: ``W + gamma W+`` for positive, ``W + gamma W-`` for negative outputs
``lrp.w_square``   W^2 (and b^2) with unit inputs
``lrp.flat``       unit weights, unit inputs, no bias
``lrp.bounded``    z^B with inputs in [``low``, ``high``] (scalars or one value per channel)
=================  ==========================================================================

Every denominator except ``lrp.z``'s is stabilized as ``z + 1e-6 sign(z)`` (``sign(0) = +1``),
as Zennit does.  Non-linear parts, in every LRP composite (Zennit's base layer map):
element-wise activations pass relevance through (``lrp.pass``); additions of several
path tensors, average pooling and mean reductions redistribute in proportion to the
contributions (``lrp.norm``); max pooling, concatenation, splitting and shape ops move
relevance like the gradient (winner-take-all at max pooling); everything else gets the
gradient, as an op without a rule does in Zennit.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

from ..compiler.errors import CompileError, Problem
from . import selectors as sel
from .gradient import GRADIENT
from .lrp import NORM, PASS, BatchNormTwoMaps, Group, LinearRule, MaxPoolProportional, Norm, Term

ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "Softplus", "Softsign",
               "HardSigmoid", "HardSwish", "Clip", "Gelu", "Mish", "ThresholdedRelu")
POOLING = ("AveragePool", "GlobalAveragePool", "ReduceMean")


def innvestigate_rule(name: str, **p) -> LinearRule:
    """iNNvestigate's (2.1.2) formulation, used by its presets and Deep Taylor.

    Differences to Zennit's: denominators are shifted by 1e-7 only where they are exactly zero
    (``safe_divide``) except in the epsilon rule; alpha-beta puts the full bias in both parts
    (b+ with W+, b- with W-); z+ (= Alpha1Beta0IgnoreBias), flat, w^2 and z^B use no bias.
    """
    z = dict(epsilon=1e-7, stabilizer="zero")
    if name == "lrp.z":
        return LinearRule("lrp.z", **z)
    if name == "lrp.epsilon":
        eps = p.get("epsilon", 1e-7)
        return LinearRule("lrp.epsilon", epsilon=eps, params={"epsilon": eps})
    if name == "lrp.z_plus":
        return LinearRule("lrp.z_plus", (Group(1.0, (Term(1, "pos", "pos", "none"), Term(1, "neg", "neg", "none"))),),
                          **z)
    if name in ("lrp.alpha_2_beta_1", "lrp.alpha_1_beta_0"):
        alpha, beta = (2.0, 1.0) if name == "lrp.alpha_2_beta_1" else (1.0, 0.0)
        groups = (Group(alpha, (Term(1, "pos", "pos", "pos"), Term(1, "neg", "neg", "neg"))),
                  Group(-beta, (Term(1, "pos", "neg", "neg"), Term(1, "neg", "pos", "pos"))))
        return LinearRule(name, groups if beta else groups[:1], params={"alpha": alpha, "beta": beta}, **z)
    if name == "lrp.flat":
        return LinearRule("lrp.flat", (Group(1.0, (Term(1, "ones", "ones", "none"),)),), **z)
    if name == "lrp.bounded":
        groups = (Group(1.0, (Term(1, "x", "w", "none"), Term(-1, "low", "pos", "none"),
                              Term(-1, "high", "neg", "none"))),)
        return LinearRule("lrp.bounded", groups, low=_hashable(p["low"]), high=_hashable(p["high"]),
                          params={"low": p["low"], "high": p["high"]}, **z)
    raise KeyError(name)


def innvestigate_base_map(deep_taylor: bool = False) -> list:
    """iNNvestigate's treatment of layers without kernel: activations pass; Add and average pooling
    get the z-rule (with ``safe_divide``), except in Deep Taylor where they, BatchNorm and
    everything else get the gradient."""
    inn_norm = Norm(epsilon=1e-7, stabilizer="zero")

    def is_sum(n, a):
        return n.op_type in ("Add", "Sum") and sum(i in a.on_path for i in n.input) > 1
    middle = [] if deep_taylor else [(sel.Selector("sum of path tensors", is_sum), inn_norm),
                                     (sel.op(*POOLING), inn_norm)]
    return [(sel.op(*ACTIVATIONS), PASS)] + middle + [(sel.Selector("any other op", lambda n, a: True), GRADIENT)]


def rule(name: str, **p) -> LinearRule:
    """A named LRP rule for linear layers with parameters (see the module docstring)."""
    eps = p.get("epsilon", 1e-6)
    if name == "lrp.z":
        return LinearRule("lrp.z", epsilon=0.0)
    if name == "lrp.epsilon":
        return LinearRule("lrp.epsilon", epsilon=eps, params={"epsilon": eps})
    if name == "lrp.z_plus":
        return LinearRule("lrp.z_plus", (Group(1.0, (Term(1, "pos", "pos", "pos"), Term(1, "neg", "neg", "none"))),))
    if name in ("lrp.alpha_beta", "lrp.alpha_2_beta_1", "lrp.alpha_1_beta_0"):
        alpha, beta = {"lrp.alpha_2_beta_1": (2.0, 1.0), "lrp.alpha_1_beta_0": (1.0, 0.0)}.get(
            name, (p.get("alpha", 2.0), p.get("beta", 1.0)))
        groups = (Group(alpha, (Term(1, "pos", "pos", "pos"), Term(1, "neg", "neg", "none"))),
                  Group(-beta, (Term(1, "pos", "neg", "neg"), Term(1, "neg", "pos", "none"))))
        return LinearRule(name, groups if beta else groups[:1], params={"alpha": alpha, "beta": beta})
    if name == "lrp.gamma":
        gamma = p.get("gamma", 0.25)
        groups = (Group(1.0, (Term(1, "pos", "gamma_pos", "gamma_pos"), Term(1, "neg", "gamma_neg", "none")), "zpos"),
                  Group(1.0, (Term(1, "pos", "gamma_neg", "gamma_neg"), Term(1, "neg", "gamma_pos", "none")), "zneg"))
        return LinearRule("lrp.gamma", groups, gamma=gamma, params={"gamma": gamma})
    if name == "lrp.w_square":
        return LinearRule("lrp.w_square", (Group(1.0, (Term(1, "ones", "square", "square"),)),))
    if name == "lrp.flat":
        return LinearRule("lrp.flat", (Group(1.0, (Term(1, "ones", "ones", "none"),)),))
    if name == "lrp.bounded":
        low, high = p.get("low", 0.0), p.get("high", 1.0)
        groups = (Group(1.0, (Term(1, "x", "w", "b"), Term(-1, "low", "pos", "pos"), Term(-1, "high", "neg", "neg"))),)
        return LinearRule("lrp.bounded", groups, low=_hashable(low), high=_hashable(high),
                          params={"low": low, "high": high})
    raise KeyError(name)


RULE_NAMES = ("lrp.z", "lrp.epsilon", "lrp.z_plus", "lrp.alpha_beta", "lrp.alpha_2_beta_1", "lrp.alpha_1_beta_0",
              "lrp.gamma", "lrp.w_square", "lrp.flat", "lrp.bounded")
OTHER_RULES = {"lrp.pass": PASS, "lrp.norm": NORM, "gradient": GRADIENT,
               "lrp.maxpool_proportional": MaxPoolProportional()}


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def base_map() -> list:
    """The non-linear part shared by every LRP composite (see the module docstring)."""
    def is_sum(n, a):
        return n.op_type in ("Add", "Sum", "Sub") and sum(i in a.on_path for i in n.input) > 1
    return [(sel.op(*ACTIVATIONS), PASS), (sel.Selector("sum of path tensors", is_sum), NORM),
            (sel.op(*POOLING), NORM), (sel.Selector("any other op", lambda n, a: True), GRADIENT)]


class Composite:
    """An ordered ``(selector, rule)`` list; :meth:`assigner` gives ``assign(node) -> Rule``.

    A linear layer that no entry matches is an error (no silent gradient fallback for layers).
    """

    def __init__(self, name: str, entries: list, with_base: bool = True, base: list = None):
        self.name = name
        self.entries = list(entries) + (base if base is not None else base_map() if with_base else [])

    def assigner(self, actx) -> Callable:
        """``assign(node) -> Rule`` for the path of ``actx``; raise CompileError listing every problem."""
        table, problems = {}, []
        catch_all = len(self.entries) - 1
        for n in actx.nodes:
            i, r = self.pick(n, actx)
            if actx.is_linear(n) and i == catch_all:
                problems.append(Problem(actx.g.source, n.name, n.op_type,
                                        f"composite '{self.name}' gives this linear layer no LRP rule",
                                        "add an entry for it (e.g. a --rules spec) or choose another composite"))
            elif r.name == "lrp.bounded" and n.name not in actx.first:
                problems.append(Problem(actx.g.source, n.name, n.op_type,
                                        "lrp.bounded (z^B) needs the input range, so it applies only to linear "
                                        "layers that read the explained input (the first ones on the path)",
                                        "assign lrp.bounded to {\"position\": \"first\"} only"))
            elif not r.handles(n.op_type):
                problems.append(Problem(actx.g.source, n.name, n.op_type,
                                        f"rule '{r.name}' cannot be applied to a {n.op_type} node",
                                        "assign a rule that handles this op"))
            table[n.name] = r
        if problems:
            raise CompileError(problems)
        return lambda node: table.get(node.name)

    def pick(self, node, actx) -> tuple:
        """``(index, rule)`` of the first entry whose selector matches ``node``."""
        for i, (s, r) in enumerate(self.entries):
            if s(node, actx):
                return i, r
        raise AssertionError("the base map ends with a catch-all entry")

    def describe(self) -> list:
        return [(str(s), r.name) for s, r in self.entries]


CONV = ("Conv", "ConvTranspose")
DENSE = ("Gemm", "MatMul")


def _linear_of(*ops):
    return sel.all_of(sel.op(*ops), sel.linear())


def batchnorm_rule(batchnorm: str, epsilon: float = 1e-6):
    """The rule of a BatchNorm node left in the graph: Zennit's ``Pass`` (for ``fold``, ``fold_after``,
    ``pass``), the epsilon rule on the BatchNorm as one linear map (``linear``) or as two (``linear2``)."""
    if batchnorm == "linear":
        return LinearRule("lrp.epsilon", epsilon=epsilon, params={"epsilon": epsilon})
    if batchnorm == "linear2":
        return BatchNormTwoMaps(epsilon=epsilon)
    return PASS


def zennit_composite(name: str, p: dict, batchnorm: str = "fold") -> Composite:
    """Zennit's composites with its defaults (``epsilon=1e-6``, ``gamma=0.25``)."""
    eps = {"epsilon": p.get("epsilon", 1e-6)}
    dense = (_linear_of(*DENSE), rule("lrp.epsilon", **eps))
    first_linear = sel.all_of(sel.first(), sel.linear())
    bn = (sel.op("BatchNormalization"), batchnorm_rule(batchnorm, eps["epsilon"]))
    if name == "lrp.epsilon_plus":
        return Composite(name, [(_linear_of(*CONV), rule("lrp.z_plus")), dense, bn])
    if name == "lrp.epsilon_plus_flat":
        return Composite(name, [(first_linear, rule("lrp.flat")), (_linear_of(*CONV), rule("lrp.z_plus")), dense, bn])
    if name == "lrp.epsilon_alpha2_beta1":
        return Composite(name, [(_linear_of(*CONV), rule("lrp.alpha_2_beta_1")), dense, bn])
    if name == "lrp.epsilon_alpha2_beta1_flat":
        return Composite(name, [(first_linear, rule("lrp.flat")), (_linear_of(*CONV), rule("lrp.alpha_2_beta_1")),
                                dense, bn])
    if name == "lrp.epsilon_gamma_box":
        box = rule("lrp.bounded", low=p.get("low"), high=p.get("high"))
        return Composite(name, [(first_linear, box), (_linear_of(*CONV), rule("lrp.gamma", gamma=p.get("gamma", 0.25))),
                                dense, bn])
    raise KeyError(name)


def single_rule_composite(name: str, p: dict, batchnorm: str = "fold") -> Composite:
    """One rule on every linear layer (iNNvestigate's ``lrp.z``, ``lrp.epsilon``, ...)."""
    bn = (sel.op("BatchNormalization"), batchnorm_rule(batchnorm, p.get("epsilon", 1e-6)))
    if name == "lrp.bounded":
        return Composite(name, [(sel.all_of(sel.first(), sel.linear()), rule(name, **p)),
                                (sel.linear(), rule("lrp.z")), bn])
    return Composite(name, [(sel.linear(), rule(name, **p)), bn])


def with_overrides(base: Optional[Composite], entries: list, name: str) -> Composite:
    """A composite whose ``entries`` take precedence over ``base`` (or over the base map alone)."""
    tail = base.entries if base is not None else base_map()
    c = Composite(name, [], with_base=False)
    c.entries = list(entries) + tail
    return c


#: the parameters each rule accepts in a spec (numbers; low/high also lists)
RULE_PARAMS = {"lrp.epsilon": ("epsilon",), "lrp.alpha_beta": ("alpha", "beta"), "lrp.gamma": ("gamma",),
               "lrp.bounded": ("low", "high"), "lrp.norm": ("epsilon",), "lrp.maxpool_proportional": ("epsilon",)}


def check_rule_params(name: str, params: dict, where: str) -> list:
    """Every problem with a rule's parameters: unknown names, non-numbers, alpha/beta constraints."""
    problems, allowed = [], RULE_PARAMS.get(name, ())
    for k, v in params.items():
        if k not in allowed:
            problems.append(Problem(where, None, None, f"rule '{name}' has no parameter '{k}'",
                                    f"'{name}' accepts {', '.join(allowed) or 'no parameters'}"))
        elif not _numeric(v, lists=k in ("low", "high")):
            problems.append(Problem(where, None, None, f"parameter '{k}' of rule '{name}' must be a number"
                                    + (" or a list of numbers" if k in ("low", "high") else "") + f", got {v!r}",
                                    "fix the value"))
    if name == "lrp.alpha_beta" and not problems:
        a, b = float(params.get("alpha", 2.0)), float(params.get("beta", 1.0))
        if a < 0 or b < 0 or abs(a - b - 1.0) > 1e-9:
            problems.append(Problem(where, None, None, f"lrp.alpha_beta needs alpha, beta >= 0 and alpha - beta = 1 "
                                    f"(got alpha={a}, beta={b})", "e.g. alpha=2, beta=1 or alpha=1, beta=0"))
    return problems


def _numeric(v, lists: bool) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    return lists and isinstance(v, (list, tuple)) and len(v) > 0 and all(_numeric(x, False) for x in v)


def rule_from_spec(spec, where: str, defaults: Optional[dict] = None):
    """A rule from ``"lrp.epsilon"`` or ``{"name": "lrp.epsilon", "epsilon": 0.25}``.

    Parameters a spec rule does not set come from ``defaults`` (the ``lrp`` method's own
    ``epsilon``, ``gamma``, ``low``, ``high``).
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise CompileError([Problem(where, None, None, f"a rule must be a name or a mapping with 'name', got {spec!r}",
                                    f"use one of {', '.join(RULE_NAMES + tuple(OTHER_RULES))}")])
    name = spec["name"]
    params = {k: v for k, v in spec.items() if k != "name"}
    if name not in RULE_NAMES and name not in OTHER_RULES:
        raise CompileError([Problem(where, None, None, f"unknown rule '{name}'",
                                    f"use one of {', '.join(RULE_NAMES + tuple(OTHER_RULES))}")])
    problems = check_rule_params(name, params, where)
    if problems:
        raise CompileError(problems)
    for k in RULE_PARAMS.get(name, ()):
        if k not in params and (defaults or {}).get(k) is not None and k != "epsilon" or (
                k == "epsilon" and k not in params and name == "lrp.epsilon" and (defaults or {}).get(k) is not None):
            params[k] = defaults[k]
    if name == "lrp.bounded" and (params.get("low") is None or params.get("high") is None):
        raise CompileError([Problem(where, None, None, "rule 'lrp.bounded' needs low and high",
                                    "set them in the rule ({\"name\": \"lrp.bounded\", \"low\": 0, \"high\": 1}) "
                                    "or as parameters of the lrp method")])
    if name in OTHER_RULES:
        return replace(OTHER_RULES[name], **params) if params else OTHER_RULES[name]
    return rule(name, **params)
