"""Writers of tiny real-format datasets for the real-data builder tests.

Each writer creates, under a tmp folder, a few 8x8 images and the index files in
the exact on-disk format of the real dataset. Images are flat colours whose red
channel encodes a number (`colour(i)`), so a test can tell which file was read.
"""
from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def colour(i: int) -> tuple[int, int, int]:
  """The fill colour of image number i (red = 10 * i mod 250 + 5, exact in PNG)."""
  return ((10 * i) % 250 + 5, 100, 200)


def image_bytes(i: int = 0, fmt: str = "PNG", size=(8, 8), mode: str = "RGB") -> bytes:
  buf = io.BytesIO()
  im = Image.new("RGB", size, colour(i))
  im.convert(mode).save(buf, format=fmt)
  return buf.getvalue()


def write_image(path: Path, i: int = 0, mode: str = "RGB") -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
  path.write_bytes(image_bytes(i, fmt, mode=mode))
  return path


def index(image: np.ndarray) -> int:
  """The number i of a decoded fixture image (from its centre pixel's red; JPEG-safe)."""
  return int(round((int(image[image.shape[0] // 2, image.shape[1] // 2, 0]) - 5) / 10))


# ---------------------------------------------------------------- places

def write_db_struct(path: Path, which: str, db_names, utm_db, q_names, utm_q, *,
                    db_time=None, q_time=None, drop=(), replace=None) -> Path:
  """A NetVLAD dbStruct .mat: a (1,1) struct of (N,1) cells and 2 x N UTM arrays."""
  fields = {
      "whichSet": which,
      "dbImageFns": np.array(list(db_names), dtype=object).reshape(-1, 1),
      "utmDb": np.asarray(utm_db, np.float64).reshape(2, -1),
  }
  if db_time is not None:
    fields["dbTimeStamp"] = np.asarray(db_time, np.float64).reshape(1, -1)
  fields.update({
      "qImageFns": np.array(list(q_names), dtype=object).reshape(-1, 1),
      "utmQ": np.asarray(utm_q, np.float64).reshape(2, -1),
  })
  if q_time is not None:
    fields["qTimeStamp"] = np.asarray(q_time, np.float64).reshape(1, -1)
  fields.update({
      "numImages": float(len(db_names)), "numQueries": float(len(q_names)),
      "posDistThr": 25.0, "posDistSqThr": 625.0, "nonTrivPosDistSqThr": 100.0,
  })
  fields.update(replace or {})
  for name in drop:
    fields.pop(name)
  st = np.zeros((1, 1), dtype=[(k, object) for k in fields])
  for k, v in fields.items():
    st[k][0, 0] = v
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(str(path), {"dbStruct": st})
  return path


def pitts_names(n_pano: int, prefix: int = 0):
  """Pittsburgh-style cutout names, 2 per panorama: 000/00000P_pitch1_yaw{1,2}.jpg."""
  return [f"000/{prefix + p:06d}_pitch1_yaw{y}.jpg" for p in range(n_pano) for y in (1, 2)]


def write_pittsburgh(root: Path, prefix="pitts30k", sets=("train", "val", "test")) -> dict:
  """dbStructs + images; database set s has 4 images, queries 2. Returns the names."""
  out = {}
  for k, s in enumerate(sets):
    db = pitts_names(2, prefix=10 * k)
    q = [f"000/{100 + 10 * k:06d}_pitch1_yaw{y}.jpg" for y in (1, 2)]
    utm_db = np.stack([np.arange(4) * 10.0 + 1000 * k, np.arange(4) * 5.0])
    utm_q = np.stack([np.array([1.0, 31.0]) + 1000 * k, np.array([2.0, 14.0])])
    write_db_struct(Path(root) / "datasets" / f"{prefix}_{s}.mat", s, db, utm_db, q, utm_q)
    for i, n in enumerate(db):
      write_image(Path(root) / n, i)
    for i, n in enumerate(q):
      write_image(Path(root) / "queries_real" / n, 10 + i)
    out[s] = dict(db=db, q=q, utm_db=utm_db, utm_q=utm_q)
  return out


def write_tokyo(root: Path) -> dict:
  """tokyo247.mat listing .jpg database names; the files on disk are .png."""
  db = [f"00001/{p:06d}_{c:03d}.jpg" for p in (7, 8) for c in range(3)]
  q = ["247query_0001.jpg", "247query_0002.jpg"]
  utm_db = np.stack([np.arange(6) * 3.0, np.arange(6) * 4.0])
  utm_q = np.stack([[0.5, 9.0], [0.5, 12.0]])
  write_db_struct(Path(root) / "datasets" / "tokyo247.mat", "test", db, utm_db, q, utm_q,
                  db_time=np.arange(6) + 20150101, q_time=[20150301, 20150302])
  for i, n in enumerate(db):
    write_image(Path(root) / Path(n).with_suffix(".png"), i)
  for i, n in enumerate(q):
    write_image(Path(root) / "247query_subset_v2" / n, 20 + i)
  return dict(db=db, q=q, utm_db=utm_db, utm_q=utm_q)


def vpr_name(east, north, pano="", timestamp="", note="") -> str:
  return (f"@{east}@{north}@17@T@40.4@-79.9@{pano}@@0@0@0@0@{timestamp}@{note}@.jpg")


def write_vpr(root: Path) -> dict:
  names = {
      ("train", "database"): [vpr_name(100.5, 200.25, "panoA", "201901"),
                              vpr_name(101.0, 200.0, "panoA"), vpr_name(150.0, 250.0, "panoB")],
      ("train", "queries"): [vpr_name(100.0, 201.0)],
      ("test", "database"): [vpr_name(5.0, 6.0, "p")],
      ("test", "queries"): [vpr_name(5.5, 6.5, "", "2020")],
  }
  for (s, k), ns in names.items():
    for i, n in enumerate(ns):
      write_image(Path(root) / "images" / s / k / n, i)
  return names


# ---------------------------------------------------------------- image re-ID

MARKET_TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s3_015537_04.jpg",
                "0010_c6s4_002452_02.jpg"]
MARKET_QUERY = ["0001_c1s1_001051_00.jpg", "0003_c2s1_000676_00.jpg"]
MARKET_GALLERY = ["0001_c2s1_000301_01.jpg", "0003_c5s1_002452_01.jpg",
                  "0000_c1s1_000000_01.jpg", "-1_c3s1_000000_01.jpg", "0003_c1s1_000200_02.jpg"]


def write_market(root: Path, gallery=MARKET_GALLERY, query=MARKET_QUERY, train=MARKET_TRAIN):
  for i, n in enumerate(train):
    write_image(Path(root) / "bounding_box_train" / n, i)
  for i, n in enumerate(query):
    write_image(Path(root) / "query" / n, 10 + i)
  for i, n in enumerate(gallery):
    write_image(Path(root) / "bounding_box_test" / n, 20 + i)
  (Path(root) / "bounding_box_test" / "Thumbs.db").write_bytes(b"x")  # Market ships these


DUKE_TRAIN = ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg", "0003_c8_f0000067.jpg"]
DUKE_QUERY = ["0005_c2_f0046985.jpg"]
DUKE_GALLERY = ["0005_c7_f0066612.jpg", "0019_c8_f0100000.jpg"]


def write_duke(root: Path):
  write_market(root, gallery=DUKE_GALLERY, query=DUKE_QUERY, train=DUKE_TRAIN)


def write_cuhk03(root: Path):
  """cuhk03-np/{detected,labeled}/ with Market-style names (different per variant)."""
  write_market(Path(root) / "detected")
  write_market(Path(root) / "labeled", train=MARKET_TRAIN[:2])


# ---------------------------------------------------------------- video re-ID

def mars_name(pid: int, cam: int, track: int, frame: int) -> str:
  return f"{pid:04d}C{cam}T{track:04d}F{frame:03d}.jpg"


def write_mars(root: Path) -> dict:
  """MARS: bbox_{train,test}/<pid>/ and info/ (name lists, track tables, query_IDX.mat)."""
  root = Path(root)
  train_tracks = [(2, 1, 1, 3), (2, 2, 1, 2), (7, 4, 1, 2)]       # pid, cam, track, frames
  test_tracks = [(1, 1, 1, 2), (1, 3, 1, 2), (5, 2, 1, 1), (5, 6, 1, 2), (0, 1, 1, 1),
                 (-1, 2, 1, 1)]
  for split, tracks in (("train", train_tracks), ("test", test_tracks)):
    names, rows, start = [], [], 1
    for pid, cam, track, frames in tracks:
      folder = "00-1" if pid == -1 else f"{pid:04d}"
      for f in range(1, frames + 1):
        n = (f"00-1C{cam}T{track:04d}F{f:03d}.jpg" if pid == -1
             else mars_name(pid, cam, track, f))
        names.append(n)
        write_image(root / f"bbox_{split}" / folder / n, len(names))
      rows.append([start, start + frames - 1, pid, cam])
      start += frames
    (root / "info").mkdir(parents=True, exist_ok=True)
    (root / "info" / f"{split}_name.txt").write_text("\n".join(names) + "\n")
    scipy.io.savemat(str(root / "info" / f"tracks_{split}_info.mat"),
                     {f"track_{split}_info": np.asarray(rows, np.float64)})
  scipy.io.savemat(str(root / "info" / "query_IDX.mat"),
                   {"query_IDX": np.asarray([[1, 3]], np.float64)})   # 1-based test tracks
  return dict(train=train_tracks, test=test_tracks)


def write_prid(root: Path, persons_a=(1, 2, 3, 4, 5), persons_b=(1, 2, 3, 4, 5, 6), frames=2):
  for cam, persons in (("cam_a", persons_a), ("cam_b", persons_b)):
    for p in persons:
      for f in range(1, frames + 1):
        write_image(Path(root) / "multi_shot" / cam / f"person_{p:04d}" / f"{f:04d}.png", p)


def write_ilids(root: Path, persons=(1, 2, 4, 5), frames=2):
  for c in (1, 2):
    for p in persons:
      for f in range(1, frames + 1):
        write_image(Path(root) / "sequences" / f"cam{c}" / f"person{p:03d}" /
                    f"cam{c}_person{p:03d}_{f:05d}.png", p)


# ---------------------------------------------------------------- faces

LFW_PEOPLE = {"Alice_A": 3, "Bob_B": 2, "Carol_C": 1, "Dan_D": 2}


def write_lfw(root: Path, folds: int = 2, per_fold: int = 2, lines=None) -> list[str]:
  """lfw/<name>/<name>_NNNN.jpg and pairs.txt with `folds` x (matched, mismatched)."""
  i = 0
  for name, n in LFW_PEOPLE.items():
    for k in range(1, n + 1):
      write_image(Path(root) / "lfw" / name / f"{name}_{k:04d}.jpg", i)
      i += 1
  if lines is None:
    lines = [f"{folds}\t{per_fold}"]
    for f in range(folds):
      matched = [("Alice_A", 1, 2 + f % 2), ("Bob_B", 1, 2)]
      mismatched = [("Alice_A", 3, "Carol_C", 1), ("Dan_D", 2, "Bob_B", 1 + f % 2)]
      lines += ["\t".join(map(str, m)) for m in (matched * per_fold)[:per_fold]]
      lines += ["\t".join(map(str, m)) for m in (mismatched * per_fold)[:per_fold]]
  (Path(root) / "pairs.txt").write_text("\n".join(lines) + "\n")
  return lines


def write_face_bin(path: Path, n_pairs: int = 10, protocol: int = 2) -> list[bool]:
  """insightface .bin: pickle of (2P encoded JPEG images, P bools), pairs interleaved."""
  bins = [image_bytes(i, "JPEG", size=(112, 112)) for i in range(2 * n_pairs)]
  issame = [bool(i % 2 == 0) for i in range(n_pairs)]
  Path(path).write_bytes(pickle.dumps((bins, issame), protocol=protocol))
  return issame


def write_ijb(root: Path, prefix: str = "ijbc", landmarks: bool = True) -> None:
  """<root>/meta/{prefix}_face_tid_mid.txt, _template_pair_label.txt, [_name_5pts_score.txt],
  and loose_crop/. Image k's landmarks are x = 10 k + j, y = j (j = 0..4), score k / 10."""
  root = Path(root)
  rows = [("1.jpg", 1, 11), ("2.jpg", 1, 11), ("3.jpg", 1, 12), ("4.jpg", 2, 21), ("5.jpg", 3, 31)]
  for i, (img, _, _) in enumerate(rows):
    write_image(root / "loose_crop" / img, i)
  (root / "meta").mkdir(parents=True, exist_ok=True)
  (root / "meta" / f"{prefix}_face_tid_mid.txt").write_text(
      "".join(f"{a} {b} {c}\n" for a, b, c in rows))
  (root / "meta" / f"{prefix}_template_pair_label.txt").write_text("1 2 1\n1 3 0\n2 3 0\n")
  if landmarks:
    (root / "meta" / f"{prefix}_name_5pts_score.txt").write_text("".join(
        f"{img} " + " ".join(f"{10 * k + j} {j}" for j in range(5)) + f" {k / 10}\n"
        for k, (img, _, _) in enumerate(rows)))


YTF_VIDEOS = {"Aaron_A": (0, 1), "Beth_B": (2,), "Carl_C": (0,)}


def write_ytf(root: Path, splits_lines=None) -> None:
  """frame_images_DB/<person>/<video>/<video>.<frame>.jpg plus splits.txt."""
  for person, videos in YTF_VIDEOS.items():
    for v in videos:
      for f in (3, 1, 2):
        write_image(Path(root) / "frame_images_DB" / person / str(v) / f"{v}.{f}.jpg", f)
  if splits_lines is None:
    splits_lines = ["split number, first name, second name, is same, is physically same",
                    "1, Aaron_A/0, Aaron_A/1, 1, 1",
                    "1, Aaron_A/0, Beth_B/2, 0, 0",
                    "2, Carl_C/0, Beth_B/2, 0, 0"]
  (Path(root) / "splits.txt").write_text("\n".join(splits_lines) + "\n")


# ---------------------------------------------------------------- MXNet RecordIO

MAGIC = 0xCED7230A


def pack_record(flag: int, label, id1: int, id2: int = 0, image: bytes = b"",
                labels=None) -> bytes:
  """One IRHeader record payload: struct '<IfQQ', optional float32 labels, then image."""
  head = struct.pack("<IfQQ", flag, float(label), id1, id2)
  extra = np.asarray(labels, np.float32).tobytes() if labels is not None else b""
  return head + extra + image


def frame_record(payload: bytes, cflag: int = 0) -> bytes:
  """magic, lrecord (cflag << 29 | length), payload padded to 4 bytes."""
  pad = (-len(payload)) % 4
  return struct.pack("<II", MAGIC, (cflag << 29) | len(payload)) + payload + b"\0" * pad


def write_recordio(root: Path, images_per_id=(2, 3), with_header: bool = True,
                   first_label: int = 5) -> dict:
  """train.rec / train.idx in the insightface layout (header record 0, images, id records)."""
  root = Path(root)
  root.mkdir(parents=True, exist_ok=True)
  payloads, keys = [], []
  n_img = sum(images_per_id)
  key = 1
  image_keys = []
  for c, n in enumerate(images_per_id):
    for j in range(n):
      image_keys.append((key, first_label + c))
      payloads.append((key, pack_record(0, first_label + c, key, 0,
                                        image_bytes(key, "JPEG", size=(8, 8)))))
      key += 1
  id_start = key
  ranges = []
  start = 1
  for c, n in enumerate(images_per_id):
    ranges.append((key, start, start + n))
    payloads.append((key, pack_record(2, 0.0, 0, 0, labels=[start, start + n])))
    start += n
    key += 1
  if with_header:
    payloads.insert(0, (0, pack_record(2, 0.0, 0, 0, labels=[id_start, key])))
  rec, idx, offset = b"", [], 0
  for k, p in payloads:
    blob = frame_record(p)
    idx.append(f"{k}\t{offset}")
    rec += blob
    offset += len(blob)
    keys.append(k)
  (root / "train.rec").write_bytes(rec)
  (root / "train.idx").write_text("\n".join(idx) + "\n")
  return dict(image_keys=image_keys, id_start=id_start, end=key, n_images=n_img)
