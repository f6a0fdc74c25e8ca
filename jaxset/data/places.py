"""Place recognition datasets: Pittsburgh 30k / 250k, Tokyo 24/7, MSLS val, the VPR folder format.

Records (PLACE_KEYS, the schema of synthetic_places): image, utm = (east,
north) float64 metres, filename, timestamp (0 unknown), panorama (-1 unknown).
Splits "{train,val,test}_{database,queries}" (Tokyo 24/7: test only), records in
the order of the dbStruct / sorted file names, so record i of a database split
is database image i of the protocol.

The positive-distance thresholds of each dbStruct (posDistThr = 25 m,
posDistSqThr, nonTrivPosDistSqThr = 100 m^2) are stored in the builder's
metadata: `builder.info.metadata["thresholds"][<train|val|test>]`.

Panorama ids (database splits; queries get -1, as in synthetic_places):
database cutouts of one panorama share an id, parsed from the
file name: the stem without its cutout suffix ("_pitchP_yawY", "_yawY" or a
final "_NNN" index); the stem's number when it is all digits, otherwise ids in
order of first appearance within the split. Pittsburgh has 24 cutouts per
panorama, Tokyo 24/7 12.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io

from jaxset.data import formats
from jaxset.data.formats import format_error

PLACE_SPLITS = tuple(f"{s}_{k}" for s in ("train", "val", "test") for k in ("database", "queries"))
POS_DIST_THR = 25.0            # metres: a database image within this is a positive
NON_TRIV_POS_DIST_SQ_THR = 100.0  # metres^2: training positives (NetVLAD)

_CUTOUT = re.compile(r"^(?P<pano>.+?)(?:_pitch\d+_yaw\d+|_yaw\d+|_\d{1,3})$")


def read_db_struct(path: Path, *, timestamps: bool = False) -> dict:
  """Reads a NetVLAD dbStruct .mat by field name, checking every field's shape.

  Returns dict(which_set, db_images [N], utm_db [N, 2], q_images [Q], utm_q [Q, 2],
  thresholds {posDistThr, posDistSqThr, nonTrivPosDistSqThr}, and with
  `timestamps` db_time [N], q_time [Q]).
  """
  formats.require_file(path, "a NetVLAD dbStruct .mat")
  try:
    mat = scipy.io.loadmat(str(path))
  except Exception as e:  # scipy raises several types for damaged files
    raise format_error(path, "a MATLAB .mat file holding struct dbStruct",
                       f"a file scipy.io.loadmat cannot read ({type(e).__name__}: {e})") from e
  if "dbStruct" not in mat:
    keys = sorted(k for k in mat if not k.startswith("__"))
    raise format_error(path, "a variable named dbStruct", f"variables {keys}")
  st = mat["dbStruct"]
  if st.dtype.names is None or st.size != 1:
    raise format_error(path, "dbStruct to be a 1x1 struct",
                       f"an array of shape {st.shape} and dtype {st.dtype}")
  st = st.reshape(-1)[0]
  names = st.dtype.names

  def field(name):
    if name not in names:
      raise format_error(path, f"dbStruct field {name!r}",
                         f"fields {list(names)}. Use the dataset's original .mat, or save "
                         "dbStruct with every field docs/data.md lists")
    return st[name]

  def strings(name):
    arr = np.asarray(field(name), dtype=object)
    if arr.ndim != 2 or 1 not in arr.shape and arr.size:
      raise format_error(path, f"dbStruct.{name} to be an N x 1 cell of file names",
                         f"shape {arr.shape}")
    out = []
    for x in arr.ravel():
      x = np.asarray(x).ravel()
      if x.size != 1 or not isinstance(x[0], str):
        raise format_error(path, f"dbStruct.{name} to hold one string per cell",
                           f"a cell holding {x!r}")
      out.append(str(x[0]))
    return out

  def utm(name, n):
    arr = np.asarray(field(name), dtype=np.float64)
    if arr.shape != (2, n):
      raise format_error(path, f"dbStruct.{name} of shape (2, {n}) (east; north per image)",
                         f"shape {arr.shape}")
    return arr.T.copy()

  def scalar(name):
    arr = np.asarray(field(name)).ravel()
    if arr.size != 1:
      raise format_error(path, f"dbStruct.{name} to be a scalar", f"shape {np.shape(field(name))}")
    return float(arr[0])

  def stamps(name, n):
    arr = np.asarray(field(name)).ravel()
    if arr.size != n:
      raise format_error(path, f"dbStruct.{name} with {n} entries", f"{arr.size}")
    return arr.astype(np.int64)

  which = np.asarray(field("whichSet")).ravel()
  out = dict(which_set=str(which[0]) if which.size else "")
  out["db_images"] = strings("dbImageFns")
  out["q_images"] = strings("qImageFns")
  n, q = len(out["db_images"]), len(out["q_images"])
  out["utm_db"] = utm("utmDb", n)
  out["utm_q"] = utm("utmQ", q)
  for name, count in (("numImages", n), ("numQueries", q)):
    if int(scalar(name)) != count:
      raise format_error(path, f"dbStruct.{name} = the number of listed files ({count})",
                         f"{int(scalar(name))}")
  out["thresholds"] = {k: scalar(k) for k in
                       ("posDistThr", "posDistSqThr", "nonTrivPosDistSqThr")}
  if timestamps:
    out["db_time"] = stamps("dbTimeStamp", n)
    out["q_time"] = stamps("qTimeStamp", q)
  return out


def panorama_ids(filenames) -> list[int]:
  """Panorama id per file name (see the module docstring); -1 when none is found."""
  keys = []
  for f in filenames:
    m = _CUTOUT.match(Path(f).stem)
    keys.append(m.group("pano") if m else None)
  if all(k is None or k.split("/")[-1].isdigit() for k in keys):
    return [-1 if k is None else int(k.split("/")[-1]) for k in keys]
  first = {}
  return [-1 if k is None else first.setdefault(k, len(first)) for k in keys]


class _DbStructBuilder(formats.ManualBuilder):
  """Base of the dbStruct datasets (Pittsburgh, Tokyo 24/7)."""
  SPLIT_FEATURES = {s: formats.PLACE_KEYS for s in PLACE_SPLITS}
  MAT_NAMES: dict = {}       # set -> .mat file name
  QUERY_DIRS = ("queries_real",)
  DB_DIRS = ("",)
  DB_SUFFIXES = ("",)      # "" = as listed; ".png" = listed name with .png
  TIMESTAMPS = False
  CHECK_WHICH_SET = True   # catches a train .mat saved under the test name

  def _metadata(self):
    return dict(thresholds=getattr(self, "_thresholds", {}),
                pos_dist_thr=POS_DIST_THR, non_triv_pos_dist_sq_thr=NON_TRIV_POS_DIST_SQ_THR)

  def _find_mat(self, root: Path, name: str) -> Path:
    for cand in (root / "datasets" / name, root / name):
      if cand.is_file():
        return cand
    raise FileNotFoundError(
        f"{root / 'datasets' / name}: expected the dbStruct file {name} in "
        f"{root / 'datasets'} or {root}; it is missing "
        f"({formats.describe_dir(root / 'datasets')}; {formats.describe_dir(root)}).")

  @staticmethod
  def _resolve(root: Path, dirs, suffixes, name: str, what: str) -> tuple[Path, str]:
    tried = []
    for d in dirs:
      for suffix in suffixes:
        rel = str(Path(name).with_suffix(suffix)) if suffix else name
        path = root / d / rel
        tried.append(str(path))
        if path.is_file():
          return path, rel
    raise FileNotFoundError(
        f"{tried[0]}: expected the {what} image listed in the dbStruct; it is missing "
        f"(tried {', '.join(tried)}; {formats.describe_dir(Path(tried[0]).parent)}).")

  def _read(self, root: Path):
    splits, self._thresholds = {}, {}
    for set_name, mat_name in self.MAT_NAMES.items():
      path = self._find_mat(root, mat_name)
      db = read_db_struct(path, timestamps=self.TIMESTAMPS)
      if self.CHECK_WHICH_SET and db["which_set"] and db["which_set"] != set_name:
        raise format_error(path, f"dbStruct.whichSet = {set_name!r}", repr(db["which_set"]))
      self._thresholds[set_name] = db["thresholds"]
      for kind, names, utm, dirs, suffixes, time_key in (
          ("database", db["db_images"], db["utm_db"], self.DB_DIRS, self.DB_SUFFIXES, "db_time"),
          ("queries", db["q_images"], db["utm_q"], self.QUERY_DIRS, ("",), "q_time")):
        rows = []
        found = [self._resolve(root, dirs, suffixes, n, kind) for n in names]
        panos = (panorama_ids([rel for _, rel in found]) if kind == "database"
                 else [-1] * len(found))
        times = db.get(time_key, np.zeros(len(names), np.int64))
        for (p, rel), xy, pano, t in zip(found, utm, panos, times):
          rows.append(dict(image=p, utm=np.asarray(xy, np.float64), filename=rel,
                           timestamp=int(t), panorama=int(pano)))
        splits[f"{set_name}_{kind}"] = rows
    # Metadata is written after _split_generators; refresh it with the thresholds read.
    self.info.metadata.update(self._metadata())
    return splits


_PITTS_LAYOUT = """\
  <manual_dir>/datasets/{p}_train.mat, {p}_val.mat, {p}_test.mat   (NetVLAD dbStruct files;
      also accepted directly in <manual_dir>)
  <manual_dir>/<dbImageFns>            database images, e.g. 000/000000_pitch1_yaw1.jpg
  <manual_dir>/queries_real/<qImageFns> query images
