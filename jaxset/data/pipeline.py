"""grain input pipelines: metadata, samplers, evaluation iterators, checkpoints.

Every sampler returns a `grain.IterDataset` of batches (dicts of numpy with
leading batch dims); `iter(ds)` gives a `grain.DatasetIterator` with
`get_state()` / `set_state()` that orbax checkpoints through `save_args` /
`restore_args`. How a batch is made:

  grain.MapDataset.range(num_steps)          # one element per global step
    .map(BatchMaker)                         # step -> plan (indices) -> records
    .to_iter_dataset(ReadOptions(threads))   # background-thread prefetch
    [.mp_prefetch(workers)]                  # optional worker processes

The plan of a step depends only on (seed, step): training samplers are
infinite (num_steps=None) and reshuffle once per epoch (a permutation of
identities / tracklets / queries seeded by (seed, epoch)); evaluation
iterators are finite. Per-image randomness (augmentation) uses one
`np.random.Generator` per (seed, step, global row, slot), so a global batch is
bit-identical whatever the process count, thread count or prefetch depth.
Samplers read only the image feature of tfds records, and keep a split's
decoded images in memory when they fit in _IMAGE_CACHE_BYTES (the embedded
datasets do): the same pixels, without the decode from the second epoch on.

Multi-host: each sampler takes `shard=(process_index, process_count)`
(default: `process_shard()`, i.e. jax.process_index()/process_count()). Every
process builds the same global plan and loads only its contiguous slice of
rows, 1/process_count of the global batch (PK slices whole identities). The
training loop then assembles global arrays with
`jax.make_array_from_process_local_data(sharding, local_batch)`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np

from jaxset.data.transforms import ImageFn

# (query index, candidate database indices) -> the chosen database indices:
# netvlad_tuples' negative_miner and positive_miner.
Miner = Callable[[int, np.ndarray], np.ndarray]

# Streams keep the seeded generators of different uses independent.
_PERM, _PICK, _IMAGE, _SET, _PAIR, _NEG = range(1, 7)
_METADATA_FORMAT = 1


# --------------------------------------------------------------------------
# Records and metadata

def fetch(source, indices) -> list[dict]:
  """Records at `indices` (batched read through __getitems__ when present)."""
  idx = [int(i) for i in np.asarray(indices).reshape(-1)]
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__(idx))
  return [source[i] for i in idx]


def _is_image(value) -> bool:
  return isinstance(value, np.ndarray) and value.ndim == 3 and value.dtype == np.uint8


def _tfds_image_keys(source) -> list[str] | None:
  """Names of the tfds Image features of a tfds data source, else None."""
  info = getattr(source, "dataset_info", None)
  if info is None or not dataclasses.is_dataclass(source):
    return None
  import tensorflow_datasets as tfds
  return [k for k, f in info.features.items() if isinstance(f, tfds.features.Image)]


def _metadata_cache_path(source) -> Path | None:
  info = getattr(source, "dataset_info", None)
  split = getattr(source, "split", None)
  if info is None or split is None or not getattr(info, "data_dir", None):
    return None
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(split))
  if safe != str(split):  # "train[:50%]" and "train[50%:]" must not collide
    safe += "-" + hashlib.sha1(str(split).encode()).hexdigest()[:8]
  return Path(info.data_dir) / f"jaxset_metadata_{safe}.npz"


def _column(values) -> np.ndarray:
  """One column of records; Python floats (tfds scalars) become float32."""
  if values and isinstance(values[0], float):
    return np.asarray(values, np.float32)
  if values and isinstance(values[0], str):
    return np.asarray(values, dtype=np.str_)
  if values and isinstance(values[0], bytes):
    return np.asarray([v.decode("utf-8", "replace") for v in values], dtype=np.str_)
  return np.asarray(values)


def read_metadata(source, keys: Sequence[str] | None = None, *,
                  cache: bool = True, chunk_size: int = 1024) -> dict[str, np.ndarray]:
  """The non-image columns of a split as numpy arrays ([N] or [N, ...]).

  For a tfds data source, images are not decoded (tfds SkipDecoding on every
  Image feature; the proto is still parsed) and the result is cached as
  `jaxset_metadata_<split>.npz` in the prepared dataset's folder, so samplers
  start in milliseconds after the first call. Measured on this machine for
  20k records of 64x32: full decode 6-11 s, metadata without decoding ~3 s.
  A wrapper exposing the tfds source as `.source` (and its own record keys as
  `.keys`, a tuple) is read through it. Other sources (any object with
  __len__/__getitem__ returning dicts) are read record by record, uncached;
  uint8 [H, W, C] values count as images.

  Args:
    source: a random-access data source.
    keys: the columns to return (default: every non-image column).
    cache: read/write the .npz cache next to a tfds dataset.
    chunk_size: records per batched read.

  Returns:
    dict name -> array; bytes become str arrays. An empty source gives {}.
  """
  inner = getattr(source, "source", None)
  if getattr(source, "dataset_info", None) is None and getattr(
      inner, "dataset_info", None) is not None:
    # A wrapper over a tfds source (e.g. one that keeps a split's own keys):
    # read the tfds source itself, then keep the wrapper's keys.
    columns = read_metadata(inner, cache=cache, chunk_size=chunk_size)
    wrapped = getattr(source, "keys", None)
    if isinstance(wrapped, (tuple, list)):
      columns = {k: v for k, v in columns.items() if k in wrapped}
    return _select_columns(columns, keys)
  n = len(source)
  path = _metadata_cache_path(source) if cache else None
  columns = None
  if path is not None and path.exists():
    with np.load(path, allow_pickle=False) as z:
      cached = {k: z[k] for k in z.files}
    if (int(cached.pop("__format__", -1)) == _METADATA_FORMAT
        and int(cached.pop("__len__", -1)) == n):
      columns = cached
  if columns is None:
    if n == 0:
      return {}
    image_keys = _tfds_image_keys(source)
    reader = source
    if image_keys:
      import tensorflow_datasets as tfds
      reader = dataclasses.replace(
          source, decoders={k: tfds.decode.SkipDecoding() for k in image_keys})
    rows: dict[str, list] = {}
    for start in range(0, n, chunk_size):
      for rec in fetch(reader, range(start, min(n, start + chunk_size))):
        for k, v in rec.items():
          if (image_keys and k in image_keys) or _is_image(v):
            continue
          rows.setdefault(k, []).append(v)
    columns = {k: _column(v) for k, v in rows.items()}
    if image_keys is not None:  # tfds gives Python scalars: restore the schema dtype
      features = source.dataset_info.features
      for k, col in columns.items():
        dtype = getattr(features[k], "np_dtype", None) if k in features else None
        if dtype is not None and col.dtype.kind in "biuf":
          columns[k] = col.astype(dtype)
    if path is not None:
      tmp = path.with_name(path.name + ".tmp.npz")
      try:
        np.savez(tmp, __format__=_METADATA_FORMAT, __len__=n, **columns)
        tmp.replace(path)
      except OSError as e:  # read-only dataset folder: work uncached
        warnings.warn(f"could not cache metadata at {path}: {e}")
  return _select_columns(columns, keys)


def _select_columns(columns: dict, keys) -> dict[str, np.ndarray]:
  if keys is None:
    return columns
  missing = [k for k in keys if k not in columns]
  if missing:
    raise ValueError(
        f"keys {missing} are not columns of this split; it has "
        f"{sorted(columns)}. Check the dataset schema.")
  return {k: columns[k] for k in keys}


def neighbours_within(query_utm, db_utm, radius: float) -> list[np.ndarray]:
  """For each query, the database indices within `radius` metres (sorted).

  query_utm [Q, 2], db_utm [N, 2] (UTM easting/northing, metres); Euclidean,
  inclusive (<= radius), as the Pittsburgh/Tokyo protocols. An empty
  database gives Q empty arrays.
  """
  from scipy.spatial import cKDTree
  q = np.asarray(query_utm, np.float64).reshape(-1, 2)
  db = np.asarray(db_utm, np.float64).reshape(-1, 2)
  if len(db) == 0:
    return [np.zeros(0, np.int64) for _ in range(len(q))]
  hits = cKDTree(db).query_ball_point(q, r=float(radius))
  return [np.sort(np.asarray(h, np.int64)) for h in hits]


# --------------------------------------------------------------------------
# Sharding, seeding, image loading

def process_shard() -> tuple[int, int]:
  """(jax.process_index(), jax.process_count())."""
  import jax
  return jax.process_index(), jax.process_count()


def _resolve_shard(shard) -> tuple[int, int]:
  index, count = process_shard() if shard is None else (int(shard[0]), int(shard[1]))
  if count < 1 or not 0 <= index < count:
    raise ValueError(
        f"shard must be (index, count) with 0 <= index < count; got {shard}.")
  return index, count


def _shard_slice(global_size: int, shard: tuple[int, int], what: str) -> slice:
  index, count = shard
  if global_size % count:
    raise ValueError(
        f"{what}={global_size} must be divisible by the process count {count} "
        "so that every process gets the same share; change the batch size.")
  per = global_size // count
  return slice(index * per, (index + 1) * per)


def _rng(seed: int, *path: int) -> np.random.Generator:
  return np.random.default_rng([int(seed) % 2**63, *(int(p) for p in path)])


def _stack_images(images, image_fn, seed, step, positions) -> np.ndarray:
  """Applies image_fn with the rng of each position (a tuple of ints) and
  stacks: uint8 [len(images), H, W, C]."""
  out = []
  for img, pos in zip(images, positions):
    img = np.asarray(img)
    if image_fn is not None:
      img = image_fn(img, _rng(seed, _IMAGE, step, *pos))
    out.append(img)
  shapes = {im.shape for im in out}
  if len(shapes) > 1:
    raise ValueError(
        f"images of one batch differ in shape {sorted(shapes)}; pass an image_fn "
        "that resizes, e.g. transforms.train_augment(size=(H, W)) or "
        "transforms.eval_transform((H, W)).")
  if not out:
    raise ValueError("no images to batch.")
  return np.stack(out)


# Decoded training images are kept in memory when their whole split fits in
# this many bytes, this budget being shared by every split a process reads
# (the embedded datasets take 30-50 MB a split): from the second epoch on,
# batches skip the read and the decode.
_IMAGE_CACHE_BYTES = 256 << 20


class _DecodedImages:
  """The cached decoded images of one image feature of one prepared split."""
  used_bytes = 0  # over every split of this process
  lock = threading.Lock()

  def __init__(self):
    self.images: dict[int, np.ndarray] = {}
    self.caching: bool | None = None  # decided on the first decoded image

  def add(self, index: int, image: np.ndarray, num_records: int) -> None:
    with self.lock:
      if self.caching is None:
        self.caching = image.nbytes * num_records <= _IMAGE_CACHE_BYTES
      if (self.caching and index not in self.images
          and _DecodedImages.used_bytes + image.nbytes <= _IMAGE_CACHE_BYTES):
        self.images[index] = image
        _DecodedImages.used_bytes += image.nbytes


# (prepared files, split, image key) -> its decoded images: every source
# object over the same files (tasks build one per iterator) shares them.
_DECODED: dict[tuple, _DecodedImages] = {}


def _clear_decoded_images() -> None:
  """Empties the decoded-image caches (benchmarks: a fresh process's first epoch)."""
  with _DecodedImages.lock:
    _DECODED.clear()
    _DecodedImages.used_bytes = 0


class _TfdsImageReader:
  """indices -> decoded images of one image feature of a tfds data source.

  tfds decodes every feature of a record (the proto parse into numpy of the
  metadata columns costs as much as the image decode; measured ~2x per image
  on 64x32 PNG records). Here the raw record is parsed as the
  tf.train.Example tfds writes, and the image bytes go through the feature's
  own decode_example_np: the same pixels as source[i][key]. Decoded images
  are kept in `cache` (see _IMAGE_CACHE_BYTES); callers always get fresh
  copies, so an image_fn that writes into its input cannot change the cache.
  """

  def __init__(self, inner, key, feature, num_records, cache: _DecodedImages):
    from tensorflow_datasets.proto import tf_example_pb2
    self._parse = tf_example_pb2.Example.FromString
    self.inner, self.key, self.feature = inner, key, feature
    self.num_records, self.cache = num_records, cache

  def _decode(self, indices: list[int]) -> list[np.ndarray]:
    records = self.inner.data_source.__getitems__(indices)
    if len(records) != len(indices):
      raise IndexError(f"requested {len(indices)} records, got {len(records)}.")
    images = []
    for raw in records:
      values = self._parse(raw).features.feature[self.key].bytes_list.value
      if len(values) != 1:
        raise ValueError(
            f"record has {len(values)} values for image feature {self.key!r}.")
      images.append(self.feature.decode_example_np(values[0]))
    return images

  def __call__(self, indices: list[int]) -> list[np.ndarray]:
    cached = self.cache.images
    out = [cached.get(i) for i in indices]
    missing = [j for j, img in enumerate(out) if img is None]
    if missing:
      for j, img in zip(missing, self._decode([indices[j] for j in missing])):
        out[j] = img
        if self.cache.caching is not False:
          self.cache.add(indices[j], img, self.num_records)
    return [img.copy() for img in out]


def _files_identity(inner) -> tuple:
  """The prepared files behind a tfds data source, with their size and
  modification time: a split prepared again in place gets a new cache."""
  paths = getattr(inner.data_source, "_paths", None)  # array_record's file list
  if not paths:
    return (str(inner.dataset_info.data_dir),)
  out = []
  for path in paths:
    st = os.stat(path)
    out.append((str(path), st.st_size, st.st_mtime_ns))
  return tuple(out)


def _image_reader(source, key: str) -> Callable[[list[int]], list] | None:
  """A _TfdsImageReader of `key` for a tfds data source (or a wrapper
  exposing one as `.source` with its record keys as `.keys`); None for any
  other source and for tfds sources with a custom decoder or deserialize
  method for the key (they keep the full read)."""
  import tensorflow_datasets as tfds
  inner = source
  if getattr(source, "dataset_info", None) is None:
    inner = getattr(source, "source", None)
    keys = getattr(source, "keys", None)
    if getattr(inner, "dataset_info", None) is None or not isinstance(keys, (tuple, list)) \
        or key not in keys:
      return None
  if not dataclasses.is_dataclass(inner) or not hasattr(inner, "data_source"):
    return None
  info = inner.dataset_info
  feature = info.features[key] if info.features is not None and key in info.features else None
  if (not isinstance(feature, tfds.features.Image)
      or getattr(inner, "deserialize_method", None)
      != tfds.decode.DeserializeMethod.DESERIALIZE_AND_DECODE
      or key in (inner.decoders or {})):
    return None
  name = (_files_identity(inner), str(inner.split), key)
  with _DecodedImages.lock:
    cache = _DECODED.setdefault(name, _DecodedImages())
  return _TfdsImageReader(inner, key, feature, len(source), cache)


def _load_images(source, indices, image_fn, seed, step, positions,
                 key: str = "image") -> np.ndarray:
  """uint8 [len(indices), H, W, C] of records `indices`; image j uses the rng
  of positions[j] (a tuple of ints identifying its slot in the global batch)."""
  read = _image_reader(source, key)
  if read is not None:
    images = read([int(i) for i in np.asarray(indices).reshape(-1)])
  else:
    images = [r[key] for r in fetch(source, indices)]
  return _stack_images(images, image_fn, seed, step, positions)


def _padded_images(source, grid, mask, image_fn, seed, step, tag, row0,
                   like: np.ndarray | None = None) -> np.ndarray:
  """[B, S, H, W, C] from an index grid [B, S]; masked-out slots are zeros.
  `like` gives the image shape when no slot is valid."""
  b, s = grid.shape
  if not mask.any():
    if like is None:
      raise ValueError("every slot of the batch is empty; check the set sizes.")
    return np.zeros((b, s) + like.shape[1:], np.uint8)
  where = np.argwhere(mask)
  flat = _load_images(source, grid[mask], image_fn, seed, step,
                      [(tag, row0 + int(i), int(j)) for i, j in where])
  out = np.zeros((b, s) + flat.shape[1:], np.uint8)
  out[mask] = flat
  return out


def _epoch_permutation(cache: dict, seed: int, epoch: int, items: np.ndarray):
  perm = cache.get(epoch)
  if perm is None:
    perm = _rng(seed, _PERM, epoch).permutation(items)
    if len(cache) > 2:
      cache.clear()
    cache[epoch] = perm
  return perm


def _ensure_absl_flags_parsed():
  # grain's worker processes read absl flags; outside an absl app they are
  # unparsed and grain raises (REFERENCE.md section 4).
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _to_dataset(batch_maker, num_steps: int | None, *, num_threads: int,
                prefetch: int, worker_count: int) -> grain.IterDataset:
  if num_steps is not None and num_steps < 0:
    raise ValueError(f"num_steps must be >= 0 or None (infinite); got {num_steps}.")
  n = sys.maxsize if num_steps is None else int(num_steps)
  ds = grain.MapDataset.range(n).map(batch_maker)
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch))
  if worker_count > 0:
    _ensure_absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return ds


