"""Error-versus-discard characteristic (EDC) and its partial area (pAUC).

ISO/IEC 29794-1:2024; Schlett, Rathgeb, Tapia, Busch, "Considerations on the
evaluation of biometric quality assessment algorithms" (arXiv 2303.13294).
The conventions are those of the standard's authors' reference code
(docs/evaluation.md, "EDC and pAUC"):

- error="fnmr" uses the mated comparisons only (same = True), error="fmr" the
  non-mated ones. Each comparison's quality is min(q_a, q_b).
- The similarity threshold is fixed once, before discarding: numpy's linear
  quantile of those comparisons' scores at starting_error (FNMR) or
  1 - starting_error (FMR). An FNMR error is score < threshold, an FMR error
  score >= threshold.
- Comparisons are discarded in ascending pairwise quality; comparisons of equal
  quality go together, so the curve has a point only where the quality
  changes: discard fraction d = discarded / n, error = errors left / left.
  The point (1, 0) closes the curve.
- pAUC = the step-wise area sum_i e_i (min(d_{i+1}, limit) - d_i) up to the
  discard limit; relative_to_best subtracts the area under the theoretical
  best line max(0, e_0 - d): e_0^2 / 2 - max(0, e_0 - limit)^2 / 2.

This is not `jaxset.eval.quality.error_vs_reject` (Grother & Tabassi's ERC):
that one fixes the threshold by FMR on all pairs, rejects a fraction of all
pairs (both kinds) and breaks quality ties by pair order.

Everything is jnp with static shapes, so `edc` and `edc_pauc` run under jit and
vmap (`edc_pauc_bootstrap` vmaps over resamples). Called eagerly they compute
in float64 (as the reference code does, whatever jax_enable_x64 says) with the
threshold from numpy.quantile itself, so the threshold, the errors and the tie
groups are exactly the reference's. Under jit the quantile is jnp's, in the
inputs' dtype.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxset.ops import _checks

ERRORS = ("fnmr", "fmr")


def _quantile_linear(sorted_x, n, q):
  """numpy.quantile(x, q) (method "linear") of the first n entries of sorted_x."""
  v = (n - 1).astype(sorted_x.dtype) * q
  prev = jnp.floor(v)
  above = v >= n - 1
  lo = jnp.where(above, n - 1, prev.astype(jnp.int32))
  hi = jnp.where(above, n - 1, lo + 1)
  gamma = v - prev
  a, b = sorted_x[jnp.clip(lo, 0)], sorted_x[jnp.clip(hi, 0)]
  diff = b - a
  # numpy's _lerp: from the nearer end, so q = 1 gives b exactly.
  return jnp.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def _curve(scores, same, pair_q, starting_error, threshold, error):
  """[P + 1] discard fractions, error fractions and validity, plus threshold and n."""
  relevant = same if error == "fnmr" else ~same
  n = jnp.sum(relevant).astype(jnp.int32)
  p = scores.shape[0]
  order = jnp.lexsort((pair_q, ~relevant))  # relevant first, then by quality (stable)
  s, q, rel = scores[order], pair_q[order], relevant[order]
  if threshold is None:
    s_sorted = jnp.sort(jnp.where(relevant, scores, jnp.inf))
    quant = starting_error if error == "fnmr" else 1 - starting_error
    thr = _quantile_linear(s_sorted, n, jnp.asarray(quant, scores.dtype))
  else:
    thr = jnp.asarray(threshold, scores.dtype)
  err = (s < thr) if error == "fnmr" else (s >= thr)
  err = err & rel
  left_errors = jnp.cumsum(err[::-1].astype(jnp.int32))[::-1]
  i = jnp.arange(p, dtype=jnp.int32)
  new_q = jnp.concatenate([jnp.ones((1,), bool), q[1:] != q[:-1]])
  start = rel & new_q
  nf = jnp.maximum(n, 1).astype(scores.dtype)
  e = jnp.where(start, left_errors / jnp.maximum(n - i, 1).astype(scores.dtype), 0.0)
  d = i.astype(scores.dtype) / nf
  return (jnp.concatenate([d, jnp.ones((1,), d.dtype)]),
          jnp.concatenate([e, jnp.zeros((1,), e.dtype)]),
          jnp.concatenate([start, jnp.ones((1,), bool)]), thr, n)


def _pauc(d, e, valid, limit, relative_to_best):
  """Step-wise area of the valid points up to `limit` (minus the best's area)."""
  m = d.shape[0]
  pos = jnp.where(valid, jnp.arange(m), m - 1)
  nxt = jax.lax.cummin(jnp.concatenate([pos[1:], jnp.array([m - 1])]), reverse=True)
  width = jnp.clip(jnp.minimum(d[nxt], limit) - d, 0.0)
  area = jnp.sum(jnp.where(valid, e * width, 0.0))
  if relative_to_best:
    e0 = e[0]
    area = area - (e0 ** 2 / 2 - jnp.maximum(e0 - limit, 0.0) ** 2 / 2)
  return area


@functools.partial(jax.jit, static_argnames=("error", "with_threshold"))
def _edc_jit(scores, same, pair_q, starting_error, threshold, *, error, with_threshold):
  return _curve(scores, same, pair_q, starting_error, threshold if with_threshold else None,
                error)


@functools.partial(jax.jit, static_argnames=("error", "with_threshold", "relative_to_best"))
def _pauc_jit(scores, same, pair_q, starting_error, threshold, limit, *, error,
              with_threshold, relative_to_best):
  d, e, valid, _, _ = _curve(scores, same, pair_q, starting_error,
                             threshold if with_threshold else None, error)
  return _pauc(d, e, valid, limit, relative_to_best)


def _inputs(scores, same, quality_a, quality_b, error, starting_error, pair_quality):
  if error not in ERRORS:
    raise ValueError(f"error must be one of {ERRORS}; got {error!r}.")
  if pair_quality not in ("min", "max", "mean"):
    raise ValueError(f"pair_quality must be 'min', 'max' or 'mean'; got {pair_quality!r}.")
  if _checks.is_concrete(starting_error) and not 0.0 <= float(starting_error) <= 1.0:
    raise ValueError(f"starting_error must be in [0, 1]; got {starting_error}.")
  arrays = [scores, same, quality_a] + ([] if quality_b is None else [quality_b])
  names = ["scores", "same", "quality_a", "quality_b"][:len(arrays)]
  for name, x in zip(names, arrays):
    if jnp.ndim(x) != 1:
      raise ValueError(f"{name} must be a 1-D array with one entry per comparison; "
                       f"got shape {tuple(jnp.shape(x))}.")
  _checks.check_same(names, [jnp.shape(x)[0] for x in arrays], "Comparison counts")
  if jnp.shape(scores)[0] == 0:
    raise ValueError("scores is empty: the EDC needs at least one comparison.")
  for name, x in zip(names, arrays):
    if name != "same":
      _checks.check_finite(name, x)
  concrete = _checks.is_concrete(*arrays, starting_error)
  if concrete:
    relevant = np.asarray(same).astype(bool)
    if error == "fmr":
      relevant = ~relevant
    if not relevant.any():
      kind = "mated (same = True)" if error == "fnmr" else "non-mated (same = False)"
      raise ValueError(f"error={error!r} needs {kind} comparisons; there are none.")
  return concrete


def _host_threshold(scores, same, error, starting_error):
  """numpy.quantile of the used comparisons' scores in float64, as the reference
  computes it (XLA may fuse the interpolation into an FMA and differ in the last bit)."""
  s = np.asarray(scores, np.float64)
  m = np.asarray(same).astype(bool)
  used = s[m] if error == "fnmr" else s[~m]
  q = float(starting_error)
  return float(np.quantile(used, q if error == "fnmr" else 1 - q))


def _pair_quality(qa, qb, how):
  if qb is None:
    return qa
  return {"min": jnp.minimum, "max": jnp.maximum}.get(how, lambda a, b: (a + b) / 2)(qa, qb)


def _run(fn, scores, same, quality_a, quality_b, pair_quality, concrete, *extra):
  """fn(scores, same, pair_q, *extra) in float64 when called eagerly."""
  if concrete:
    with jax.enable_x64(True):
      f64 = lambda x: jnp.asarray(np.asarray(x, np.float64))
      qa = f64(quality_a)
      qb = None if quality_b is None else f64(quality_b)
      out = fn(f64(scores), jnp.asarray(np.asarray(same).astype(bool)),
               _pair_quality(qa, qb, pair_quality), *extra)
      return jax.tree.map(np.asarray, out)
  dt = _checks.compute_dtype(scores, quality_a, quality_b)
  qa = jnp.asarray(quality_a, dt)
  qb = None if quality_b is None else jnp.asarray(quality_b, dt)
  return fn(jnp.asarray(scores, dt), jnp.asarray(same).astype(bool),
            _pair_quality(qa, qb, pair_quality), *extra)


def edc(scores, same, quality_a, quality_b=None, *, error: str = "fnmr",
        starting_error: float = 0.05, threshold: float | None = None,
        pair_quality: str = "min"):
  """The EDC curve (ISO/IEC 29794-1:2024; Schlett et al. 2023).

  Args:
    scores: [P] similarity scores (higher = more alike).
    same: [P] bool, True for mated comparisons.
    quality_a, quality_b: [P] quality of each side (higher = better); pair
      quality = min(quality_a, quality_b) (pair_quality="max"/"mean" offered as
      the reference code offers them). quality_b None: quality_a is already
      the pair quality.
    error: "fnmr" (mated comparisons) or "fmr" (non-mated).
    starting_error: the threshold is numpy's linear quantile of the used
      comparisons' scores at starting_error (fnmr) or 1 - starting_error (fmr).
    threshold: a fixed similarity threshold instead of starting_error.

  Returns:
    dict with "discard_fractions" and "error_fractions" (the curve, ending at
    (1, 0)), "threshold" and "num_comparisons" (n used). Called eagerly the
    arrays hold only the curve's points (float64). Under jit / vmap they keep
    the static length P + 1 and "valid" marks the points (the others are 0).
  """
  concrete = _inputs(scores, same, quality_a, quality_b, error, starting_error, pair_quality)
  if concrete and threshold is None:
    threshold = _host_threshold(scores, same, error, starting_error)
  fn = functools.partial(_edc_jit, error=error, with_threshold=threshold is not None)
  d, e, valid, thr, n = _run(fn, scores, same, quality_a, quality_b, pair_quality, concrete,
                             starting_error, 0.0 if threshold is None else threshold)
  if concrete:
    # The fractions again from their integer counts with numpy's division
    # (XLA's CPU division can differ from it in the last bit).
    dc = np.flatnonzero(valid[:-1])
    left = np.rint(e[dc] * (int(n) - dc)).astype(np.int64)
    return {"discard_fractions": np.r_[dc / int(n), 1.0],
            "error_fractions": np.r_[left / (int(n) - dc), 0.0],
            "threshold": float(thr), "num_comparisons": int(n)}
  return {"discard_fractions": d, "error_fractions": e, "valid": valid, "threshold": thr,
          "num_comparisons": n}


def edc_pauc(scores, same, quality_a, quality_b=None, *, error: str = "fnmr",
             starting_error: float = 0.05, threshold: float | None = None,
             discard_limit: float = 0.2, relative_to_best: bool = False,
             pair_quality: str = "min"):
  """The EDC's partial area up to discard_limit (step-wise), as a scalar.

  relative_to_best: subtract the area under the theoretical best line
  max(0, e_0 - d) up to the limit (the reference code's
  compute_edc_area_under_theoretical_best). Other arguments as `edc`. Lower is
  better. discard_limit = 0 gives 0.
  """
  if _checks.is_concrete(discard_limit) and not 0.0 <= float(discard_limit) <= 1.0:
    raise ValueError(f"discard_limit must be in [0, 1]; got {discard_limit}.")
  concrete = _inputs(scores, same, quality_a, quality_b, error, starting_error, pair_quality)
  if concrete and threshold is None:
    threshold = _host_threshold(scores, same, error, starting_error)
  fn = functools.partial(_pauc_jit, error=error, with_threshold=threshold is not None,
                         relative_to_best=bool(relative_to_best))
  out = _run(fn, scores, same, quality_a, quality_b, pair_quality, concrete, starting_error,
             0.0 if threshold is None else threshold, discard_limit)
  return float(out) if concrete else out


def edc_pauc_bootstrap(scores, same, quality_a, quality_b=None, *, key=None,
                       num_resamples: int = 1000, confidence: float = 0.95,
                       error: str = "fnmr", starting_error: float = 0.05,
                       discard_limit: float = 0.2, relative_to_best: bool = False,
                       pair_quality: str = "min"):
  """pAUC with a percentile bootstrap interval: comparisons resampled with
  replacement, the threshold re-fixed from starting_error in each resample,
  all resamples at once with jax.vmap.

  Returns {"pauc" (on the data), "low", "high" (the central `confidence`
  interval), "samples" [num_resamples]}.
  """
  if num_resamples < 1:
    raise ValueError(f"num_resamples must be >= 1; got {num_resamples}.")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1); got {confidence}.")
  point = edc_pauc(scores, same, quality_a, quality_b, error=error,
                   starting_error=starting_error, discard_limit=discard_limit,
                   relative_to_best=relative_to_best, pair_quality=pair_quality)
  key = jax.random.key(0) if key is None else key
  s = jnp.asarray(scores, jnp.float32)
  m = jnp.asarray(same).astype(bool)
  qa = jnp.asarray(quality_a, jnp.float32)
  qb = None if quality_b is None else jnp.asarray(quality_b, jnp.float32)
  pq = _pair_quality(qa, qb, pair_quality)
  p = s.shape[0]
  idx = jax.random.randint(key, (num_resamples, p), 0, p)
  fn = functools.partial(_pauc_jit, error=error, with_threshold=False,
                         relative_to_best=bool(relative_to_best))
  samples = jax.vmap(lambda ix: fn(s[ix], m[ix], pq[ix], starting_error, 0.0, discard_limit))(idx)
  samples = np.asarray(samples, np.float64)
  # A resample without comparisons of the needed kind has no curve: left out.
  kind = np.asarray(m)[np.asarray(idx)]
  ok = (kind if error == "fnmr" else ~kind).any(axis=1)
  samples = samples[ok]
  a = (1 - confidence) / 2
  return {"pauc": point, "low": float(np.quantile(samples, a)),
          "high": float(np.quantile(samples, 1 - a)), "samples": samples}