"""


class Pittsburgh30k(_DbStructBuilder):
  """Pittsburgh 30k (NetVLAD): train / val / test database and query splits."""
  MAT_NAMES = {s: f"pitts30k_{s}.mat" for s in ("train", "val", "test")}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _PITTS_LAYOUT.format(p="pitts30k")


class Pittsburgh250k(_DbStructBuilder):
  """Pittsburgh 250k (NetVLAD): train / val / test database and query splits."""
  MAT_NAMES = {s: f"pitts250k_{s}.mat" for s in ("train", "val", "test")}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _PITTS_LAYOUT.format(p="pitts250k")


class Tokyo247(_DbStructBuilder):
  """Tokyo 24/7: test_database (12 cutouts per panorama) and test_queries.

  The dbStruct lists database files as .jpg while the distributed files are
  .png: the .png is read first, then the listed name. Timestamps come from
  dbTimeStamp / qTimeStamp.
  """
  SPLIT_FEATURES = {s: formats.PLACE_KEYS for s in ("test_database", "test_queries")}
  MAT_NAMES = {"test": "tokyo247.mat"}
  DB_DIRS = ("", "database")
  DB_SUFFIXES = (".png", "")
  QUERY_DIRS = ("247query_subset_v2", "queries")
  TIMESTAMPS = True
  CHECK_WHICH_SET = False  # one file: nothing to confuse it with
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/datasets/tokyo247.mat   (dbStruct with dbTimeStamp / qTimeStamp; also
      accepted directly in <manual_dir>)
  <manual_dir>/<dbImageFns>  database cutouts, stored as .png (the .mat says .jpg);
      also looked up under <manual_dir>/database/
  <manual_dir>/247query_subset_v2/<qImageFns>  (or <manual_dir>/queries/) query images
"""