def _group(keys: np.ndarray, order: np.ndarray | None = None
           ) -> dict[int, np.ndarray]:
  """key -> indices of the records with that key (key >= 0 only), sorted by
  `order` (e.g. frame number), then by index."""
  keys = np.asarray(keys, np.int64)
  idx = np.flatnonzero(keys >= 0)
  if len(idx) == 0:
    return {}
  sub_order = np.zeros(len(idx)) if order is None else np.asarray(order)[idx]
  idx = idx[np.lexsort((idx, sub_order, keys[idx]))]
  cuts = np.flatnonzero(np.diff(keys[idx])) + 1
  return {int(keys[g[0]]): g for g in np.split(idx, cuts)}


def _take_meta(meta: Mapping[str, np.ndarray], idx: np.ndarray) -> dict:
  """Metadata rows `idx`: integers as int32, degradation as float32."""
  out = {}
  for k, col in meta.items():
    v = col[idx]
    if k == "degradation":
      v = v.astype(np.float32)
    elif np.issubdtype(v.dtype, np.integer):
      v = v.astype(np.int32)
    out[k] = v
  return out


_COMMON_ARGS_DOC = """
    seed: everything random derives from (seed, step[, row]).
    image_fn: `fn(image, rng) -> image` (see transforms.py), e.g. augmentation
      and a resize for datasets of varying image sizes; None keeps images.
    shard: (process_index, process_count); default process_shard().
    num_steps: None = infinite (training); else the number of batches.
    num_threads / prefetch: grain background threads and batches buffered.
    worker_count: > 0 adds grain multiprocess prefetch (absl flags are marked
      parsed for it); the image_fn and any miner must then be picklable.
"""


