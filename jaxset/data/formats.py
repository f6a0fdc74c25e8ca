"""Shared pieces of the real-dataset builders: schemas, checks, errors, the base builder.

Every real dataset is a TensorFlow-free tfds builder (array_record files) that
reads the user's local copy from `manual_dir`. The schemas here are the ones of
the embedded datasets (synthetic_places, synthetic_identities), so a config
switches between embedded and real data with one flag:

- PLACE_KEYS: image, utm (east, north) float64 metres, filename, timestamp
  (0 unknown), panorama (-1 unknown).
- IDENTITY_KEYS: image, label (contiguous 0..C-1 within the split, -1 for
  rows without an identity), identity (the dataset's own id), camera (0-based,
  -1 unknown), tracklet (-1 none), frame (-1 unknown), degradation (float32,
  -1.0 unknown), degradation_type (-1 unknown), filename.
- PAIR_KEYS: image_a, image_b, same, fold, degradation_a, degradation_b.
- SET_PAIR_KEYS: tracklet_a, tracklet_b, same, fold.

tfds keeps one feature set per dataset, so a dataset with several kinds of
split stores the union of their keys (absent keys hold a 1x1 black image, "" or
-1 in the feature's shape), and `as_data_source(split)` returns only the split's own keys.

Errors: every problem with the user's copy raises DatasetFormatError (a
ValueError) or FileNotFoundError saying where it looked, what it expected and
what it found. Nothing partial is left behind: tfds writes into an
`incomplete.*` folder and renames it only after every split was written, so a
failed build leaves no prepared version that a later run would take as complete.
"""
from __future__ import annotations

import abc
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

PLACE_KEYS = ("image", "utm", "filename", "timestamp", "panorama")
IDENTITY_KEYS = ("image", "label", "identity", "camera", "tracklet", "frame", "degradation",
                 "degradation_type", "filename")
PAIR_KEYS = ("image_a", "image_b", "same", "fold", "degradation_a", "degradation_b")
SET_PAIR_KEYS = ("tracklet_a", "tracklet_b", "same", "fold")

IMAGE_KEYS = ("image", "image_a", "image_b")
FLOAT_KEYS = ("degradation", "degradation_a", "degradation_b")
TEXT_KEYS = ("filename",)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetFormatError(ValueError):
  """The user's copy of a dataset is not in the expected format."""


def format_error(where, expected: str, found: str) -> DatasetFormatError:
  """A DatasetFormatError saying where, what was expected, and what was found."""
  return DatasetFormatError(f"{where}: expected {expected}; found {found}.")


def describe_dir(path: Path, limit: int = 8) -> str:
  """What a folder holds, for error messages: 'missing', 'empty', or some names."""
  path = Path(path)
  if not path.exists():
    return f"{path} does not exist"
  if not path.is_dir():
    return f"{path} is a file, not a folder"
  names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
  if not names:
    return f"{path} is empty"
  more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
  return f"{path} holds {', '.join(names[:limit])}{more}"


def require_dir(path, what: str) -> Path:
  """`path` if it is a folder, else FileNotFoundError naming `what` and its parent."""
  return _require(Path(path), what, "folder", Path.is_dir)


def require_file(path, what: str) -> Path:
  """`path` if it is a file, else FileNotFoundError naming `what` and its folder."""
  return _require(Path(path), what, "file", Path.is_file)


def _require(path: Path, what: str, kind: str, exists) -> Path:
  if not exists(path):
    raise FileNotFoundError(
        f"{path}: expected the {kind} {what}; it is missing "
        f"({describe_dir(path.parent)}).")
  return path


def find_root(root: Path, marker: str) -> Path:
  """`root` if it holds `marker`, else its only subfolder that does (an unpacked archive).

  Raises FileNotFoundError naming the marker and what `root` holds.
  """
  root = Path(root)
  if (root / marker).exists():
    return root
  inner = [p for p in root.iterdir() if p.is_dir() and (p / marker).exists()]
  if len(inner) == 1:
    return inner[0]
  raise FileNotFoundError(
      f"{root / marker}: expected {marker} in {root} (or in one of its subfolders); "
      f"{'found it in several: ' + ', '.join(map(str, inner)) if inner else 'it is missing'} "
      f"({describe_dir(root)}).")


