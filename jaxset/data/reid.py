"""Image re-identification datasets: Market-1501, DukeMTMC-reID, CUHK03-NP, MSMT17.

Records (IDENTITY_KEYS, the schema of synthetic_identities); splits "train"
(bounding_box_train), "query" (query) and "gallery" (bounding_box_test), files
in name order. From each file name: identity = the person id, camera = the
camera number - 1, frame = the frame number; tracklet = -1 (none).

MSMT17 has its own layout: list files name the images and their ids (below).

Protocol details kept as in the torchreid / official evaluation: person id -1
("junk" detections) is dropped; id 0 (Market "distractors") is kept, in the
gallery. label ranks the identities of each split (0..C-1, increasing ids), so
a distractor has a label too; use `identity` to match queries to the gallery.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import tensorflow_datasets as tfds

from jaxset.data import formats
from jaxset.data.formats import format_error

REID_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

MARKET_PATTERN = re.compile(
    r"^(?P<pid>-?\d+)_c(?P<cam>\d)s(?P<seq>\d+)_(?P<frame>\d+)_(?P<box>\d+)$")
DUKE_PATTERN = re.compile(r"^(?P<pid>-?\d+)_c(?P<cam>\d+)_f(?P<frame>\d+)$")
# CUHK03-NP ships Market-style names; the sequence and box fields are optional here.
CUHK03_PATTERN = re.compile(
    r"^(?P<pid>-?\d+)_c(?P<cam>\d+)(?:s(?P<seq>\d+))?_(?P<frame>\d+)(?:_(?P<box>\d+))?$")


def parse_reid_name(path: Path, pattern: re.Pattern, expected: str, num_cameras: int) -> dict:
  """pid, 0-based camera and frame of a re-ID file name; DatasetFormatError if unparsable."""
  m = pattern.match(Path(path).stem)
  if not m:
    raise format_error(path, f"a file name like {expected}",
                       f"the name {Path(path).name!r}. Rename the file to that pattern or "
                       "move it out of the folder (the layouts: docs/data.md)")
  cam = int(m.group("cam"))
  if not 1 <= cam <= num_cameras:
    raise format_error(path, f"a camera number in 1..{num_cameras}", f"camera {cam}")
  return dict(identity=int(m.group("pid")), camera=cam - 1, frame=int(m.group("frame")))


def read_reid_folder(folder: Path, pattern, expected: str, num_cameras: int,
                     prefix: str = "") -> list[dict]:
  """Records of the images of one re-ID folder, junk (pid -1) dropped, labels assigned."""
  rows = []
  for p in formats.image_files(folder):
    f = parse_reid_name(p, pattern, expected, num_cameras)
    if f["identity"] == -1:
      continue
    rows.append(formats.identity_row(p, prefix + p.name, f["identity"], camera=f["camera"],
                                     frame=f["frame"]))
  return formats.assign_labels(rows)


class _ReidBuilder(formats.ManualBuilder):
  SPLIT_FEATURES = {s: formats.IDENTITY_KEYS for s in REID_FOLDERS}
  PATTERN = MARKET_PATTERN
  EXPECTED = "PPPP_cCsS_FFFFFF_BB.jpg (e.g. 0002_c1s1_000451_03.jpg)"
  NUM_CAMERAS = 6

  def _subdir(self) -> str:
    return ""

  def _read(self, root: Path):
    root = formats.find_root(root, str(Path(self._subdir()) / "bounding_box_train"))
    base = root / self._subdir()
    splits = {}
    for split, folder in REID_FOLDERS.items():
      d = formats.require_dir(base / folder, f"{folder}/ of {type(self).__name__}")
      splits[split] = read_reid_folder(d, self.PATTERN, self.EXPECTED, self.NUM_CAMERAS,
                                       prefix=f"{folder}/")
    return splits

  def _metadata(self):
    return dict(num_cameras=self.NUM_CAMERAS, junk_identity=-1, distractor_identity=0)


class Market1501(_ReidBuilder):
  """Market-1501: 6 cameras; junk (-1) dropped, distractors (0) kept in the gallery."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/bounding_box_train/, bounding_box_test/, query/ holding
      PPPP_cCsS_FFFFFF_BB.jpg (the unpacked Market-1501-v15.09.15/ folder itself or
      its parent)
"""


class DukeMTMCReID(_ReidBuilder):
  """DukeMTMC-reID: 8 cameras, names NNNN_cC_fFFFFFFF.jpg."""
  PATTERN = DUKE_PATTERN
  EXPECTED = "NNNN_cC_fFFFFFFF.jpg (e.g. 0005_c2_f0046985.jpg)"
  NUM_CAMERAS = 8
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/bounding_box_train/, bounding_box_test/, query/ holding
      NNNN_cC_fFFFFFFF.jpg (the unpacked DukeMTMC-reID/ folder itself or its parent)
"""


