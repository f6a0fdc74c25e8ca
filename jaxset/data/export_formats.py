"""Writers of the embedded datasets in the real datasets' on-disk layouts.

Each writer takes `load(split) -> data source` of an embedded dataset
(synthetic_identities for re-ID and video re-ID, synthetic_places for places)
and writes a miniature at `out` in the layout its jaxset.data builder, and the
reference code the builder follows, reads (docs/data.md gives every layout).
It returns the folder to pass as manual_dir (--config.data.dir). WRITERS maps
each real builder name to its writer, so that `builder(name,
manual_dir=WRITERS[name](out, load))` reads back what was written.

Identities and cameras. Re-ID: person id = identity + 1 (Market's 0 means
"distractor", -1 "junk"), camera = camera + 1; the frame field numbers the
records of a split, so every name is unique. Video re-ID: each tracklet is one
track; PRID2011 / iLIDS-VID keep the first tracklet of camera 0 and of camera 1
of each person (their layout has one sequence per camera and person). Places:
UTM, panoramas and timestamps as stored; Tokyo 24/7 database files are written
as .png under the .jpg names the .mat lists; MSLS's two val cities take the
test database and queries, split at the median easting.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np

Loader = Callable[[str], object]


def _records(src, keys=None) -> list[dict]:
  n = len(src)
  rows = src.__getitems__(list(range(n))) if hasattr(src, "__getitems__") else [
      src[i] for i in range(n)]
  return [dict(r) if keys is None else {k: r[k] for k in keys} for r in rows]


def _save(image, path: Path) -> None:
  """Writes an RGB uint8 image: JPEG (quality 95) for .jpg, else PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format=fmt, **(
      {"quality": 95} if fmt == "JPEG" else {}))
  path.write_bytes(buf.getvalue())


# --------------------------------------------------------------------------- image re-ID

REID_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def _reid_layout(out: Path, load: Loader, name: Callable[[dict, int], str]) -> Path:
  for split, folder in REID_FOLDERS.items():
    for i, r in enumerate(_records(load(split))):
      _save(r["image"], out / folder / name(r, i))
  return out


def market_name(r: dict, i: int) -> str:
  return f"{int(r['identity']) + 1:04d}_c{int(r['camera']) + 1}s1_{i:06d}_00.jpg"


def write_market1501(out: Path, load: Loader) -> Path:
  """bounding_box_train/, bounding_box_test/, query/ with PPPP_cCsS_FFFFFF_BB.jpg."""
  return _reid_layout(Path(out), load, market_name)


def write_dukemtmc_reid(out: Path, load: Loader) -> Path:
  """The Market folders with NNNN_cC_fFFFFFFF.jpg."""
  return _reid_layout(Path(out), load, lambda r, i: (
      f"{int(r['identity']) + 1:04d}_c{int(r['camera']) + 1}_f{i:07d}.jpg"))


def write_cuhk03_np(out: Path, load: Loader) -> Path:
  """detected/ and labeled/, each the Market folders with Market-style .png names."""
  for boxes in ("detected", "labeled"):
    _reid_layout(Path(out) / boxes, load, lambda r, i: market_name(r, i)[:-4] + ".png")
  return Path(out)


def write_msmt17(out: Path, load: Loader) -> Path:
  """MSMT17_V1: train/, test/ and list_{train,val,query,gallery}.txt.

  list_val takes the training images of the last identity (MSMT17's val is a
  subset of its training images)."""
  out = Path(out)
  train = _records(load("train"))
  last = max(int(r["identity"]) for r in train)
  lists = {"list_train.txt": ("train", [r for r in train if int(r["identity"]) != last]),
           "list_val.txt": ("train", [r for r in train if int(r["identity"]) == last]),
           "list_query.txt": ("test", _records(load("query"))),
           "list_gallery.txt": ("test", _records(load("gallery")))}
  n = 0
  for list_name, (folder, rows) in lists.items():
    lines = []
    for r in rows:
      pid = int(r["identity"])
      rel = f"{pid:04d}/{pid:04d}_{n:03d}_{int(r['camera']) + 1:02d}_0303morning_{n:04d}_0.jpg"
      _save(r["image"], out / folder / rel)
      lines.append(f"{rel} {pid}\n")
      n += 1
    (out / list_name).write_text("".join(lines))
  return out


# --------------------------------------------------------------------------- video re-ID

def _tracks(rows: list[dict]) -> list[list[dict]]:
  """Frames grouped by tracklet (first-appearance order), each in frame order."""
  groups: dict[int, list[dict]] = {}
  for r in rows:
    groups.setdefault(int(r["tracklet"]), []).append(r)
  return [sorted(g, key=lambda r: int(r["frame"])) for g in groups.values()]


