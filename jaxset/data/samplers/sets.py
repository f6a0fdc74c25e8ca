"""Sets of frames from tracklets: set batches and set triplets (QAN)."""
from __future__ import annotations

import grain
import numpy as np

from jaxset.data.images import padded_images
from jaxset.data.records import read_metadata
from jaxset.data.sampling import (
  _NEG,
  _PAIR,
  _PICK,
  _SET,
  _Epochs,
  _group,
  _resolve_shard,
  _rng,
  _to_dataset,
  _with_common_args,
)
from jaxset.data.transforms import ImageFn


class _Tracklets:
  """Tracklet groups of a split, with the set-size policy."""

  def __init__(self, source, set_size, contiguous):
    meta = read_metadata(source)
    for key in ("tracklet", "label"):
      if key not in meta:
        raise ValueError(f"set samplers need a {key!r} column in the records.")
    if isinstance(set_size, (tuple, list)):
      lo, hi = int(set_size[0]), int(set_size[1])
    else:
      lo = hi = int(set_size)
    if not 1 <= lo <= hi:
      raise ValueError(
          f"set_size must be S >= 1 or (min, max) with 1 <= min <= max; got {set_size}.")
    self.min_size, self.max_size, self.contiguous = lo, hi, contiguous
    tracklet = meta["tracklet"].astype(np.int64)
    labels = meta["label"].astype(np.int64)
    frame = meta["frame"].astype(np.int64) if "frame" in meta else None
    self.groups = _group(tracklet, frame)
    self.ids = np.array([t for t in sorted(self.groups)
                         if labels[self.groups[t][0]] >= 0], np.int64)
    self.label = {t: int(labels[self.groups[t][0]]) for t in self.groups}
    cam = meta.get("camera")
    self.camera = {t: int(cam[self.groups[t][0]]) if cam is not None else -1
                   for t in self.groups}
    self.degradation = (meta["degradation"].astype(np.float32)
                        if "degradation" in meta else None)

  def frames(self, tracklet: int, rng: np.random.Generator) -> np.ndarray:
    members = self.groups[tracklet]
    size = int(rng.integers(self.min_size, self.max_size + 1))
    n = min(size, len(members))
    if self.contiguous:
      start = int(rng.integers(0, len(members) - n + 1))
      return members[start:start + n]
    return members[np.sort(rng.choice(len(members), n, replace=False))]

  def build(self, source, tracklets, seed, step, stream, row0, image_fn) -> dict:
    """Padded set batch for the given tracklet ids (rows row0, row0+1, ...)."""
    b, s = len(tracklets), self.max_size
    grid = np.full((b, s), -1, np.int64)
    for i, t in enumerate(tracklets):
      chosen = self.frames(int(t), _rng(seed, stream, step, row0 + i))
      grid[i, :len(chosen)] = chosen
    mask = grid >= 0
    out = {
        "images": padded_images(source, grid, mask, image_fn, seed, step, stream,
                                 row0),
        "mask": mask,
        "label": np.array([self.label[int(t)] for t in tracklets], np.int32),
        "camera": np.array([self.camera[int(t)] for t in tracklets], np.int32),
        "tracklet": np.asarray(tracklets, np.int32),
        "index": grid,
    }
    if self.degradation is not None:
      out["degradation"] = np.where(mask, self.degradation[np.maximum(grid, 0)],
                                    np.float32(-1))
    else:
      out["degradation"] = np.full((b, s), -1, np.float32)
    return out


class _SetMaker:

  def __init__(self, source, tracks, batch_size, seed, image_fn, shard):
    self.source, self.tracks, self.batch_size = source, tracks, batch_size
    self.seed, self.image_fn = seed, image_fn
    self.epochs = _Epochs(
        tracks.ids, batch_size, seed, shard, "batch_size",
        f"batch_size={batch_size} sets but the split has only "
        f"{len(tracks.ids)} labelled tracklets; lower batch_size.")
    self.local = self.epochs.local

  def __call__(self, step: int) -> dict:
    return self.tracks.build(self.source, self.epochs.batch(step), self.seed, step, _SET,
                             self.local.start, self.image_fn)


