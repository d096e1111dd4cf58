"""The small, scikit-learn-like public API: ``compile``, ``compile_file``, ``Explainer``, ``methods``, ``check``."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import onnx

from .compiler.api import check_model, compile_graph
from .compiler.export import save_atomic
from .rules.methods import METHODS


def compile(model, methods: Union[str, Sequence[str], dict] = "gradient", *, output: Optional[str] = None,
            inputs: Optional[Sequence[str]] = None, strip_softmax: bool = True, batchnorm: str = "fold",
            fold_bn: bool = True, health: bool = False, params: Optional[dict] = None,
            precision: str = "float32", device: str = "cpu", **kwargs) -> onnx.ModelProto:
    """Compile an ONNX model into one whose extra outputs are explanation maps.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The model (external-data files are read next to a path).
    methods : str, list of str or dict
        Method names (see :func:`methods`), or a dict ``name -> {param: value}``.
    output : str, optional
        The explained output (default: the model's first output).
    inputs : list of str, optional
        The explained inputs (default: every floating-point input).
    strip_softmax : bool
        Explain the input of a final Softmax/LogSoftmax (the logit), as iNNvestigate and Zennit do.
    batchnorm : str
        How BatchNormalization is treated (recorded in the metadata): ``"fold"`` (default, as
        Zennit's canonizers) folds it into the preceding Conv/ConvTranspose/Gemm where that is
        exact; ``"fold_after"`` into the following Gemm or unpadded Conv where exact, else into the
        preceding layer; ``"pass"`` keeps it; ``"linear"`` keeps it as its own linear layer (the
        epsilon rule in LRP methods), ``"linear2"`` as two linear maps (shift, then scale).
        BatchNorm nodes that stay get Zennit's pass-through rule in LRP methods unless
        ``linear``/``linear2``; gradients are exact in every case.
    fold_bn : bool
        ``False`` is a shorthand for ``batchnorm="pass"``.
    health : bool
        Add monitoring outputs: ``explained_value`` [N] (the explained logit) and per method
        ``<method>/relevance_sum`` [N] (the map summed over every explained input) and
        ``<method>/finite`` [N] (bool: no NaN/Inf in the sample's maps).
    params : dict, optional
        Parameters by name (``"steps"``) or by method (``"integrated_gradients.steps"``).
    precision : {"float32", "float16"}
        ``"float16"`` runs the heavy arithmetic (convolutions, matrix products, pooling and the
        elementwise ops between them) in float16 for GPUs, keeping the inputs and outputs float32
        and the fragile parts (LRP stabilisers and divisions, softmax, reductions, the noise
        generator, loop accumulators) float32; see :mod:`onnxplain.compiler.precision`.
    device : {"cpu", "cuda"}
        The ONNX Runtime provider the file is meant for (it loads on any).  ``"cuda"`` writes what
        :func:`onnxplain.runtime.cuda_rewrite.for_cuda` makes of the graph: no LRP scheduling hints
        (on the CPU they lower peak memory; on a GPU their shape arithmetic would wait for the device
        once per layer) and ``ScatterElements`` for ``MaxUnpool`` (no CUDA kernel).  Use it for files
        that run in plain onnxruntime-gpu; :class:`Explainer` and ``make_session`` do it themselves.
    **kwargs
        More parameters, as in ``params``.

    Returns
    -------
    onnx.ModelProto
        The original inputs and outputs, plus the optional int64 input ``target`` (shape [N];
        negative or absent = top-scoring output) and one output ``<method>/<input>`` per method and
        explained input, shaped like the input.

    Raises
    ------
    CompileError
        Listing every problem found (unknown method or parameter, unsupported nodes, ...).
    """
    merged = dict(params or {})
    merged.update(kwargs)
    _reject_agnostic(methods)
    if not fold_bn and batchnorm == "fold":
        batchnorm = "pass"
    bad = [(what, value, allowed) for what, value, allowed in (("precision", precision, ("float32", "float16")),
                                                                ("device", device, ("cpu", "cuda")))
           if value not in allowed]
    if bad:
        from .compiler.errors import CompileError, Problem
        raise CompileError([Problem("model", None, None, f"unknown {what} '{value}'",
                                    f"use {what}='{allowed[0]}' (default) or '{allowed[1]}'")
                            for what, value, allowed in bad])
    compiled = compile_graph(model, methods, merged, output, list(inputs) if inputs else None, strip_softmax,
                             batchnorm, health).model
    if precision == "float16":
        from .compiler.precision import to_float16
        compiled = to_float16(compiled)
    if device == "cuda":
        from .compiler.export import add_metadata
        from .runtime.cuda_rewrite import for_cuda
        for_cuda(compiled)
        add_metadata(compiled, {"device": "cuda"})
    return compiled


def _reject_agnostic(methods) -> None:
    from .agnostic import AGNOSTIC
    from .compiler.errors import CompileError, Problem

    names = [methods] if isinstance(methods, str) else list(methods)
    bad = [m for m in names if m in AGNOSTIC]
    if bad:
        raise CompileError([Problem("model", None, None, f"'{m}' is a model-agnostic method: it runs the model "
                                    "on perturbed inputs and is not compiled into the graph",
                                    "use onnxplain.Explainer or `onnxplain explain -m " + m + "`") for m in bad])


def compile_file(model, out_path, methods="gradient", **kwargs) -> onnx.ModelProto:
    """:func:`compile` and write the result to ``out_path`` atomically (complete or absent)."""
    compiled = compile(model, methods, **kwargs)
    save_atomic(compiled, out_path)
    return compiled


def methods() -> dict:
    """The method registry: name -> :class:`~onnxplain.rules.methods.Method` (summary, parameters)."""
    return dict(METHODS)


def check(model, methods="gradient", **kwargs) -> tuple:
    """Return ``(rows, problems)``: every node with the rule each method gives it, and every problem."""
    keys = ("output", "inputs", "strip_softmax", "fold_bn", "batchnorm", "health")
    params = {k: v for k, v in kwargs.items() if k not in keys}
    opts = {k: v for k, v in kwargs.items() if k in keys and k not in ("health", "fold_bn")}
    if kwargs.get("fold_bn") is False and opts.get("batchnorm", "fold") == "fold":
        opts["batchnorm"] = "pass"
    return check_model(model, methods, params, **opts)


_COMPILE_OPTIONS = ("output", "inputs", "strip_softmax", "batchnorm", "fold_bn", "health", "precision")


class Explainer:
    """Compile a model once and explain inputs with ONNX Runtime.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The model to explain.
    methods : str, list of str or dict
        As in :func:`compile`, plus the model-agnostic methods (``occlusion``, ``lime``; see
        :mod:`onnxplain.agnostic`): those are not compiled but run on the original model
        through ONNX Runtime, on perturbed copies of the input, in memory-bounded batches
        (parameters ``max_batch``, ``max_bytes``).
    providers : list of str, optional
        ONNX Runtime execution providers (default: CUDA where available, then CPU).
    batch_size : int
        Samples per inference; longer inputs run in batches with a progress bar.
    threads : int, optional
        Intra-op threads of the CPU provider.
    device : str, optional
        ``"auto"`` (CUDA where ``onnxruntime-gpu`` provides it, else CPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:K"``; ignored when ``providers`` is given. Inputs already on the GPU (torch CUDA
        tensors, CuPy arrays, ``OrtValue``) are bound without copies and the maps stay on the GPU
        (see docs/cuda.md). ``precision="float16"`` (a :func:`compile` option) suits GPUs.
    **kwargs
        Passed to :func:`compile`.

    Examples
    --------
    >>> exp = Explainer("model.onnx", ["gradient", "smoothgrad"], samples=16)  # doctest: +SKIP
    >>> maps = exp.explain(images, target=[3, 3, 5])  # doctest: +SKIP
    >>> maps["smoothgrad"].shape == images.shape  # doctest: +SKIP
    True
    """

    def __init__(self, model, methods="gradient", *, providers=None, batch_size: int = 16,
                 threads: Optional[int] = None, progress: Optional[bool] = None, device: Optional[str] = None,
                 **kwargs):
        from .agnostic import AgnosticEngine, split_request
        from .runtime.session import CompiledRunner, providers_for

        if providers is None and device is not None:
            providers = providers_for(device)

        opts = {k: kwargs.pop(k) for k in _COMPILE_OPTIONS if k in kwargs}
        params = dict(kwargs.pop("params", None) or {})
        params.update(kwargs)
        compiled, cparams, agnostic = split_request(methods, params)
        self.compiled, self.runner, self.agnostic = None, None, None
        if compiled or not agnostic:
            self.compiled = compile(model, compiled, params=cparams, **opts)
            self.runner = CompiledRunner(self.compiled, providers, threads)
        if agnostic:
            self.agnostic = AgnosticEngine(model, agnostic, opts.get("output"), opts.get("inputs"),
                                           opts.get("strip_softmax", True), providers, threads, progress)
            self.runner = self.runner or self.agnostic.runner
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.outputs = self.runner.outputs
        self.order = [methods] if isinstance(methods, str) else list(methods)

    def explain(self, x, target=None, *, return_outputs: bool = False) -> dict:
        """Explain ``x``.

        Parameters
        ----------
        x : numpy.ndarray or dict
            The input batch (or a dict input name -> array for several inputs).
        target : int or array of int, optional
            Class index per sample (default: each sample's top-scoring class).
        return_outputs : bool
            Also return the model's own outputs under ``"outputs"``.

        Returns
        -------
        dict
            ``method -> array`` shaped like the input (``method -> {input: array}`` when several
            inputs are explained).
        """
        from tqdm.auto import tqdm

        from .compiler.errors import InputError

        from .runtime.device import concat, is_device_value, sample_count, take

        inputs = x if isinstance(x, dict) else {self._single_input(): x}
        n = sample_count(next(iter(inputs.values())))
        if any(sample_count(v) != n for v in inputs.values()):
            raise InputError("all inputs must have the same number of samples")
        tgt = None if target is None or is_device_value(target) else self.runner.check_target(target, n)
        tgt = target if tgt is None else tgt
        if self.compiled is None:
            return self._explain_agnostic(inputs, tgt, return_outputs)
        starts = range(0, n, self.batch_size)
        show = self.progress if self.progress is not None else len(starts) > 1
        pieces = []
        for s in tqdm(starts, desc="explaining", unit="batch", disable=not show):
            part = {k: take(v, s, s + self.batch_size) for k, v in inputs.items()}
            pieces.append(self.runner.run(part, None if tgt is None else take(tgt, s, s + self.batch_size)))
        joined = {k: concat([p[k] for p in pieces]) for k in pieces[0]}
        result = {}
        for method, per_input in self.outputs.items():
            maps = {inp: joined[name] for inp, name in per_input.items()}
            result[method] = next(iter(maps.values())) if len(maps) == 1 else maps
        if self.agnostic is not None:
            result.update(self.agnostic.explain(inputs, tgt))
            result = {m: result[m] for m in self.order}
        if return_outputs:
            result["outputs"] = {k: v for k, v in joined.items()
                                 if k not in {o for d in self.outputs.values() for o in d.values()}}
        return result

    def _explain_agnostic(self, inputs: dict, tgt, return_outputs: bool) -> dict:
        result = self.agnostic.explain(inputs, tgt)
        if return_outputs:
            result["outputs"] = self.agnostic.runner.run(inputs)
        return result

    def _single_input(self) -> str:
        names = [n for n in self.runner.input_meta if n != self.runner.target_input]
        if len(names) != 1:
            from .compiler.errors import InputError
            raise InputError(f"the model has several inputs {names}: pass a dict name -> array")
        return names[0]
