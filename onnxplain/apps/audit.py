"""Data-set audit: where does the network look, per image and per class ("Clever Hans" search).

Lapuschkin, Wäldchen, Binder, Montavon, Samek and Müller (2019), *Unmasking Clever Hans predictors and
assessing what machines really learn*, Nature Communications 10:1096; Alber et al. (2019), iNNvestigate,
section on systematic evaluation of a data set.

For image ``i`` with map ``R_i`` (one explanation method, the predicted class by default) and an object
region ``B_i`` (a bounding box ``[r0, c0, r1, c1]``, end exclusive, or a boolean mask), the absolute
relevance per pixel is ``a_i(p) = sum_c |R_i(c, p)|`` and the *inside share* is

    share_i = sum_{p in B_i} a_i(p) / sum_p a_i(p)        (NaN when the map is all zero).

Classes are ranked by their mean share (lowest first): a class whose evidence lies outside the object
is where the network may have learned a spurious feature. The per-class mean of the normalised maps
``a_i / sum_p a_i`` shows *where* that evidence lies; named regions (e.g. a suspected artefact box, the
same for every image) get their own shares.

Box rules: coordinates are integers; a box reaching outside the image is clipped to it (with a
warning that counts the clipped boxes); a box that is empty after clipping is an error, as are
fractional coordinates, a count that differs from the number of images and masks of the wrong size or
with no pixel set.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ..compiler.errors import InputError
from .evaluation_plots import save_text

DEFAULT_METHOD = "lrp.epsilon_plus_flat"


# ----------------------------------------------------------------------------------------------- regions
def box_masks(boxes, height: int, width: int, what: str = "boxes") -> np.ndarray:
    """Boolean masks ``[N, H, W]`` from boxes ``[N, 4]`` (or one box ``[4]`` -> ``[1, H, W]``).

    Boxes are ``[row0, col0, row1, col1]`` with the ends exclusive (numpy slicing). Parts outside the
    image are clipped with a warning; a box empty after clipping raises :class:`InputError`.
    """
    b = np.asarray(boxes)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4 or b.dtype.kind not in "iuf":
        raise InputError(f"{what}: expected [N, 4] boxes [row0, col0, row1, col1], got shape {b.shape}")
    if b.dtype.kind == "f" and (not np.all(np.isfinite(b)) or np.any(b != np.round(b))):
        raise InputError(f"{what}: box coordinates must be whole pixel indices; rows "
                         f"{np.flatnonzero(np.any(~np.isfinite(b) | (b != np.round(b)), 1))[:10].tolist()} are not")
    b = b.astype(np.int64)
    lim = np.array([height, width, height, width])
    clipped = np.clip(b, 0, lim)
    moved = np.flatnonzero(np.any(clipped != b, 1))
    empty = np.flatnonzero((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    if len(empty):
        raise InputError(f"{what}: {len(empty)} box(es) hold no pixel of the {height}x{width} image after "
                         f"clipping (rows {empty[:10].tolist()}{', ...' if len(empty) > 10 else ''}, e.g. "
                         f"{b[empty[0]].tolist()}); boxes are [row0, col0, row1, col1], end exclusive")
    if len(moved):
        warnings.warn(f"{what}: clipped {len(moved)} box(es) reaching outside the {height}x{width} image "
                      f"(rows {moved[:10].tolist()}{', ...' if len(moved) > 10 else ''})", stacklevel=2)
    rows, cols = np.arange(height), np.arange(width)
    r_in = (rows[None] >= clipped[:, :1]) & (rows[None] < clipped[:, 2:3])
    c_in = (cols[None] >= clipped[:, 1:2]) & (cols[None] < clipped[:, 3:4])
    return r_in[:, :, None] & c_in[:, None, :]


def check_masks(masks, n: int, height: int, width: int, what: str = "masks") -> np.ndarray:
    """Validate boolean (or 0/1) masks ``[N, H, W]``; every mask must select a pixel."""
    m = np.asarray(masks)
    if m.shape != (n, height, width):
        raise InputError(f"{what}: expected shape ({n}, {height}, {width}) (one mask per image), got {m.shape}")
    if m.dtype != bool:
        if m.dtype.kind not in "iuf" or not np.all((m == 0) | (m == 1)):
            raise InputError(f"{what}: masks must be boolean or 0/1")
        m = m.astype(bool)
    empty = np.flatnonzero(~m.reshape(n, -1).any(1))
    if len(empty):
        raise InputError(f"{what}: {len(empty)} mask(s) select no pixel (images {empty[:10].tolist()})")
    return m


def object_masks(n: int, height: int, width: int, boxes=None, masks=None) -> np.ndarray:
    """One mask per image from ``boxes`` ``[N, 4]`` or ``masks`` ``[N, H, W]`` (exactly one of them)."""
    if (boxes is None) == (masks is None):
        raise InputError("give either boxes or masks (one per image)")
    if masks is not None:
        return check_masks(masks, n, height, width)
    b = np.asarray(boxes)
    if b.ndim != 2 or len(b) != n:
        raise InputError(f"boxes: expected one box per image ({n}), got an array of shape {b.shape}")
    return box_masks(b, height, width)


def abs_relevance(maps: np.ndarray, to_chw: Optional[Callable] = None) -> np.ndarray:
    """``[N, H, W]`` float64: ``sum_c |R(c, h, w)|`` of maps ``[N, C, H, W]`` or ``[N, H, W]`` (other layouts
    through ``to_chw``, a function from maps ``[N, ...]`` to ``[N, C, H, W]``)."""
    r = np.asarray(maps) if to_chw is None else np.asarray(to_chw(maps))
    if r.ndim == 3:
        return np.abs(r.astype(np.float64))
    if r.ndim != 4:
        raise InputError(f"maps must be [N, C, H, W] or [N, H, W] (or pass to_chw), got {r.shape}")
    return np.abs(r.astype(np.float64)).sum(1)


def _signed(maps, to_chw) -> np.ndarray:
    r = np.asarray(maps) if to_chw is None else np.asarray(to_chw(maps))
    return (r if r.ndim == 3 else r.sum(1, dtype=np.float64)).astype(np.float32)


def inside_share(a: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``[N]``: ``sum(a * mask) / sum(a)`` per image (NaN where ``sum(a) == 0``); ``a`` is ``[N, H, W]``
    absolute relevance, ``masks`` ``[N, H, W]`` or one ``[H, W]`` / ``[1, H, W]`` for all."""
    a = np.asarray(a, np.float64)
    m = np.broadcast_to(np.asarray(masks, bool), a.shape)
    tot = a.reshape(len(a), -1).sum(1)
    ins = np.where(m, a, 0.0).reshape(len(a), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, ins / np.where(tot > 0, tot, 1.0), np.nan)


