"""Compilation: ONNX model in, ONNX model with explanation outputs out.

The pipeline: load -> opset upgrade -> shape inference -> canonicalization ->
explained tensor and target head -> one backward pass per distinct rule
assignment (shared forward pass) and one in-graph Loop per sampling method ->
outputs ``<method>/<input>`` -> metadata -> ``onnx.checker``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import onnx
from onnx import helper

from .._version import __version__
from ..rules.methods import METHODS, Method
from . import canonicalize as canon
from .emit import emit_backward, differentiable_path, path_nodes
from .errors import CompileError, Problem
from .loops import localize_loop_weights
from .export import add_metadata, check, set_versions
from .graph import Builder, Graph, load_model, strip_weights
from .assign import AssignContext
from .head import explained_tensor, explained_value, make_target_input, one_hot_seed, resolve_target
from .sampling import emit_sampling


@dataclass
class Request:
    """A parsed compile request: methods with their full parameter sets."""

    methods: list  # list of (Method, params dict)
    output: Optional[str] = None
    inputs: Optional[list] = None
    strip_softmax: bool = True
    batchnorm: str = "fold"
    source: str = "model"


def parse_methods(methods, params: Optional[dict] = None, source: str = "model") -> list:
    """Normalize ``methods`` and ``params`` into ``[(Method, params), ...]``, reporting every problem.

    ``methods`` is a name, a list of names, or a dict ``name -> params``.  ``params``
    holds parameters for all methods that accept them (``"steps"``) or for one method
    (``"integrated_gradients.steps"``).
    """
    if isinstance(methods, str):
        methods = [methods]
    per = {m: {} for m in methods} if not isinstance(methods, dict) else {m: dict(p or {}) for m, p in methods.items()}
    problems, result = [], []
    if not per:
        problems.append(Problem(source, None, None, "no method given", f"choose from {', '.join(METHODS)}"))
    for name in per:
        if name not in METHODS:
            problems.append(Problem(source, None, None, f"unknown method '{name}'",
                                    f"choose from {', '.join(METHODS)} (see `onnxplain methods`)"))
    general = {}
    for key, value in (params or {}).items():
        if "." in key and key.rsplit(".", 1)[0] in METHODS:
            m, p = key.rsplit(".", 1)
            if m in per:
                per[m][p] = value
            else:
                problems.append(Problem(source, None, None, f"parameter '{key}' for a method not requested",
                                        f"add -m {m}"))
        else:
            general[key] = value
    known = set()
    for name, own in per.items():
        if name not in METHODS:
            continue
        m = METHODS[name]
        full = m.defaults()
        for key, value in list(general.items()) + list(own.items()):
            p = m.param(key)
            if p is None:
                if key in own:
                    problems.append(Problem(source, None, None, f"method '{name}' has no parameter '{key}'",
                                            _accepted(m)))
                continue
            known.add(key)
            try:
                full[key] = p.parse(value)
            except (TypeError, ValueError) as exc:
                problems.append(Problem(source, None, None, f"parameter '{key}' of '{name}': {exc}", p.doc))
        result.append((m, full))
    for key in general:
        if key not in known:
            problems.append(Problem(source, None, None, f"no requested method has a parameter '{key}'",
                                    "; ".join(_accepted(METHODS[n]) for n in per if n in METHODS)))
    if problems:
        raise CompileError(problems)
    return result


def _accepted(m: Method) -> str:
    names = [p.name for p in m.params]
    return f"'{m.name}' accepts {', '.join(names)}" if names else f"'{m.name}' takes no parameters"


def prepare(model, source: Optional[str] = None, batchnorm: str = "fold") -> Graph:
    """Load, upgrade the opset, infer shapes and canonicalize; return the :class:`Graph`."""
    src = source or (str(model) if isinstance(model, (str,)) or hasattr(model, "__fspath__") else "model")
    proto = load_model(model, src)
    light, stash = strip_weights(proto)
    light = canon.upgrade_opset(light, src)
    g = Graph.from_model(light, src, stash)
    _name_nodes(g)
    canon.infer_shapes(g)
    canon.canonicalize(g, batchnorm=batchnorm)
    canon.infer_shapes(g)
    return g


def _name_nodes(g: Graph) -> None:
    """Give every node a unique, non-empty name (provenance and rule assignment rely on it)."""
    seen = set()
    for n in g.nodes:
        if not n.name or n.name in seen:
            n.name = g.fresh(n.name or f"{n.op_type}_{n.output[0] if n.output else ''}")
        seen.add(n.name)


def _select_inputs(g: Graph, inputs) -> list:
    floats = [i for i in g.input_names() if g.is_float(i)]
    if inputs is None:
        if not floats:
            raise CompileError([Problem(g.source, None, None, "the model has no floating-point input to explain",
                                        "explanations are computed w.r.t. float inputs")])
        return floats
    problems = [Problem(g.source, None, None, f"no float input named '{i}'", f"choose from {floats}")
                for i in inputs if i not in floats]
    if problems:
        raise CompileError(problems)
    return list(inputs)


def _check_chunks(g: Graph, req_methods: list, wrt: list) -> None:
    static = any(isinstance((g.shape(x) or [None])[0], int) for x in wrt)
    problems = []
    for m, p in req_methods:
        if "chunk" not in p:
            continue
        count = p.get("steps", p.get("samples"))
        if count < 1:
            problems.append(Problem(g.source, None, None, f"'{m.name}' needs at least one step/sample",
                                    "set steps/samples >= 1"))
        if p["chunk"] == 0:
            p["chunk"] = 1 if static else min(16, max(count, 1))
        elif static and p["chunk"] != 1:
            problems.append(Problem(g.source, None, None,
                                    f"the model has a fixed batch size, so '{m.name}' cannot expand the batch "
                                    f"by chunk={p['chunk']}", "use chunk=1 (or 0 = automatic)"))
    if problems:
        raise CompileError(problems)


@dataclass
class Compiled:
    """The result of :func:`compile_graph`: the model and what was decided."""

    model: onnx.ModelProto
    outputs: dict = field(default_factory=dict)  # method -> {input: output name}
    rules: dict = field(default_factory=dict)  # method -> {node: rule}
    explained: str = ""
    target_input: str = "target"
    health: dict = field(default_factory=dict)


def compile_graph(model, methods, params: Optional[dict] = None, output: Optional[str] = None,
                  inputs: Optional[list] = None, strip_softmax: bool = True, batchnorm: str = "fold",
                  health: bool = False, source: Optional[str] = None) -> Compiled:
    """Compile ``model``; see :func:`onnxplain.compile` for the parameters."""
    src = source or (str(model) if isinstance(model, str) or hasattr(model, "__fspath__") else "model")
    req = parse_methods(methods, params, src)
    _check_batchnorm(batchnorm, src)
    g = prepare(model, src, batchnorm)
    out_name = output or g.output_names()[0]
    explained, note = explained_tensor(g, out_name, strip_softmax)
    wrt = _select_inputs(g, inputs)
    _check_chunks(g, req, wrt)
    actx = AssignContext.build(g, wrt, explained, batchnorm)
    assigns = _assigners(req, actx, src)
    fwd = list(g.nodes)
    main = g.nodes
    tname, tvi, tinit = make_target_input(g)
    head = Builder(g, main, "onnxplain/target")
    target = resolve_target(head, explained, tname)
    result = Compiled(model=None, explained=explained, target_input=tname)
    emitted = _emit_methods(g, req, assigns, fwd, main, head, explained, target, wrt, result)
    new_outputs = _add_outputs(g, main, emitted, result)
    if health:
        new_outputs += _health_outputs(g, main, head, emitted, explained, target, result)
    proto = g.to_model(extra_inputs=[tvi], extra_outputs=new_outputs, extra_inits=[tinit])
    set_versions(proto)
    add_metadata(proto, {
        "version": __version__, "methods": {m.name: p for m, p in req}, "rules": result.rules,
        "explained_output": out_name, "explained_tensor": explained, "explained_note": note,
        "explained_inputs": wrt, "target_input": tname, "outputs": result.outputs, "health": result.health,
        "canonicalization": {"batchnorm": batchnorm, "strip_softmax": strip_softmax,
                             "remove_identities": True, "fold_constants": True, "fold_shape_computations": True},
    })
    check(proto, src)
    localize_loop_weights(proto)  # after the (light) check: a rename and copies of checked initializers
    result.model = proto
    return result


def _check_batchnorm(batchnorm: str, src: str) -> None:
    if batchnorm not in canon.BATCHNORM_CHOICES:
        raise CompileError([Problem(src, None, None, f"unknown batchnorm treatment '{batchnorm}'",
                                    f"choose one of {', '.join(canon.BATCHNORM_CHOICES)}")])


def _assigners(req: list, actx: AssignContext, src: str) -> dict:
    """Method name -> ``assign(node) -> Rule`` for this graph; every problem reported at once."""
    out, problems = {}, []
    for m, p in req:
        if m.make_assign is None:
            out[m.name] = m.assign or _gradient
            continue
        try:
            out[m.name] = m.make_assign(actx, p)
        except CompileError as exc:
            problems.extend(exc.problems)
    if problems:
        raise CompileError(problems)
    return out


def _seed(head: Builder, m: Method, explained: str, target: str) -> str:
    """The backward seed: one-hot (gradients) or one-hot times the explained logit (relevance)."""
    hot = one_hot_seed(head, explained, target)
    if m.seed == "one_hot":
        return hot
    value = head.op("Mul", explained, hot)
    return head.op("Relu", value) if m.seed == "relu_logit" else value


def _emit_methods(g, req, assigns, fwd, main, head, explained, target, wrt, result) -> dict:
    """Emit every method; return ``method -> {input: map tensor}``. Equal backward passes are shared."""
    produced, emitted = {}, {}
    for m, p in req:
        log: dict = {}
        if m.kind == "backward":
            key = (m.key or m.name, json.dumps(p, sort_keys=True, default=str))
            if key not in produced:
                seed = _seed(head, m, explained, target)
                produced[key] = (emit_backward(g, fwd, {explained: seed}, wrt, assigns[m.name], main, log), log)
            grads, log = produced[key]
            emitted[m.name] = {x: _finish_backward(g, main, m, x, grads[x]) for x in wrt}
        else:
            emitted[m.name] = emit_sampling(g, main, m.name, p, fwd, explained, target, wrt, assigns[m.name], log)
        result.rules[m.name] = log
    return emitted


def _add_outputs(g: Graph, main: list, emitted: dict, result: Compiled) -> list:
    outs = []
    for method, maps in emitted.items():
        result.outputs[method] = {}
        for x, t in maps.items():
            name = g.fresh(f"{method}/{x}")
            main.append(helper.make_node("Identity", [t], [name], name=g.fresh(f"{method}/{x}/output")))
            ti = g.tinfo(x)
            outs.append(helper.make_tensor_value_info(name, ti.dtype, ti.shape))
            result.outputs[method][x] = name
    return outs


def _health_outputs(g, main, head, emitted, explained, target, result) -> list:
    """Monitoring outputs: the explained value, and per method the map sum and a finite flag ([N] each)."""
    b = Builder(g, main, "onnxplain/health")
    value = g.fresh("explained_value")
    main.append(helper.make_node("Identity", [explained_value(b, explained, target)], [value],
                                 name=g.fresh("onnxplain/health/explained_value")))
    dt = g.dtype(explained)
    outs = [helper.make_tensor_value_info(value, dt, ["N"])]
    result.health["explained_value"] = value
    for method, maps in emitted.items():
        flat = [b.op("Reshape", t, b.ints([0, -1])) for t in maps.values()]
        cat = flat[0] if len(flat) == 1 else b.op("Concat", *flat, axis=1)
        total, finite = g.fresh(f"{method}/relevance_sum"), g.fresh(f"{method}/finite")
        main.append(helper.make_node("ReduceSum", [cat, b.ints([1])], [total], keepdims=0, name=g.fresh(total)))
        bad = b.op("Or", b.op("IsNaN", cat), b.op("IsInf", cat))
        main.append(helper.make_node("Not", [b.op("Cast", b.reduce("ReduceMax", b.op("Cast", bad, to=6), [1],
                                                                   keepdims=0), to=9)], [finite], name=g.fresh(finite)))
        outs += [helper.make_tensor_value_info(total, g.dtype(next(iter(maps))), ["N"]),
                 helper.make_tensor_value_info(finite, 9, ["N"])]
        result.health[method] = {"relevance_sum": total, "finite": finite}
    return outs


def _gradient(node):
    from ..rules.gradient import GRADIENT
    return GRADIENT


def _finish_backward(g: Graph, main: list, m: Method, x: str, grad: Optional[str]) -> str:
    b = Builder(g, main, f"{m.name}/{x}")
    if grad is None:
        grad = b.zeros_like(x)
    if m.times_input:
        grad = b.op("Mul", grad, x)
    return grad


def check_model(model, methods="gradient", params: Optional[dict] = None, output: Optional[str] = None,
                inputs: Optional[list] = None, strip_softmax: bool = True, batchnorm: str = "fold",
                source: Optional[str] = None) -> tuple:
    """Dry-run compilation: return ``(rows, problems)``, rows = ``(node, op_type, {method: rule})``.

    Every node is listed; ``rule`` is ``"-"`` for nodes off the differentiated path
    and ``None`` where no rule applies.  All problems are collected.
    """
    src = source or (str(model) if isinstance(model, str) or hasattr(model, "__fspath__") else "model")
    req = parse_methods(methods, params, src)
    _check_batchnorm(batchnorm, src)
    g = prepare(model, src, batchnorm)
    out_name = output or g.output_names()[0]
    explained, _ = explained_tensor(g, out_name, strip_softmax)
    wrt = _select_inputs(g, inputs)
    actx = AssignContext.build(g, wrt, explained, batchnorm)
    problems = []
    try:
        assigns = _assigners(req, actx, src)
    except CompileError as exc:
        problems.extend(exc.problems)
        assigns = {m.name: (lambda n: None) for m, _ in req}
    on_path = differentiable_path(g, g.nodes, wrt, [explained])
    needed = {n.name for n in path_nodes(g, g.nodes, on_path)}
    table = {n.name: (n.op_type, {}) for n in g.nodes}
    seen = {}
    for m, _ in req:
        assign = assigns[m.name]
        key = m.name
        if key not in seen:
            scratch = Graph.from_model(g.to_model(), src)
            scratch.info.update(g.info)
            res = emit_backward(scratch, list(scratch.nodes), {explained: explained}, wrt, assign, [],
                                raise_problems=False)
            seen[key] = res["__problems__"]
            problems.extend(p for p in res["__problems__"] if p not in problems)
        for n in g.nodes:
            rule = assign(n) if n.name in needed else None
            table[n.name][1][m.name] = "-" if n.name not in needed else (rule.name if rule else None)
    rows = [(name, op, rules) for name, (op, rules) in table.items()]
    return rows, problems
