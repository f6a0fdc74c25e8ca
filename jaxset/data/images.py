"""Images of a batch: read (with a cache of decoded images), transformed, stacked.

Samplers read only the image feature of tfds records (`TfdsImageReader`) and
keep a split's decoded images in memory when they fit in IMAGE_CACHE_BYTES;
`image_fn` (jaxset/data/transforms.py) runs on each image with the generator
of its slot in the global batch.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Callable

import numpy as np

from jaxset.data.records import fetch
from jaxset.data.sampling import _IMAGE, _rng


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
IMAGE_CACHE_BYTES = 256 << 20


class DecodedImages:
  """The cached decoded images of one image feature of one prepared split."""
  used_bytes = 0  # over every split of this process
  lock = threading.Lock()

  def __init__(self):
    self.images: dict[int, np.ndarray] = {}
    self.caching: bool | None = None  # decided on the first decoded image

  def add(self, index: int, image: np.ndarray, num_records: int) -> None:
    with self.lock:
      if self.caching is None:
        self.caching = image.nbytes * num_records <= IMAGE_CACHE_BYTES
      if (self.caching and index not in self.images
          and DecodedImages.used_bytes + image.nbytes <= IMAGE_CACHE_BYTES):
        self.images[index] = image
        DecodedImages.used_bytes += image.nbytes


# (prepared files, split, image key) -> its decoded images: every source
# object over the same files (tasks build one per iterator) shares them.
_DECODED: dict[tuple, DecodedImages] = {}


def clear_decoded_images() -> None:
  """Empties the decoded-image caches (benchmarks: a fresh process's first epoch)."""
  with DecodedImages.lock:
    _DECODED.clear()
    DecodedImages.used_bytes = 0


class TfdsImageReader:
  """indices -> decoded images of one image feature of a tfds data source.

  tfds decodes every feature of a record (the proto parse into numpy of the
  metadata columns costs as much as the image decode; measured ~2x per image
  on 64x32 PNG records). Here the raw record is parsed as the
  tf.train.Example tfds writes, and the image bytes go through the feature's
  own decode_example_np: the same pixels as source[i][key]. Decoded images
  are kept in `cache` (see IMAGE_CACHE_BYTES); callers always get fresh
  copies, so an image_fn that writes into its input cannot change the cache.
  """

  def __init__(self, inner, key, feature, num_records, cache: DecodedImages):
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


def image_reader(source, key: str) -> Callable[[list[int]], list] | None:
  """A TfdsImageReader of `key` for a tfds data source (or a wrapper
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
  with DecodedImages.lock:
    cache = _DECODED.setdefault(name, DecodedImages())
  return TfdsImageReader(inner, key, feature, len(source), cache)


def load_images(source, indices, image_fn, seed, step, positions,
                 key: str = "image") -> np.ndarray:
  """uint8 [len(indices), H, W, C] of records `indices`; image j uses the rng
  of positions[j] (a tuple of ints identifying its slot in the global batch)."""
  read = image_reader(source, key)
  if read is not None:
    images = read([int(i) for i in np.asarray(indices).reshape(-1)])
  else:
    images = [r[key] for r in fetch(source, indices)]
  return _stack_images(images, image_fn, seed, step, positions)


def padded_images(source, grid, mask, image_fn, seed, step, tag, row0,
                   like: np.ndarray | None = None) -> np.ndarray:
  """[B, S, H, W, C] from an index grid [B, S]; masked-out slots are zeros.
  `like` gives the image shape when no slot is valid."""
  b, s = grid.shape
  if not mask.any():
    if like is None:
      raise ValueError("every slot of the batch is empty; check the set sizes.")
    return np.zeros((b, s) + like.shape[1:], np.uint8)
  where = np.argwhere(mask)
  flat = load_images(source, grid[mask], image_fn, seed, step,
                      [(tag, row0 + int(i), int(j)) for i, j in where])
  out = np.zeros((b, s) + flat.shape[1:], np.uint8)
  out[mask] = flat
  return out
