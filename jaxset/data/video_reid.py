"""Video re-identification datasets (image sets): MARS, PRID2011, iLIDS-VID.

Per-frame records (IDENTITY_KEYS) whose `tracklet` groups the frames of one
sequence; frames of a tracklet are contiguous and in frame order.

- MARS: "train" (bbox_train), "query" and "gallery" (bbox_test tracks split by
  info/query_IDX.mat, as in the official protocol). Tracklet ids are the row
  numbers (0-based) of info/tracks_{train,test}_info.mat, so query and gallery
  share the test id space. Tracks of person -1 (junk) are dropped; person 0
  (distractors) is kept.
- PRID2011 and iLIDS-VID: "full" (every sequence of both cameras; tfds reserves
  the name "all") and "train" /
  "test": the identities seen by both cameras, split half/half. The usual
  protocol averages 10 random splits: config "split_K" (K = 0..9, default 0)
  permutes the sorted identities with np.random.default_rng(K) and takes the
  first floor(n / 2) for train (formats.split_identities). Tracklet ids number
  the (camera, person) sequences in sorted order and are the same in all splits.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from jaxset.data import formats
from jaxset.data.formats import format_error

MARS_NAME = re.compile(r"^(?P<pid>-?\d+|00-1)C(?P<cam>\d)T(?P<track>\d+)F(?P<frame>\d+)$")


def _load_mat_var(path: Path, var: str, what: str) -> np.ndarray:
  formats.require_file(path, what)
  try:
    mat = scipy.io.loadmat(str(path))
  except Exception as e:  # scipy raises several types for damaged files
    raise format_error(path, f"a MATLAB .mat file holding {var}",
                       f"a file scipy.io.loadmat cannot read ({type(e).__name__}: {e})") from e
  if var not in mat:
    keys = sorted(k for k in mat if not k.startswith("__"))
    raise format_error(path, f"a variable named {var}", f"variables {keys}")
  return np.asarray(mat[var])


def read_mars_split(root: Path, part: str, track_ids=None) -> list[dict]:
  """Frames of the MARS tracks of `part` ("train" / "test"), optionally only rows `track_ids`."""
  names_path = formats.require_file(root / "info" / f"{part}_name.txt",
                                    f"info/{part}_name.txt (one frame file name a line)")
  names = [n.strip() for n in names_path.read_text().splitlines() if n.strip()]
  info_path = root / "info" / f"tracks_{part}_info.mat"
  info = _load_mat_var(info_path, f"track_{part}_info", "the MARS track table")
  if info.ndim != 2 or info.shape[1] != 4:
    raise format_error(info_path, f"track_{part}_info of shape (tracks, 4) = [start, end, "
                       "pid, camera] rows", f"shape {info.shape}")
  info = info.astype(np.int64)
  rows_out = []
  folder = root / f"bbox_{part}"
  formats.require_dir(folder, f"bbox_{part}/ with one folder per person")
  ids = range(len(info)) if track_ids is None else track_ids
  for t in ids:
    start, end, pid, cam = (int(v) for v in info[t])
    if not 1 <= start <= end <= len(names):
      raise format_error(info_path, f"row {t + 1}: 1 <= start <= end <= {len(names)} "
                         f"(the lines of {names_path.name})", f"start={start}, end={end}")
    if pid == -1:
      continue  # junk tracks
    for name in names[start - 1:end]:
      m = MARS_NAME.match(Path(name).stem)
      if not m:
        raise format_error(names_path, "frame names like 0001C1T0001F001.jpg", repr(name))
      path = folder / name[:4] / name
      if not path.is_file():
        raise FileNotFoundError(f"{path}: expected the frame listed in {names_path}; it is "
                                f"missing ({formats.describe_dir(path.parent)}).")
      rows_out.append(formats.identity_row(path, f"bbox_{part}/{name[:4]}/{name}", pid,
                                           camera=cam - 1, tracklet=t,
                                           frame=int(m.group("frame"))))
  return rows_out


class Mars(formats.ManualBuilder):
  """MARS: "train", "query", "gallery" per-frame records grouped by tracklet."""
  SPLIT_FEATURES = {s: formats.IDENTITY_KEYS for s in ("train", "query", "gallery")}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/bbox_train/<pid>/<pid>C<c>T<tttt>F<fff>.jpg, bbox_test/<pid>/...
  <manual_dir>/info/train_name.txt, test_name.txt, tracks_train_info.mat (track_train_info),
      tracks_test_info.mat (track_test_info), query_IDX.mat (query_IDX): the MARS-evaluation
      files; track rows [start, end, pid, camera], 1-based into the name lists
"""

  def _read(self, root: Path):
    root = formats.find_root(root, "info")
    test_info = _load_mat_var(root / "info" / "tracks_test_info.mat", "track_test_info",
                              "the MARS track table")
    q_path = root / "info" / "query_IDX.mat"
    query = _load_mat_var(q_path, "query_IDX", "the MARS query track indices").astype(
        np.int64).ravel()
    n = len(test_info)
    if query.size and not (query.min() >= 1 and query.max() <= n):
      raise format_error(q_path, f"1-based track indices in 1..{n}",
                         f"values {query.min()}..{query.max()}")
    q_rows = sorted(set((query - 1).tolist()))
    g_rows = sorted(set(range(n)) - set(q_rows))
    return {
        "train": formats.assign_labels(read_mars_split(root, "train")),
        "query": formats.assign_labels(read_mars_split(root, "test", q_rows)),
        "gallery": formats.assign_labels(read_mars_split(root, "test", g_rows)),
    }