def image_files(folder: Path) -> list[Path]:
  """Image files directly in `folder`, sorted by name."""
  return sorted(p for p in Path(folder).iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def manual_root(dl_manager, instructions: str) -> Path:
  """The user's local copy (tfds manual_dir), with a clear error when absent or empty."""
  try:
    return Path(dl_manager.manual_dir)
  except (AssertionError, ValueError, OSError):  # missing, empty, a file, not enabled
    pass
  where = getattr(dl_manager, "_manual_dir", None)  # for the message only
  path = Path(where) if where else None
  found = "no manual_dir was given" if path is None else describe_dir(path)
  raise FileNotFoundError(
      f"{path}: expected the dataset's local copy (pass it as manual_dir, e.g. "
      f"--config.data.dir); found: {found}. Expected layout:\n{instructions}")


def encoded_image(image, where) -> bytes:
  """PNG/JPEG bytes of an RGB image, from a path or encoded bytes.

  Files that are already RGB JPEG/PNG are passed through unchanged; other modes
  (grayscale, palette, RGBA) and formats are converted to RGB PNG, because the
  stored images must decode to [H, W, 3] uint8.
  """
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  data = Path(image).read_bytes() if isinstance(image, (str, os.PathLike)) else bytes(image)
  try:
    with Image.open(io.BytesIO(data)) as im:
      if im.mode == "RGB" and im.format in ("JPEG", "PNG"):
        return data
      buf = io.BytesIO()
      im.convert("RGB").save(buf, format="PNG")
      return buf.getvalue()
  except (UnidentifiedImageError, OSError) as e:
    raise format_error(where, "an encoded JPEG/PNG image",
                       f"{len(data)} bytes that PIL cannot read ({e})") from e


def blank_image() -> bytes:
  """A 1x1 black RGB PNG: the value of image keys that a split does not use."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.new("RGB", (1, 1)).save(buf, format="PNG")
  return buf.getvalue()


def assign_labels(rows: list[dict]) -> list[dict]:
  """Sets row["label"] to the rank of row["identity"] among the split's identities.

  Identities >= 0 (a Market distractor 0 included) get labels 0..C-1 in
  increasing identity order; negative identities (unknown) get label -1.
  """
  ids = sorted({r["identity"] for r in rows if r["identity"] >= 0})
  rank = {i: n for n, i in enumerate(ids)}
  for r in rows:
    r["label"] = rank.get(r["identity"], -1)
  return rows


def identity_row(image, filename: str, identity: int, *, camera: int = -1, tracklet: int = -1,
                 frame: int = -1, **extra) -> dict:
  """One identity record (label assigned later by assign_labels)."""
  return dict(image=image, filename=filename, identity=int(identity), label=-1,
              camera=int(camera), tracklet=int(tracklet), frame=int(frame),
              degradation=np.float32(-1.0), degradation_type=-1, **extra)


def face_record(image, label, identity, filename: str) -> dict:
  """A record of a face image set read in place (a folder, a RecordIO file):
  IDENTITY_KEYS with no camera, tracklet, frame or degradation (-1, -1.0)."""
  return dict(image=image, label=np.int64(label), identity=np.int64(identity),
              camera=np.int64(-1), tracklet=np.int64(-1), frame=np.int64(-1),
              degradation=np.float32(-1.0), degradation_type=np.int64(-1),
              filename=filename.encode())


def face_metadata(labels: np.ndarray, identities: np.ndarray, filenames) -> dict[str, np.ndarray]:
  """The non-image columns, [N] each, of the records `face_record` makes."""
  n = len(labels)
  minus = np.full(n, -1, np.int64)
  return dict(label=labels.copy(), identity=identities.copy(), camera=minus.copy(),
              tracklet=minus.copy(), frame=minus.copy(),
              degradation=np.full(n, -1.0, np.float32), degradation_type=minus.copy(),
              filename=np.asarray(filenames, np.str_))


class RecordIndexing:
  """Indexing of a random-access source by its `record(i)` and `__len__`:
  negative indices count from the end, a slice gives a list."""

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self.record(j) for j in range(*i.indices(len(self)))]
    i = int(i)
    if not -len(self) <= i < len(self):
      raise IndexError(f"record {i} out of range for {len(self)} records")
    return self.record(i % len(self))

  def __getitems__(self, indices):
    return [self[i] for i in indices]


def split_identities(identities: Iterable[int], seed: int) -> tuple[list[int], list[int]]:
  """Deterministic half/half split of identities: (train, test), each sorted.

  The sorted identities are permuted with np.random.default_rng(seed); the first
  floor(n / 2) are train, the rest test.
  """
  ids = np.asarray(sorted(set(int(i) for i in identities)), np.int64)
  perm = np.random.default_rng(seed).permutation(len(ids))
  half = len(ids) // 2
  return sorted(ids[perm[:half]].tolist()), sorted(ids[perm[half:]].tolist())


class SplitSource(Sequence):
  """A random-access source returning only `keys` of each record of `source`."""

  def __init__(self, source, keys):
    self.source, self.keys = source, tuple(keys)

  def __len__(self):
    return len(self.source)

  def _select(self, record):
    return {k: record[k] for k in self.keys}

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    return self._select(self.source[index])

  def __getitems__(self, indices):
    return [self._select(r) for r in self.source.__getitems__(list(indices))]

  def __repr__(self):
    return f"SplitSource({self.source!r}, keys={self.keys})"


def feature_for(name: str, extra_features: Mapping[str, Any] | None = None):
  """The tfds feature of a schema key."""
  if extra_features and name in extra_features:
    return extra_features[name]
  if name in IMAGE_KEYS:
    return tfds.features.Image(shape=(None, None, 3), dtype=np.uint8)
  if name == "utm":
    return tfds.features.Tensor(shape=(2,), dtype=np.float64)
  if name in FLOAT_KEYS:
    return tfds.features.Scalar(np.float32)
  if name in TEXT_KEYS:
    return tfds.features.Text()
  return tfds.features.Scalar(np.int64)


class OfflineBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of every jaxset builder: nothing is downloaded (embedded data is
  generated, real data read from manual_dir)."""
  VERSION = tfds.core.Version("1.0.0")
  # tfds looks up download checksums through `code_path`, which needs
  # importlib_resources inside a package (declared by tfds only for
  # Python < 3.9). These builders download nothing: no checksums.
  url_infos = None


class ManualBuilder(OfflineBuilder):
  """Base of the real-dataset builders: reads manual_dir, writes array_record.

  Subclasses set SPLIT_FEATURES (split -> keys), MANUAL_DOWNLOAD_INSTRUCTIONS,
  and implement `_read(root) -> {split: rows}` where rows is a list (or a sized
  iterable) of dicts holding the split's keys; image values are paths or
  encoded bytes (then an optional "_where_<key>" entry names their origin in
  error messages). Records keep the order of `rows` (disable_shuffling).
  """
  SPLIT_FEATURES: Mapping[str, Sequence[str]] = {}
  EXTRA_FEATURES: Mapping[str, Any] = {}

  @abc.abstractmethod
  def _read(self, root: Path) -> Mapping[str, Any]:
    """{split: rows} from the user's copy at `root`."""

  def _metadata(self) -> dict:
    return {}

  def _feature_names(self) -> list[str]:
    return sorted({k for keys in self.SPLIT_FEATURES.values() for k in keys})

  def _info(self) -> tfds.core.DatasetInfo:
    feats = {k: feature_for(k, self.EXTRA_FEATURES) for k in self._feature_names()}
    meta = dict(self._metadata())
    meta["split_features"] = {k: list(v) for k, v in self.SPLIT_FEATURES.items()}
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        disable_shuffling=True,
        features=tfds.features.FeaturesDict(feats),
        metadata=tfds.core.MetadataDict(meta),
    )

  def _split_generators(self, dl_manager):
    root = manual_root(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    splits = self._read(root)
    for name, rows in splits.items():
      if len(rows) == 0:  # tfds would fail later with "No examples were yielded"
        raise format_error(root, f"at least one record in split {name!r}",
                           "none (the split is empty)")
    return {name: self._generate_examples(rows) for name, rows in splits.items()}

  def _generate_examples(self, rows):
    names = self._feature_names()
    blank = blank_image()
    for i, row in enumerate(rows):
      full = {}
      for name in names:
        value = row.get(name)
        if name in IMAGE_KEYS:
          where = (value if isinstance(value, (str, os.PathLike))
                   else row.get(f"_where_{name}") or row.get("filename") or name)
          full[name] = blank if value is None else encoded_image(value, where)
        elif value is not None:
          full[name] = value
        elif name in TEXT_KEYS:
          full[name] = ""
        else:  # a key of another kind of split: -1 of the feature's shape and dtype
          feature = self.info.features[name]
          full[name] = np.full(feature.shape, -1, feature.np_dtype)
      yield i, full

  def as_data_source(self, split=None, **kwargs):
    """tfds' data source restricted to the split's own keys (see SPLIT_FEATURES).

    Images of other kinds of split are not decoded. Pass deserialize_method to
    get the raw tfds behaviour.
    """
    if (not isinstance(split, str) or split not in self.SPLIT_FEATURES
        or "deserialize_method" in kwargs):
      return super().as_data_source(split, **kwargs)
    keys = self.SPLIT_FEATURES[split]
    decoders = {k: tfds.decode.SkipDecoding() for k in IMAGE_KEYS
                if k in self._feature_names() and k not in keys}
    decoders.update(kwargs.pop("decoders", None) or {})
    return SplitSource(super().as_data_source(split, decoders=decoders or None, **kwargs), keys)
