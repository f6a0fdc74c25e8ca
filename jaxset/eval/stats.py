"""Judging a claim: paired differences, hierarchical bootstrap intervals, verdicts, power.

A claim "method beats baseline" is measured on several training seeds, each
evaluated on the same test units (queries, pairs, sets). The unit of evidence
is the paired difference d[s, i] = metric_method(s, i) - metric_baseline(s, i)
of unit i under seed s. Two sources of chance move the mean difference: which
seeds were trained (training noise) and which units were drawn (test-set
noise). The interval resamples both, as a two-level (hierarchical) bootstrap
does (Davison & Hinkley 1997, sec. 3.8): draw S seeds with replacement, then
within each drawn seed its units with replacement, and take the mean over
seeds of the per-seed unit means. The 95% percentile interval of that
statistic decides the verdict:

- "held": the interval lies entirely on the claimed side of 0;
- "contradicted": it lies entirely on the other side;
- "inconclusive": it contains 0.

Power is reported as the minimum detectable effect: the smallest true
difference that a two-sided test at level alpha detects with probability
`power`, (z_{1-alpha/2} + z_{power}) x the bootstrap standard error (normal
approximation). A claim whose effect is below it cannot be decided by this
many seeds and units, whatever the verdict says.
"""
from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import numpy as np

VERDICTS = ("held", "contradicted", "inconclusive")
DIRECTIONS = (">", "<")


