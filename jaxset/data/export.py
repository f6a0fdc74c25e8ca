"""Writes an embedded dataset in the real on-disk formats (a registry of writers).

  python -m jaxset.data.export --format=insightface --out=/tmp/faces_mini --image_size=112
  python -m jaxset.data.export --format=ijb --out=/tmp/IJBC --image_size=112
  python -m jaxset.data.export --format=folder --out=/tmp/faces_folder

The embedded synthetic_identities (--config=tiny or default) becomes a
miniature of what a user downloads, byte for byte in the layout the reference
code reads (docs/data.md):

  insightface  <out>/train.rec, train.idx, property and <out>/lfw.bin: an
               insightface training folder (faces_emore/) with its validation set.
               train.rec: MXNet RecordIO, record 0 the header [first identity key,
               end], image keys 1..n grouped by class, then one identity record per
               class holding its [start, end) image keys (flag 2); image records
               carry the class as a float label (flag 0); dmlc's framing (magic,
               cflag << 29 | length, 4-byte padding, a payload split where it holds
               the magic number at an aligned offset). property: "classes,H,W".
  recordio     just the RecordIO part of insightface.
  face_bin     <out>/<name>.bin (--bin_name, default lfw): pickle.dumps((list of 2P
               JPEG bytes, list of P bools)), pair i = images 2i, 2i+1, the pairs
               in fold order (test identities).
  ijb          <out>/meta/ijbc_face_tid_mid.txt ("image template media"),
               ijbc_template_pair_label.txt ("t1 t2 label"),
               ijbc_name_5pts_score.txt ("image x1 y1 ... x5 y5 score", the lines
               in face-list order), ijbc_1N_gallery_G1.csv / G2.csv /
               ijbc_1N_probe_mixed.csv (header, "TEMPLATE_ID,SUBJECT_ID,FILENAME")
               and <out>/loose_crop/<n>.jpg. A template is one identity seen by
               one camera, a media one tracklet (video frames); the landmarks
               are those of an aligned 112x112 crop scaled to the image size and
               the detector score is 1 - the frame's degradation level.
  folder       <out>/<identity>/<image>.jpg: one folder per identity (train split).

A new layout is one function `writer(out: Path, data: Export) -> list[Path]`
added to WRITERS (or `register`); `data.split(name)` gives the records of a
split with decoded images (resized to --image_size).
"""
from __future__ import annotations

import argparse
import io
import pickle
import struct
from pathlib import Path
from typing import Callable

import numpy as np

from jaxset.data import export_formats, recordio