def _with_common_args(fn):
  """Appends the arguments every sampler shares to fn's docstring."""
  fn.__doc__ = fn.__doc__.rstrip() + _COMMON_ARGS_DOC
  return fn


# --------------------------------------------------------------------------
# P identities x K images

class _PKMaker:

  def __init__(self, source, labels, meta, p, k, seed, image_fn, shard):
    self.source, self.meta, self.p, self.k = source, meta, p, k
    self.seed, self.image_fn = seed, image_fn
    self.groups = _group(labels)
    self.ids = np.array(sorted(self.groups), np.int64)
    if len(self.ids) < p:
      raise ValueError(
          f"p={p} identities per batch but the split has only {len(self.ids)} "
          "labelled identities; lower p.")
    self.steps_per_epoch = len(self.ids) // p
    self.local = _shard_slice(p, shard, "p (identities per batch)")
    self._perms = {}

  def __call__(self, step: int) -> dict:
    epoch, within = divmod(int(step), self.steps_per_epoch)
    perm = _epoch_permutation(self._perms, self.seed, epoch, self.ids)
    group = perm[within * self.p:(within + 1) * self.p]
    rows = []
    for j in range(self.local.start, self.local.stop):
      members = self.groups[int(group[j])]
      rng = _rng(self.seed, _PICK, step, j)
      rows.append(rng.choice(members, self.k, replace=len(members) < self.k))
    idx = np.concatenate(rows).astype(np.int64)
    positions = [j * self.k + t for j in range(self.local.start, self.local.stop)
                 for t in range(self.k)]
    batch = _take_meta(self.meta, idx)
    batch["label"] = batch["label"].astype(np.int32)
    batch["image"] = _load_images(self.source, idx, self.image_fn, self.seed, step,
                                  [(r,) for r in positions])
    batch["index"] = idx
    return batch


