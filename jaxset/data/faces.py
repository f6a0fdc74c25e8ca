"""Face verification datasets: LFW, insightface .bin sets, IJB-B/C, YouTube Faces.

Splits and their keys (formats.*_KEYS, as in synthetic_identities):

- lfw: "images" (IDENTITY_KEYS; identity = rank of the person's name) and
  "pairs" (PAIR_KEYS) from pairs.txt, folds in file order.
- face_bin: "pairs" from an insightface <name>.bin (config = name), fold =
  i * 10 // P for pair i of P.
- ijb: "images" (IDENTITY_KEYS + template, media, landmarks [5, 2] float32,
  detector_score float32; identity/label -1: the meta files hold no subject
  ids) and "template_pairs" (template_a, template_b, same). Config "c" (IJB-C,
  default) or "b" (IJB-B). The crops are not aligned: align them with the
  five landmarks (insightface weights features by detector_score).
- youtube_faces: "frames" (IDENTITY_KEYS; tracklet = video, frame = frame
  number) and "set_pairs" (SET_PAIR_KEYS) from splits.txt.
"""
from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxset.data import formats
from jaxset.data.formats import format_error

NUM_FOLDS = 10


# ---------------------------------------------------------------- LFW

def parse_lfw_pairs(path: Path, image_path) -> list[dict]:
  """Pairs of an LFW pairs.txt: header "folds n" (or "n": one fold), then per fold
  n matched lines "name n1 n2" and n mismatched lines "name1 n1 name2 n2".

  `image_path(name, number)` gives the image file; a missing one is an error
  naming the line.
  """
  formats.require_file(path, "pairs.txt (LFW verification pairs)")
  lines = [(i + 1, ln.split()) for i, ln in enumerate(path.read_text().splitlines())]
  lines = [(n, f) for n, f in lines if f]
  if not lines:
    raise format_error(path, 'a header line "folds pairs_per_fold" (e.g. "10 300")',
                       "an empty file")
  head_no, head = lines[0]
  try:
    nums = [int(x) for x in head]
  except ValueError:
    nums = []
  if len(nums) not in (1, 2) or min(nums) < 1:
    raise format_error(f"{path}:{head_no}", 'a header "folds pairs_per_fold" (e.g. "10 300")',
                       repr(" ".join(head)))
  folds, per = (1, nums[0]) if len(nums) == 1 else nums
  body = lines[1:]
  if len(body) != 2 * folds * per:
    raise format_error(path, f"{2 * folds * per} pair lines after the header "
                       f"({folds} folds x {per} matched + {per} mismatched)", f"{len(body)}")
  out = []
  for k, (no, f) in enumerate(body):
    fold, within = divmod(k, 2 * per)
    matched = within < per
    where = f"{path}:{no}"
    try:
      if matched and len(f) == 3:
        a, b = (f[0], int(f[1])), (f[0], int(f[2]))
      elif not matched and len(f) == 4:
        a, b = (f[0], int(f[1])), (f[2], int(f[3]))
      else:
        raise ValueError
    except ValueError:
      want = ('a matched pair "name n1 n2"' if matched
              else 'a mismatched pair "name1 n1 name2 n2"')
      raise format_error(where, f"{want} (fold {fold + 1}, pair {within % per + 1})",
                         repr(" ".join(f))) from None
    paths = []
    for name, number in (a, b):
      p = image_path(name, number)
      if not p.is_file():
        raise FileNotFoundError(f"{where}: expected the image {p} named by this pair; it is "
                                f"missing ({formats.describe_dir(p.parent)}).")
      paths.append(p)
    out.append(dict(image_a=paths[0], image_b=paths[1], same=int(matched), fold=fold))
  return out


class Lfw(formats.ManualBuilder):
  """Labeled Faces in the Wild: all images, and the 10-fold verification pairs."""
  SPLIT_FEATURES = {"images": formats.IDENTITY_KEYS, "pairs": formats.PAIR_KEYS}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/pairs.txt          header "10 300", then per fold 300 matched "name n1 n2"
                                  and 300 mismatched "name1 n1 name2 n2" lines
  <manual_dir>/lfw/<name>/<name>_<4-digit n>.jpg   (any aligned variant, e.g. lfw-deepfunneled
                                  renamed to lfw/)
