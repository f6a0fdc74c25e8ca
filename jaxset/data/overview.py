"""Statistics and a contact sheet of any registered dataset.

  python -m jaxset.data.overview --dataset=synthetic_identities \
      [--config=tiny] [--data_dir=...] [--manual_dir=...] [--out=contact_sheet.png]

Prints per split: count, image size, identities / cameras / tracklets / labels,
the degradation tier histogram with mean levels, pair counts, and for place
recognition the positives per query within 10 m and 25 m. Writes a PNG:
identities x (camera x degradation tier) for re-ID / set data, each query next
to its nearest database images (distance in metres) for place data, else the
first images of each split.
"""
from __future__ import annotations

import sys

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from jaxset.data import builder
from jaxset.data.records import neighbours_within, read_metadata
from jaxset.data.synthetic_identities import DEGRADATION_TYPES

_TIMES_OF_DAY = ("day", "morning", "overcast", "dusk", "night", "harsh")  # synthetic_places
DEGRADATION_NAMES = DEGRADATION_TYPES  # synthetic_identities' type ids


def _tier_name(t: int, names=DEGRADATION_NAMES) -> str:
  return names[t] if 0 <= t < len(names) else "unknown"


def _first_image(record: dict) -> np.ndarray | None:
  for v in record.values():
    if isinstance(v, np.ndarray) and v.ndim == 3 and v.dtype == np.uint8:
      return v
  return None


def split_stats(source) -> dict:
  """Statistics of one split (a data source from jaxset.data.load)."""
  meta = read_metadata(source)
  n = len(source)
  stats = {"count": n}
  if n:
    img = _first_image(source[0])
    if img is not None:
      stats["image_size"] = tuple(int(s) for s in img.shape)
  for key, plural in (("label", "labels"), ("identity", "identities"), ("camera", "cameras"),
                      ("tracklet", "tracklets"), ("fold", "folds")):
    if key in meta:
      stats[plural] = int(len(np.unique(meta[key])))
  if "degradation_type" in meta:
    types = meta["degradation_type"].astype(np.int64)
    level = meta.get("degradation")
    hist = {}
    for t in np.unique(types):
      sel = types == t
      entry = {"count": int(sel.sum()), "fraction": round(float(sel.mean()), 4)}
      if level is not None:
        entry["mean_level"] = round(float(np.mean(level[sel])), 3)
      hist[_tier_name(int(t))] = entry
    stats["degradation"] = hist
  if "same" in meta:
    stats["same"] = int(np.sum(meta["same"] == 1))
    stats["different"] = int(np.sum(meta["same"] == 0))
  return stats


def place_stats(database, queries) -> dict:
  """Positives per query within 10 m (non-trivial) and 25 m (Pittsburgh thresholds)."""
  db = read_metadata(database, ["utm"])["utm"]
  q = read_metadata(queries, ["utm"])["utm"]
  out = {}
  for radius in (10.0, 25.0):
    counts = np.asarray([len(h) for h in neighbours_within(q, db, radius)])
    out[f"positives_{int(radius)}m"] = {
        "min": int(counts.min()) if len(counts) else 0,
        "mean": round(float(counts.mean()), 2) if len(counts) else 0.0,
        "max": int(counts.max()) if len(counts) else 0,
        "queries_without": int(np.sum(counts == 0))}
  return out


def dataset_stats(b) -> dict:
  """Statistics of every split of a prepared builder (see `builder`)."""
  splits = list(b.info.splits.keys())
  stats = {s: split_stats(b.as_data_source(s)) for s in splits}
  for s in splits:
    if s.endswith("_queries") and s.replace("_queries", "_database") in stats:
      stats[s].update(place_stats(b.as_data_source(s.replace("_queries", "_database")),
                                  b.as_data_source(s)))
  return stats


def format_stats(name: str, stats: dict) -> str:
  lines = [f"dataset {name}"]
  for split, st in stats.items():
    head = ", ".join(f"{k}={v}" for k, v in st.items() if not isinstance(v, dict))
    lines.append(f"  {split}: {head}")
    for k, v in st.items():
      if isinstance(v, dict):
        lines.append(f"    {k}:")
        for kk, vv in v.items():
          lines.append(f"      {kk}: {vv}")
  return "\n".join(lines)


