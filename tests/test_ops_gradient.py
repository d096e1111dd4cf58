"""Per-op gradient tests: every VJP adapter against float64 finite differences.

Each case is a tiny float32 model ``x -> body -> h -> Flatten -> Gemm -> logits [N, 5]``
in which the op under test sits in ``body`` (so the explained logit depends on it
through a random linear head and the gradient is non-trivial).  The model is
compiled with ``onnxplain.compile(model, "gradient")`` and run in ONNX Runtime; the
output ``gradient/x`` is compared with :meth:`Reference.logit_gradient` (central
differences on ONNX's float64 reference evaluator) for the float64 top class (the
``target`` input not fed) and for an explicit non-top class (``target`` fed).

Tolerances
----------
The reference is accurate to ~1e-9 (central differences with h = 1e-5 in float64:
truncation ~h^2 |f'''| ~ 1e-10, rounding ~1e-16 / h ~ 1e-11).  The compiled
gradient is computed in float32 (unit roundoff 6e-8); a backward pass through a
handful of ops, each summing at most a few hundred terms, accumulates a relative
L2 error of ~1e-7 (measured: at most 4e-7, for Gelu-tanh and attention).
``TOL = 1e-5`` leaves a factor of 25 for other CPUs and kernels and still
catches any real bug (a wrong window, pad or transposition gives errors of order
1e-1..1; the exact Gelu derivative used for its tanh approximation gave 5e-4).
Inputs are drawn away from kinks and ties (|x - kink| >= 0.05, far larger than the
finite-difference step), so the reference is differentiable where it is evaluated.

The cases are split into this file (linear layers, element-wise ops and
activations) and ``test_ops_more.py`` (pooling, normalization, shape ops and the
further adapters); both use :func:`check_case` defined here.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import onnxplain
from reference import Reference, make_model, rel_err, run

#: Relative L2 tolerance of float32 against float64 (see the module docstring).
TOL = 1e-5
#: Number of classes of the random head.
CLASSES = 5
_R = np.random.default_rng(20240601)


# --------------------------------------------------------------------------- harness
@dataclass
class Case:
    """One test model: ``body`` maps graph input ``x`` to tensor ``h``."""

    name: str
    body: list
    inits: dict
    x: np.ndarray
    opset: int = 18
    tol: float = TOL
    batch: object = None  # None: static batch; a string: a symbolic batch dimension
    marks: tuple = field(default_factory=tuple)
    ref: tuple = None  # (body, inits) of an equivalent body for the reference, or None

    def param(self):
        return pytest.param(self, id=self.name, marks=list(self.marks))


def node(op: str, ins, out="h", **attrs):
    """A node with inputs ``ins`` and outputs ``out`` (a name or a list of names)."""
    outs = [out] if isinstance(out, str) else list(out)
    return helper.make_node(op, list(ins), outs, **attrs)


def w(*shape, scale=1.0) -> np.ndarray:
    """A random float32 constant."""
    return (_R.standard_normal(shape) * scale).astype(np.float32)


def ints(*v) -> np.ndarray:
    return np.array(v, np.int64)


def away(x: np.ndarray, points=(0.0,), margin: float = 0.05) -> np.ndarray:
    """``x`` with every entry moved at least ``margin`` away from each of ``points`` (kinks)."""
    x = np.array(x, np.float64)
    for p in points:
        d = x - p
        near = np.abs(d) < margin
        x[near] = p + np.where(d[near] >= 0, 1.0, -1.0) * (margin + np.abs(d[near]))
    return x.astype(np.float32)


def xn(*shape, scale=1.0, kinks=None) -> np.ndarray:
    """A standard-normal input (times ``scale``), optionally pushed away from ``kinks``."""
    x = (_R.standard_normal(shape) * scale).astype(np.float32)
    return away(x, kinks) if kinks is not None else x


def xpos(*shape, lo=0.5, hi=2.0) -> np.ndarray:
    """A positive input, uniform in ``[lo, hi]``."""
    return _R.uniform(lo, hi, shape).astype(np.float32)


class Erf(OpRun):
    """``Erf`` in the input's precision (ONNX's reference ``Erf`` always rounds to float32)."""

    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


class LRN(OpRun):
    """``LRN`` as specified (ONNX's reference implementation loops over the batch instead of the channels)."""

    op_domain = ""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        sq = np.zeros_like(x)
        lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
        for c in range(x.shape[1]):
            sq[:, c] = np.sum(x[:, max(0, c - lo):c + hi + 1] ** 2, axis=1)
        return ((x / (bias + alpha / size * sq) ** beta).astype(x.dtype),)


#: Replacements for ONNX reference ops that are imprecise or wrong.
FIXED_OPS = [Erf, LRN]


def reference(model) -> Reference:
    """:class:`Reference` of ``model``, its evaluator using :data:`FIXED_OPS`."""
    ref = Reference(model)
    ref.ev = ReferenceEvaluator(ref.model64, new_ops=FIXED_OPS)
    return ref


def _body_output(body, inits, x, opset) -> np.ndarray:
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    g = helper.make_graph(body, "body", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("h", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(m, new_ops=FIXED_OPS).run(["h"], {"x": x})[0]


def with_head(case: Case, use_ref: bool = False):
    """The full model: the body (``case.ref`` with ``use_ref``) then ``Flatten`` and a random ``Gemm`` head."""
    body, inits = case.ref if use_ref else (case.body, case.inits)
    h = _body_output(*(case.ref or (body, inits)), case.x, case.opset)  # same shape; the reference may fail on body
    feat = int(np.prod(h.shape[1:]))
    head_rng = np.random.default_rng(feat)
    inits = dict(inits)
    inits["head/W"] = (head_rng.standard_normal((feat, CLASSES)) / np.sqrt(feat)).astype(np.float32)
    inits["head/b"] = head_rng.standard_normal(CLASSES).astype(np.float32) * 0.1
    nodes = list(body) + [node("Flatten", ["h"], "head/f", axis=1), node("Gemm", ["head/f", "head/W", "head/b"], "y")]
    n = case.batch or case.x.shape[0]
    return make_model(nodes, [("x", [n] + list(case.x.shape[1:]))], [("y", [n, CLASSES])], inits, opset=case.opset)


def check_case(case: Case) -> float:
    """Compile ``case``, compare ``gradient/x`` with finite differences; return the worst relative error.

    Where ``case.ref`` is set, the finite differences run on that equivalent body instead (for ops
    that ONNX's reference evaluator gets wrong); the forward passes of both are checked to agree.
    """
    model = with_head(case)
    compiled = onnxplain.compile(model, "gradient")
    ref = reference(with_head(case, use_ref=True) if case.ref else model)
    logits = ref({"x": case.x}).reshape(len(case.x), -1)
    top, other = logits.argmax(1), logits.argmin(1)
    out = run(compiled, {"x": case.x})
    assert rel_err(out["y"], logits) < 1e-5, "ONNX Runtime and the float64 reference disagree on the forward pass"
    assert rel_err(out["y"], run(model, {"x": case.x})["y"]) < 1e-6, "the compiled forward pass changed"
    worst = 0.0
    for target, feed in ((top, False), (other, True)):
        feeds = {"x": case.x, "target": target.astype(np.int64)} if feed else {"x": case.x}
        got = run(compiled, feeds)["gradient/x"]
        want = ref.logit_gradient(case.x, target)
        assert got.shape == case.x.shape
        err = rel_err(got, want)
        print(f"ERR {case.name} {'explicit' if feed else 'top'} {err:.3e}")  # pytest -s | grep ERR: the errors
        assert err < case.tol, f"{case.name}: relative error {err:.3e} (target {target}, fed={feed})"
        worst = max(worst, err)
    return worst


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(i) for i in v) if v else "()"
    return str(v)


_SHORT = {"kernel_shape": "k", "strides": "s", "pads": "p", "dilations": "d", "group": "g", "auto_pad": "",
          "output_padding": "op", "output_shape": "out", "ceil_mode": "ceil", "count_include_pad": "cip",
          "coordinate_transformation_mode": "", "nearest_mode": "", "keepdims": "keep"}


def _label(op: str, **kw) -> str:
    """A test id: ``op`` and the attributes, abbreviated."""
    return op + "-" + "-".join(f"{_SHORT.get(k, k)}{_fmt(v)}" for k, v in kw.items() if v is not None)


# --------------------------------------------------------------------------- Conv
def conv_case(spatial, kernel, cin=4, cout=6, bias=True, **attrs) -> Case:
    """A Conv on ``x [2, cin, *spatial]`` with a random ``[cout, cin/group, *kernel]`` weight."""
    group = attrs.get("group", 1)
    inits = {"W": w(cout, cin // group, *kernel, scale=0.5)}
    if bias:
        inits["B"] = w(cout)
    name = _label(f"Conv{len(spatial)}d", k=kernel, bias=int(bias), **attrs)
    return Case(name, [node("Conv", ["x", "W"] + (["B"] if bias else []), **attrs)], inits, xn(2, cin, *spatial))


def _conv_cases():
    cases = []
    pads_opts = ([0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 2, 0])
    for i, (s, p, d, grp) in enumerate(itertools.product([(1, 1), (2, 2), (3, 2)], pads_opts,
                                                         [(1, 1), (1, 2)], [1, 2, 4])):
        cout = 8 if (grp == 4 and i % 2) else (4 if grp == 4 else 6)  # depthwise, multiplier 1 or 2
        cases.append(conv_case((7, 6), (3, 2), cout=cout, bias=i % 2 == 0, strides=list(s), pads=p,
                               dilations=list(d), group=grp))
    for auto, s, k, d in itertools.product(["SAME_UPPER", "SAME_LOWER", "VALID"], [1, 2], [(3, 3), (2, 4)],
                                           [1, 2]):
        if d > 1 and auto != "VALID":
            continue  # ONNX Runtime rejects dilations with SAME_* auto_pad
        cases.append(conv_case((7, 9), k, auto_pad=auto, strides=[s, s], dilations=[d, d]))
    cases += [
        conv_case((9,), (3,), strides=[2], pads=[1, 2], bias=False),
        conv_case((9,), (3,), strides=[3], dilations=[2], group=2),
        conv_case((8,), (4,), strides=[2], auto_pad="SAME_LOWER"),
        conv_case((8,), (1,), strides=[3]),
        conv_case((5, 4, 5), (3, 2, 2), cin=2, cout=4, strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1]),
        conv_case((5, 4, 5), (2, 3, 2), cin=2, cout=4, strides=[1, 2, 2], dilations=[1, 1, 2], group=2),
        conv_case((5, 4, 5), (3, 3, 3), cin=2, cout=2, auto_pad="SAME_UPPER", strides=[2, 2, 2], group=2),
        conv_case((7, 6), (1, 1), strides=[2, 3]),
        conv_case((8, 8), (2, 2), strides=[3, 3]),  # rows/cols no window covers
    ]
    c = conv_case((7, 6), (3, 3), strides=[2, 2], pads=[1, 0, 0, 1])
    c.name, c.batch = c.name + "-dynbatch", "N"
    return cases + [c]


# --------------------------------------------------------------------------- ConvTranspose
def convt_geometry(spatial, kernel, attrs) -> tuple:
    """``(strides, dilations, pads, out_spatial)`` of a ConvTranspose, following the ONNX spec."""
    nd = len(spatial)
    s, d = attrs.get("strides") or [1] * nd, attrs.get("dilations") or [1] * nd
    op = attrs.get("output_padding") or [0] * nd
    eff = [(k - 1) * dd + 1 for k, dd in zip(kernel, d)]
    auto, out = attrs.get("auto_pad", "NOTSET"), attrs.get("output_shape")
    pads = list(attrs.get("pads") or [0] * (2 * nd)) if auto == "NOTSET" else [0] * (2 * nd)
    if out is None and auto.startswith("SAME"):
        out = [n * ss for n, ss in zip(spatial, s)]
    if out is not None:
        for i in range(nd):
            total = s[i] * (spatial[i] - 1) + op[i] + eff[i] - out[i]
            small, big = total // 2, total - total // 2
            pads[i], pads[nd + i] = (small, big) if auto == "SAME_UPPER" else (big, small)
    out = [s[i] * (spatial[i] - 1) + op[i] + eff[i] - pads[i] - pads[nd + i] for i in range(nd)]
    return s, d, pads, out


def convt_dense(cin, spatial, wt, group, attrs) -> tuple:
    """The ConvTranspose as a dense matrix ``[cin*prod(spatial), cout*prod(out)]``, straight from its definition.

    ``y[co, i*s - p_b + k*d] += x[ci, i] * W[ci, co - g*Cout/G, k]`` for ``ci`` in group ``g``.
    """
    nd, coutg = len(spatial), wt.shape[1]
    s, d, pads, out = convt_geometry(spatial, wt.shape[2:], attrs)
    m = np.zeros((cin, *spatial, coutg * group, *out))
    for ci in range(cin):
        grp = ci // (cin // group)
        for i in np.ndindex(*spatial):
            for k in np.ndindex(*wt.shape[2:]):
                o = tuple(i[a] * s[a] - pads[a] + k[a] * d[a] for a in range(nd))
                if all(0 <= o[a] < out[a] for a in range(nd)):
                    m[(ci, *i, slice(grp * coutg, (grp + 1) * coutg), *o)] = wt[(ci, slice(None), *k)]
    return m.reshape(cin * int(np.prod(spatial)), -1).astype(np.float32), out


def convt_case(spatial, kernel, cin=4, cout=4, bias=True, **attrs) -> Case:
    """A ConvTranspose on ``x [2, cin, *spatial]``, weight ``[cin, cout/group, *kernel]``.

    ONNX's reference ConvTranspose rejects groups and dilations, so the finite differences run
    on the dense matrix of :func:`convt_dense` (checked against ONNX Runtime's forward pass).
    """
    group = attrs.get("group", 1)
    inits = {"W": w(cin, cout // group, *kernel, scale=0.5)}
    if bias:
        inits["B"] = w(cout)
    name = _label(f"ConvTranspose{len(spatial)}d", k=kernel, bias=int(bias), **attrs)
    dense, out = convt_dense(cin, spatial, inits["W"], group, attrs)
    full_bias = np.repeat(inits["B"] if bias else np.zeros(cout, np.float32), int(np.prod(out)))
    ref = ([node("Reshape", ["x", "flat"], "xf"), node("MatMul", ["xf", "M"], "yf"), node("Add", ["yf", "Bf"], "yb"),
            node("Reshape", ["yb", "shape"])],
           {"flat": ints(0, -1), "M": dense, "Bf": full_bias, "shape": ints(0, cout, *out)})
    return Case(name, [node("ConvTranspose", ["x", "W"] + (["B"] if bias else []), **attrs)], inits,
                xn(2, cin, *spatial), ref=ref)


def _convt_cases():
    cases = []
    for i, (s, p, op, grp, d) in enumerate(itertools.product([1, 2, 3], ([0] * 4, [1] * 4, [0, 1, 1, 0]),
                                                            [0, 1], [1, 2], [1, 2])):
        if op >= s:  # ONNX allows output_padding < max(stride, dilation); ONNX Runtime needs < stride
            continue
        cases.append(convt_case((4, 3), (3, 2), bias=i % 2 == 0, strides=[s, s], pads=p,
                                output_padding=[op, op] if op else None, group=grp, dilations=[d, d]))
    cases += [
        convt_case((4, 3), (3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
        convt_case((4, 3), (2, 3), strides=[2, 3], auto_pad="SAME_LOWER"),
        convt_case((4, 3), (3, 3), strides=[2, 2], auto_pad="VALID"),
        convt_case((4, 3), (3, 3), strides=[2, 2], output_shape=[8, 6]),
        convt_case((5,), (3,), strides=[2], pads=[1, 0], output_padding=[1]),
        convt_case((3, 2, 3), (2, 2, 3), cin=2, cout=2, strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0], group=2),
        convt_case((4, 3), (3, 3), cout=8, group=4, strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    return cases


# --------------------------------------------------------------------------- Gemm, MatMul
def _gemm_cases():
    cases = []
    k, m = 6, 4
    for ta, tb, cshape, (al, be) in itertools.product([0, 1], [0, 1], [None, [], [m], [1, m]],
                                                      [(1.0, 1.0), (0.7, -1.3)]):
        body = [node("Transpose", ["x"], "a", perm=[1, 0])] if ta else []
        ins = ["a" if ta else "x", "B"] + (["C"] if cshape is not None else [])
        body.append(node("Gemm", ins, transA=ta, transB=tb, alpha=al, beta=be))
        inits = {"B": w(m, k) if tb else w(k, m)}
        if cshape is not None:
            inits["C"] = w(*cshape)
        cases.append(Case(_label("Gemm-xA", tA=ta, tB=tb, C=cshape, alpha=al, beta=be), body, inits, xn(2, k)))
    for ta, tb, cshape in itertools.product([0, 1], [0, 1], [None, [m, 1], [1]]):
        # x feeds B: Y = op(A) op(B) is [m, N]; transposed back to [N, m]
        body = [] if tb else [node("Transpose", ["x"], "bx", perm=[1, 0])]
        ins = ["A", "x" if tb else "bx"] + (["C"] if cshape is not None else [])
        body += [node("Gemm", ins, "y0", transA=ta, transB=tb, alpha=0.8, beta=1.5),
                 node("Transpose", ["y0"], perm=[1, 0])]
        inits = {"A": w(k, m) if ta else w(m, k)}
        if cshape is not None:
            inits["C"] = w(*cshape)
        cases.append(Case(_label("Gemm-xB", tA=ta, tB=tb, C=cshape), body, inits, xn(2, k)))
    body = [node("Tanh", ["x"], "t"), node("Gemm", ["x", "B", "t"], alpha=0.5, beta=2.0)]
    cases.append(Case("Gemm-C-depends-on-x", body, {"B": w(k, k)}, xn(2, k)))
    return cases


def _matmul_cases():
    c = []
    mm = lambda a, b, out="h": node("MatMul", [a, b], out)  # noqa: E731
    c.append(Case("MatMul-2d-const", [mm("x", "W")], {"W": w(6, 4)}, xn(2, 6)))
    c.append(Case("MatMul-3d-x-2d-const", [mm("x", "W")], {"W": w(4, 5)}, xn(2, 3, 4)))
    c.append(Case("MatMul-3d-x-3d-const-bcast", [mm("x", "W")], {"W": w(1, 4, 5)}, xn(2, 3, 4)))
    c.append(Case("MatMul-4d-x-3d-const", [mm("x", "W")], {"W": w(3, 4, 5)}, xn(2, 1, 3, 4)))
    c.append(Case("MatMul-4d-x-2d-const", [mm("x", "W")], {"W": w(5, 2)}, xn(2, 3, 4, 5)))
    c.append(Case("MatMul-const-2d-x-3d", [mm("W", "x")], {"W": w(4, 3)}, xn(2, 3, 5)))
    c.append(Case("MatMul-x-1d-const", [mm("x", "W")], {"W": w(4)}, xn(2, 3, 4)))
    c.append(Case("MatMul-2d-x-1d-const", [mm("x", "W")], {"W": w(4)}, xn(2, 4)))
    c.append(Case("MatMul-1d-const-x", [mm("W", "x")], {"W": w(3)}, xn(2, 3, 4)))
    c.append(Case("MatMul-x-xT", [node("Transpose", ["x"], "xt", perm=[0, 2, 1]), mm("x", "xt")], {},
                  xn(2, 3, 4)))
    attn = [mm("x", "Wq", "q"), mm("x", "Wk", "k"), mm("x", "Wv", "v"),
            node("Transpose", ["k"], "kt", perm=[0, 2, 1]), mm("q", "kt", "s"),
            node("Mul", ["s", "scale"], "s2"), node("Softmax", ["s2"], "a", axis=-1), mm("a", "v")]
    c.append(Case("MatMul-attention", attn, {"Wq": w(4, 4), "Wk": w(4, 4), "Wv": w(4, 3),
                                             "scale": np.array(0.5, np.float32)}, xn(2, 3, 4)))
    bc = [node("Unsqueeze", ["x", "ax1"], "a"), node("Transpose", ["a"], "at", perm=[0, 1, 3, 2]),
          node("Mul", ["at", "two"], "at2"), node("Concat", ["at", "at2"], "b", axis=1), mm("a", "b")]
    c.append(Case("MatMul-both-x-bcast", bc, {"ax1": ints(1), "two": np.array([[[[2.0]]]], np.float32)},
                  xn(2, 3, 4)))
    return c


# --------------------------------------------------------------------------- element-wise
X4 = (2, 3, 4, 5)


def _binary_cases():
    cases = []
    for op in ("Add", "Sub", "Mul", "Div"):
        safe = op == "Div"
        xin = xn(*X4, kinks=(0.0,), ) if not safe else away(xn(*X4), (0.0,), 0.5)
        m2 = [node("Mul", ["x", "x"], "sq"), node("ReduceMean", ["sq", "ax1"], "ms"), node("Add", ["ms", "one"], "m")]
        variants = {
            "x-const": ([node(op, ["x", "C"])], {"C": away(w(3, 4, 5), (0.0,), 0.5)}),
            "x-const-bcast": ([node(op, ["x", "C"])], {"C": away(w(3, 1, 5), (0.0,), 0.5)}),
            "const-x": ([node(op, ["C", "x"])], {"C": w(1, 4, 1)}),
            "xsmall-const": ([node("ReduceMean", ["x", "ax2"], "r"), node("Tanh", ["r"], "t"),
                              node("Add", ["t", "two"], "t2"), node(op, ["t2", "C"])],
                             {"ax2": ints(2), "two": np.array(2.0, np.float32), "C": away(w(4, 1), (0.0,), 0.5)}),
            "x-fx-bcast": (m2 + [node(op, ["x", "m"])], {"ax1": ints(1), "one": np.array(1.0, np.float32)}),
            "fx-bcast-x": (m2 + [node(op, ["m", "x"])], {"ax1": ints(1), "one": np.array(1.0, np.float32)}),
            "x-x": ([node(op, ["x", "x"])], {}),
            "lead-dims": ([node("Transpose", ["x"], "xt", perm=[1, 2, 3, 0]), node(op, ["xt", "C"], "o"),
                           node("Transpose", ["o"], perm=[4, 0, 1, 2, 3])], {"C": away(w(2, 1, 1, 1, 1), (0.0,), .5)}),
        }
        for vname, (body, inits) in variants.items():
            cases.append(Case(f"{op}-{vname}", body, inits, xin))
    t = [node("Tanh", ["x"], "t")]
    cases += [
        Case("Sum-3", t + [node("Sum", ["x", "C", "t"])], {"C": w(3, 1, 5)}, xn(*X4)),
        Case("Sum-1", [node("Sum", ["x"])], {}, xn(*X4)),
        Case("Sum-bcast-x", [node("ReduceMean", ["x", "ax"], "r"), node("Sum", ["x", "r", "C"])],
             {"ax": ints(3), "C": w(1, 5)}, xn(*X4)),
        Case("Mean-3", t + [node("Mean", ["x", "C", "t"])], {"C": w(1, 4, 1)}, xn(*X4)),
        Case("Mean-2-bcast", [node("ReduceMean", ["x", "ax"], "r"), node("Mean", ["r", "x"])], {"ax": ints(1)},
             xn(*X4), ref=([node("ReduceMean", ["x", "ax"], "r"), node("Add", ["r", "x"], "s"),
                            node("Mul", ["s", "half"])], {"ax": ints(1), "half": np.array(0.5, np.float32)})),
    ]
    return cases


def _pow_cases():
    f = np.float32
    return [
        Case("Pow-2", [node("Pow", ["x", "p"])], {"p": np.array(2.0, f)}, xn(*X4)),
        Case("Pow-3", [node("Pow", ["x", "p"])], {"p": np.array(3.0, f)}, xn(*X4)),
        Case("Pow-0.5", [node("Pow", ["x", "p"])], {"p": np.array(0.5, f)}, xpos(*X4)),
        Case("Pow-chan", [node("Pow", ["x", "p"])], {"p": np.array([-1.5, 0.5, 2.5], f).reshape(3, 1, 1)}, xpos(*X4)),
        Case("Pow-int64", [node("Pow", ["x", "p"])], {"p": np.array(2, np.int64)}, xn(*X4)),
        Case("Pow-bcast-x", [node("Pow", ["x", "p"])], {"p": np.array([1.0, 2.0, 3.0, 0.5], f).reshape(4, 1)},
             xpos(2, 3, 1, 5)),
    ]


def _unary_cases():
    f = np.float32
    u = lambda op, x, **a: Case(_label(op, **a) if a else op, [node(op, ["x"], **a)], {}, x)  # noqa: E731
    c = [u("Sqrt", xpos(*X4)), u("Exp", xn(*X4)), u("Log", xpos(*X4)), u("Reciprocal", away(xn(*X4), (0.0,), 0.5)),
         u("Abs", xn(*X4, kinks=(0.0,))), u("Neg", xn(*X4))]
    cond = _R.random((4, 5)) > 0.5
    cases_where = [
        Case("Where-x-fx", [node("Tanh", ["x"], "t"), node("Where", ["c", "x", "t"])], {"c": cond}, xn(*X4)),
        Case("Where-bcast-cond-const", [node("Where", ["c", "x", "k"])],
             {"c": cond[None, :, :1], "k": np.array(0.5, f)}, xn(*X4)),
        Case("Where-const-xsmall", [node("ReduceMean", ["x", "ax"], "r"), node("Where", ["c", "k", "r"])],
             {"c": cond, "k": w(3, 4, 5), "ax": ints(1)}, xn(*X4)),
        Case("Where-cond-of-x", [node("Greater", ["x", "z"], "c"), node("Mul", ["x", "s"], "xs"),
                                 node("Where", ["c", "x", "xs"])], {"z": np.array(0.0, f), "s": np.array(0.1, f)},
             xn(*X4, kinks=(0.0,))),
    ]
    return c + cases_where


def _activation_cases():
    f = np.float32
    u = lambda op, x, **a: Case(_label(op, **a) if a else op, [node(op, ["x"], **a)], {}, x)  # noqa: E731
    k0 = (0.0,)
    c = [u("Relu", xn(*X4, kinks=k0)), u("LeakyRelu", xn(*X4, kinks=k0)),
         u("LeakyRelu", xn(*X4, kinks=k0), alpha=0.2), u("Elu", xn(*X4, kinks=k0)),
         u("Elu", xn(*X4, kinks=k0), alpha=0.5), u("Selu", xn(*X4, kinks=k0)),
         u("Selu", xn(*X4, kinks=k0), alpha=1.5, gamma=1.1), u("Sigmoid", xn(*X4, scale=2)),
         u("Tanh", xn(*X4)), u("HardSigmoid", xn(*X4, scale=3, kinks=(-2.5, 2.5))),
         u("HardSigmoid", xn(*X4, scale=2, kinks=(-4 / 3, 2.0)), alpha=0.3, beta=0.4),
         u("HardSwish", xn(*X4, scale=3, kinks=(-3.0, 3.0))), u("Softplus", xn(*X4, scale=2)),
         u("Erf", xn(*X4)),
         Case("Gelu-none", [node("Gelu", ["x"])], {}, xn(*X4, scale=2), opset=20, ref=(  # Gelu's function body
             [node("Mul", ["x", "r2"], "a"), node("Erf", ["a"], "e"), node("Add", ["e", "one"], "e1"),  # ignores
              node("Mul", ["x", "e1"], "m"), node("Mul", ["m", "half"])],  # our float64 Erf
             {"r2": np.array(0.5 ** 0.5, np.float32), "one": np.array(1.0, np.float32),
              "half": np.array(0.5, np.float32)})),
         Case("Gelu-tanh", [node("Gelu", ["x"], approximate="tanh")], {}, xn(*X4, scale=2), opset=20)]
    for slope in (w(3, 1, 1), w(1), w(5)):
        c.append(Case(f"PRelu-slope{_fmt(list(slope.shape))}", [node("PRelu", ["x", "s"])], {"s": slope},
                      xn(*X4, kinks=k0)))
    clip = lambda name, ins, inits, x: Case(name, [node("Clip", ["x"] + ins)], inits, x)  # noqa: E731
    lo, hi = np.array(-0.5, f), np.array(0.7, f)
    c += [clip("Clip-min-max", ["lo", "hi"], {"lo": lo, "hi": hi}, xn(*X4, kinks=(-0.5, 0.7))),
          clip("Clip-min", ["lo"], {"lo": lo}, xn(*X4, kinks=(-0.5,))),
          clip("Clip-max", ["", "hi"], {"hi": hi}, xn(*X4, kinks=(0.7,))),
          clip("Clip-relu6", ["lo", "hi"], {"lo": np.array(0.0, f), "hi": np.array(6.0, f)},
               xn(*X4, scale=4, kinks=(0.0, 6.0))),
          clip("Clip-none", [], {}, xn(*X4))]
    for op, axis in (("Softmax", 1), ("Softmax", 2), ("Softmax", -1), ("LogSoftmax", 1), ("LogSoftmax", -1)):
        c.append(Case(f"{op}-axis{axis}-mid", [node(op, ["x"], "s", axis=axis), node("Mul", ["s", "k"])],
                      {"k": w(3, 4, 5)}, xn(*X4, scale=2)))
    c.append(Case("Softmax-opset17", [node("Softmax", ["x"])], {}, xn(*X4), opset=17))
    for axis, sshape, bias in ((-1, (5,), True), (1, (3, 4, 5), False), (2, (4, 5), True)):
        ins = ["x", "g"] + (["b"] if bias else [])
        inits = {"g": w(*sshape)} | ({"b": w(*sshape)} if bias else {})
        c.append(Case(_label("LayerNormalization", axis=axis, bias=int(bias)),
                      [node("LayerNormalization", ins, axis=axis, epsilon=1e-3)], inits, xn(*X4)))
    return c


def dynamic_batch(cases, names) -> list:
    """Copies of the cases named in ``names`` whose input has the symbolic batch dimension ``N``."""
    found = [dataclasses.replace(c, name=c.name + "-dynbatch", batch="N") for c in cases if c.name in names]
    missing = set(names) - {c.name for c in cases}
    assert not missing, f"no cases named {missing}"
    return found


CASES = (_conv_cases() + _convt_cases() + _gemm_cases() + _matmul_cases() + _binary_cases() + _pow_cases()
         + _unary_cases() + _activation_cases())
CASES += dynamic_batch(CASES, {
    "ConvTranspose2d-k3,2-bias1-s2,2-p0,1,1,0-op1,1-g2-d1,1",
    "Gemm-xA-tA1-tB1-C1,4-alpha0.7-beta-1.3", "MatMul-4d-x-3d-const", "MatMul-x-1d-const", "MatMul-attention",
    "MatMul-both-x-bcast", "Add-xsmall-const", "Mul-fx-bcast-x", "Div-lead-dims", "Where-const-xsmall",
    "Pow-bcast-x", "PRelu-slope3,1,1", "LayerNormalization-axis1-bias0", "Softmax-axis1-mid"})


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_gradient(case):
    check_case(case)