def parse_vpr_name(path: Path) -> dict:
  """Fields of a VPR-folder name @east@north@zone@letter@lat@lon@pano@...@timestamp@note@.jpg."""
  parts = path.stem.split("@")
  expected = ("a name @UTM_east@UTM_north@zone@letter@lat@lon@pano@tile@heading@pitch@roll"
              "@height@timestamp@note@.jpg with numeric UTM_east and UTM_north")
  if len(parts) < 4 or parts[0] != "":
    raise format_error(path, expected, f"the name {path.name!r}")
  try:
    east, north = float(parts[1]), float(parts[2])
  except ValueError:
    raise format_error(path, expected, f"the name {path.name!r}") from None
  field = lambda i: parts[i] if len(parts) > i else ""  # noqa: E731
  stamp = field(13)
  return dict(utm=np.array([east, north], np.float64), pano=field(7),
              timestamp=int(stamp) if stamp.isdigit() else 0)


class VprFolder(formats.ManualBuilder):
  """Any dataset in the VPR folder format (gmberton's benchmark layout).

  Splits: those of {train,val,test}_{database,queries} whose folder exists.
  UTM comes from the file name; panorama ids number the distinct non-empty
  pano fields of a database split in order of first appearance (-1 if empty,
  and for queries);
  the timestamp field is used when it is all digits (else 0).
  """
  SPLIT_FEATURES = {s: formats.PLACE_KEYS for s in PLACE_SPLITS}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/images/{train,val,test}/{database,queries}/
    @UTM_east@UTM_north@zone@letter@lat@lon@pano@tile@heading@pitch@roll@height@timestamp@note@.jpg
  (only the set folders you have are needed; each present folder must hold images)
