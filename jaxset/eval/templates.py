"""Set / template features: IJB-B/C templates, quality-weighted sets, YTF tracklets.

A template (IJB), a video (YTF) or a tracklet (MARS, PRID, iLIDS-VID) is a
ragged set of per-image features; `aggregate_templates` turns each set into one
L2-normalised vector. For YTF-like set verification aggregate the frames with
set_ids = video ids, then run verification.kfold_verification_accuracy on the
rows of the pairs (see `template_pair_scores` / `rows_of`).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse

from jaxset.eval.verification import l2_normalize
from jaxset.ops import _checks

MODES = ("ijb", "mean", "quality")


def _segment_sum(x: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
  """Row sums per segment id in [0, n); empty segments give zeros."""
  # A sparse [n, N] indicator times x: one pass over the rows. np.add.at and
  # np.add.reduceat(axis=0) are 10-50x slower at IJB-C sizes (470k x 512).
  ind = scipy.sparse.csr_matrix(
      (np.ones(seg.size), (seg, np.arange(seg.size))), shape=(n, seg.size))
  return np.asarray(ind @ x, np.float64)


def aggregate_templates(features, template_ids, media_ids=None, weights=None,
                        mode: str = "ijb", *, normalize_features: bool | None = None,
                        normalize_output: bool = True):
  """One feature per template (set); returns (template_features, template_id_list).

  Modes:
    "ijb" (insightface IJB-B/C, image2template_feature): media feature = mean of
      the template's images from that media (video frames share a media id; a
      still is its own media); template = SUM of its media features; then L2.
      Optional `weights` multiply each image feature first (insightface's
      detector-score option). With normalize_features=False the raw features
      are used, so their norms act as weights (insightface's use_norm_score).
      media_ids=None makes every image its own media: template = sum of images.
    "mean": the plain mean of the images' features (media ignored); then L2.
    "quality": QAN eq. (2), R_a(S) = sum_i mu_i R_i / sum_i mu_i, weights = mu_i
      (required, >= 0). Use it with EQFace scores s_i as the weights for
      EQFace-style quality-weighted video aggregation: jaxset implements exactly
      this normalised weighted mean. EQFace's progressive (online, frame by
      frame) aggregation scheme could not be checked against the paper text
      here and has no separate implementation (a running quality-weighted mean
      over all frames equals the batch form above). A set whose weights are all 0
      falls back to the unweighted mean.

  Args:
    features: [N, D] per-image features.
    template_ids: [N] int template (set) id of each image.
    media_ids: [N] int media id (used by "ijb"); grouped within each template.
    weights: [N] per-image weights (quality scores, detector scores).
    normalize_features: L2-normalise each image feature first. Default: True for
      "ijb" and "mean" (insightface), False for "quality" (QAN pools the raw R_i).
    normalize_output: L2-normalise each template feature (a zero sum stays zero).

  Returns:
    (template_features float32 [T, D], template_ids [T] sorted ascending).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
  x = np.asarray(features, np.float64)
  _checks.check_rank("features", x, 2, "[num_images, dim]")
  if x.ndim != 2:
    raise ValueError(f"features must be [num_images, dim]; got shape {x.shape}.")
  _checks.check_finite("features", x)
  n = x.shape[0]
  tids = np.asarray(template_ids).reshape(-1)
  _checks.check_same(("features", "template_ids"), (n, tids.size), "Image counts")
  if n == 0:
    raise ValueError("features is empty: need at least one image.")
  w = None
  if weights is not None:
    w = np.asarray(weights, np.float64).reshape(-1)
    _checks.check_same(("features", "weights"), (n, w.size), "Image counts")
    _checks.check_finite("weights", w)
    if (w < 0).any():
      raise ValueError("weights must be >= 0 (quality or detector scores).")
  if normalize_features is None:
    normalize_features = mode != "quality"
  if normalize_features:
    x = l2_normalize(x)
  uniq, tinv = np.unique(tids, return_inverse=True)
  nt = uniq.size

  if mode == "ijb":
    if w is not None:
      x = x * w[:, None]
    mids = np.zeros(n, np.int64) if media_ids is None else np.asarray(media_ids).reshape(-1)
    _checks.check_same(("features", "media_ids"), (n, mids.size), "Image counts")
    if media_ids is None:
      media_inv = np.arange(n)
      media_tmpl = tinv
      nm = n
    else:
      mu, minv = np.unique(mids, return_inverse=True)
      # media are grouped within their template: key = (template, media) pair.
      keys, media_inv = np.unique(tinv.astype(np.int64) * mu.size + minv.reshape(-1),
                                  return_inverse=True)
      media_inv = media_inv.reshape(-1)
      media_tmpl = keys // mu.size
      nm = keys.size
    counts = np.bincount(media_inv, minlength=nm)[:, None]
    media = _segment_sum(x, media_inv, nm) / counts
    out = _segment_sum(media, media_tmpl, nt)
  elif mode == "mean":
    if w is not None:
      raise ValueError("mode='mean' takes no weights; use mode='quality' for weighted sets.")
    out = _segment_sum(x, tinv, nt) / np.bincount(tinv, minlength=nt)[:, None]
  else:
    if w is None:
      raise ValueError("mode='quality' needs weights (one quality score per image).")
    wsum = np.bincount(tinv, weights=w, minlength=nt)
    weighted = _segment_sum(x * w[:, None], tinv, nt)
    plain = _segment_sum(x, tinv, nt) / np.bincount(tinv, minlength=nt)[:, None]
    ok = wsum > 0
    out = np.where(ok[:, None], weighted / np.where(ok, wsum, 1.0)[:, None], plain)
  if normalize_output:
    out = l2_normalize(out)
  return out.astype(np.float32), uniq


def rows_of(template_id_list, query_ids) -> np.ndarray:
  """Row of each id in `template_id_list` (sorted, as aggregate_templates returns)."""
  ids = np.asarray(template_id_list).reshape(-1)
  q = np.asarray(query_ids).reshape(-1)
  pos = np.searchsorted(ids, q)
  pos_c = np.minimum(pos, max(ids.size - 1, 0))
  missing = (pos >= ids.size) | (ids[pos_c] != q)
  if missing.any():
    raise ValueError(
        f"{int(missing.sum())} template id(s) have no feature (first: {q[missing][0]}); "
        "the pair list and the face/template list must come from the same protocol.")
  return pos_c


def template_pair_scores(template_features, template_id_list, tids_a, tids_b):
  """Cosine scores of template pairs (IJB ijbc_template_pair_label.txt rows).

  template_features [T, D] L2-normalised (from aggregate_templates), so the dot
  product is the cosine similarity, as insightface scores IJB pairs.
  Returns float64 [P]; higher = more likely the same identity.
  """
  f = np.asarray(template_features, np.float64)
  a = rows_of(template_id_list, tids_a)
  b = rows_of(template_id_list, tids_b)
  return np.sum(f[a] * f[b], axis=1)