def write_mars(out: Path, load: Loader) -> Path:
  """bbox_train/, bbox_test/ and info/ (name lists, track tables, query_IDX.mat)."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  out = Path(out)
  (out / "info").mkdir(parents=True, exist_ok=True)
  parts = {"train": _tracks(_records(load("train"))),
           "test": _tracks(_records(load("query"))) + _tracks(_records(load("gallery")))}
  num_query = len(_tracks(_records(load("query"))))
  track_no = 0
  for part, tracks in parts.items():
    names, info = [], []
    for t in tracks:
      pid, cam = int(t[0]["identity"]) + 1, int(t[0]["camera"]) + 1
      start = len(names) + 1
      for f, r in enumerate(t):
        name = f"{pid:04d}C{cam}T{track_no:04d}F{f + 1:03d}.jpg"
        _save(r["image"], out / f"bbox_{part}" / f"{pid:04d}" / name)
        names.append(name)
      info.append([start, len(names), pid, cam])
      track_no += 1
    (out / "info" / f"{part}_name.txt").write_text("".join(n + "\n" for n in names))
    scipy.io.savemat(str(out / "info" / f"tracks_{part}_info.mat"),
                     {f"track_{part}_info": np.asarray(info, np.float64)})
  scipy.io.savemat(str(out / "info" / "query_IDX.mat"),
                   {"query_IDX": np.arange(1, num_query + 1, dtype=np.float64)[None]})
  return out


def _two_camera_sequences(out: Path, load: Loader, root: str, cams, person) -> Path:
  out = Path(out)
  rows = []
  for split in ("train", "query", "gallery"):
    rows += _records(load(split))
  seen = set()
  for t in _tracks(rows):
    pid, cam = int(t[0]["identity"]) + 1, int(t[0]["camera"])
    if cam > 1 or (pid, cam) in seen:
      continue
    seen.add((pid, cam))
    for f, r in enumerate(t):
      _save(r["image"], out / root / cams[cam] / person(pid) / f"{f + 1:04d}.png")
  return out


def write_prid2011(out: Path, load: Loader) -> Path:
  """multi_shot/cam_a/person_XXXX/NNNN.png and multi_shot/cam_b/..."""
  return _two_camera_sequences(out, load, "multi_shot", ("cam_a", "cam_b"),
                               lambda pid: f"person_{pid:04d}")


def write_ilids_vid(out: Path, load: Loader) -> Path:
  """sequences/cam1/personNNN/NNNN.png and sequences/cam2/..."""
  return _two_camera_sequences(out, load, "sequences", ("cam1", "cam2"),
                               lambda pid: f"person{pid:03d}")


# --------------------------------------------------------------------------- places

def write_db_struct(path: Path, which: str, db_names, utm_db, q_names, utm_q, *,
                    db_time=None, q_time=None) -> None:
  """A NetVLAD dbStruct .mat (scipy.io.savemat of a 1x1 struct, cells N x 1)."""
  import scipy.io  # pylint: disable=g-import-not-at-top

  def cell(names):
    c = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
      c[i, 0] = n
    return c

  fields = [("whichSet", which), ("dbImageFns", cell(db_names)),
            ("utmDb", np.asarray(utm_db, np.float64).reshape(-1, 2).T)]
  if db_time is not None:
    fields.append(("dbTimeStamp", np.asarray(db_time, np.float64)[None]))
  fields += [("qImageFns", cell(q_names)),
             ("utmQ", np.asarray(utm_q, np.float64).reshape(-1, 2).T)]
  if q_time is not None:
    fields.append(("qTimeStamp", np.asarray(q_time, np.float64)[None]))
  fields += [("numImages", float(len(db_names))), ("numQueries", float(len(q_names))),
             ("posDistThr", 25.0), ("posDistSqThr", 625.0), ("nonTrivPosDistSqThr", 100.0)]
  st = np.empty((1, 1), dtype=[(k, object) for k, _ in fields])
  for k, v in fields:
    st[0, 0][k] = v
  path.parent.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(str(path), {"dbStruct": st})


def _db_names(rows) -> list[str]:
  """Pittsburgh-style cutout names: <pano // 1000>/<pano>_pitch1_yaw<k>.jpg."""
  names, count = [], {}
  for i, r in enumerate(rows):
    pano = int(r["panorama"]) if int(r["panorama"]) >= 0 else 100000 + i
    k = count[pano] = count.get(pano, 0) + 1
    names.append(f"{pano // 1000:03d}/{pano:06d}_pitch1_yaw{k}.jpg")
  return names


