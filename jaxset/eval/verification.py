"""Pair verification: k-fold accuracy (LFW / insightface), VAL@FAR, TAR@FAR (IJB).

insightface's protocol (recognition/arcface_torch/eval/verification.py):
embeddings are L2-normalised, the pair distance is the squared L2 distance, a pair
is predicted "same" when dist < threshold (strict), thresholds are 0, 0.01, ...,
3.99 and the folds are sklearn's KFold(10, shuffle=False): consecutive blocks, the
first n % k folds one pair larger. For each fold the threshold with the best
accuracy on the other folds (first one on ties, np.argmax) is applied to that
fold. LFW's pairs.txt folds are its 10 consecutive blocks of 600 pairs, so for LFW
both agree; `fold_ids` takes any other assignment.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxset.ops import _checks

DEFAULT_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def l2_normalize(x, axis: int = -1):
  """x / ||x|| along `axis`; zero vectors stay zero (as sklearn.preprocessing.normalize)."""
  x = np.asarray(x, np.float64)
  n = np.linalg.norm(x, axis=axis, keepdims=True)
  return x / np.where(n > 0, n, 1.0)


def combine_flip(embeddings, flipped_embeddings, normalize: bool = True):
  """Flip test (insightface): embedding of the image plus that of its mirror image.

  [N, D] + [N, D] -> [N, D]; L2-normalised when `normalize` (a zero sum stays
  zero). insightface adds the two raw (unnormalised) embeddings, then normalises.
  """
  e = np.asarray(embeddings, np.float64)
  f = np.asarray(flipped_embeddings, np.float64)
  _checks.check_same(("embeddings", "flipped_embeddings"), (e.size, f.size), "Sizes")
  if e.shape != f.shape:
    raise ValueError(f"embeddings {e.shape} and flipped_embeddings {f.shape} must match.")
  s = e + f
  return l2_normalize(s) if normalize else s


def pair_distances(embeddings_a, embeddings_b, metric: str = "squared_l2",
                   normalize: bool = True):
  """Per-pair distance, smaller = more alike: [P, D] x [P, D] -> [P] float64.

  squared_l2: ||a - b||^2. cosine: -cos(a, b) (negated so that both metrics
  predict "same" for dist < threshold; a cosine threshold t is applied as
  cos > t, i.e. dist < -t). `normalize` L2-normalises both sides first.
  """
  if metric not in ("squared_l2", "cosine"):
    raise ValueError(f"metric must be 'squared_l2' or 'cosine'; got {metric!r}.")
  a = np.asarray(embeddings_a, np.float64)
  b = np.asarray(embeddings_b, np.float64)
  _checks.check_rank("embeddings_a", a, 2, "[num_pairs, dim]")
  if a.shape != b.shape:
    raise ValueError(
        f"embeddings_a {a.shape} and embeddings_b {b.shape} must have the same shape "
        "(row i of each is pair i). For insightface .bin order use emb[0::2], emb[1::2].")
  _checks.check_finite("embeddings_a", a)
  _checks.check_finite("embeddings_b", b)
  if normalize or metric == "cosine":
    a, b = l2_normalize(a), l2_normalize(b)
  if metric == "squared_l2":
    return np.sum((a - b) ** 2, axis=1)
  return -np.sum(a * b, axis=1)


def _default_thresholds(metric: str, step: float):
  if metric == "squared_l2":
    return np.arange(0, 4, step)
  return np.arange(-1, 1, step)


def _signed_thresholds(thresholds, metric):
  return thresholds if metric == "squared_l2" else -thresholds


def fold_splits(num_pairs: int, folds: int = 10, fold_ids=None):
  """(train_idx, test_idx) per fold.

  Without fold_ids: sklearn KFold(folds, shuffle=False), consecutive blocks with
  the first num_pairs % folds blocks one larger; folds = 1 tests on the training
  set (insightface's LFold). With fold_ids ([P] ints): one fold per distinct id,
  in sorted id order; `folds` is then ignored.
  """
  idx = np.arange(num_pairs)
  if fold_ids is not None:
    f = np.asarray(fold_ids).reshape(-1)
    _checks.check_same(("fold_ids", "pairs"), (f.size, num_pairs), "Pair counts")
    uniq = np.unique(f)
    if uniq.size < 2:
      raise ValueError("fold_ids holds a single fold; give at least two distinct ids.")
    return [(idx[f != u], idx[f == u]) for u in uniq]
  if folds < 1:
    raise ValueError(f"folds must be >= 1; got {folds}.")
  if folds == 1:
    return [(idx, idx)]
  if num_pairs < folds:
    raise ValueError(f"Cannot split {num_pairs} pairs into {folds} folds; lower folds.")
  sizes = np.full(folds, num_pairs // folds)
  sizes[:num_pairs % folds] += 1
  bounds = np.concatenate([[0], np.cumsum(sizes)])
  return [(np.concatenate([idx[:bounds[i]], idx[bounds[i + 1]:]]), idx[bounds[i]:bounds[i + 1]])
          for i in range(folds)]


def _rates(dist, same, thresholds):
  """tpr, fpr, acc for every threshold: [T] each (insightface's calculate_accuracy)."""
  pred = dist[None, :] < thresholds[:, None]
  tp = (pred & same).sum(1)
  fp = (pred & ~same).sum(1)
  tn = (~pred & ~same).sum(1)
  fn = (~pred & same).sum(1)
  tpr = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
  fpr = np.where(fp + tn > 0, fp / np.maximum(fp + tn, 1), 0.0)
  acc = (tp + tn) / max(dist.size, 1)
  return tpr, fpr, acc


def _check_same_labels(same, n):
  s = np.asarray(same).reshape(-1)
  _checks.check_same(("same", "pairs"), (s.size, n), "Pair counts")
  if s.dtype != bool:
    if not np.isin(s, (0, 1)).all():
      raise ValueError("same must hold booleans or 0/1 labels.")
    s = s.astype(bool)
  return s


def kfold_verification_accuracy(embeddings_a, embeddings_b, same, folds: int = 10,
                                metric: str = "squared_l2", thresholds=None,
                                fold_ids=None, normalize: bool = True):
  """k-fold verification accuracy (LFW / insightface / YTF protocol).

  Args:
    embeddings_a, embeddings_b: [P, D], row i is pair i.
    same: [P] bool (or 0/1), True for a genuine pair.
    folds: number of sequential folds when fold_ids is None.
    metric: "squared_l2" (dist < t means same; default thresholds 0..3.99 step
      0.01) or "cosine" (cos > t means same; default thresholds -1..0.99 step 0.01).
    thresholds: optional [T] grid, in the metric's own units.
    fold_ids: optional [P] fold of each pair (LFW pairs.txt file order).
    normalize: L2-normalise embeddings first (insightface does).

  Returns:
    dict: "accuracy_mean", "accuracy_std" (population std, np.std), "fold_accuracies"
    [F], "best_thresholds" [F] (chosen on the other folds; first best on ties),
    "tpr", "fpr" [T] (mean over folds of the per-fold test rates, for a ROC plot),
    "thresholds" [T]. A fold with no genuine (or impostor) pairs gets tpr (fpr) 0.
  """
  dist = pair_distances(embeddings_a, embeddings_b, metric, normalize)
  s = _check_same_labels(same, dist.size)
  th = (_default_thresholds(metric, 0.01) if thresholds is None
        else np.asarray(thresholds, np.float64))
  sth = _signed_thresholds(th, metric)
  splits = fold_splits(dist.size, folds, fold_ids)
  accs, best, tprs, fprs = [], [], [], []
  for train, test in splits:
    _, _, acc_train = _rates(dist[train], s[train], sth)
    b = int(np.argmax(acc_train))
    tpr, fpr, acc_test = _rates(dist[test], s[test], sth)
    accs.append(acc_test[b])
    best.append(th[b])
    tprs.append(tpr)
    fprs.append(fpr)
  accs = np.asarray(accs)
  return {"accuracy_mean": float(accs.mean()), "accuracy_std": float(accs.std()),
          "fold_accuracies": accs, "best_thresholds": np.asarray(best),
          "tpr": np.mean(tprs, 0), "fpr": np.mean(fprs, 0), "thresholds": th}


def _val_far(dist, same, threshold):
  pred = dist < threshold
  n_same = same.sum()
  n_diff = (~same).sum()
  val = (pred & same).sum() / n_same if n_same else 0.0
  far = (pred & ~same).sum() / n_diff if n_diff else 0.0
  return float(val), float(far)


VAL_INTERPOLATIONS = ("distinct_far", "insightface")


def interp_every_point(x_new: float, x, y) -> float:
  """Piecewise-linear y(x_new) through EVERY (x, y) point, repeats included.

  The rule of scipy's interp1d(x, y) on data with repeated x (insightface's
  calculate_val; interp1d evaluates linear data with np.interp): the points
  are sorted by x, stably (equal x keep their order); x_new strictly between
  two distinct x values is interpolated on the segment from the LAST point of
  the lower x to the FIRST point of the higher one; x_new equal to a data x
  takes the last point with that x. Outside [min x, max x] raises
  (interp1d's bounds error).
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  order = np.argsort(x, kind="stable")
  x, y = x[order], y[order]
  if not x[0] <= x_new <= x[-1]:
    raise ValueError(f"x_new={x_new} is outside the data range [{x[0]}, {x[-1]}].")
  return float(np.interp(x_new, x, y))


def val_at_far(embeddings_a, embeddings_b, same, far_target: float = 1e-3,
               folds: int = 10, metric: str = "squared_l2", thresholds=None,
               fold_ids=None, normalize: bool = True,
               interpolation: str = "distinct_far"):
  """VAL@FAR with insightface's k-fold threshold interpolation (calculate_val).

  Per fold: FAR(t) on the other folds over the grid (default 0..3.999 step
  0.001 for squared_l2); if max FAR >= far_target the threshold is linearly
  interpolated at far_target along (FAR, t), else it is 0 (the lowest
  distance threshold: nothing accepted); VAL and FAR are then measured on the
  fold. For cosine the interpolated cosine threshold is applied as cos > t;
  the fallback is then the top of the grid.

  FAR(t) is a step function, so many grid thresholds share a FAR value and
  "interpolate along (FAR, t)" needs a rule for the repeats (docs/evaluation.md):

  * interpolation="distinct_far" (default): keep the first (smallest)
    threshold of each distinct FAR and interpolate between those: the inverse
    of FAR(t) at its jump points, independent of any library version.
  * interpolation="insightface": insightface's verification.calculate_val,
    scipy interp1d(far, t) through EVERY grid point (`interp_every_point`):
    between two FAR values the segment runs from the LAST threshold of the
    lower FAR to the FIRST of the higher, so the threshold sits next to the
    FAR jump. This reproduces insightface's VAL table exactly. (insightface
    asks for kind="slinear", which current scipy rejects on repeated FAR;
    between distinct values it is the same segment.)

  Returns:
    dict: "val_mean", "val_std" (np.std), "far_mean", "fold_val" [F],
    "fold_far" [F], "fold_thresholds" [F]. A fold without genuine (impostor)
    pairs reports VAL (FAR) 0.
  """
  if not 0 < far_target <= 1:
    raise ValueError(f"far_target must be a false accept rate in (0, 1], e.g. 1e-3; "
                     f"got {far_target!r}.")
  if interpolation not in VAL_INTERPOLATIONS:
    raise ValueError(f"interpolation must be one of {VAL_INTERPOLATIONS}; "
                     f"got {interpolation!r}.")
  dist = pair_distances(embeddings_a, embeddings_b, metric, normalize)
  s = _check_same_labels(same, dist.size)
  th = (_default_thresholds(metric, 0.001) if thresholds is None
        else np.asarray(thresholds, np.float64))
  if th.ndim != 1 or th.size == 0:
    raise ValueError(f"thresholds must be a non-empty 1-D grid; got shape {th.shape}.")
  sth = np.sort(_signed_thresholds(th, metric))  # FAR is non-decreasing along sth.
  vals, fars, used = [], [], []
  for train, test in fold_splits(dist.size, folds, fold_ids):
    imp = np.sort(dist[train][~s[train]])
    # FAR(t) = #{impostor dist < t} / #impostors, for every t at once.
    far_train = np.searchsorted(imp, sth, side="left") / max(imp.size, 1)
    if far_train.max() >= far_target and interpolation == "insightface":
      t = interp_every_point(far_target, far_train, sth)
    elif far_train.max() >= far_target:
      f_u, first = np.unique(far_train, return_index=True)
      t = float(np.interp(far_target, f_u, sth[first]))
    else:
      t = 0.0 if metric == "squared_l2" else float(sth[0])
    v, f = _val_far(dist[test], s[test], t)
    vals.append(v)
    fars.append(f)
    used.append(t if metric == "squared_l2" else -t)
  vals = np.asarray(vals)
  return {"val_mean": float(vals.mean()), "val_std": float(vals.std()),
          "far_mean": float(np.mean(fars)), "fold_val": vals,
          "fold_far": np.asarray(fars), "fold_thresholds": np.asarray(used)}


def roc_curve(scores, same, drop_intermediate: bool = False):
  """ROC from sorted scores (higher score = more likely genuine), sklearn-free.

  One point per distinct score t (accept when score >= t), in decreasing t, plus a
  leading (fpr 0, tpr 0, threshold +inf) point as sklearn.metrics.roc_curve
  (drop_intermediate=False). drop_intermediate=True applies sklearn's default
  thinning (what insightface's IJB script sees): of the per-score points, keep
  the first, the last and every point where the second difference of the
  false- or the true-positive counts is nonzero (a corner of the ROC), then
  prepend the (0, 0, +inf) point. Returns (fpr, tpr, thresholds), float64 each.
  Raises if there is no genuine or no impostor pair.
  """
  sc = np.asarray(scores, np.float64).reshape(-1)
  s = _check_same_labels(same, sc.size)
  _checks.check_finite("scores", sc)
  n_pos, n_neg = int(s.sum()), int((~s).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError(
        f"ROC needs genuine and impostor pairs; got {n_pos} genuine, {n_neg} impostor.")
  order = np.argsort(-sc, kind="stable")
  sc, s = sc[order], s[order]
  last = np.r_[np.nonzero(np.diff(sc))[0], sc.size - 1]  # last index of each distinct score
  tps = np.cumsum(s)[last]
  fps = (last + 1) - tps
  thr = sc[last]
  if drop_intermediate and fps.size > 2:
    corner = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
    fps, tps, thr = fps[corner], tps[corner], thr[corner]
  fpr = np.r_[0.0, fps / n_neg]
  tpr = np.r_[0.0, tps / n_pos]
  thr = np.r_[np.inf, thr]
  return fpr, tpr, thr


TAR_METHODS = ("floor", "nearest", "insightface")


def tar_at_far(scores, same, fars: Sequence[float] = DEFAULT_FARS, method: str = "floor"):
  """TAR at fixed FARs from pair scores (IJB-B/C 1:1 verification).

  method "floor" (default): the ROC point with the largest FAR still <= target
  (that is, the lowest threshold whose FAR <= target; accept score >= threshold),
  no interpolation: a TAR measured at a FAR that does not exceed the target.
  method "nearest": on the full ROC, the point whose FAR is closest to the
  target (np.argmin |fpr - far|, first = smaller TAR on ties), which may
  exceed the target. method "insightface": the IJB table of insightface's
  eval_ijbc, exactly: sklearn's roc_curve with its default
  drop_intermediate=True (`roc_curve(..., drop_intermediate=True)`), then
  the kept point nearest the target by |fpr - far|, ties to the LARGER TAR
  (the script flips the ROC and takes the first minimum). With fewer than
  1/far impostor pairs "floor" reports the TAR at zero false accepts, while
  "insightface" may report a point far above the target FAR (a thinned ROC
  has few points near 0). See docs/evaluation.md.

  Returns:
    dict: "tar" {far: tar}, "threshold" {far: score threshold}, "fpr", "tpr",
    "thresholds" (the full ROC of `roc_curve`, for plotting).
  """
  if method not in TAR_METHODS:
    raise ValueError(f"method must be one of {TAR_METHODS}; got {method!r}.")
  bad = [f for f in fars if not 0 < f <= 1]
  if bad:
    raise ValueError(f"fars must be false accept rates in (0, 1], e.g. (1e-4, 1e-3); got {bad}.")
  fpr, tpr, thr = roc_curve(scores, same, drop_intermediate=method == "insightface")
  tar, at = {}, {}
  for far in fars:
    if method == "floor":
      i = int(np.searchsorted(fpr, far, side="right")) - 1
    elif method == "nearest":
      i = int(np.argmin(np.abs(fpr - far)))
    else:
      # The last minimum: fpr and tpr are non-decreasing, so the larger TAR.
      i = fpr.size - 1 - int(np.argmin(np.abs(fpr - far)[::-1]))
    tar[far] = float(tpr[i])
    at[far] = float(thr[i])
  return {"tar": tar, "threshold": at, "fpr": fpr, "tpr": tpr, "thresholds": thr}