# insightface's aligned 112x112 landmarks (eyes, nose, mouth corners).
ARCFACE_LANDMARKS = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                              [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


class Export:
  """The records of a built dataset, images decoded and resized to `image_size`."""

  def __init__(self, name: str = "synthetic_identities", config: str | None = "tiny",
               data_dir=None, image_size: tuple[int, int] | None = None):
    self.name, self.config, self.data_dir = name, config, data_dir
    self.image_size = tuple(image_size) if image_size else None

  def split(self, split: str) -> list[dict]:
    from jaxset import data as jdata
    src = jdata.load(self.name, split, data_dir=self.data_dir, config=self.config)
    rows = [dict(r) for r in src[:]]
    for r in rows:
      for k in ("image", "image_a", "image_b"):
        if k in r:
          r[k] = self.resize(np.asarray(r[k]))
    return rows

  def resize(self, image: np.ndarray) -> np.ndarray:
    if self.image_size is None or tuple(image.shape[:2]) == self.image_size:
      return image
    from PIL import Image
    h, w = self.image_size
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


# --------------------------------------------------------------------------
# RecordIO (dmlc framing + mxnet IRHeader).


def pack(payload_label, image: bytes = b"", id_: int = 0) -> bytes:
  """mxnet.recordio.pack: IRHeader '<IfQQ' (flag, label, id, id2) + labels + image.

  A scalar label is stored in the header (flag 0); a sequence of n labels sets
  flag = n and follows the header as float32.
  """
  if np.ndim(payload_label) == 0:
    return struct.pack("<IfQQ", 0, float(payload_label), id_, 0) + image
  labels = np.asarray(payload_label, np.float32).ravel()
  return struct.pack("<IfQQ", labels.size, 0.0, id_, 0) + labels.tobytes() + image


def frame(payload: bytes) -> bytes:
  """One record as dmlc's RecordIOWriter writes it (see the module docstring)."""
  out, start, n = [], 0, len(payload)
  magic = recordio._MAGIC_BYTES
  for i in range(0, (n >> 2) << 2, 4):
    if payload[i:i + 4] == magic:
      out.append(magic + struct.pack("<I", ((1 if start == 0 else 2) << 29) | (i - start))
                 + payload[start:i])
      start = i + 4
  out.append(magic + struct.pack("<I", ((3 if start else 0) << 29) | (n - start))
             + payload[start:])
  return b"".join(out) + b"\0" * ((-n) % 4)


def write_recordio(out: Path, classes: list[list[bytes]], prefix: str = "train",
                   image_size=None) -> list[Path]:
  """<out>/<prefix>.rec/.idx (insightface layout) and property, from encoded images per class."""
  out.mkdir(parents=True, exist_ok=True)
  n_images = sum(len(c) for c in classes)
  first = n_images + 1
  end = first + len(classes)
  records = {0: pack([first, end])}
  key = 1
  for c, images in enumerate(classes):
    for img in images:
      records[key] = pack(float(c), img, id_=key)
      key += 1
  start = 1
  for c, images in enumerate(classes):
    records[first + c] = pack([start, start + len(images)], id_=first + c)
    start += len(images)
  rec, idx = out / f"{prefix}.rec", out / f"{prefix}.idx"
  offset, lines = 0, []
  with open(rec, "wb") as f:
    for k in sorted(records):
      data = frame(records[k])
      lines.append(f"{k}\t{offset}\n")
      f.write(data)
      offset += len(data)
  idx.write_text("".join(lines))
  written = [rec, idx]
  if image_size is not None:
    prop = out / "property"
    prop.write_text(f"{len(classes)},{image_size[0]},{image_size[1]}\n")
    written.append(prop)
  return written


def _by_class(rows: list[dict]) -> list[list[dict]]:
  labels = sorted({int(r["label"]) for r in rows})
  return [[r for r in rows if int(r["label"]) == c] for c in labels]


def write_recordio_split(out: Path, data: Export) -> list[Path]:
  rows = data.split("train")
  classes = [[jpeg(r["image"]) for r in group] for group in _by_class(rows)]
  return write_recordio(out, classes, image_size=rows[0]["image"].shape[:2])


# --------------------------------------------------------------------------
# Verification .bin.


def write_bin(path: Path, images_a, images_b, same) -> Path:
  """An insightface verification .bin: pickle of ([a0, b0, a1, b1, ...] JPEG bytes, issame)."""
  bins = []
  for a, b in zip(images_a, images_b):
    bins += [jpeg(a), jpeg(b)]
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(pickle.dumps((bins, [bool(s) for s in same]), protocol=4))
  return path


def write_face_bin(out: Path, data: Export, name: str = "lfw") -> list[Path]:
  pairs = sorted(data.split("pairs"), key=lambda r: int(r["fold"]))  # stable: file order
  return [write_bin(out / f"{name}.bin", [r["image_a"] for r in pairs],
                    [r["image_b"] for r in pairs], [r["same"] for r in pairs])]


def write_insightface(out: Path, data: Export) -> list[Path]:
  return write_recordio_split(out, data) + write_face_bin(out, data)


# --------------------------------------------------------------------------
# IJB-C meta files.


def write_ijb(out: Path, data: Export, prefix: str = "ijbc", seed: int = 0) -> list[Path]:
  rows = data.split("query") + data.split("gallery")
  rows.sort(key=lambda r: (int(r["identity"]), int(r["camera"]), int(r["tracklet"]),
                           int(r["frame"])))
  meta, crops = out / "meta", out / "loose_crop"
  meta.mkdir(parents=True, exist_ok=True)
  crops.mkdir(parents=True, exist_ok=True)
  templates: dict[tuple[int, int], int] = {}
  faces, points = [], []
  for n, r in enumerate(rows, 1):
    img = r["image"]
    name = f"{n}.jpg"
    (crops / name).write_bytes(jpeg(img))
    t = templates.setdefault((int(r["identity"]), int(r["camera"])), len(templates) + 1)
    faces.append(f"{name} {t} {int(r['tracklet']) + 1}")
    h, w = img.shape[:2]
    marks = ARCFACE_LANDMARKS * np.array([w / 112.0, h / 112.0])
    score = 1.0 - max(float(r["degradation"]), 0.0)
    points.append(" ".join([name] + [f"{v:.4f}" for v in marks.ravel()] + [f"{score:.4f}"]))
  subject = {t: ident for (ident, _), t in templates.items()}
  ids = sorted({ident for ident, _ in templates})
  cams = sorted({cam for _, cam in templates})
  rng = np.random.default_rng(seed)
  pairs = []
  for ident in ids:
    ts = [templates[(ident, c)] for c in cams if (ident, c) in templates]
    pairs += [(a, b, 1) for i, a in enumerate(ts) for b in ts[i + 1:]]
  n_genuine = len(pairs)
  all_t = sorted(subject)
  while len(pairs) < 4 * n_genuine:
    a, b = (int(x) for x in rng.choice(all_t, 2, replace=False))
    if subject[a] != subject[b]:
      pairs.append((a, b, 0))
  paths = [meta / f"{prefix}_face_tid_mid.txt", meta / f"{prefix}_template_pair_label.txt",
           meta / f"{prefix}_name_5pts_score.txt"]
  paths[0].write_text("\n".join(faces) + "\n")
  paths[1].write_text("\n".join(f"{a} {b} {s}" for a, b, s in pairs) + "\n")
  paths[2].write_text("\n".join(points) + "\n")
  # 1:N: camera-0 templates of the first / second half of the subjects are the
  # two galleries; every other template is a probe (mated in one gallery).
  half = len(ids) // 2
  gal = {"G1" if prefix == "ijbc" else "S1": ids[:half],
         "G2" if prefix == "ijbc" else "S2": ids[half:]}
  header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
  files = {}
  for line in faces:
    name, t, _ = line.split()
    files.setdefault(int(t), []).append(name)
  for g, members in gal.items():
    p = meta / f"{prefix}_1N_gallery_{g}.csv"
    p.write_text(header + "".join(f"{templates[(i, cams[0])]},{i},loose_crop/{f}\n"
                                  for i in members for f in files[templates[(i, cams[0])]]))
    paths.append(p)
  p = meta / f"{prefix}_1N_probe_mixed.csv"
  p.write_text(header + "".join(f"{t},{subject[t]},loose_crop/{f}\n" for (i, c), t in
                                templates.items() if c != cams[0] for f in files[t]))
  paths.append(p)
  return paths + [crops]


# --------------------------------------------------------------------------
# Folder of identities.


def write_folder(out: Path, data: Export) -> list[Path]:
  written = []
  for group in _by_class(data.split("train")):
    d = out / f"{int(group[0]['identity']):05d}"
    d.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(group):
      p = d / f"{i:04d}.jpg"
      p.write_bytes(jpeg(r["image"]))
      written.append(p)
  return written


WRITERS: dict[str, Callable[[Path, Export], list[Path]]] = {
    "insightface": write_insightface,
    "recordio": write_recordio_split,
    "face_bin": write_face_bin,
    "ijb": write_ijb,
    "folder": write_folder,
}


def register(name: str, writer: Callable[[Path, Export], list[Path]]) -> None:
  """Makes --format=`name` run `writer(out, data)`."""
  if name in WRITERS and WRITERS[name] is not writer:
    raise ValueError(f"export format {name!r} is already registered; pick another name.")
  WRITERS[name] = writer


def formats() -> dict[str, Callable[[Path, Export], list[Path]]]:
  """Every --format: the face layouts here and export_formats' re-ID / places ones
  (each written from its own embedded dataset, export_formats.SOURCES)."""
  return {**{n: export_formats.export_writer(n) for n in export_formats.WRITERS}, **WRITERS}


def export(fmt: str, out, *, dataset: str = "synthetic_identities", config: str | None = "tiny",
           data_dir=None, image_size=None) -> list[Path]:
  """Writes `dataset` in format `fmt` under `out`; returns the paths written."""
  known = formats()
  if fmt not in known:
    raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(sorted(known))}.")
  return known[fmt](Path(out), Export(dataset, config, data_dir, image_size))


def _size(text: str):
  parts = [int(x) for x in text.replace("x", ",").split(",") if x]
  return (parts[0], parts[0]) if len(parts) == 1 else tuple(parts[:2])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m jaxset.data.export", description=__doc__.split(
      "\n")[0])
  p.add_argument("--format", required=True, choices=sorted(formats()))
  p.add_argument("--out", required=True)
  p.add_argument("--dataset", default="synthetic_identities")
  p.add_argument("--config", default="tiny", help="the dataset's builder config (tiny, default)")
  p.add_argument("--data_dir", default=None, help="where the embedded dataset is prepared")
  p.add_argument("--image_size", default=None, help="H,W or S (e.g. 112); default: as stored")
  a = p.parse_args(argv)
  paths = export(a.format, a.out, dataset=a.dataset, config=a.config or None,
                 data_dir=a.data_dir, image_size=_size(a.image_size) if a.image_size else None)
  print(f"wrote {len(paths)} files/folders under {a.out} ({a.format})")


if __name__ == "__main__":
  main()