# --------------------------------------------------------------------------
# Contact sheets

_FONT = None


def _font():
  global _FONT
  if _FONT is None:
    try:
      _FONT = PIL.ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
      _FONT = PIL.ImageFont.load_default()
  return _FONT


def _sheet(cells, col_labels, row_labels, title, scale=2, header_groups=None):
  """A labelled grid. cells: rows of (image or None, caption or '')."""
  ch = max(c[0].shape[0] for row in cells for c in row if c[0] is not None) * scale
  cw = max(c[0].shape[1] for row in cells for c in row if c[0] is not None) * scale
  pad, left, cap = 4, 70, 14
  top = 20 + 16 * (2 if header_groups else 1)
  width = left + len(col_labels) * (cw + pad) + pad
  height = top + len(cells) * (ch + cap + pad) + pad
  sheet = PIL.Image.new("RGB", (width, height), (255, 255, 255))
  draw = PIL.ImageDraw.Draw(sheet)
  font = _font()
  draw.text((pad, 2), title, fill=(0, 0, 0), font=font)
  if header_groups:  # (label, first column, number of columns)
    for label, c0, n in header_groups:
      x0 = left + c0 * (cw + pad)
      draw.rectangle([x0, 20, x0 + n * (cw + pad) - pad, 33], fill=(225, 225, 235))
      draw.text((x0 + 3, 20), label, fill=(0, 0, 0), font=font)
  for j, label in enumerate(col_labels):
    draw.text((left + j * (cw + pad), top - 16), label, fill=(0, 0, 0), font=font)
  for i, row in enumerate(cells):
    y = top + i * (ch + cap + pad)
    draw.text((pad, y + ch // 2 - 6), row_labels[i], fill=(0, 0, 0), font=font)
    for j, (img, caption) in enumerate(row):
      x = left + j * (cw + pad)
      if img is None:
        draw.rectangle([x, y, x + cw - 1, y + ch - 1], outline=(200, 200, 200))
        draw.line([x, y, x + cw - 1, y + ch - 1], fill=(220, 220, 220))
      else:
        tile = PIL.Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale),
                                               PIL.Image.NEAREST)
        sheet.paste(tile, (x, y))
      if caption:
        draw.text((x, y + ch), caption, fill=(60, 60, 60), font=font)
  return sheet


def identities_sheet(source, name: str, rows: int = 8, tier_names=DEGRADATION_NAMES):
  """Rows = identities, columns = cameras x degradation tiers, from one split."""
  meta = read_metadata(source)
  ident, cam = meta["identity"], meta["camera"]
  tier = meta.get("degradation_type", np.full(len(ident), -1))
  level = meta.get("degradation", np.full(len(ident), -1.0))
  cams, tiers = np.unique(cam), np.unique(tier)
  cell_of = {}
  for i in range(len(ident)):  # first record of each (identity, camera, tier)
    cell_of.setdefault((int(ident[i]), int(cam[i]), int(tier[i])), i)
  coverage = {}
  for (p, _, _) in cell_of:
    coverage[p] = coverage.get(p, 0) + 1
  chosen = sorted(coverage, key=lambda p: (-coverage[p], p))[:rows]
  cells = []
  for p in chosen:
    row = []
    for c in cams:
      for t in tiers:
        i = cell_of.get((p, int(c), int(t)))
        if i is None:
          row.append((None, ""))
        else:
          img = _first_image(source[i])
          row.append((img, f"{level[i]:.2f}" if level[i] >= 0 else ""))
    cells.append(row)
  col_labels = [_tier_name(int(t), tier_names)[:6] for _ in cams for t in tiers]
  groups = [(f"camera {int(c)}", k * len(tiers), len(tiers)) for k, c in enumerate(cams)]
  title = (f"{name}: rows = identities, columns = camera x degradation tier "
           "(caption: stored level; empty cell: no such frame)")
  return _sheet(cells, col_labels, [f"id {p}" for p in chosen], title, header_groups=groups)