"""

  def _metadata(self):
    return dict(num_folds=NUM_FOLDS)

  def _read(self, root: Path):
    root = formats.find_root(root, "pairs.txt")
    images = formats.require_dir(root / "lfw", "lfw/ with one folder per person")
    rows = []
    for person in sorted(p for p in images.iterdir() if p.is_dir()):
      for p in formats.image_files(person):
        m = re.match(rf"^{re.escape(person.name)}_(\d+)$", p.stem)
        if not m:
          raise format_error(p, f"a file name {person.name}_NNNN.jpg", repr(p.name))
        rows.append((person.name, int(m.group(1)), p))
    names = {n: i for i, n in enumerate(sorted({n for n, _, _ in rows}))}
    recs = [formats.identity_row(p, f"{n}/{p.name}", names[n], frame=k) for n, k, p in rows]
    pairs = parse_lfw_pairs(root / "pairs.txt",
                            lambda n, k: images / n / f"{n}_{k:04d}.jpg")
    return {"images": formats.assign_labels(recs), "pairs": pairs}


# ---------------------------------------------------------------- insightface .bin

class _BinUnpickler(pickle.Unpickler):
  """Unpickles only plain data and numpy arrays: a .bin must not run code."""
  _ALLOWED = {("builtins", n) for n in ("bytes", "bytearray", "list", "tuple", "bool", "int")}
  _ALLOWED |= {("_codecs", "encode")}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED or module.split(".")[0] == "numpy":
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_face_bin(path: Path) -> tuple[list[bytes], list[bool]]:
  """(2P encoded images, P issame flags) of an insightface verification .bin."""
  formats.require_file(path, "an insightface verification .bin")
  expected = "a pickle of (list of 2P encoded images, list of P bools)"
  try:
    with open(path, "rb") as f:
      obj = _BinUnpickler(f, encoding="bytes").load()
  except Exception as e:  # truncated / not a pickle / forbidden class
    raise format_error(path, expected, f"a file that does not unpickle ({type(e).__name__}: {e})"
                       ) from e
  if not isinstance(obj, (tuple, list)) or len(obj) != 2:
    raise format_error(path, expected, f"a {type(obj).__name__}")
  bins, issame = list(obj[0]), [bool(x) for x in np.asarray(obj[1]).ravel()]
  if len(bins) != 2 * len(issame):
    raise format_error(path, f"{expected}: 2 x {len(issame)} images",
                       f"{len(bins)} images for {len(issame)} flags")
  out = []
  for i, b in enumerate(bins):
    if isinstance(b, np.ndarray) and b.dtype == np.uint8 and b.ndim == 1:
      b = b.tobytes()
    if not isinstance(b, (bytes, bytearray)):
      raise format_error(path, f"{expected}: image {i} as encoded bytes", type(b).__name__)
    out.append(bytes(b))
  return out, issame


@dataclasses.dataclass
class BinConfig(tfds.core.BuilderConfig):
  """The .bin file read: <manual_dir>/<file>."""
  file: str = "lfw.bin"


BIN_NAMES = ("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp")


class FaceBin(formats.ManualBuilder):
  """An insightface verification set (.bin): "pairs", 10 folds of consecutive pairs.

  Config = the file's stem: lfw (default), cfp_fp, cfp_ff, agedb_30, calfw,
  cplfw, vgg2_fp; or pass a BinConfig(name=..., file=...) for another file. The
  .bin is unpickled with a restricted unpickler (bytes, lists, numpy only).
  """
  SPLIT_FEATURES = {"pairs": formats.PAIR_KEYS}
  BUILDER_CONFIGS = [BinConfig(name=n, file=f"{n}.bin", description=f"{n}.bin") for n in BIN_NAMES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/<config>.bin   e.g. lfw.bin, cfp_fp.bin, agedb_30.bin from an insightface
      training-data folder (faces_emore/ or faces_webface_112x112/)
"""

  def _metadata(self):
    return dict(num_folds=NUM_FOLDS)

  def _read(self, root: Path):
    path = root / self.builder_config.file
    bins, issame = read_face_bin(path)
    p = len(issame)
    return {"pairs": [dict(image_a=bins[2 * i], image_b=bins[2 * i + 1], same=int(s),
                           fold=i * NUM_FOLDS // p,
                           _where_image_a=f"{path} image {2 * i}",
                           _where_image_b=f"{path} image {2 * i + 1}")
                      for i, s in enumerate(issame)]}