@_with_common_args
def set_batches(source, *, batch_size: int, set_size: int | tuple[int, int],
                seed: int = 0, contiguous: bool = False,
                image_fn: ImageFn | None = None, shard=None,
                num_steps: int | None = None, num_threads: int = 2,
                prefetch: int = 4, worker_count: int = 0) -> grain.IterDataset:
  """Batches of image sets from tracklets (QAN / set-level training).

  Each epoch permutes the labelled tracklets; each set draws its size from
  set_size (S, or uniform in [min, max]) and takes that many distinct frames
  of its tracklet (a random subset in frame order, or a contiguous run when
  `contiguous`). A tracklet shorter than the drawn size gives all its frames;
  frames are never repeated. Sets are padded to S_max = max(set_size).

  Returns batches (B_local = batch_size / process_count):
    images uint8 [B, S_max, H, W, 3] (padding is zeros), mask bool [B, S_max],
    label / camera / tracklet int32 [B], degradation float32 [B, S_max]
    (-1 for padding or unknown), index int64 [B, S_max] (-1 for padding).
  Args:"""
  tracks = _Tracklets(source, set_size, contiguous)
  maker = _SetMaker(source, tracks, batch_size, seed, image_fn, _resolve_shard(shard))
  return _to_dataset(maker, num_steps, num_threads=num_threads, prefetch=prefetch,
                     worker_count=worker_count)


class _SetTripletMaker:

  def __init__(self, source, tracks, batch_size, seed, image_fn, shard):
    self.source, self.tracks, self.batch_size = source, tracks, batch_size
    self.seed, self.image_fn = seed, image_fn
    by_label: dict[int, list[int]] = {}
    for t in tracks.ids:
      by_label.setdefault(tracks.label[int(t)], []).append(int(t))
    self.by_label = {c: np.array(v, np.int64) for c, v in by_label.items()}
    self.labels = np.array(sorted(self.by_label), np.int64)
    self.anchors = np.array([t for t in tracks.ids
                             if len(self.by_label[tracks.label[int(t)]]) >= 2], np.int64)
    if len(self.labels) < 2 or len(self.anchors) < batch_size:
      raise ValueError(
          f"set triplets need >= 2 identities and >= batch_size={batch_size} "
          f"tracklets whose identity has another tracklet; the split has "
          f"{len(self.labels)} identities and {len(self.anchors)} such tracklets.")
    self.epochs = _Epochs(self.anchors, batch_size, seed, shard, "batch_size")
    self.local = self.epochs.local

  def _partners(self, anchor: int, rng) -> tuple[int, int]:
    tr = self.tracks
    label, cam = tr.label[anchor], tr.camera[anchor]
    same = self.by_label[label]
    same = same[same != anchor]
    other_cam = same[np.array([tr.camera[int(t)] != cam for t in same])]
    positive = int(rng.choice(other_cam if len(other_cam) else same))
    others = self.labels[self.labels != label]
    negative = int(rng.choice(self.by_label[int(rng.choice(others))]))
    return positive, negative

  def __call__(self, step: int) -> dict:
    anchors = self.epochs.batch(step)
    pos, neg = [], []
    for i, a in enumerate(anchors):
      p_, n_ = self._partners(int(a), _rng(self.seed, _PAIR, step, self.local.start + i))
      pos.append(p_)
      neg.append(n_)
    build = lambda ts, stream: self.tracks.build(
        self.source, np.asarray(ts, np.int64), self.seed, step, stream,
        self.local.start, self.image_fn)
    return {"anchor": build(anchors, _SET), "positive": build(pos, _PICK),
            "negative": build(neg, _NEG)}


@_with_common_args
def set_triplet_batches(source, *, batch_size: int, set_size: int | tuple[int, int],
                        seed: int = 0, contiguous: bool = False,
                        image_fn: ImageFn | None = None, shard=None,
                        num_steps: int | None = None, num_threads: int = 2,
                        prefetch: int = 4, worker_count: int = 0
                        ) -> grain.IterDataset:
  """Set triplets for QAN: {"anchor", "positive", "negative"}, each a set batch
  as returned by `set_batches`.

  Anchors: each epoch permutes the tracklets whose identity has another
  tracklet. Positive: another tracklet of the same identity, from another
  camera when one exists. Negative: a tracklet of a uniformly drawn other
  identity. Set sizes follow `set_size` independently for the three.
  Args:"""
  tracks = _Tracklets(source, set_size, contiguous)
  maker = _SetTripletMaker(source, tracks, batch_size, seed, image_fn,
                           _resolve_shard(shard))
  return _to_dataset(maker, num_steps, num_threads=num_threads, prefetch=prefetch,
                     worker_count=worker_count)