# ----------------------------------------------------------------------------------------------- result
@dataclass
class AuditResult:
    """Shares per image and per class.

    Attributes
    ----------
    share : numpy.ndarray
        ``[N]`` inside share per image (NaN for an all-zero map).
    region_share : dict
        ``name -> [N]`` share inside each named region.
    group : numpy.ndarray
        ``[N]`` the class each image is aggregated under (true or predicted, see ``settings['by']``).
    labels, predicted : numpy.ndarray or None
    class_maps : dict
        ``class -> [H, W]`` mean of the normalised absolute maps ``a_i / sum a_i``.
    masks : numpy.ndarray
        ``[N, H, W]`` object masks; ``regions``: ``name -> [H, W]`` masks.
    abs_maps : numpy.ndarray
        ``[N, H, W]`` absolute relevance (float32).
    signed_maps : numpy.ndarray
        ``[N, H, W]`` the maps summed over channels (float32), for the heatmaps.
    settings : dict
    """

    share: np.ndarray
    region_share: dict
    group: np.ndarray
    labels: Optional[np.ndarray]
    predicted: np.ndarray
    class_maps: dict
    masks: np.ndarray
    regions: dict
    abs_maps: np.ndarray
    signed_maps: np.ndarray
    settings: dict = field(default_factory=dict)

    def class_table(self) -> list:
        """Per class (ranked, lowest mean share first): n, mean/std/median share, region shares, the peak
        of the class-mean map and which named regions hold it, the share of the class-mean map in them."""
        rows = []
        for k in sorted(set(self.group.tolist())):
            sel = self.group == k
            s = self.share[sel]
            cm = self.class_maps[k]
            peak = np.unravel_index(int(np.argmax(cm)), cm.shape)
            rows.append({"class": int(k), "n": int(sel.sum()), "mean_share": _nanmean(s),
                         "std_share": float(np.nanstd(s)) if np.isfinite(s).any() else float("nan"),
                         "median_share": float(np.nanmedian(s)) if np.isfinite(s).any() else float("nan"),
                         "region_share": {r: _nanmean(v[sel]) for r, v in self.region_share.items()},
                         "peak": [int(peak[0]), int(peak[1])],
                         "peak_in": {r: bool(m[peak]) for r, m in self.regions.items()},
                         "map_mass_in": {r: float(cm[m].sum() / cm.sum()) if cm.sum() > 0 else float("nan")
                                         for r, m in self.regions.items()}})
        return sorted(rows, key=lambda r: (np.inf if np.isnan(r["mean_share"]) else r["mean_share"], r["class"]))

    def image_ranking(self) -> np.ndarray:
        """Image indices by increasing share (ties by index; all-zero maps last)."""
        key = np.where(np.isnan(self.share), np.inf, self.share)
        return np.argsort(key, kind="stable")

    def separation(self) -> dict:
        """The lowest class, its mean share, and the gap to the second lowest class mean."""
        rows = [r for r in self.class_table() if not np.isnan(r["mean_share"])]
        if not rows:
            return {}
        gap = rows[1]["mean_share"] - rows[0]["mean_share"] if len(rows) > 1 else float("nan")
        return {"lowest_class": rows[0]["class"], "lowest_mean_share": rows[0]["mean_share"], "gap_to_next": gap}

    def to_dict(self, worst: int = 20) -> dict:
        """JSON-ready summary: settings, the class table, the separation, the worst images, every share."""
        order = self.image_ranking()[:worst]
        return {"settings": self.settings, "images": int(len(self.share)), "classes": self.class_table(),
                "separation": self.separation(),
                "worst_images": [self._image_row(int(i)) for i in order],
                "share": [None if np.isnan(v) else float(v) for v in self.share],
                "region_share": {r: [None if np.isnan(v) else float(v) for v in s]
                                 for r, s in self.region_share.items()},
                "predicted": self.predicted.tolist(),
                "labels": None if self.labels is None else self.labels.tolist()}

    def _image_row(self, i: int) -> dict:
        return {"index": i, "label": None if self.labels is None else int(self.labels[i]),
                "predicted": int(self.predicted[i]), "share": _none_nan(self.share[i]),
                "region_share": {r: _none_nan(v[i]) for r, v in self.region_share.items()}}

    def table(self, class_names: Optional[Sequence[str]] = None, worst: int = 10) -> str:
        """A text report: classes ranked by mean share, then the images with the lowest share."""
        s = self.settings
        names = list(self.region_share)
        lines = [f"audit: {s.get('method')} on {len(self.share)} images, explained class: {s.get('explain')}, "
                 f"grouped by {s.get('by')} class", "",
                 "rank  class        n  mean share   std  median" + "".join(f"  in {r[:10]:>10}" for r in names)
                 + "  peak of class-mean map"]
        for j, r in enumerate(self.class_table(), 1):
            name = class_names[r["class"]] if class_names and r["class"] < len(class_names) else str(r["class"])
            peak = f"({r['peak'][0]}, {r['peak'][1]})" + "".join(f" in {q}" for q, v in r["peak_in"].items() if v)
            lines.append(f"{j:>4}  {name[:8]:<8} {r['n']:>5}  {r['mean_share']:>10.3f} {r['std_share']:>5.3f} "
                         f"{r['median_share']:>7.3f}" + "".join(f"  {r['region_share'][q]:>13.3f}" for q in names)
                         + f"  {peak}")
        sep = self.separation()
        if sep:
            lines += ["", f"lowest class {sep['lowest_class']}: mean share {sep['lowest_mean_share']:.3f}, "
                          f"{sep['gap_to_next']:.3f} below the next class"]
        lines += ["", "images with the lowest share:", "index  label  predicted  share"
                  + "".join(f"  in {r[:10]:>10}" for r in names)]
        for i in self.image_ranking()[:worst]:
            row = self._image_row(int(i))
            lines.append(f"{i:>5}  {'-' if row['label'] is None else row['label']:>5}  {row['predicted']:>9}  "
                         f"{_fmt(row['share']):>5}" + "".join(f"  {_fmt(row['region_share'][q]):>13}" for q in names))
        if "seconds" in s:
            lines += ["", f"time: {s['seconds']:.2f} s for explanation and statistics"]
        return "\n".join(lines) + "\n"