@_with_common_args
def pk_batches(source, *, p: int, k: int, seed: int = 0,
               image_fn: ImageFn | None = None, shard=None,
               num_steps: int | None = None,
               meta_keys: Sequence[str] = ("label", "camera", "tracklet", "degradation"),
               num_threads: int = 2, prefetch: int = 4, worker_count: int = 0
               ) -> grain.IterDataset:
  """P identities x K images per batch (softmax / margin heads, CASN).

  Each epoch permutes the labelled identities (label >= 0) and cuts them
  into groups of P (the remainder waits for the next epoch); each identity
  gives K images, without replacement when it has >= K, else with
  replacement (duplicates are then possible).

  Returns batches, rows identity-major (row = j * K + t):
    image uint8 [P_local*K, H, W, 3], label int32 [P_local*K], index int64
    (record index), and the meta_keys columns the split has (camera,
    tracklet int32; degradation float32, -1 unknown).
  P_local = P / process_count: every process gets whole identities, so P must
  divide by the process count. For in-batch pairs (CASN) use `pk_pairs(P, K)`.
  Args:"""
  if p < 1 or k < 1:
    raise ValueError(f"p and k must be >= 1; got p={p}, k={k}.")
  meta = read_metadata(source)
  if "label" not in meta:
    raise ValueError("pk_batches needs a 'label' column in the records.")
  labels = meta["label"].astype(np.int64)
  meta = {key: meta[key] for key in meta_keys if key in meta}
  maker = _PKMaker(source, labels, meta, p, k, seed, image_fn, _resolve_shard(shard))
  return _to_dataset(maker, num_steps, num_threads=num_threads, prefetch=prefetch,
                     worker_count=worker_count)


