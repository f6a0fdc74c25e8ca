"""Judging quality scores: error-versus-reject curves and rank correlation.

Error-versus-reject (Grother & Tabassi, "Performance of biometric quality
measures", PAMI 2007; the ERC used by SER-FIQ, CR-FIQA, MagFace, ...): fix the
decision threshold ONCE on all pairs (by default the threshold giving
FMR = 1e-3), then reject the fraction r of comparisons with the lowest pair
quality min(q_a, q_b) and recompute the false non-match rate of the remaining
genuine comparisons at that same threshold. A useful quality measure makes FNMR
fall quickly as r grows; rejecting at random leaves it flat on average.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxset.eval.verification import roc_curve
from jaxset.ops import _checks


def _rankdata_average(x: np.ndarray) -> np.ndarray:
  """1-based ranks, ties get the mean of the ranks they span (rankdata 'average')."""
  order = np.argsort(x, kind="stable")
  xs = x[order]
  starts = np.r_[0, np.nonzero(np.diff(xs))[0] + 1]
  ends = np.r_[starts[1:], xs.size]  # exclusive
  avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
  ranks = np.empty(x.size, np.float64)
  ranks[order] = np.repeat(avg, ends - starts)
  return ranks


def spearman(a, b) -> float:
  """Spearman's rank correlation: Pearson correlation of the average ranks.

  a, b: [N] values, N >= 2. Ties get average ranks (as scipy.stats.spearmanr).
  If either input is constant the correlation is undefined (scipy gives NaN);
  jaxset returns 0.0 (no monotone relation can be shown).
  """
  x = np.asarray(a, np.float64).reshape(-1)
  y = np.asarray(b, np.float64).reshape(-1)
  _checks.check_same(("a", "b"), (x.size, y.size), "Lengths")
  if x.size < 2:
    raise ValueError(f"spearman needs at least 2 values; got {x.size}.")
  _checks.check_finite("a", x)
  _checks.check_finite("b", y)
  rx = _rankdata_average(x)
  ry = _rankdata_average(y)
  rx -= rx.mean()
  ry -= ry.mean()
  den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
  if den == 0:
    return 0.0
  return float(np.clip((rx * ry).sum() / den, -1.0, 1.0))


def quality_degradation_spearman(predicted_quality, degradation) -> float:
  """Spearman of predicted quality against a known degradation level per image.

  degradation: e.g. blur sigma, JPEG compression level or noise std applied to
  each image. A good quality predictor gives values near -1 (more degradation,
  lower quality); 0 for a constant prediction.
  """
  return spearman(predicted_quality, degradation)


def _threshold_at_fnmr(genuine_scores: np.ndarray, fnmr: float) -> float:
  """The highest threshold whose FNMR = #{genuine < t} / n stays <= fnmr."""
  g = np.sort(genuine_scores)
  k = int(np.floor(fnmr * g.size + 1e-9))
  return float(g[k]) if k < g.size else float(np.inf)


def _fnmr_fmr_after_reject(order, err_gen, is_gen, err_imp, is_imp, cuts):
  """FNMR / FMR of the pairs order[cut:] for each cut (suffix sums)."""
  def suffix(v):
    return np.r_[np.cumsum(v[order][::-1])[::-1], 0]
  eg, ng, ei, ni = suffix(err_gen), suffix(is_gen), suffix(err_imp), suffix(is_imp)
  fnmr = np.where(ng[cuts] > 0, eg[cuts] / np.maximum(ng[cuts], 1), 0.0)
  fmr = np.where(ni[cuts] > 0, ei[cuts] / np.maximum(ni[cuts], 1), 0.0)
  return fnmr, fmr, ng[cuts]