@dataclasses.dataclass
class Cuhk03Config(tfds.core.BuilderConfig):
  """Which boxes of CUHK03-NP: "detected" (DPM boxes) or "labeled" (hand-drawn)."""
  boxes: str = "detected"


class CUHK03NP(_ReidBuilder):
  """CUHK03 in the new protocol (767 train / 700 test identities), detected or labeled boxes.

  Config "detected" (default) or "labeled" picks the folder.
  """
  BUILDER_CONFIGS = [Cuhk03Config(name="detected", boxes="detected",
                                  description="Detected (DPM) bounding boxes."),
                     Cuhk03Config(name="labeled", boxes="labeled",
                                  description="Hand-labelled bounding boxes.")]
  PATTERN = CUHK03_PATTERN
  EXPECTED = "Market-style PPPP_cCsS_FFFFFF_BB.png (sS and _BB optional)"
  NUM_CAMERAS = 10
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/detected/{bounding_box_train,bounding_box_test,query}/ and
  <manual_dir>/labeled/{bounding_box_train,bounding_box_test,query}/ with Market-style
      names (the unpacked cuhk03-np/ folder itself or its parent)
"""

  def _subdir(self):
    return self.builder_config.boxes


MSMT17_LISTS = {"train": ("list_train.txt", "train"), "val": ("list_val.txt", "train"),
                "query": ("list_query.txt", "test"), "gallery": ("list_gallery.txt", "test")}
MSMT17_NAME = re.compile(r"^(?P<pid>\d+)_(?P<index>\d+)_(?P<cam>\d+)_")
MSMT17_EXPECTED = ("lines '<pid folder>/<pid>_<index>_<camera>_<date><time>_<n>_<n>.jpg "
                   "<pid>' (e.g. '0000/0000_000_01_0303morning_0015_0.jpg 0')")


def read_msmt17_list(list_path: Path, image_dir: Path, prefix: str,
                     num_cameras: int = 15) -> list[dict]:
  """Records of one MSMT17 list file: each line '<relative path> <pid>'.

  The pid is the list's (the number after the path); the camera is the third
  '_' field of the file name, 1-based (as torchreid reads it); the frame is
  unknown (-1). Labels rank the split's pids.
  """
  rows = []
  for n, line in enumerate(list_path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    parts = line.split()
    m = MSMT17_NAME.match(Path(parts[0]).name) if len(parts) == 2 else None
    if not m or not parts[1].lstrip("-").isdigit():
      raise format_error(f"{list_path}:{n}", MSMT17_EXPECTED, repr(line))
    cam = int(m.group("cam"))
    if not 1 <= cam <= num_cameras:
      raise format_error(f"{list_path}:{n}", f"a camera number in 1..{num_cameras}",
                         f"camera {cam} in {parts[0]!r}")
    path = image_dir / parts[0]
    if not path.is_file():
      raise FileNotFoundError(
          f"{path}: expected the image listed on line {n} of {list_path}; it is missing "
          f"({formats.describe_dir(path.parent)}). Unpack {image_dir.name}/ next to the list.")
    rows.append(formats.identity_row(path, f"{prefix}/{parts[0]}", int(parts[1]),
                                     camera=cam - 1))
  return formats.assign_labels(rows)


class Msmt17(formats.ManualBuilder):
  """MSMT17 (V1 or V2): splits "train", "val" (both from the training images),
  "query" and "gallery" (the test images), as its list files give them; 15 cameras.

  torchreid trains on "train" alone by default (its combineall option adds
  "val"); the published query/gallery protocol is the one of Market-1501.
  """
  SPLIT_FEATURES = {s: formats.IDENTITY_KEYS for s in MSMT17_LISTS}
  NUM_CAMERAS = 15
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/list_train.txt, list_val.txt, list_query.txt, list_gallery.txt
      (lines '<pid>/<pid>_<index>_<camera>_<date><time>_<n>_<n>.jpg <pid>')
  <manual_dir>/train/ (or mask_train_v2/) and test/ (or mask_test_v2/) holding the listed
      images (the unpacked MSMT17_V1/ or MSMT17_V2/ folder itself or its parent)
"""

  def _read(self, root: Path):
    root = formats.find_root(root, "list_train.txt")
    splits = {}
    for split, (list_name, folder) in MSMT17_LISTS.items():
      list_path = formats.require_file(root / list_name, f"{list_name} of MSMT17 "
                                       "('<relative image path> <pid>' lines)")
      dirs = [d for d in (folder, f"mask_{folder}_v2") if (root / d).is_dir()]
      if not dirs:
        raise FileNotFoundError(
            f"{root / folder}: expected the folder {folder}/ (MSMT17_V1) or "
            f"mask_{folder}_v2/ (MSMT17_V2) with the images {list_name} lists; it is "
            f"missing ({formats.describe_dir(root)}).")
      splits[split] = read_msmt17_list(list_path, root / dirs[0], dirs[0], self.NUM_CAMERAS)
    return splits

  def _metadata(self):
    return dict(num_cameras=self.NUM_CAMERAS)