def _nanmean(v) -> float:
    v = np.asarray(v, np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def _none_nan(v):
    return None if np.isnan(v) else float(v)


def _fmt(v) -> str:
    return "nan" if v is None else f"{v:.3f}"


# ----------------------------------------------------------------------------------------------- audit
def audit_maps(maps: np.ndarray, predicted, labels=None, *, boxes=None, masks=None, regions: Optional[dict] = None,
               by: Optional[str] = None, to_chw: Optional[Callable] = None,
               settings: Optional[dict] = None) -> AuditResult:
    """Audit precomputed maps (see :func:`audit` for the parameters)."""
    a = abs_relevance(maps, to_chw)
    n, h, w = a.shape
    pred = np.asarray(predicted, np.int64).reshape(-1)
    lab = None if labels is None else np.asarray(labels).reshape(-1)
    problems = []
    if len(pred) != n:
        problems.append(f"{len(pred)} predictions for {n} maps")
    if lab is not None and len(lab) != n:
        problems.append(f"{len(lab)} labels for {n} images")
    if lab is not None and lab.dtype.kind not in "iu":
        problems.append(f"labels must be integer classes, got dtype {lab.dtype}")
    if problems:
        raise InputError("; ".join(problems))
    by = by or ("true" if lab is not None else "predicted")
    if by not in ("true", "predicted") or (by == "true" and lab is None):
        raise InputError(f"by must be 'true' (needs labels) or 'predicted', got {by!r}"
                         + (" without labels" if by == "true" else ""))
    obj = object_masks(n, h, w, boxes, masks)
    bad = [name for name, b in (regions or {}).items() if np.shape(b) != (4,)]
    if bad:
        raise InputError(f"regions {bad}: a region is one box [row0, col0, row1, col1] for every image")
    reg = {name: box_masks(b, h, w, f"region '{name}'")[0] for name, b in (regions or {}).items()}
    share = inside_share(a, obj)
    if np.isnan(share).any():
        warnings.warn(f"{int(np.isnan(share).sum())} map(s) are all zero: their share is NaN and left out of "
                      "the class means", stacklevel=2)
    group = (lab if by == "true" else pred).astype(np.int64)
    tot = a.reshape(n, -1).sum(1)
    norm = a / np.where(tot > 0, tot, 1.0)[:, None, None]
    class_maps = {int(k): norm[(group == k) & (tot > 0)].mean(0) if ((group == k) & (tot > 0)).any()
                  else np.zeros((h, w)) for k in np.unique(group)}
    st = dict(settings or {})
    st["by"] = by
    return AuditResult(share, {r: inside_share(a, m) for r, m in reg.items()}, group,
                       None if lab is None else lab.astype(np.int64), pred, class_maps, obj, reg,
                       a.astype(np.float32), _signed(maps, to_chw), st)


def audit(model, x: np.ndarray, boxes=None, masks=None, labels=None, *, method: str = DEFAULT_METHOD,
          params: Optional[dict] = None, explain: str = "predicted", by: Optional[str] = None,
          regions: Optional[dict] = None, to_chw: Optional[Callable] = None, batch_size: int = 256,
          progress: Optional[bool] = None, **compile_kwargs) -> AuditResult:
    """Explain every image with one method and measure the share of |relevance| inside its object region.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The classifier.
    x : numpy.ndarray
        Model inputs ``[N, C, H, W]`` or ``[N, H, W]`` (other layouts with ``to_chw``).
    boxes : array_like, optional
        ``[N, 4]`` boxes ``[row0, col0, row1, col1]``, end exclusive, in input pixels.
    masks : array_like, optional
        ``[N, H, W]`` boolean object masks (instead of boxes).
    labels : array_like of int, optional
        True classes (for ``by="true"`` and ``explain="true"``).
    method : str
        One method (default ``lrp.epsilon_plus_flat``); ``params`` its parameters.
    explain : {"predicted", "true"}
        Which class each map explains.
    by : {"true", "predicted"}, optional
        Aggregate per true class (default when labels are given) or per predicted class.
    regions : dict, optional
        ``name -> [row0, col0, row1, col1]``: fixed regions (e.g. a suspected artefact) whose share is
        reported per image and per class.
    to_chw : callable, optional
        Maps ``[N, ...]`` (shaped like ``x``) -> ``[N, C, H, W]``, for flat or channels-last inputs.
    batch_size : int
        Images per inference (one compiled model, one run per batch).
    progress : bool, optional
        tqdm bar (default: when there is more than one batch).
    **compile_kwargs
        ``output``, ``strip_softmax``, ``batchnorm``, ... for :func:`onnxplain.compile`.

    Returns
    -------
    AuditResult
    """
    from ..api import Explainer

    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"x must be a non-empty batch of images, got shape {x.shape}")
    if explain not in ("predicted", "true"):
        raise InputError(f"explain must be 'predicted' or 'true', got {explain!r}")
    if explain == "true" and labels is None:
        raise InputError("explain='true' needs labels")
    if labels is not None and len(np.asarray(labels).reshape(-1)) != len(x):
        raise InputError(f"{len(np.asarray(labels).reshape(-1))} labels for {len(x)} images")
    t0 = time.perf_counter()
    exp = Explainer(model, {method: dict(params or {})}, batch_size=batch_size, progress=progress, **compile_kwargs)
    target = np.asarray(labels, np.int64).reshape(-1) if explain == "true" else None
    out = exp.explain(x, target, return_outputs=True)
    if isinstance(out[method], dict):
        raise InputError("the audit needs a model with one explained input")
    scores = out["outputs"][exp.runner.explained_output].reshape(len(x), -1)
    settings = {"method": method, "params": {k: _plain(v) for k, v in (params or {}).items()}, "explain": explain,
                "regions": {k: np.asarray(v).tolist() for k, v in (regions or {}).items()}}
    result = audit_maps(out[method], scores.argmax(1), labels, boxes=boxes, masks=masks, regions=regions, by=by,
                        to_chw=to_chw, settings=settings)
    result.settings["seconds"] = time.perf_counter() - t0
    return result


def _plain(v):
    return v.tolist() if isinstance(v, np.ndarray) else v


def save_audit(result: AuditResult, json_path: Optional[str] = None, text_path: Optional[str] = None,
               class_names: Optional[Sequence[str]] = None) -> None:
    """Write the JSON summary and the text report (each atomically)."""
    import json

    if json_path:
        save_text(json.dumps(_clean(result.to_dict()), indent=1, allow_nan=False), json_path)
    if text_path:
        save_text(result.table(class_names), text_path)


def _clean(v):
    """JSON-ready copy: NaN -> None, numpy scalars -> Python numbers."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