def error_vs_reject(scores, same, quality_a, quality_b=None, *, fmr: float | None = None,
                    fnmr: float | None = None, threshold: float | None = None,
                    reject_fractions: Sequence[float] | None = None,
                    num_random: int = 10, seed: int = 0):
  """Error-versus-reject curve (FNMR at a threshold fixed before rejection).

  Args:
    scores: [P] similarity scores (higher = more alike); a pair is accepted
      when score >= threshold.
    same: [P] bool, True for genuine pairs.
    quality_a, quality_b: [P] quality of each side; the pair quality is
      min(quality_a, quality_b) (quality_b None: quality_a already is the pair
      quality). Lower = worse = rejected first; ties keep pair order.
    fmr / fnmr / threshold: how the threshold is fixed on ALL pairs before any
      rejection, at most one of them. fmr: the lowest threshold with FMR <= fmr
      (the ROC "floor" point of verification.tar_at_far); fnmr: the highest
      threshold with FNMR <= fnmr; threshold: given. Default: fmr = 1e-3.
    reject_fractions: fractions r in [0, 1); floor(r * P) pairs are rejected.
      Default 0, 0.01, ..., 0.5.
    num_random: seeds averaged for the random-rejection baseline.
    seed: first seed (seeds seed .. seed + num_random - 1).

  Returns:
    dict: "reject_fractions" [R], "fnmr" [R] (quality-ordered rejection),
    "fmr" [R] (FMR of the kept impostor pairs, same threshold), "fnmr_random"
    [R] (mean over seeds), "auc" and "auc_random" (trapezoidal area under the two
    FNMR curves over the fractions), "threshold", "num_genuine_kept" [R]. When no
    genuine pair is left the FNMR is reported as 0.
  """
  sc = np.asarray(scores, np.float64).reshape(-1)
  p = sc.size
  s = np.asarray(same).reshape(-1).astype(bool)
  qa = np.asarray(quality_a, np.float64).reshape(-1)
  names, sizes = ["scores", "same", "quality_a"], [p, s.size, qa.size]
  if quality_b is not None:
    qb = np.asarray(quality_b, np.float64).reshape(-1)
    names.append("quality_b")
    sizes.append(qb.size)
  _checks.check_same(names, sizes, "Pair counts")
  _checks.check_finite("scores", sc)
  _checks.check_finite("quality_a", qa)
  pair_q = qa if quality_b is None else np.minimum(qa, qb)
  if quality_b is not None:
    _checks.check_finite("quality_b", qb)
  if sum(v is not None for v in (fmr, fnmr, threshold)) > 1:
    raise ValueError("Give at most one of fmr, fnmr and threshold.")
  if not s.any():
    raise ValueError("error_vs_reject needs genuine pairs (same has no True).")
  if threshold is not None:
    thr = float(threshold)
  elif fnmr is not None:
    thr = _threshold_at_fnmr(sc[s], fnmr)
  else:
    target = 1e-3 if fmr is None else fmr
    fpr, _, th = roc_curve(sc, s)
    thr = float(th[int(np.searchsorted(fpr, target, side="right")) - 1])
  fr = (np.arange(0, 51) / 100.0 if reject_fractions is None
        else np.asarray(reject_fractions, np.float64).reshape(-1))
  if fr.size == 0 or (fr < 0).any() or (fr >= 1).any():
    raise ValueError("reject_fractions must be a non-empty list of values in [0, 1).")
  cuts = np.floor(fr * p + 1e-9).astype(np.int64)
  accept = sc >= thr
  args = (s & ~accept, s, ~s & accept, ~s)
  order = np.argsort(pair_q, kind="stable")
  fnmr_q, fmr_q, kept = _fnmr_fmr_after_reject(order, *args, cuts)
  rng = np.random.default_rng(seed)
  rand = [_fnmr_fmr_after_reject(rng.permutation(p), *args, cuts)[0]
          for _ in range(max(int(num_random), 1))]
  fnmr_r = np.mean(rand, axis=0)
  # Trapezoid rule written out: np.trapezoid is numpy >= 2 only.
  area = lambda y: float(np.sum((y[1:] + y[:-1]) * np.diff(fr)) / 2.0)
  return {"reject_fractions": fr, "fnmr": fnmr_q, "fmr": fmr_q, "fnmr_random": fnmr_r,
          "auc": area(fnmr_q), "auc_random": area(fnmr_r), "threshold": thr,
          "num_genuine_kept": kept}