def pk_pairs(p: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Balanced in-batch pairs of a PK batch (row = j * K + t), static shapes.

  Positives: every unordered pair of rows of the same identity,
  P*K*(K-1)/2 of them. Negatives: as many, pairing row (j, t) of each positive
  (j, t, u) with row (j+1 mod P, u). Returns (a, b, same): int32 row indices
  and bool [2 * P*K*(K-1)/2], positives first; use inside the jitted step as
  emb[a], emb[b]. Needs K >= 2 (else no positives) and P >= 2.
  """
  if p < 2 or k < 2:
    raise ValueError(f"pk_pairs needs p >= 2 and k >= 2; got p={p}, k={k}.")
  t, u = np.triu_indices(k, 1)
  j = np.repeat(np.arange(p), len(t))
  t, u = np.tile(t, p), np.tile(u, p)
  pos_a, pos_b = j * k + t, j * k + u
  neg_b = ((j + 1) % p) * k + u
  a = np.concatenate([pos_a, pos_a]).astype(np.int32)
  b = np.concatenate([pos_b, neg_b]).astype(np.int32)
  same = np.concatenate([np.ones(len(pos_a), bool), np.zeros(len(pos_a), bool)])
  return a, b, same


# --------------------------------------------------------------------------
# Sets (tracklets)

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
        "images": _padded_images(source, grid, mask, image_fn, seed, step, stream,
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
    if len(tracks.ids) < batch_size:
      raise ValueError(
          f"batch_size={batch_size} sets but the split has only "
          f"{len(tracks.ids)} labelled tracklets; lower batch_size.")
    self.steps_per_epoch = len(tracks.ids) // batch_size
    self.local = _shard_slice(batch_size, shard, "batch_size")
    self._perms = {}

  def __call__(self, step: int) -> dict:
    epoch, within = divmod(int(step), self.steps_per_epoch)
    perm = _epoch_permutation(self._perms, self.seed, epoch, self.tracks.ids)
    chosen = perm[within * self.batch_size:(within + 1) * self.batch_size]
    return self.tracks.build(self.source, chosen[self.local], self.seed, step, _SET,
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
    self.steps_per_epoch = len(self.anchors) // batch_size
    self.local = _shard_slice(batch_size, shard, "batch_size")
    self._perms = {}

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
    epoch, within = divmod(int(step), self.steps_per_epoch)
    perm = _epoch_permutation(self._perms, self.seed, epoch, self.anchors)
    anchors = perm[within * self.batch_size:(within + 1) * self.batch_size][self.local]
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


# --------------------------------------------------------------------------
# NetVLAD tuples

class _TupleMaker:

  def __init__(self, database, queries, batch_size, num_positives, num_negatives,
               pos_radius, neg_radius, negative_pool, negative_miner, seed,
               image_fn, shard, positive_miner=None):
    self.database, self.queries = database, queries
    self.batch_size, self.num_positives = batch_size, num_positives
    self.num_negatives, self.negative_pool = num_negatives, negative_pool
    self.negative_miner, self.seed, self.image_fn = negative_miner, seed, image_fn
    self.positive_miner = positive_miner
    db_utm = read_metadata(database, ["utm"])["utm"]
    q_utm = read_metadata(queries, ["utm"])["utm"]
    self.num_db = len(db_utm)
    self.positives = neighbours_within(q_utm, db_utm, pos_radius)
    self.near = neighbours_within(q_utm, db_utm, neg_radius)
    self.train_queries = np.array(
        [i for i, p in enumerate(self.positives) if len(p)], np.int64)
    if len(self.train_queries) < batch_size:
      raise ValueError(
          f"batch_size={batch_size} but only {len(self.train_queries)} queries have "
          f"a database image within pos_radius={pos_radius} m; check the utm "
          "columns (metres) or lower batch_size.")
    self.steps_per_epoch = len(self.train_queries) // batch_size
    self.local = _shard_slice(batch_size, shard, "batch_size")
    self._perms = {}

  def negatives(self, q: int, rng) -> np.ndarray:
    forbidden = self.near[q]
    allowed = self.num_db - len(forbidden)
    pool = min(self.negative_pool, allowed)
    if pool <= 0:
      return np.zeros(0, np.int64)
    draw = rng.choice(self.num_db, min(self.num_db, pool + len(forbidden)),
                      replace=False)
    candidates = draw[~np.isin(draw, forbidden)][:pool].astype(np.int64)
    if self.negative_miner is None:
      return candidates[:self.num_negatives]
    chosen = np.asarray(self.negative_miner(q, candidates), np.int64).reshape(-1)
    if len(chosen) > self.num_negatives:
      raise ValueError(
          f"negative_miner returned {len(chosen)} indices for query {q}; at most "
          f"num_negatives={self.num_negatives} are allowed.")
    bad = (chosen < 0) | (chosen >= self.num_db) | np.isin(chosen, forbidden)
    if bad.any():
      raise ValueError(
          f"negative_miner returned database indices {chosen[bad].tolist()} for "
          f"query {q} that are out of range or within neg_radius; return indices "
          "from candidate_indices (or earlier negatives of this query).")
    return chosen

  def __call__(self, step: int) -> dict:
    epoch, within = divmod(int(step), self.steps_per_epoch)
    perm = _epoch_permutation(self._perms, self.seed, epoch, self.train_queries)
    qs = perm[within * self.batch_size:(within + 1) * self.batch_size][self.local]
    b, P, M = len(qs), self.num_positives, self.num_negatives
    pos = np.full((b, P), -1, np.int64)
    neg = np.full((b, M), -1, np.int64)
    for i, q in enumerate(qs):
      row = self.local.start + i
      cands = self.positives[int(q)]
      pos_rng = _rng(self.seed, _PICK, step, row)
      if self.positive_miner is not None:
        chosen = np.asarray(self.positive_miner(int(q), cands), np.int64).reshape(-1)
        if len(chosen) == 0 or len(chosen) > P or not np.isin(chosen, cands).all():
          raise ValueError(
              f"positive_miner returned {chosen.tolist()} for query {int(q)}; it must "
              f"return 1 to num_positives={P} of the potential positives {cands.tolist()}.")
      elif len(cands) <= P:
        chosen = cands
      else:
        chosen = np.sort(pos_rng.choice(cands, P, replace=False))
      pos[i, :len(chosen)] = chosen
      n = self.negatives(int(q), _rng(self.seed, _NEG, step, row))
      neg[i, :len(n)] = n
    pos_mask, neg_mask = pos >= 0, neg >= 0
    rows = [self.local.start + i for i in range(b)]
    query = _load_images(self.queries, qs, self.image_fn, self.seed, step,
                         [(0, r) for r in rows])
    return {
        "query": query,
        "positives": _padded_images(self.database, pos, pos_mask, self.image_fn,
                                    self.seed, step, 1, self.local.start),
        "pos_mask": pos_mask,
        "negatives": _padded_images(self.database, neg, neg_mask, self.image_fn,
                                    self.seed, step, 2, self.local.start, like=query),
        "neg_mask": neg_mask,
        "query_index": qs.astype(np.int64),
        "positive_index": pos,
        "negative_index": neg,
    }


@_with_common_args
def netvlad_tuples(database, queries, *, batch_size: int = 4, num_positives: int = 4,
                   num_negatives: int = 10, seed: int = 0, pos_radius: float = 10.0,
                   neg_radius: float = 25.0, negative_pool: int = 1000,
                   negative_miner: Miner | None = None,
                   positive_miner: Miner | None = None,
                   image_fn: ImageFn | None = None, shard=None,
                   num_steps: int | None = None, num_threads: int = 2,
                   prefetch: int = 4, worker_count: int = 0) -> grain.IterDataset:
  """NetVLAD training tuples (query, potential positives, negatives).

  Potential positives: database images within pos_radius (10 m, the
  non-trivial positives); queries without any are never drawn. Negatives:
  a pool of `negative_pool` random database images farther than neg_radius
  (25 m) is drawn per query, then `negative_miner(query_index,
  candidate_indices) -> database indices` (at most num_negatives, each
  farther than neg_radius: the candidates or the task's cache of earlier hard
  negatives) picks them; default (None) = the first num_negatives random
  candidates. Paper: the 10 hardest of 1000 candidates under the current model
  plus the 10 hardest cached from before. The miner is called from the loader
  threads; the task refreshes it between cache refreshes by swapping its
  feature cache (an atomic reference swap), and batches already prefetched
  (`prefetch` of them) were mined with the previous cache.
  `positive_miner(query_index, potential_positives) -> database indices` (1
  to num_positives of them) picks the positives the same way; default (None)
  = num_positives random potential positives. With the task's cache it keeps
  the ones nearest the query in feature space, so the paper's min over all
  potential positives (eq. (7)) is taken over the likely best ones without
  computing every potential positive each step.

  Returns batches (B = batch_size / process_count):
    query uint8 [B, H, W, 3]; positives [B, P, H, W, 3], pos_mask bool [B, P];
    negatives [B, M, H, W, 3], neg_mask bool [B, M] (masked slots are zeros);
    query_index int64 [B], positive_index / negative_index int64 (-1 padding),
    the indices into `queries` / `database` the task needs for its caches.
  Args:
    database, queries: data sources with "image" and "utm" float [2] metres."""
  if num_positives < 1 or num_negatives < 1:
    raise ValueError(
        f"num_positives and num_negatives must be >= 1; got {num_positives}, "
        f"{num_negatives}.")
  if worker_count > 0 and negative_miner is not None:
    raise ValueError(
        "negative_miner runs in the loader and cannot see the task's updates from "
        "worker processes; use worker_count=0 (thread prefetch) with a miner.")
  maker = _TupleMaker(database, queries, batch_size, num_positives, num_negatives,
                      pos_radius, neg_radius, negative_pool, negative_miner, seed,
                      image_fn, _resolve_shard(shard), positive_miner)
  return _to_dataset(maker, num_steps, num_threads=num_threads, prefetch=prefetch,
                     worker_count=worker_count)


# --------------------------------------------------------------------------
# Verification pairs

class _PairMaker:

  def __init__(self, source, labels, batch_size, seed, image_fn, shard):
    self.source, self.batch_size, self.seed, self.image_fn = source, batch_size, seed, image_fn
    self.groups = _group(labels)
    self.ids = np.array(sorted(self.groups), np.int64)
    self.multi = np.array([c for c in self.ids if len(self.groups[int(c)]) >= 2], np.int64)
    if len(self.ids) < 2 or len(self.multi) == 0:
      raise ValueError(
          "verification pairs need >= 2 identities and one with >= 2 images; "
          f"the split has {len(self.ids)} identities, {len(self.multi)} with >= 2.")
    self.local = _shard_slice(batch_size, shard, "batch_size")

  def __call__(self, step: int) -> dict:
    a, b = [], []
    for row in range(self.local.start, self.local.stop):
      rng = _rng(self.seed, _PAIR, step, row)
      if row % 2 == 0:  # same identity
        c = int(rng.choice(self.multi))
        i, j = rng.choice(self.groups[c], 2, replace=False)
      else:
        c1, c2 = rng.choice(self.ids, 2, replace=False)
        i, j = rng.choice(self.groups[int(c1)]), rng.choice(self.groups[int(c2)])
      a.append(int(i))
      b.append(int(j))
    a, b = np.array(a, np.int64), np.array(b, np.int64)
    rows = list(range(self.local.start, self.local.stop))
    return {
        "image_a": _load_images(self.source, a, self.image_fn, self.seed, step,
                                [(r, 0) for r in rows]),
        "image_b": _load_images(self.source, b, self.image_fn, self.seed, step,
                                [(r, 1) for r in rows]),
        "same": np.array([r % 2 == 0 for r in rows]),
        "index_a": a, "index_b": b,
    }


@_with_common_args
def pair_batches(source, *, batch_size: int, seed: int = 0,
                 image_fn: ImageFn | None = None, shard=None,
                 num_steps: int | None = None, num_threads: int = 2,
                 prefetch: int = 4, worker_count: int = 0) -> grain.IterDataset:
  """Balanced verification pairs drawn from an identity split (BCE / checks).

  Even global rows are same-identity pairs (two distinct images of an
  identity with >= 2), odd rows different-identity pairs; every step draws
  afresh from (seed, step, row). Balanced per process when
  batch_size / process_count is even. For a fixed protocol of pairs (LFW's
  "pairs" split) iterate it with `eval_batches` instead.

  Returns: image_a, image_b uint8 [B, H, W, 3], same bool [B],
    index_a, index_b int64 [B].
  Args:"""
  if batch_size < 2 or batch_size % 2:
    raise ValueError(f"batch_size must be even and >= 2; got {batch_size}.")
  labels = read_metadata(source, ["label"])["label"].astype(np.int64)
  maker = _PairMaker(source, labels, batch_size, seed, image_fn, _resolve_shard(shard))
  return _to_dataset(maker, num_steps, num_threads=num_threads, prefetch=prefetch,
                     worker_count=worker_count)


# --------------------------------------------------------------------------
# Evaluation

class _EvalMaker:

  def __init__(self, source, batch_size, image_fn, shard, keys):
    self.source, self.batch_size, self.image_fn, self.keys = source, batch_size, image_fn, keys
    self.n = len(source)
    self.local = _shard_slice(batch_size, shard, "batch_size")

  def __call__(self, step: int) -> dict:
    glob = np.arange(step * self.batch_size, (step + 1) * self.batch_size)[self.local]
    valid = glob < self.n
    idx = np.where(valid, glob, self.n - 1)
    records = fetch(self.source, idx)
    out = {}
    for key in records[0]:
      if self.keys is not None and key not in self.keys:
        continue
      values = [r[key] for r in records]
      if _is_image(values[0]):
        out[key] = _stack_images(values, self.image_fn, 0, step,
                                 [(int(i),) for i in idx])
        continue
      col = _column(values)
      if col.dtype.kind in "biuf":  # strings stay host-side: read_metadata has them
        out[key] = col
    out["valid"] = valid
    out["index"] = np.where(valid, glob, -1).astype(np.int64)
    return out


def eval_batches(source, *, batch_size: int, image_fn: ImageFn | None = None,
                 keys: Sequence[str] | None = None, shard=None,
                 num_threads: int = 2, prefetch: int = 4) -> grain.IterDataset:
  """A whole split in order, in ceil(N / batch_size) fixed-shape batches.

  The last global batch is padded by repeating the last record; `valid`
  (bool [B]) marks real rows and `index` (int64 [B]) gives the record index
  (-1 for padding), so a jitted eval step sees one shape. Each process gets
  its contiguous batch_size / process_count rows of every global batch and the
  same number of batches. Returns every image key (uint8 [B, H, W, 3], e.g.
  "image" or "image_a"/"image_b" of a pairs split) and numeric column of the
  records (or only `keys`); strings are left out (read_metadata has them).
  An empty split gives no batches.
  Args:
    source: a random-access data source.
    batch_size: the global batch size (divisible by the process count).
    image_fn: `fn(image, rng) -> image`, rng seeded by the record index, so
      deterministic; use transforms.eval_transform((H, W)) to resize.
    keys: the record keys to return (default: images and numeric columns).
    shard: (process_index, process_count); default process_shard().
    num_threads / prefetch: grain background threads and batches buffered."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
  maker = _EvalMaker(source, batch_size, image_fn, _resolve_shard(shard), keys)
  num_steps = math.ceil(len(source) / batch_size)
  return _to_dataset(maker, num_steps, num_threads=num_threads, prefetch=prefetch,
                     worker_count=0)


# --------------------------------------------------------------------------
# Checkpointing

def save_args(iterator) -> Any:
  """orbax args saving a grain iterator's state (one JSON file per process).

  Use inside a Composite next to the train state:

    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=pipeline.save_args(it)))
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=pipeline.restore_args(it)))   # `it` now continues where saved
  """
  return grain.checkpoint.CheckpointSave(iterator)


def restore_args(iterator) -> Any:
  """orbax args restoring a grain iterator's state in place (see save_args);
  the iterator must come from the same pipeline (same seed and sizes)."""
  return grain.checkpoint.CheckpointRestore(iterator)
