"""Run the ORIGINAL model in ONNX Runtime on many perturbed inputs, in memory-bounded batches.

The model-agnostic methods (occlusion, LIME) need nothing but predictions, so they
run on the model as given: no compilation, no propagation rule, any op ONNX Runtime
can execute. The only change made to the graph is to *expose* the input of a final
Softmax/LogSoftmax as an extra output when ``strip_softmax`` is set, so that the
logit is explained, as the compiled methods do.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import onnx
from onnx import helper

from ..compiler.errors import CompileError, InputError, Problem
from ..runtime.session import _NP_TYPES, check_array, make_session

DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_BYTES = 256 * 2 ** 20


def _explained_tensor(model: onnx.ModelProto, output: str, strip_softmax: bool, source: str) -> str:
    names = [o.name for o in model.graph.output]
    if output not in names:
        raise CompileError([Problem(source, None, None, f"the model has no output '{output}'",
                                    f"choose one of {names}")])
    if not strip_softmax:
        return output
    from ..compiler.head import final_softmax, producers_of

    n = final_softmax(producers_of(model), output)
    return n.input[0] if n is not None and n.domain in ("", "ai.onnx") else output


class ModelRunner:
    """The original model in an ONNX Runtime session, scoring the explained output.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The model, as given to :class:`onnxplain.Explainer`.
    output : str, optional
        The explained output (default: the first output).
    strip_softmax : bool
        Explain the input of a final Softmax/LogSoftmax (the logit), as the compiled methods do.
    providers, threads
        As in :func:`onnxplain.runtime.session.make_session`.

    Attributes
    ----------
    input_meta : dict
        Input name -> ``onnxruntime.NodeArg`` (name, shape, type).
    explained_output : str
        The model output the user asked about (a name of the original model).
    explained : str
        The tensor actually scored (the pre-softmax logit with ``strip_softmax``).
    """

    target_input = None
    outputs: dict = {}

    def __init__(self, model, output: Optional[str] = None, strip_softmax: bool = True, providers=None,
                 threads: Optional[int] = None, source: Optional[str] = None):
        from ..compiler.graph import load_model

        src = source or (str(model) if isinstance(model, str) or hasattr(model, "__fspath__") else "model")
        proto = load_model(model, src)  # external data resolved next to a path
        self.source = src
        self.explained_output = output or proto.graph.output[0].name
        self.explained = _explained_tensor(proto, self.explained_output, strip_softmax, src)
        self.original_outputs = [o.name for o in proto.graph.output]
        if self.explained not in self.original_outputs:
            m = onnx.ModelProto()
            m.CopyFrom(proto)
            m.graph.output.append(helper.make_empty_tensor_value_info(self.explained))
            proto = m
        try:
            self.session = make_session(proto, providers, threads)
        except Exception as exc:  # noqa: BLE001 - ORT raises many kinds
            raise CompileError([Problem(src, None, None, f"ONNX Runtime cannot load the model ({exc})",
                                        "check the model with onnx.checker and onnxruntime")]) from None
        self.input_meta = {i.name: i for i in self.session.get_inputs()}
        out = {o.name: o for o in self.session.get_outputs()}[self.explained]
        if out.type not in ("tensor(float)", "tensor(double)", "tensor(float16)"):
            raise CompileError([Problem(src, None, None, f"output '{self.explained_output}' is not a float "
                                        f"tensor ({out.type})", "choose a float output with --output")])
        dims = out.shape[1:] if out.shape else []
        self.n_classes = int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else None
        self.static_batch = self._static_batch()

    def _static_batch(self) -> Optional[int]:
        sizes = {m.shape[0] for m in self.input_meta.values() if m.shape and isinstance(m.shape[0], int)}
        return sizes.pop() if len(sizes) == 1 else None

    def float_inputs(self) -> list:
        """Names of the floating-point inputs (the ones that can be explained)."""
        return [n for n, m in self.input_meta.items() if m.type in ("tensor(float)", "tensor(double)",
                                                                     "tensor(float16)")]

    def feeds(self, inputs: dict) -> dict:
        """Validate a dict name -> array against the model's inputs (shape, dtype, finite values)."""
        missing = [n for n in self.input_meta if n not in inputs]
        extra = sorted(set(inputs) - set(self.input_meta))
        if missing or extra:
            raise InputError(f"the model's inputs are {list(self.input_meta)}; "
                             + (f"missing {missing}" if missing else f"unknown {extra}"))
        return {n: check_array(n, inputs[n], list(m.shape), _NP_TYPES.get(m.type))
                for n, m in self.input_meta.items()}

    def check_target(self, target, n: int) -> np.ndarray:
        """Class index per sample (int64 [n]); negative = the top-scoring class."""
        t = np.asarray(target)
        if t.dtype.kind not in "iu":
            raise InputError(f"target must hold integer class indices, got dtype {t.dtype}")
        t = np.broadcast_to(t.astype(np.int64).reshape(-1), (n,)).copy() if t.size == 1 else t.astype(np.int64)
        if t.shape != (n,):
            raise InputError(f"target must have one entry per sample: expected shape ({n},), got {t.shape}")
        if self.n_classes is not None and np.any(t >= self.n_classes):
            raise InputError(f"target {t[t >= self.n_classes].tolist()} out of range: the explained output "
                             f"'{self.explained_output}' has {self.n_classes} entries per sample "
                             f"(valid: 0..{self.n_classes - 1}, or -1 for the top-scoring one)")
        return t

    def run(self, inputs: dict, target=None) -> dict:
        """Run once on validated inputs; return the original model's outputs by name."""
        values = self.session.run(self.original_outputs, self.feeds(inputs))
        return dict(zip(self.original_outputs, values))

    def scores(self, feeds: dict) -> np.ndarray:
        """The explained tensor for a batch, flattened per sample to [B, K]."""
        b = len(next(iter(feeds.values())))
        if self.static_batch is not None and b != self.static_batch:
            return self._scores_static(feeds, b)
        out = self.session.run([self.explained], feeds)[0]
        return out.reshape(b, -1)

    def _scores_static(self, feeds: dict, b: int) -> np.ndarray:
        s = self.static_batch
        parts = []
        for start in range(0, b, s):
            part = {k: v[start:start + s] for k, v in feeds.items()}
            k = len(next(iter(part.values())))
            if k < s:  # pad the last group with copies of its first sample; the padding is dropped
                part = {n: np.concatenate([v, np.repeat(v[:1], s - k, 0)]) for n, v in part.items()}
            parts.append(self.session.run([self.explained], part)[0].reshape(s, -1)[:k])
        return np.concatenate(parts)

    def base_scores(self, feeds: dict, target) -> tuple:
        """Scores of the unperturbed inputs [N, K] and the explained class per sample (int64 [N])."""
        n = len(next(iter(feeds.values())))
        scores = self.scores(feeds)
        k = scores.shape[1]
        if target is None:
            return scores, scores.argmax(1).astype(np.int64)
        t = self.check_target(target, n)
        if np.any(t >= k):
            raise InputError(f"target {t[t >= k].tolist()} out of range: the explained tensor has {k} entries "
                             f"per sample (valid: 0..{k - 1}, or -1 for the top-scoring one)")
        return scores, np.where(t < 0, scores.argmax(1), t).astype(np.int64)