def proxy_by_tier(proxy, degradation_type, degradation, type_names: Sequence[str],
                  level_edges: Sequence[float] = (0.0, 0.5, 0.8, 1.0)) -> list[dict]:
  """Mean and std of a quality proxy per degradation type and level bin.

  Args:
    proxy: [N] the proxy per image (mu, s_i, the feature norm, ...).
    degradation_type: [N] int type ids, indices into type_names (negative:
      unknown, left out); degradation: [N] true level in [0, 1].
    type_names: the name of each type id; type 0 is "clean" (one row).
    level_edges: increasing bin edges; bin j is [edges[j], edges[j+1]), the
      last bin closed. A type whose levels are all equal (e.g. a missing
      subject at level 1) gets one row.

  Returns:
    rows {"type", "lo", "hi", "n", "mean", "std"} in type order, empty bins
    left out. A good proxy falls down the rows of each type.
  """
  q = np.asarray(proxy, np.float64).reshape(-1)
  t = np.asarray(degradation_type).reshape(-1)
  lv = np.asarray(degradation, np.float64).reshape(-1)
  _checks.check_same(("proxy", "degradation_type", "degradation"), (q.size, t.size, lv.size),
                     "Lengths")
  _checks.check_finite("proxy", q)
  edges = np.asarray(level_edges, np.float64)
  if edges.size < 2 or np.any(np.diff(edges) <= 0):
    raise ValueError(f"level_edges must be at least 2 increasing values; got {level_edges}.")
  rows = []
  for k, name in enumerate(type_names):
    of_type = t == k
    if not of_type.any():
      continue
    levels = lv[of_type]
    if k == 0 or np.ptp(levels) == 0:
      bins = [(float(levels.min()), float(levels.max()), of_type)]
    else:
      bins = []
      for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = j == edges.size - 2
        keep = of_type & (lv >= lo) & ((lv <= hi) if last else (lv < hi))
        bins.append((float(lo), float(hi), keep))
    for lo, hi, keep in bins:
      if keep.any():
        rows.append({"type": name, "lo": lo, "hi": hi, "n": int(keep.sum()),
                     "mean": float(q[keep].mean()), "std": float(q[keep].std())})
  return rows


def image_statistics(images) -> dict[str, np.ndarray]:
  """Quality from the pixels alone: the baselines a learned quality must beat.

  images: [N, H, W] grey or [N, H, W, C] colour, uint8 (0..255) or float in
  [0, 1]. Each image is turned grey (the channel mean) and scaled to [0, 1].

  Returns float64 [N] arrays, larger = better for each:
    brightness: the mean grey level;
    contrast: the standard deviation of the grey levels (RMS contrast);
    sharpness: the variance of the 4-neighbour Laplacian (Pech-Pacheco et al.,
      ICPR 2000), computed on the interior pixels so no border is invented.

  >>> flat = np.full((1, 8, 8), 0.5); edges = np.tile([0.0, 1.0], (1, 8, 4))
  >>> s = image_statistics(np.concatenate([flat, edges]))
  >>> s["sharpness"].round(2).tolist(), s["contrast"].round(2).tolist()
  ([0.0, 4.0], [0.0, 0.5])
  """
  x = np.asarray(images)
  if x.ndim not in (3, 4) or min(x.shape[1:3], default=0) < 3:
    raise ValueError(f"images must be [N, H, W] or [N, H, W, C] with H, W >= 3; got shape "
                     f"{x.shape}.")
  grey = x.astype(np.float64)
  if grey.ndim == 4:
    grey = grey.mean(axis=-1)
  if x.dtype == np.uint8:
    grey /= 255.0
  lap = (grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
         - 4.0 * grey[:, 1:-1, 1:-1])
  return {"brightness": grey.mean(axis=(1, 2)), "contrast": grey.std(axis=(1, 2)),
          "sharpness": lap.reshape(len(grey), -1).var(axis=1)}