def _pittsburgh(out: Path, load: Loader, prefix: str) -> Path:
  out = Path(out)
  for s in ("train", "val", "test"):
    db, q = _records(load(f"{s}_database")), _records(load(f"{s}_queries"))
    db_names = _db_names(db)
    q_names = [f"{i // 1000:03d}/{i:06d}_pitch1_yaw1.jpg" for i in range(len(q))]
    # Database images of every set live in one tree: the sets' names must differ.
    db_names = [f"{s}_{n}" if s != "train" else n for n in db_names]
    q_names = [f"{s}_{n}" for n in q_names]
    for r, n in zip(db, db_names):
      _save(r["image"], out / n)
    for r, n in zip(q, q_names):
      _save(r["image"], out / "queries_real" / n)
    write_db_struct(out / "datasets" / f"{prefix}_{s}.mat", s, db_names,
                    [r["utm"] for r in db], q_names, [r["utm"] for r in q])
  return out


def write_pittsburgh30k(out: Path, load: Loader) -> Path:
  """datasets/pitts30k_{train,val,test}.mat, database cutouts, queries_real/."""
  return _pittsburgh(out, load, "pitts30k")


def write_pittsburgh250k(out: Path, load: Loader) -> Path:
  """datasets/pitts250k_{train,val,test}.mat, database cutouts, queries_real/."""
  return _pittsburgh(out, load, "pitts250k")


def write_tokyo247(out: Path, load: Loader) -> Path:
  """datasets/tokyo247.mat (with time stamps), .png cutouts listed as .jpg,
  247query_subset_v2/ queries (the test set)."""
  out = Path(out)
  db, q = _records(load("test_database")), _records(load("test_queries"))
  db_names = _db_names(db)
  q_names = [f"{i:05d}.jpg" for i in range(len(q))]
  for r, n in zip(db, db_names):
    _save(r["image"], out / Path(n).with_suffix(".png"))
  for r, n in zip(q, q_names):
    _save(r["image"], out / "247query_subset_v2" / n)
  write_db_struct(out / "datasets" / "tokyo247.mat", "test", db_names,
                  [r["utm"] for r in db], q_names, [r["utm"] for r in q],
                  db_time=[int(r["timestamp"]) for r in db],
                  q_time=[int(r["timestamp"]) for r in q])
  return out


def write_msls(out: Path, load: Loader) -> Path:
  """train_val/{cph,sf}/{database,query}/images/<key>.jpg with postprocessed.csv
  (key, easting, northing) and raw.csv (key, ..., pano = False)."""
  out = Path(out)
  db, q = _records(load("test_database")), _records(load("test_queries"))
  cut = float(np.median([r["utm"][0] for r in db]))
  for city, west in (("cph", True), ("sf", False)):
    for kind, rows in (("database", db), ("query", q)):
      d = out / "train_val" / city / kind
      post = [",key,easting,northing,night,control_panel,view_direction,unique_cluster"]
      raw = [",key,lon,lat,ca,captured_at,pano"]
      picked = [r for r in rows if (float(r["utm"][0]) < cut) == west]
      for n, r in enumerate(picked):
        key = f"{city}_{kind}_{n:05d}"
        _save(r["image"], d / "images" / f"{key}.jpg")
        post.append(f"{n},{key},{float(r['utm'][0])!r},{float(r['utm'][1])!r},False,False,"
                    "Forward,0")
        raw.append(f"{n},{key},0.0,0.0,0.0,{int(r['timestamp'])},False")
      d.mkdir(parents=True, exist_ok=True)
      (d / "postprocessed.csv").write_text("\n".join(post) + "\n")
      (d / "raw.csv").write_text("\n".join(raw) + "\n")
  return out


WRITERS: dict[str, Callable[[Path, Loader], Path]] = {
    "market1501": write_market1501,
    "dukemtmc_reid": write_dukemtmc_reid,
    "cuhk03_np": write_cuhk03_np,
    "msmt17": write_msmt17,
    "mars": write_mars,
    "prid2011": write_prid2011,
    "ilids_vid": write_ilids_vid,
    "pittsburgh30k": write_pittsburgh30k,
    "pittsburgh250k": write_pittsburgh250k,
    "tokyo247": write_tokyo247,
    "msls": write_msls,
}

# The embedded dataset each layout is written from.
SOURCES = {name: "synthetic_places" if name in ("pittsburgh30k", "pittsburgh250k", "tokyo247",
                                                "msls") else "synthetic_identities"
           for name in WRITERS}


def export_writer(name: str) -> Callable:
  """WRITERS[name] as a writer of `python -m jaxset.data.export` (jaxset/data/export.py):
  writer(out, data) -> [the folder written], reading the embedded dataset the
  layout comes from (SOURCES[name]) with data's builder config, data dir and
  image size."""
  def writer(out: Path, data) -> list[Path]:
    from jaxset import data as jdata  # pylint: disable=g-import-not-at-top

    def load(split):
      src = jdata.load(SOURCES[name], split, data_dir=data.data_dir, config=data.config)
      rows = _records(src)
      for r in rows:
        r["image"] = data.resize(np.asarray(r["image"]))
      return rows
    return [WRITERS[name](Path(out), load)]
  writer.__doc__ = WRITERS[name].__doc__
  return writer
