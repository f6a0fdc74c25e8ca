"""MXNet RecordIO face training sets (MS1M, Glint360K, WebFace, ...), read without mxnet.

Two ways in, both giving records in the identity schema (formats.IDENTITY_KEYS):

- `RecordioSource(root)`: random access straight into train.rec through
  train.idx (len / __getitem__ / __getitems__, picklable for grain workers).
  Nothing is converted: use it for the large sets (MS1MV2 is 5.8M images).
- the tfds builder `mxnet_recordio` (class MxnetRecordio): copies every image
  into array_record files ("train" split). Use it for small sets, or to keep
  one prepared copy beside the other tfds datasets.

Byte layout (dmlc recordio + mxnet IRHeader):
- train.idx: lines "key<TAB>offset" (offset in bytes into train.rec).
- a record: uint32 magic 0xced7230a; uint32 lrecord = cflag << 29 | length;
  `length` payload bytes; zero padding to a multiple of 4. cflag 0 is a whole
  record; 1, 2, 3 are the start, middle and end of a record that the writer
  split where its data held the magic number: the parts are joined with the
  magic number re-inserted between them (supported).
- the payload: struct '<IfQQ' (flag, label, id, id2); if flag > 0, `flag`
  float32 labels follow (and replace `label`); the rest is the encoded image.
- insightface sets: record 0 has flag > 0 and labels [first identity key, end];
  images are keys 1 .. first identity key - 1; identity record k (keys first
  .. end - 1) holds the image-key range [start, end) of class k - first. Then
  label = that class index (contiguous) and identity = the image's own label.
  Files without this header (plain im2rec output): every key of the .idx is an
  image, identity = its label, label = rank of the identity (one pass over the
  record headers at construction).
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np

from jaxset.data import formats
from jaxset.data.formats import format_error

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


def read_idx(path: Path) -> dict[int, int]:
  """key -> byte offset from a .idx file ("key\\toffset" lines)."""
  formats.require_file(path, 'the RecordIO index (.idx, lines "key<TAB>offset")')
  out = {}
  for no, line in enumerate(Path(path).read_text().splitlines(), 1):
    if not line.strip():
      continue
    f = line.split()
    try:
      if len(f) != 2:
        raise ValueError
      out[int(f[0])] = int(f[1])
    except ValueError:
      raise format_error(f"{path}:{no}", '"key<TAB>offset" with two integers', repr(line)) from None
  if not out:
    raise format_error(path, "at least one key", "an empty index")
  return out


def unpack_payload(payload: bytes, where) -> tuple[np.ndarray, int, bytes]:
  """(labels float32 [max(flag, 1)], flag, encoded image) of one IRHeader payload."""
  if len(payload) < _HEADER.size:
    raise format_error(where, f"a payload of at least {_HEADER.size} bytes (IRHeader '<IfQQ')",
                       f"{len(payload)} bytes")
  flag, label, _, _ = _HEADER.unpack_from(payload)
  rest = payload[_HEADER.size:]
  if flag > 0:
    if len(rest) < 4 * flag:
      raise format_error(where, f"{flag} float32 labels after the header",
                         f"{len(rest)} bytes")
    labels = np.frombuffer(rest[:4 * flag], np.float32).copy()
    return labels, flag, rest[4 * flag:]
  return np.array([label], np.float32), flag, rest


class RecordioSource(formats.RecordIndexing):
  """Random-access records of an MXNet RecordIO image set (no conversion, no mxnet).

  Args:
    root: folder holding `<prefix>.rec` and `<prefix>.idx`.
    prefix: file stem (default "train").
    decode: True gives "image" as uint8 [H, W, 3] (RGB), like tfds'
      as_data_source; False gives the encoded bytes.

  Record i is a dict of IDENTITY_KEYS: label (contiguous class index), identity
  (the stored label; with the insightface header, that of the class's first
  image), camera / tracklet / frame / degradation_type = -1,
  degradation = -1.0, filename = b"<prefix>.rec#<key>". Malformed records raise
  DatasetFormatError naming the key, the offset and what was found.
  """

  def __init__(self, root, prefix: str = "train", decode: bool = True):
    self.root = Path(root)
    self.rec_path = formats.require_file(self.root / f"{prefix}.rec", "the RecordIO data (.rec)")
    self.idx_path = self.root / f"{prefix}.idx"
    self.prefix, self.decode = prefix, decode
    self._offsets = read_idx(self.idx_path)
    self._size = self.rec_path.stat().st_size
    bad = [(k, o) for k, o in self._offsets.items() if not 0 <= o < self._size]
    if bad:
      raise format_error(self.idx_path, f"offsets inside {self.rec_path.name} "
                         f"({self._size} bytes)", f"key {bad[0][0]} at offset {bad[0][1]}")
    self._fd = None
    self._index()

  # -- layout

  def _index(self):
    header = None
    if 0 in self._offsets:
      labels, flag, _ = unpack_payload(self.read_payload(0), self.where(0))
      if flag > 0:
        header = (int(labels[0]), int(labels[1]))
    if header is not None:
      first, end = header
      if not 1 <= first <= end:
        raise format_error(self.where(0), "header labels [first identity key, end] with "
                           "1 <= first <= end", f"{header}")
      keys = np.arange(1, first, dtype=np.int64)
      missing = [k for k in list(range(1, first)) + list(range(first, end))
                 if k not in self._offsets]
      if missing:
        raise format_error(self.idx_path, f"keys 1..{end - 1} (images and identities, from "
                           "the header record 0)", f"no key {missing[0]}")
      label = np.full(len(keys), -1, np.int64)
      class_identity = np.full(end - first, -1, np.int64)
      for c, k in enumerate(range(first, end)):
        lab, flag, _ = unpack_payload(self.read_payload(k), self.where(k))
        if flag < 2 or not 1 <= lab[0] < lab[1] <= first:
          raise format_error(self.where(k), f"an identity record with labels [start, end), "
                             f"start < end, in 1..{first}", f"flag {flag}, labels {lab.tolist()}")
        label[int(lab[0]) - 1:int(lab[1]) - 1] = c
        # One header read per class: its images share the stored label.
        class_identity[c] = self._identity(int(lab[0]))
      if (label < 0).any():
        k = int(keys[np.argmax(label < 0)])
        raise format_error(self.where(k), "every image key inside one identity record's range",
                           "an image of no identity")
      self.num_classes = end - first
      identity = class_identity[label]
    else:
      keys = np.asarray(sorted(self._offsets), np.int64)
      identity = np.asarray([self._identity(int(k)) for k in keys], np.int64)
      uniq, label = np.unique(identity, return_inverse=True)
      self.num_classes = len(uniq)
    self.keys, self.labels = keys, label.astype(np.int64)
    self.identities = identity.astype(np.int64)

  def where(self, key) -> str:
    """The file, key and offset of a record, for messages."""
    return f"{self.rec_path} record key {key} (offset {self._offsets.get(key)})"

  def _identity(self, key):
    labels, _, _ = unpack_payload(self.read_payload(key), self.where(key))
    return int(labels[0])

  # -- bytes

  def _pread(self, n, offset):
    if self._fd is None:
      self._fd = os.open(self.rec_path, os.O_RDONLY)
    return os.pread(self._fd, n, offset)

  def read_payload(self, key: int) -> bytes:
    """The payload of record `key`, multi-part records joined."""
    if key not in self._offsets:
      raise format_error(self.idx_path, f"a line for key {key}", "none")
    offset, parts, first = self._offsets[key], [], True
    while True:
      head = self._pread(8, offset)
      if len(head) < 8:
        raise format_error(self.where(key), "an 8-byte record header",
                           f"{len(head)} bytes at offset {offset} (truncated file)")
      magic, lrecord = struct.unpack("<II", head)
      if magic != MAGIC:
        raise format_error(self.where(key), f"magic 0x{MAGIC:08x} at offset {offset}",
                           f"0x{magic:08x}")
      cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
      data = self._pread(length, offset + 8)
      if len(data) < length:
        raise format_error(self.where(key), f"{length} payload bytes at offset {offset + 8}",
                           f"{len(data)} (truncated file)")
      if (first and cflag not in (0, 1)) or (not first and cflag not in (2, 3)) or cflag > 3:
        raise format_error(self.where(key), "continuation flags 0, or 1 then 2... then 3",
                           f"flag {cflag} at offset {offset}")
      parts.append(data)
      if cflag in (0, 3):
        return _MAGIC_BYTES.join(parts)
      offset += 8 + length + (-length) % 4
      first = False

  # -- source protocol

  def __len__(self):
    return len(self.keys)

  def record(self, i: int, decode: bool | None = None) -> dict:
    """Record i (see the class docstring)."""
    key = int(self.keys[i])
    _, _, image = unpack_payload(self.read_payload(key), self.where(key))
    decode = self.decode if decode is None else decode
    if decode:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      try:
        with Image.open(io.BytesIO(image)) as im:
          image = np.asarray(im.convert("RGB"))
      except OSError as e:
        raise format_error(self.where(key), "an encoded image after the header",
                           f"{len(image)} bytes PIL cannot read ({e})") from e
    return formats.face_record(image, self.labels[i], self.identities[i],
                               f"{self.rec_path.name}#{key}")

  def metadata(self) -> dict[str, np.ndarray]:
    """The non-image columns of every record, [N] each, without reading the images."""
    return formats.face_metadata(self.labels, self.identities,
                                 [f"{self.rec_path.name}#{k}" for k in self.keys])

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_fd"] = None  # each process opens its own descriptor
    return state

  def __del__(self):
    if getattr(self, "_fd", None) is not None:
      try:
        os.close(self._fd)
      except OSError:
        pass

  def __repr__(self):
    return f"RecordioSource({str(self.rec_path)!r}, {len(self)} images, {self.num_classes} classes)"


class _Rows:
  """The records of a RecordioSource as encoded-image rows for the builder."""

  def __init__(self, source: RecordioSource):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __iter__(self):
    for i in range(len(self.source)):
      r = self.source.record(i, decode=False)
      r["_where_image"] = self.source.where(int(self.source.keys[i]))
      yield r


class MxnetRecordio(formats.ManualBuilder):
  """An MXNet RecordIO training set converted to array_record: the "train" split.

  For multi-million-image sets prefer RecordioSource (no copy).
  """
  SPLIT_FEATURES = {"train": formats.IDENTITY_KEYS}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/train.rec and <manual_dir>/train.idx   (an insightface training folder such as
      faces_emore/; the .idx lines are "key<TAB>offset")
"""

  def _read(self, root: Path):
    root = formats.find_root(root, "train.rec")
    source = RecordioSource(root, decode=False)
    self._num_classes = source.num_classes
    self.info.metadata.update(self._metadata())
    return {"train": _Rows(source)}

  def _metadata(self):
    return dict(num_classes=getattr(self, "_num_classes", -1))


def open_split(root, split: str = "train") -> RecordioSource:
  """The "train" split of an insightface RecordIO folder, read in place (jaxset.data.DIRECT).

  `root` holds train.rec and train.idx (or one subfolder does)."""
  if split != "train":
    raise ValueError(f"a RecordIO training folder has only the split 'train'; got {split!r}. "
                     "Validate on its .bin files instead (config.eval.benchmark=face_bin).")
  root = Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"{root}: expected an insightface training folder with train.rec "
                            f"and train.idx; {formats.describe_dir(root)}.")
  return RecordioSource(formats.find_root(root, "train.rec"))
