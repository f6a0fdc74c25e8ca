"""A validation split carved out of a training split: held-out identities.

Market-1501, DukeMTMC-reID, CUHK03-NP and MARS have no validation split, so a
checkpoint chosen on their query/gallery protocol is chosen on the test set.
`holdout_identities` sets a fraction of the training identities aside
(deterministic by seed) and lays their records out as a query/gallery pair of
the benchmark's own shape (docs/evaluation.md, "Validation while training"):

- units are images, or tracklets where the records have them (tracklet >= 0:
  MARS), so a query is one image or one whole tracklet;
- per held-out identity and camera, one unit drawn by the seed is the query;
  the identity's other units, in every camera, are the gallery;
- the re-ID scoring then removes same-identity same-camera gallery entries and
  skips queries left without a match (an identity seen by one camera only).

`Subset` is the random-access view of such a selection: records of a source at
given indices, with `label` re-ranked so that the kept training identities
have classifier labels 0..C-1.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxset.data import records


@dataclasses.dataclass(frozen=True)
class Holdout:
  """Record indices of the split into training / validation query / gallery."""
  train: np.ndarray
  query: np.ndarray
  gallery: np.ndarray
  identities: np.ndarray  # the held-out identities, sorted


def holdout_identities(identity, camera, tracklet=None, *, fraction: float,
                       seed: int = 0) -> Holdout:
  """Holds out round(fraction x identities) training identities as a query/gallery split.

  Args:
    identity, camera: [N] ints per record (identity < 0: unknown, kept for training).
    tracklet: [N] ints or None; records sharing a tracklet >= 0 form one unit.
    fraction: in (0, 1); at least one identity is held out and one kept.
    seed: the draw of identities and query units (the same seed, the same split).
  """
  identity = np.asarray(identity).reshape(-1)
  camera = np.asarray(camera).reshape(-1)
  n = identity.size
  tracklet = np.full(n, -1) if tracklet is None else np.asarray(tracklet).reshape(-1)
  if camera.size != n or tracklet.size != n:
    raise ValueError(f"identity, camera and tracklet need one value per record; got "
                     f"{n}, {camera.size}, {tracklet.size}.")
  if not 0.0 < float(fraction) < 1.0:
    raise ValueError(f"fraction={fraction!r}: the share of training identities held out "
                     "must be in (0, 1), e.g. 0.1.")
  ids = np.unique(identity[identity >= 0])
  k = int(round(float(fraction) * ids.size))
  if not 1 <= k < ids.size:
    raise ValueError(f"fraction={fraction} of {ids.size} training identities holds out {k}; "
                     "at least one must be held out and one kept for training.")
  rng = np.random.default_rng(seed)
  held = np.sort(rng.choice(ids, k, replace=False))
  is_held = np.isin(identity, held)
  rows = np.flatnonzero(is_held)
  # One unit id per record: its tracklet, or the record itself (negative ids
  # never meet a tracklet's).
  unit = np.where(tracklet >= 0, tracklet, -1 - np.arange(n))[rows]
  # (identity, camera) groups of units, in sorted order so the draw is fixed.
  units, first = np.unique(unit, return_index=True)
  u_id, u_cam = identity[rows[first]], camera[rows[first]]
  order = np.lexsort((units, u_cam, u_id))
  units, u_id, u_cam = units[order], u_id[order], u_cam[order]
  starts = np.flatnonzero(np.r_[True, (u_id[1:] != u_id[:-1]) | (u_cam[1:] != u_cam[:-1])])
  sizes = np.diff(np.r_[starts, units.size])
  chosen = units[starts + rng.integers(0, sizes)]
  in_query = np.isin(unit, chosen)
  return Holdout(train=np.flatnonzero(~is_held), query=rows[in_query],
                 gallery=rows[~in_query], identities=held)


def rank_labels(identity) -> np.ndarray:
  """Each record's identity ranked among the identities present (0..C-1, in
  increasing order); unknown identities (< 0) get -1."""
  identity = np.asarray(identity).reshape(-1)
  ids = np.unique(identity[identity >= 0])
  return np.where(identity >= 0, np.searchsorted(ids, identity), -1)


class Subset:
  """The records of `base` at `indices`, in that order, with `label` = `labels`.

  A random-access source (__len__, __getitem__, __getitems__) whose
  `metadata()` gives its columns without reading a record, so samplers and
  records.read_metadata start as fast as on the base.
  """

  def __init__(self, base, indices, labels):
    self._base = base
    self.indices = np.asarray(indices, np.int64).reshape(-1)
    self._labels = np.asarray(labels).reshape(-1)
    if self._labels.size != self.indices.size:
      raise ValueError(f"{self.indices.size} indices but {self._labels.size} labels.")
    self._meta = None

  def __len__(self) -> int:
    return int(self.indices.size)

  def _relabel(self, rec, i: int) -> dict:
    rec = dict(rec)
    if "label" in rec:
      rec["label"] = np.asarray(self._labels[i], np.asarray(rec["label"]).dtype)[()]
    return rec

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    if not -len(self) <= i < len(self):
      raise IndexError(f"record {i} of a subset of {len(self)}.")
    i %= len(self)
    return self._relabel(self._base[int(self.indices[i])], i)

  def __getitems__(self, idx) -> list[dict]:
    idx = [int(i) % len(self) for i in idx]
    recs = records.fetch(self._base, self.indices[idx])
    return [self._relabel(r, i) for r, i in zip(recs, idx)]

  def metadata(self) -> dict[str, np.ndarray]:
    if self._meta is None:
      cols = {k: v[self.indices] for k, v in records.read_metadata(self._base).items()}
      if "label" in cols:
        cols["label"] = self._labels.astype(cols["label"].dtype)
      self._meta = cols
    return self._meta