"""

  def _metadata(self):
    return dict(pos_dist_thr=POS_DIST_THR, non_triv_pos_dist_sq_thr=NON_TRIV_POS_DIST_SQ_THR)

  def _read(self, root: Path):
    images = formats.require_dir(root / "images",
                                 "images/ with {train,val,test}/{database,queries}/")
    splits = {}
    for name in PLACE_SPLITS:
      set_name, kind = name.split("_")
      folder = images / set_name / kind
      if not folder.is_dir():
        continue
      rows, panos = [], {}
      for p in formats.image_files(folder):
        f = parse_vpr_name(p)
        pano = (-1 if not f["pano"] or kind == "queries"
                else panos.setdefault(f["pano"], len(panos)))
        rows.append(dict(image=p, utm=f["utm"], filename=f"{set_name}/{kind}/{p.name}",
                         timestamp=f["timestamp"], panorama=pano))
      splits[name] = rows
    if not splits:
      raise format_error(images, "at least one of {train,val,test}/{database,queries}/",
                         formats.describe_dir(images))
    return splits


MSLS_VAL_CITIES = ("cph", "sf")


def _read_csv(path: Path, columns: Sequence[str], fix: str) -> list[dict]:
  """Rows of an MSLS csv file (first column an unnamed index) with `columns` checked."""
  formats.require_file(path, f"{path.name} ({fix})")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
      raise format_error(path, f"a csv header with the columns {list(columns)} ({fix})",
                         f"the header {reader.fieldnames} (missing {missing})")
    return list(reader)


def read_msls_city(city_dir: Path, kind: str) -> list[dict]:
  """Records of <city>/<kind>/ (kind "query" or "database") of MSLS, panoramas excluded.

  UTM comes from postprocessed.csv (easting, northing), the panorama flag from
  raw.csv (pano), matched by key; rows keep postprocessed.csv's order.
  """
  folder = city_dir / kind
  fix = ("MSLS's metadata; unpack metadata.zip over the images so that every "
         f"train_val/<city>/{kind}/ holds postprocessed.csv and raw.csv")
  post = _read_csv(folder / "postprocessed.csv", ("key", "easting", "northing"), fix)
  raw = _read_csv(folder / "raw.csv", ("key", "pano"), fix)
  pano = {r["key"]: r["pano"].strip().lower() in ("true", "1") for r in raw}
  rows = []
  for n, r in enumerate(post, 2):
    key = r["key"]
    if key not in pano:
      raise format_error(folder / "raw.csv", f"a row for key {key!r} (listed on line {n} of "
                         "postprocessed.csv)", "none")
    if pano[key]:
      continue  # mapillary_sls evaluates without panoramas
    try:
      utm = np.array([float(r["easting"]), float(r["northing"])], np.float64)
    except ValueError:
      raise format_error(f"{folder / 'postprocessed.csv'}:{n}", "numeric easting and northing",
                         f"{r['easting']!r}, {r['northing']!r}") from None
    path = folder / "images" / f"{key}.jpg"
    if not path.is_file():
      raise FileNotFoundError(f"{path}: expected the image of key {key!r} (line {n} of "
                              f"{folder / 'postprocessed.csv'}); it is missing "
                              f"({formats.describe_dir(path.parent)}).")
    rows.append(dict(image=path, utm=utm, filename=f"{city_dir.name}/{kind}/images/{key}.jpg",
                     timestamp=0, panorama=-1))
  return rows


class Msls(formats.ManualBuilder):
  """Mapillary Street-Level Sequences, validation cities (cph, sf): "val_database",
  "val_queries".

  Panoramas (raw.csv pano = True) are left out, as mapillary_sls's evaluate
  does. Records are grouped by city (cph, then sf), each in postprocessed.csv
  order; `filename` starts with the city, and train/eval_places.py retrieves
  each query among its own city's database only (the official predictions are
  made per city and concatenated). Which queries count is the evaluator's
  choice (config.eval.msls_queries, docs/evaluation.md): every query, or only
  those with a database image within 25 m.
  """
  SPLIT_FEATURES = {s: formats.PLACE_KEYS for s in ("val_database", "val_queries")}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/train_val/{cph,sf}/{query,database}/images/<key>.jpg
  <manual_dir>/train_val/{cph,sf}/{query,database}/postprocessed.csv (key, easting, northing)
      and raw.csv (key, pano): images_vol_*.zip and metadata.zip unpacked in one folder
"""

  def _metadata(self):
    return dict(cities=list(MSLS_VAL_CITIES), pos_dist_thr=POS_DIST_THR)

  def _read(self, root: Path):
    root = formats.find_root(root, "train_val")
    splits = {"val_database": [], "val_queries": []}
    for city in MSLS_VAL_CITIES:
      city_dir = formats.require_dir(root / "train_val" / city,
                                     f"train_val/{city}/ (an MSLS validation city)")
      splits["val_database"] += read_msls_city(city_dir, "database")
      splits["val_queries"] += read_msls_city(city_dir, "query")
    return splits