@dataclasses.dataclass
class SplitConfig(tfds.core.BuilderConfig):
  """The seed of the half/half identity split (one of the 10 protocol splits)."""
  split_seed: int = 0


SPLIT_CONFIGS = [SplitConfig(name=f"split_{k}", split_seed=k,
                             description=f"Identity split drawn with seed {k}.")
                 for k in range(10)]


def _frame_number(path: Path, index: int) -> int:
  m = re.search(r"(\d+)$", path.stem)
  return int(m.group(1)) if m else index


class _SequenceBuilder(formats.ManualBuilder):
  """Two-camera sequence datasets: <ROOT>/<camera>/<person>/*.png."""
  SPLIT_FEATURES = {s: formats.IDENTITY_KEYS for s in ("full", "train", "test")}
  BUILDER_CONFIGS = SPLIT_CONFIGS
  ROOT = ""
  CAMERAS = ()
  PERSON = re.compile("")
  PERSON_EXPECTED = ""

  def _read(self, root: Path):
    root = formats.find_root(root, self.ROOT)
    base = root / self.ROOT
    tracks = []  # (camera, pid, [frames])
    for c, cam in enumerate(self.CAMERAS):
      cam_dir = formats.require_dir(base / cam, f"{self.ROOT}/{cam}/ with one folder per person")
      for person in sorted(p for p in cam_dir.iterdir() if p.is_dir()):
        m = self.PERSON.match(person.name)
        if not m:
          raise format_error(person, f"person folders named {self.PERSON_EXPECTED}",
                             repr(person.name))
        frames = formats.image_files(person)
        if not frames:
          raise format_error(person, "the frames of one sequence (.png/.jpg)", "no images")
        tracks.append((c, int(m.group(1)), frames))
    if not tracks:
      raise format_error(base, "person folders in " + ", ".join(self.CAMERAS), "none")
    rows = []
    for t, (c, pid, frames) in enumerate(tracks):
      for i, p in enumerate(frames):
        rows.append(formats.identity_row(p, str(p.relative_to(root)), pid, camera=c,
                                         tracklet=t, frame=_frame_number(p, i)))
    cams_of = {}
    for c, pid, _ in tracks:
      cams_of.setdefault(pid, set()).add(c)
    both = [pid for pid, cams in cams_of.items() if len(cams) == len(self.CAMERAS)]
    train_ids, test_ids = formats.split_identities(both, self.builder_config.split_seed)
    self._split_ids = dict(train=train_ids, test=test_ids)
    self.info.metadata.update(self._metadata())
    pick = lambda ids: formats.assign_labels(  # noqa: E731
        [dict(r) for r in rows if r["identity"] in set(ids)])
    return {"full": formats.assign_labels([dict(r) for r in rows]),
            "train": pick(train_ids), "test": pick(test_ids)}

  def _metadata(self):
    ids = getattr(self, "_split_ids", {})
    return dict(split_seed=self.builder_config.split_seed, train_identities=ids.get("train", []),
                test_identities=ids.get("test", []))


class Prid2011(_SequenceBuilder):
  """PRID2011 multi-shot: cam_a (camera 0) and cam_b (camera 1) sequences."""
  ROOT = "multi_shot"
  CAMERAS = ("cam_a", "cam_b")
  PERSON = re.compile(r"^person_(\d+)$")
  PERSON_EXPECTED = "person_XXXX"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/multi_shot/cam_a/person_XXXX/NNNN.png and multi_shot/cam_b/person_XXXX/NNNN.png
      (the unpacked prid_2011/ folder itself or its parent)
"""


class ILidsVid(_SequenceBuilder):
  """iLIDS-VID: cam1 (camera 0) and cam2 (camera 1) sequences of 300 people."""
  ROOT = "sequences"
  CAMERAS = ("cam1", "cam2")
  PERSON = re.compile(r"^person(\d+)$")
  PERSON_EXPECTED = "personNNN"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/sequences/cam1/personNNN/*.png and sequences/cam2/personNNN/*.png
      (the unpacked i-LIDS-VID/ folder itself or its parent)
"""