def places_sheet(database, queries, name: str, rows: int = 8, neighbours: int = 5):
  """Each row: a query, then its nearest database images by UTM distance (metres)."""
  db = read_metadata(database, ["utm"])["utm"]
  q = read_metadata(queries)
  picks = np.linspace(0, len(q["utm"]) - 1, min(rows, len(q["utm"]))).astype(int)
  cells, labels = [], []
  for qi in picks:
    d = np.linalg.norm(db - q["utm"][qi], axis=1)
    nearest = np.argsort(d, kind="stable")[:neighbours]
    row = [(_first_image(queries[int(qi)]), "query")]
    row += [(_first_image(database[int(i)]), f"{d[i]:.1f} m") for i in nearest]
    cells.append(row)
    fname = str(q.get("filename", [""] * len(q["utm"]))[qi])
    tag = [p for p in fname.split("@") if p in _TIMES_OF_DAY]
    labels.append(f"q {qi}" + (f"\n{tag[0]}" if tag else ""))
  cols = ["query"] + [f"db #{k + 1}" for k in range(neighbours)]
  title = f"{name}: each query, then its nearest database images (UTM distance)"
  return _sheet(cells, cols, labels, title)


def generic_sheet(b, name: str, per_split: int = 8):
  cells, labels = [], []
  for split in b.info.splits.keys():
    src = b.as_data_source(split)
    row = [(_first_image(src[i]), "") for i in range(min(per_split, len(src)))]
    row = [r for r in row if r[0] is not None]
    if row:
      cells.append(row)
      labels.append(split[:10])
  width = max(len(r) for r in cells)
  cells = [r + [(None, "")] * (width - len(r)) for r in cells]
  return _sheet(cells, [str(i) for i in range(width)], labels, f"{name}: first images per split")


def contact_sheet(b, name: str) -> PIL.Image.Image:
  """The contact sheet of a prepared builder, chosen from its splits' features."""
  splits = list(b.info.splits.keys())
  for s in splits:
    if s.endswith("_queries") and s.replace("_queries", "_database") in splits:
      test = "test_queries" if "test_queries" in splits else s
      return places_sheet(b.as_data_source(test.replace("_queries", "_database")),
                          b.as_data_source(test), name)
  for s in ("train", "gallery", "query") + tuple(splits):
    if s in splits:
      src = b.as_data_source(s)
      if len(src) and "identity" in src[0] and "camera" in src[0]:
        return identities_sheet(src, name)
  return generic_sheet(b, name)


def inspect_dataset(name: str, *, data_dir=None, manual_dir=None, config=None, out=None):
  """Prepares `name`, prints its statistics, writes its contact sheet to `out` (PNG).

  Returns the statistics dict.
  """
  b = builder(name, data_dir=data_dir, manual_dir=manual_dir, config=config)
  stats = dataset_stats(b)
  print(format_stats(name, stats))
  if out:
    contact_sheet(b, name).save(out)
    print(f"contact sheet: {out}")
  return stats


def main(argv=None) -> int:
  """The command line; argparse rather than absl flags, so that importing this
  module next to train.main (which owns --config) defines no global flags."""
  import argparse

  p = argparse.ArgumentParser(prog="python -m jaxset.data.overview",
                              description="Statistics and a contact sheet of a dataset.")
  p.add_argument("--dataset", required=True, help="a key of jaxset.data.BUILDERS")
  p.add_argument("--config", default=None, help="builder config, e.g. tiny")
  p.add_argument("--data_dir", default=None, help="prepared datasets (default $JAXSET_DATA_DIR)")
  p.add_argument("--manual_dir", default=None, help="local copy of a real dataset")
  p.add_argument("--out", default="contact_sheet.png", help="contact sheet PNG path ('' for none)")
  a = p.parse_args(argv)
  inspect_dataset(a.dataset, data_dir=a.data_dir, manual_dir=a.manual_dir, config=a.config,
                  out=a.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