# ---------------------------------------------------------------- IJB-B / IJB-C

def _int_table(path: Path, columns: int, what: str, first_text: bool = False) -> list[tuple]:
  """Whitespace-separated rows of `columns` fields, ints except a text first column."""
  formats.require_file(path, what)
  out = []
  for no, line in enumerate(path.read_text().splitlines(), 1):
    f = line.split()
    if not f:
      continue
    try:
      if len(f) != columns:
        raise ValueError
      out.append(tuple([f[0]] + [int(x) for x in f[1:]]) if first_text
                 else tuple(int(x) for x in f))
    except ValueError:
      raise format_error(f"{path}:{no}", f"{what}: {columns} fields", repr(line)) from None
  return out


def read_landmarks(path: Path) -> dict | None:
  """image -> (landmarks [5, 2] float32, detector score) from an IJB *_name_5pts_score.txt.

  None when the file is absent (it is optional).
  """
  if not path.is_file():
    return None
  out = {}
  for no, line in enumerate(path.read_text().splitlines(), 1):
    f = line.split()
    if not f:
      continue
    try:
      if len(f) != 12:
        raise ValueError
      values = np.asarray([float(x) for x in f[1:]], np.float32)
    except ValueError:
      raise format_error(f"{path}:{no}", '"image x1 y1 ... x5 y5 score": 12 fields',
                         repr(line)) from None
    out[f[0]] = (values[:10].reshape(5, 2), float(values[10]))
  return out


@dataclasses.dataclass
class IjbConfig(tfds.core.BuilderConfig):
  """Which IJB release: file prefix ijbb_ or ijbc_."""
  prefix: str = "ijbc"