def _as_seed_arrays(differences) -> list[np.ndarray]:
  """[S] float64 arrays of per-unit differences, checked (ragged seeds allowed)."""
  if isinstance(differences, np.ndarray) and differences.ndim == 2:
    rows = list(differences)
  elif isinstance(differences, np.ndarray):
    raise ValueError(f"differences: expected [seeds, units] or a list of [units] arrays, got "
                     f"an array of shape {differences.shape}; wrap one seed as [d].")
  else:
    rows = list(differences)
  if not rows:
    raise ValueError("differences: no seeds given; pass one [units] array per training seed.")
  out = []
  for s, row in enumerate(rows):
    a = np.asarray(row, np.float64)
    if a.ndim != 1 or a.size == 0:
      raise ValueError(f"differences[{s}]: expected a non-empty [units] array of per-unit "
                       f"paired differences, got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
      bad = int(np.sum(~np.isfinite(a)))
      raise ValueError(f"differences[{s}]: {bad} of {a.size} values are NaN or Inf; a unit "
                       "the metric could not score must be dropped from both runs, not kept.")
    out.append(a)
  return out


def paired_bootstrap(differences, *, confidence: float = 0.95, n_resamples: int = 2000,
                     resample_seeds: bool = True, seed: int = 0) -> dict:
  """Mean paired difference with a two-level bootstrap interval.

  differences: [S, N] array or S arrays [N_s]: per seed, the per-unit paired
    differences (method - baseline on the same unit). Metrics that are means
    over units (rank-1, mAP, Recall@N, pair accuracy) decompose this way.
  resample_seeds: False resamples units only (S = 1 must use False or gets a
    zero-width seed level: a single seed says nothing about training noise).

  Returns estimate (mean over seeds of the unit means), low, high, std_error
  (of the bootstrap distribution), n_seeds, n_units (total), mde (minimum
  detectable effect at alpha = 1 - confidence, power 0.8), confidence.

  >>> r = paired_bootstrap([[0.1, 0.2, 0.1, 0.2], [0.1, 0.1, 0.2, 0.2]], n_resamples=500)
  >>> round(r["estimate"], 3), r["low"] > 0, verdict(r, ">")
  (0.15, True, 'held')
  """
  rows = _as_seed_arrays(differences)
  rng = np.random.default_rng(seed)
  slots = _seed_slots(rng, len(rows), n_resamples, confidence, resample_seeds)
  s_count, r_count = len(rows), slots.shape[0]
  slot_means = np.empty((r_count, s_count))
  for s, row in enumerate(rows):
    where = np.nonzero(slots == s)
    n = row.size
    # A fresh unit resample for every slot the seed fills; chunked to bound memory.
    chunk = max(1, 4_000_000 // n)
    for start in range(0, where[0].size, chunk):
      stop = min(start + chunk, where[0].size)
      idx = rng.integers(n, size=(stop - start, n))
      slot_means[where[0][start:stop], where[1][start:stop]] = row[idx].mean(axis=1)
  return _interval(slot_means.mean(axis=1), float(np.mean([r.mean() for r in rows])), rows,
                   confidence)


def _seed_slots(rng, s_count: int, n_resamples: int, confidence: float,
                resample_seeds: bool) -> np.ndarray:
  """[R, S]: which seed fills each of the S slots of each of the R resamples."""
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}.")
  if int(n_resamples) < 100:
    raise ValueError(f"n_resamples must be >= 100 for a percentile interval, got {n_resamples}.")
  r_count = int(n_resamples)
  if resample_seeds:
    return rng.integers(s_count, size=(r_count, s_count))
  return np.broadcast_to(np.arange(s_count), (r_count, s_count))


def _interval(stats: np.ndarray, estimate: float, rows, confidence: float) -> dict:
  """The percentile interval, standard error and MDE of a bootstrap distribution."""
  alpha = 1.0 - confidence
  low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
  se = float(stats.std(ddof=1))
  return {"estimate": estimate, "low": float(low), "high": float(high), "std_error": se,
          "n_seeds": len(rows), "n_units": int(sum(r.size for r in rows)),
          "mde": minimum_detectable_effect(se, alpha=alpha), "confidence": confidence}


def replicate_bootstrap(replicates, estimates, *, confidence: float = 0.95,
                        n_resamples: int = 2000, resample_seeds: bool = True,
                        seed: int = 0) -> dict:
  """The two-level bootstrap for a statistic that is not a mean over units.

  A partial area (edc_pauc) or a rank correlation has no per-unit terms, so the
  within-seed level cannot be drawn unit by unit at judging time. Instead each
  seed brings `replicates`: its statistic (e.g. pAUC(method) - pAUC(baseline))
  recomputed on bootstrap resamples of its test units, the same resamples for
  both sides. Each outer resample draws S seeds with replacement and, for each
  drawn seed, one of its replicates; the interval is the percentile interval of
  the mean over the drawn seeds.

  replicates: S arrays [B_s] (B_s >= 1). estimates: the S per-seed statistics
  on the full data. Returns the keys of paired_bootstrap (n_units: total
  replicates).

  >>> r = replicate_bootstrap([[-0.02, -0.03, -0.01], [-0.02, -0.04, -0.02]],
  ...                         [-0.02, -0.03], n_resamples=500)
  >>> round(r["estimate"], 3), verdict(r, "<")
  (-0.025, 'held')
  """
  rows = _as_seed_arrays(replicates)
  est = np.asarray(estimates, np.float64)
  if est.shape != (len(rows),) or not np.all(np.isfinite(est)):
    raise ValueError(f"estimates must hold one finite value per seed ({len(rows)}); got "
                     f"{est.tolist()}.")
  rng = np.random.default_rng(seed)
  slots = _seed_slots(rng, len(rows), n_resamples, confidence, resample_seeds)
  draws = np.empty(slots.shape)
  for s, row in enumerate(rows):
    where = np.nonzero(slots == s)
    draws[where] = row[rng.integers(row.size, size=where[0].size)]
  return _interval(draws.mean(axis=1), float(est.mean()), rows, confidence)


def minimum_detectable_effect(std_error: float, *, alpha: float = 0.05,
                              power: float = 0.8) -> float:
  """(z_{1-alpha/2} + z_power) x std_error: the smallest true effect a two-sided
  test at level alpha detects with probability `power` (normal approximation).

  >>> round(minimum_detectable_effect(0.01), 4)
  0.028
  """
  if not (std_error >= 0 and np.isfinite(std_error)):
    raise ValueError(f"std_error must be finite and >= 0, got {std_error}.")
  z = NormalDist()
  return float((z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * std_error)


def verdict(interval: dict | Sequence[float], direction: str) -> str:
  """"held" / "contradicted" / "inconclusive" from an interval and the claimed side.

  interval: a paired_bootstrap result, or (low, high). direction: ">" (the
  claim is a positive difference) or "<" (negative, e.g. a lower error).

  >>> verdict((0.01, 0.05), ">"), verdict((0.01, 0.05), "<"), verdict((-0.01, 0.05), ">")
  ('held', 'contradicted', 'inconclusive')
  """
  if direction not in DIRECTIONS:
    raise ValueError(f"direction must be one of {DIRECTIONS} (the claimed sign of the "
                     f"difference), got {direction!r}.")
  low, high = ((interval["low"], interval["high"]) if isinstance(interval, dict)
               else tuple(interval))
  if not (np.isfinite(low) and np.isfinite(high)) or low > high:
    raise ValueError(f"interval must be finite with low <= high, got ({low}, {high}).")
  above, below = low > 0, high < 0
  if direction == ">":
    return "held" if above else "contradicted" if below else "inconclusive"
  return "held" if below else "contradicted" if above else "inconclusive"