def batch_size(runner: ModelRunner, item_bytes: int, max_batch: int, max_bytes: int) -> int:
    """Items per ONNX Runtime call: at most ``max_batch`` and at most ``max_bytes`` of perturbed input.

    A model with a fixed batch size gets exactly that size (the last batch is padded).
    """
    if runner.static_batch is not None:
        return runner.static_batch
    by_bytes = max(1, int(max_bytes) // max(1, int(item_bytes))) if max_bytes and max_bytes > 0 else 1 << 30
    return max(1, min(int(max_batch) if max_batch and max_batch > 0 else 1 << 30, by_bytes))


def evaluate(runner: ModelRunner, make_batch: Callable, total: int, classes: np.ndarray, item_bytes: int,
             max_batch: int, max_bytes: int, progress: Optional[bool] = None, desc: str = "evaluating"
             ) -> np.ndarray:
    """Score ``total`` perturbed inputs, built batch by batch, and keep one class per item.

    Parameters
    ----------
    runner : ModelRunner
    make_batch : callable
        ``make_batch(start, stop) -> feeds`` builds the inputs of items ``start..stop-1``.
    total : int
        Number of items.
    classes : numpy.ndarray
        int64 [total]: the class whose score is kept for each item.
    item_bytes : int
        Bytes of one item's inputs (for the ``max_bytes`` bound).
    max_batch, max_bytes : int
        The memory bound: items per call, and bytes of perturbed input per call (0 = no bound).
    progress : bool, optional
        Show a tqdm bar (default: when there is more than one batch).

    Returns
    -------
    numpy.ndarray
        [total] the kept scores, in the dtype the model returns (float32 for float32 models).
    """
    from tqdm.auto import tqdm

    b = batch_size(runner, item_bytes, max_batch, max_bytes)
    starts = range(0, total, b)
    show = progress if progress is not None else len(starts) > 1
    out = None
    for s in tqdm(starts, desc=desc, unit="batch", disable=not show, leave=False):
        e = min(s + b, total)
        scores = runner.scores(make_batch(s, e))
        if out is None:
            out = np.empty(total, scores.dtype)
        out[s:e] = scores[np.arange(e - s), classes[s:e]]
    return out if out is not None else np.empty(0, np.float32)