class Ijb(formats.ManualBuilder):
  """IJB-B / IJB-C template verification (insightface's IJB_release layout)."""
  SPLIT_FEATURES = {"images": formats.IDENTITY_KEYS + ("template", "media", "landmarks",
                                                      "detector_score"),
                    "template_pairs": ("template_a", "template_b", "same")}
  EXTRA_FEATURES = {"landmarks": tfds.features.Tensor(shape=(5, 2), dtype=np.float32),
                    "detector_score": tfds.features.Scalar(np.float32)}
  BUILDER_CONFIGS = [IjbConfig(name="c", prefix="ijbc", description="IJB-C (ijbc_* files)."),
                     IjbConfig(name="b", prefix="ijbb", description="IJB-B (ijbb_* files).")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/meta/ijbc_face_tid_mid.txt        lines "image template_id media_id"
  <manual_dir>/meta/ijbc_template_pair_label.txt lines "template_1 template_2 label"
  <manual_dir>/meta/ijbc_name_5pts_score.txt    optional: lines "image x1 y1 ... x5 y5 score"
                                                 (without it landmarks are 0, scores -1)
  <manual_dir>/loose_crop/<image>                the face crops
  (the IJBC/ folder of insightface's IJB_release, or its parent; IJB-B: ijbb_* files, config "b")
"""

  def _read(self, root: Path):
    prefix = self.builder_config.prefix
    faces_name = f"meta/{prefix}_face_tid_mid.txt"
    root = formats.find_root(root, faces_name)
    faces = _int_table(root / faces_name, 3, '"image template_id media_id"', first_text=True)
    pairs_path = root / "meta" / f"{prefix}_template_pair_label.txt"
    pairs = _int_table(pairs_path, 3, '"template_1 template_2 label"')
    crops = formats.require_dir(root / "loose_crop", "loose_crop/ with the face crops")
    points = read_landmarks(root / "meta" / f"{prefix}_name_5pts_score.txt")
    images = []
    for name, tid, mid in faces:
      p = crops / name
      if not p.is_file():
        raise FileNotFoundError(f"{p}: expected the image listed in {root / faces_name}; it is "
                                f"missing ({formats.describe_dir(p.parent)}).")
      if points is not None and name not in points:
        raise format_error(root / "meta" / f"{prefix}_name_5pts_score.txt",
                           f"a line for every image of {faces_name}", f"none for {name!r}")
      marks, score = points[name] if points is not None else (np.zeros((5, 2), np.float32), -1.0)
      images.append(formats.identity_row(p, name, -1, template=tid, media=mid, landmarks=marks,
                                         detector_score=np.float32(score)))
    templates = {tid for _, tid, _ in faces}
    out_pairs = []
    for no, (a, b, label) in enumerate(pairs, 1):
      if a not in templates or b not in templates or label not in (0, 1):
        raise format_error(f"{pairs_path}:{no}", "two template ids of the face list and a 0/1 "
                           "label", f"{a} {b} {label}")
      out_pairs.append(dict(template_a=a, template_b=b, same=label))
    return {"images": images, "template_pairs": out_pairs}


# ---------------------------------------------------------------- YouTube Faces

def parse_ytf_splits(path: Path, videos: dict) -> list[dict]:
  """Video pairs of a YTF splits.txt: comma-separated "split number, first name,
  second name, is same[, ...]" with names "<person>/<video>".

  A header line (non-numeric first field) locates the columns by name; without
  one the first four columns are used. fold = split number - 1.
  """
  formats.require_file(path, "splits.txt (YouTube Faces video pairs)")
  cols = dict(split=0, first=1, second=2, same=3)
  out = []
  for no, line in enumerate(path.read_text().splitlines(), 1):
    f = [x.strip() for x in line.split(",")]
    if not line.strip():
      continue
    if not f[0].isdigit():
      if out:
        raise format_error(f"{path}:{no}", "a pair line 'split, first, second, is same'",
                           repr(line))
      names = [x.lower() for x in f]
      for key, label in (("split", "split number"), ("first", "first name"),
                         ("second", "second name"), ("same", "is same")):
        if label not in names:
          raise format_error(f"{path}:{no}", f"a header naming the column {label!r}", repr(line))
        cols[key] = names.index(label)
      continue
    try:
      fold = int(f[cols["split"]]) - 1
      a, b = f[cols["first"]], f[cols["second"]]
      same = int(f[cols["same"]])
      if same not in (0, 1) or fold < 0:
        raise ValueError
    except (ValueError, IndexError):
      raise format_error(f"{path}:{no}", "'split number, person/video, person/video, is same "
                         "(0/1)'", repr(line)) from None
    for v in (a, b):
      if v not in videos:
        raise format_error(f"{path}:{no}", f"a video {v!r} of frame_images_DB/<person>/<video>/",
                           "no such video folder")
    out.append(dict(tracklet_a=videos[a], tracklet_b=videos[b], same=same, fold=fold))
  return out


class YoutubeFaces(formats.ManualBuilder):
  """YouTube Faces: per-frame records of every video, and the 5000 video pairs in 10 folds."""
  SPLIT_FEATURES = {"frames": formats.IDENTITY_KEYS, "set_pairs": formats.SET_PAIR_KEYS}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/frame_images_DB/<person>/<video>/<video>.<frame>.jpg
  <manual_dir>/splits.txt   "split number, first name, second name, is same, ..." with names
                            <person>/<video>
"""

  def _metadata(self):
    return dict(num_folds=NUM_FOLDS)

  def _read(self, root: Path):
    root = formats.find_root(root, "frame_images_DB")
    db = root / "frame_images_DB"
    people = sorted(p for p in db.iterdir() if p.is_dir())
    rows, videos = [], {}
    for pid, person in enumerate(people):
      for video in sorted((v for v in person.iterdir() if v.is_dir()),
                          key=lambda v: (not v.name.isdigit(), int(v.name) if v.name.isdigit()
                                         else 0, v.name)):
        key = f"{person.name}/{video.name}"
        videos[key] = t = len(videos)
        frames = []
        for p in formats.image_files(video):
          parts = p.name.split(".")
          if len(parts) != 3 or parts[0] != video.name or not parts[1].isdigit():
            raise format_error(p, f"a frame name {video.name}.<frame>.jpg", repr(p.name))
          frames.append((int(parts[1]), p))
        for frame, p in sorted(frames):
          rows.append(formats.identity_row(p, f"{key}/{p.name}", pid, tracklet=t, frame=frame))
    pairs = parse_ytf_splits(formats.require_file(root / "splits.txt", "splits.txt"), videos)
    return {"frames": formats.assign_labels(rows), "set_pairs": pairs}



# ---------------------------------------------------------------- folder of identities

class FolderSource(formats.RecordIndexing):
  """A training set as a folder of identities: <root>/<identity>/<image>, read in place.

  Identities are the subfolders in sorted name order (label = that rank,
  identity = the same number); images (.jpg, .jpeg, .png, .bmp) in sorted
  name order within each. Records are dicts of formats.IDENTITY_KEYS with
  "image" decoded to uint8 [H, W, 3] RGB (any size: the input pipeline
  resizes to config.data.image_size) and filename "<identity>/<image>".
  An empty folder, a folder without identity subfolders, or an identity
  folder without images is an error naming it.
  """

  def __init__(self, root):
    self.root = Path(root)
    if not self.root.is_dir():
      raise FileNotFoundError(f"{self.root}: expected a folder of identities "
                              f"(<root>/<identity>/<image>.jpg); "
                              f"{formats.describe_dir(self.root)}.")
    people = sorted(p for p in self.root.iterdir() if p.is_dir())
    if not people:
      raise format_error(self.root, "one subfolder per identity holding its images "
                         "(<root>/<identity>/<image>.jpg)",
                         f"no subfolders ({formats.describe_dir(self.root)}). Move each "
                         "identity's images into a folder of its own")
    files, labels = [], []
    for label, person in enumerate(people):
      images = formats.image_files(person)
      if not images:
        raise format_error(person, f"images ({', '.join(formats.IMAGE_SUFFIXES)}) of identity "
                           f"{person.name!r}", f"none ({formats.describe_dir(person)}). Remove "
                           "the folder or add its images")
      files += images
      labels += [label] * len(images)
    self.files = files
    self.labels = np.asarray(labels, np.int64)
    self.names = [p.name for p in people]
    self.num_classes = len(people)

  def __len__(self):
    return len(self.files)

  def record(self, i: int) -> dict:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    path = self.files[i]
    try:
      with Image.open(path) as im:
        image = np.asarray(im.convert("RGB"))
    except OSError as e:
      raise format_error(path, "an image PIL can read", f"{e}") from e
    return formats.face_record(image, self.labels[i], self.labels[i],
                               f"{path.parent.name}/{path.name}")

  def metadata(self) -> dict[str, np.ndarray]:
    """The non-image columns, [N] each, without reading any image."""
    return formats.face_metadata(self.labels, self.labels,
                                 [f"{p.parent.name}/{p.name}" for p in self.files])

  def __repr__(self):
    return f"FolderSource({str(self.root)!r}, {len(self)} images, {self.num_classes} identities)"


def open_folder_split(root, split: str = "train") -> FolderSource:
  """The "train" split of a folder of identities (jaxset.data.DIRECT)."""
  if split != "train":
    raise ValueError(f"a folder of identities has only the split 'train'; got {split!r}. "
                     "Validate on .bin files (config.eval.benchmark=face_bin).")
  return FolderSource(root)
