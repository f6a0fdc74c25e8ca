"""An EDC / pAUC reference written from the paper's definitions (Schlett et al.,
arXiv 2303.13294; ISO/IEC 29794-1:2024) and the conventions in
docs/evaluation.md, "EDC and pAUC": plain Python loops over quality levels."""
from __future__ import annotations

import numpy as np


def edc_points(scores, same, qa, qb, error="fnmr", starting_error=0.05):
  scores = np.asarray(scores, np.float64)
  same = np.asarray(same, bool)
  use = same if error == "fnmr" else ~same
  s = scores[use]
  q = np.minimum(np.asarray(qa, np.float64), np.asarray(qb, np.float64))[use]
  thr = np.quantile(s, starting_error if error == "fnmr" else 1 - starting_error)
  wrong = (s < thr) if error == "fnmr" else (s >= thr)
  n = s.size
  d_out, e_out = [], []
  # Discarding everything below each distinct quality level, lowest first.
  for level in np.unique(q):
    kept = q >= level
    d_out.append((n - kept.sum()) / n)
    e_out.append(wrong[kept].sum() / kept.sum())
  d_out.append(1.0)
  e_out.append(0.0)
  return np.array(d_out), np.array(e_out), thr


def pauc(d, e, limit, relative_to_best=False):
  area = 0.0
  for i in range(len(d) - 1):
    lo, hi = d[i], min(d[i + 1], limit)
    if hi > lo:
      area += e[i] * (hi - lo)
  if relative_to_best:
    e0 = e[0]
    area -= e0 * e0 / 2 - max(e0 - limit, 0.0) ** 2 / 2
  return area
