"""Face benchmarks of train/evaluators.py: insightface .bin sets and IJB-B/C.

face_bin (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ... in insightface's .bin
format; docs/evaluation.md): each image and its horizontal mirror are
embedded, the two raw embeddings summed and L2-normalised (insightface's
"Accuracy-Flip"), and insightface's eval/verification.py protocol applied:
squared L2 distance, 10 consecutive folds, threshold 0..3.99 step 0.01 chosen
on 9 folds (first best) and applied to the tenth, mean ± std (np.std) of the
fold accuracies; VAL@FAR (1e-3) on the 0.001 grid; XNorm, the mean norm of
every embedding (image and mirror). The table prints insightface's lines
([name]XNorm, [name]Accuracy-Flip) and jaxset's columns.

ijb (insightface's IJB_release layout; eval_ijbc.py): image features
(aligned with the five landmarks, plus the mirror's with eval.flip: flag F),
L2-normalised unless eval.ijb_norm (flag N), times the detector score with
eval.ijb_detector (flag D), averaged per media, summed per template,
L2-normalised; cosine scores of the template pairs; TAR at FAR 1e-6 .. 1e-1
by method "insightface" (sklearn's thinned ROC, nearest point) and jaxset's
"floor" (largest FAR <= target). With the 1:N meta files, rank-1/5 and
TPIR at FPIR over both galleries.
"""
from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np

from jaxset.data import faces, formats
from jaxset.data.export import ARCFACE_LANDMARKS  # insightface's 112x112 alignment target
from jaxset.data.formats import format_error
from jaxset.eval import (
  aggregate_templates,
  combine_flip,
  error_vs_reject,
  kfold_verification_accuracy,
  l2_normalize,
  tar_at_far,
  top_k_search,
  val_at_far,
)
from jaxset.eval.verification import DEFAULT_FARS
from train.evaluators import Result, format_rows

# --------------------------------------------------------------------------
# .bin verification sets.


def bin_files(config) -> list[Path]:
  """The .bin files to score: eval.sets in eval.dir (or data.dir), else every .bin there."""
  root = Path(config.eval.dir or config.data.dir or ".")
  if not root.is_dir():
    raise FileNotFoundError(
        f"config.eval.dir={str(root)!r}: expected a folder holding insightface .bin files "
        f"(lfw.bin, cfp_fp.bin, agedb_30.bin, ...); {formats.describe_dir(root)}.")
  sets = [s.strip() for s in str(config.eval.get("sets", "")).split(",") if s.strip()]
  if not sets:
    found = sorted(root.glob("*.bin"))
    if not found:
      raise FileNotFoundError(
          f"{root}: expected insightface .bin files (lfw.bin, cfp_fp.bin, ...); none there "
          f"({formats.describe_dir(root)}). Give the folder with --config.eval.dir.")
    return found
  return [formats.require_file(root / (s if s.endswith(".bin") else f"{s}.bin"),
                               "an insightface .bin verification set (config.eval.sets)")
          for s in sets]


def _decode(data: bytes, where: str) -> np.ndarray:
  from PIL import Image
  try:
    with Image.open(io.BytesIO(data)) as im:
      return np.asarray(im.convert("RGB"))
  except OSError as e:
    raise format_error(where, "an encoded JPEG/PNG image", f"{len(data)} bytes PIL cannot "
                       f"read ({e})") from e


def _size_error(where: str, img: np.ndarray, h: int, w: int):
  return format_error(
      where, f"{h}x{w} images (the model's input, config.data.image_size)",
      f"a {img.shape[0]}x{img.shape[1]} image. Set --config.data.image_size="
      f"'({img.shape[0]}, {img.shape[1]})' if the model takes that size, or "
      "--config.eval.resize=True to resize every image")


@functools.lru_cache(maxsize=16)
def _load_bin(path: str, mtime: float, image_size: tuple, resize: bool):
  del mtime  # part of the cache key only: a rewritten file is read again
  bins, issame = faces.read_face_bin(Path(path))
  h, w = image_size
  images = np.empty((len(bins), h, w, 3), np.uint8)
  for i, b in enumerate(bins):
    img = _decode(b, f"{path} image {i}")
    if img.shape[:2] != (h, w):
      if not resize:
        raise _size_error(f"{path} image {i}", img, h, w)
      from PIL import Image
      img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    images[i] = img
  images.setflags(write=False)
  return images, np.asarray(issame, bool)


def load_bin(path: Path, image_size, resize: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [2P, H, W, 3] RGB, issame bool [P]) of an insightface .bin (cached)."""
  path = Path(path)
  formats.require_file(path, "an insightface .bin verification set")
  return _load_bin(str(path.absolute()), path.stat().st_mtime,
                   tuple(int(s) for s in image_size), bool(resize))


def check_bins(config) -> None:
  """Before training: every .bin exists, unpickles, and has the model's image size
  (or eval.resize): errors name the file and the fix."""
  h, w = tuple(config.data.image_size)
  for path in bin_files(config):
    bins, _ = faces.read_face_bin(path)
    img = _decode(bins[0], f"{path} image 0")
    if img.shape[:2] != (h, w) and not config.eval.get("resize", False):
      raise _size_error(f"{path} image 0", img, h, w)


def check_ijb(config) -> None:
  """Before training: the IJB folder has its meta files."""
  _ijb_root(config)


def bin_verification(emb: dict, issame, *, flip: bool = True, far: float = 1e-3,
                     val_interpolation: str = "insightface") -> dict:
  """insightface's verification.test on embedded .bin images.

  emb: Embedder outputs over the 2P images in file order ("embedding" and,
  with flip, "flip_embedding"). Returns accuracy mean/std, the per-fold best
  thresholds, VAL/FAR, XNorm and the scores (cosine of the pair's
  flip-combined, normalised embeddings).
  """
  e = np.asarray(emb["embedding"], np.float64)
  lists = [e] + ([np.asarray(emb["flip_embedding"], np.float64)] if flip else [])
  xnorm = float(np.mean(np.concatenate([np.linalg.norm(x, axis=1) for x in lists])))
  f = combine_flip(lists[0], lists[1]) if flip else l2_normalize(e)
  a, b = f[0::2], f[1::2]
  acc = kfold_verification_accuracy(a, b, issame, folds=10)
  val = val_at_far(a, b, issame, far_target=far, folds=10, interpolation=val_interpolation)
  return {"acc": acc["accuracy_mean"], "acc_std": acc["accuracy_std"],
          "threshold": float(np.mean(acc["best_thresholds"])),
          "fold_accuracies": acc["fold_accuracies"], "best_thresholds": acc["best_thresholds"],
          "val": val["val_mean"], "val_std": val["val_std"], "far": val["far_mean"],
          "xnorm": xnorm, "scores": np.sum(a * b, axis=1), "tpr": acc["tpr"], "fpr": acc["fpr"]}


def _quality_proxies(emb: dict) -> dict:
  """Per-image quality proxies the model has: EQFace's s_i and the feature norm."""
  out = {}
  if "quality" in emb:
    out["quality"] = np.asarray(emb["quality"], np.float64)
  out["norm"] = np.asarray(emb["norm"], np.float64)
  return out


def _erc(name: str, scores, same, proxies_a: dict, proxies_b: dict, metrics: dict,
         prefix: str) -> dict:
  """ERC (FNMR vs fraction of pairs discarded, threshold fixed at FNMR 0.1 before
  discarding; pair quality min(q_a, q_b)) of every proxy, as one curve."""
  series, last = {}, None
  for label in proxies_a:
    r = error_vs_reject(scores, same, proxies_a[label], proxies_b[label], fnmr=0.1)
    metrics[f"{prefix}erc_auc_{label}"] = r["auc"]
    series[f"lowest {label} first (AUC {r['auc']:.3f})"] = (r["reject_fractions"], r["fnmr"])
    last = r
  metrics[f"{prefix}erc_auc_random"] = last["auc_random"]
  series[f"random (AUC {last['auc_random']:.3f})"] = (last["reject_fractions"],
                                                     last["fnmr_random"])
  return {"x": last["reject_fractions"], "y": last["fnmr"], "series": series,
          "xlabel": "fraction of pairs discarded", "ylabel": "FNMR",
          "title": f"{name}: error vs discard (threshold at FNMR 0.1)"}


def insightface_lines(name: str, r: dict) -> list[str]:
  """The lines insightface's verification prints for one set."""
  return [f"[{name}]XNorm: {r['xnorm']:f}",
          f"[{name}]Accuracy-Flip: {r['acc']:1.5f}+-{r['acc_std']:1.5f}"]


def face_bin(embed, config) -> Result:
  """insightface .bin verification on every set of config.eval.sets (module docstring)."""
  flip = bool(config.eval.get("flip", True))
  far = float(config.eval.get("far", 1e-3))
  interp = config.eval.get("val_interpolation", "insightface")
  metrics, rows, curves, lines = {}, [], {}, []
  roc = {}
  for path in bin_files(config):
    name = path.stem
    images, issame = load_bin(path, embed.image_size, config.eval.get("resize", False))
    emb = embed.source([{"image": x} for x in images], flip=flip, description=name)
    r = bin_verification(emb, issame, flip=flip, far=far, val_interpolation=interp)
    lines += insightface_lines(name, r)
    metrics.update({f"{name}_acc": r["acc"], f"{name}_acc_std": r["acc_std"],
                    f"{name}_val": r["val"], f"{name}_far": r["far"],
                    f"{name}_threshold": r["threshold"], f"{name}_xnorm": r["xnorm"]})
    rows.append({"set": name, "pairs": len(issame), "acc": r["acc"], "std": r["acc_std"],
                 f"VAL@FAR={far:g}": r["val"], "FAR": r["far"], "threshold": r["threshold"],
                 "XNorm": r["xnorm"]})
    roc[name] = (np.maximum(r["fpr"], 1e-4), r["tpr"])
    prox = _quality_proxies(emb)
    curves[f"{name}_erc"] = _erc(name, r["scores"], issame,
                                 {k: v[0::2] for k, v in prox.items()},
                                 {k: v[1::2] for k, v in prox.items()}, metrics, f"{name}_")
  metrics["bin_acc_mean"] = float(np.mean([r["acc"] for r in rows]))
  first = next(iter(roc))
  curves["bin_roc"] = {"x": roc[first][0], "y": roc[first][1], "series": roc, "logx": True,
                       "xlabel": "false accept rate", "ylabel": "true accept rate",
                       "title": "ROC (10-fold mean)"}
  return Result(metrics, rows, curves, text="\n".join(lines) + "\n\n" + format_rows(rows))


# --------------------------------------------------------------------------
# IJB-B / IJB-C.

GALLERIES = {"ijbc": ("G1", "G2"), "ijbb": ("S1", "S2")}


def similarity_transform(src, dst) -> np.ndarray:
  """The 2x3 similarity (rotation, uniform scale, translation) that maps the
  points src [K, 2] onto dst [K, 2] in least squares (Umeyama 1991)."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  mu_s, mu_d = src.mean(0), dst.mean(0)
  s, d = src - mu_s, dst - mu_d
  cov = d.T @ s / len(src)
  u, sig, vt = np.linalg.svd(cov)
  sign = np.ones(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[-1] = -1
  rot = u @ np.diag(sign) @ vt
  var = (s ** 2).sum() / len(src)
  scale = (sig * sign).sum() / var if var > 0 else 1.0
  t = mu_d - scale * rot @ mu_s
  return np.concatenate([scale * rot, t[:, None]], axis=1)


def align_face(image: np.ndarray, landmarks, size=(112, 112)) -> np.ndarray:
  """The face warped so that its 5 landmarks land on ARCFACE_LANDMARKS (bilinear,
  black outside), as insightface's norm_crop; other sizes scale the target."""
  from PIL import Image
  h, w = size
  target = ARCFACE_LANDMARKS * np.array([w / 112.0, h / 112.0])
  m = similarity_transform(landmarks, target)
  inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]  # PIL maps output -> input pixels
  out = Image.fromarray(image).transform((w, h), Image.AFFINE, inv.ravel().tolist(),
                                         resample=Image.BILINEAR, fillcolor=(0, 0, 0))
  return np.asarray(out)


class IjbImages:
  """The face images of an IJB face list, read (and aligned) on access: records
  {"image"} in the list's order, for Embedder.source."""

  def __init__(self, crops: Path, names, landmarks, image_size, align: bool, resize: bool):
    self.crops, self.names, self.landmarks = crops, list(names), landmarks
    self.size, self.align, self.resize = tuple(image_size), align, resize

  def __len__(self):
    return len(self.names)

  def __getitem__(self, i):
    path = self.crops / self.names[i]
    try:
      image = _decode(path.read_bytes(), str(path))
    except FileNotFoundError:
      raise FileNotFoundError(f"{path}: the image named by the IJB face list is missing "
                              f"({formats.describe_dir(self.crops)}).") from None
    if self.align:
      image = align_face(image, self.landmarks[i], self.size)
    elif image.shape[:2] != self.size:
      if not self.resize:
        raise format_error(path, f"a {self.size[0]}x{self.size[1]} crop (config.data."
                           "image_size) when eval.ijb_align=False", f"{image.shape[0]}x"
                           f"{image.shape[1]}; align with the landmarks (--config.eval."
                           "ijb_align=True) or --config.eval.resize=True")
      from PIL import Image
      image = np.asarray(Image.fromarray(image).resize(self.size[::-1], Image.BILINEAR))
    return {"image": image}


def _ijb_root(config) -> tuple[Path, str]:
  """(root holding meta/ and loose_crop/, file prefix ijbc or ijbb)."""
  root = Path(config.eval.dir or ".")
  for prefix in ("ijbc", "ijbb"):
    marker = f"meta/{prefix}_face_tid_mid.txt"
    try:
      return formats.find_root(root, marker), prefix
    except (FileNotFoundError, OSError):
      continue
  raise FileNotFoundError(
      f"config.eval.dir={str(root)!r}: expected an IJB-C or IJB-B folder (insightface's "
      "IJB_release/IJBC or IJBB) with meta/ijbc_face_tid_mid.txt, meta/ijbc_template_pair_"
      "label.txt, meta/ijbc_name_5pts_score.txt and loose_crop/ (ijbb_* for IJB-B); "
      f"{formats.describe_dir(root)}"
      + (f"; {formats.describe_dir(root / 'meta')}" if (root / "meta").is_dir() else "")
      + ". Give that folder with --config.eval.dir.")


def read_1n_list(path: Path) -> dict[int, int]:
  """template id -> subject id of an IJB 1:N csv (header line, then rows starting
  TEMPLATE_ID,SUBJECT_ID,...)."""
  out = {}
  lines = path.read_text().splitlines()
  for no, line in enumerate(lines[1:], 2):
    f = [x.strip() for x in line.split(",")]
    if not line.strip():
      continue
    try:
      t, s = int(f[0]), int(f[1])
    except (ValueError, IndexError):
      raise format_error(f"{path}:{no}", '"TEMPLATE_ID,SUBJECT_ID,..." after a header line',
                         repr(line)) from None
    if out.setdefault(t, s) != s:
      raise format_error(f"{path}:{no}", f"one subject per template ({t})",
                         f"subjects {out[t]} and {s}")
  return out


def identification(probe_f, probe_subjects, gallery_f, gallery_subjects,
                   fpirs=(0.01, 0.1), ranks=(1, 5, 10), *, query_block: int = 1024) -> dict:
  """1:N identification of probe templates against one gallery (cosine scores).

  Closed set: rank-k = fraction of mated probes (subject in the gallery) whose
  gallery template is among the k best scores. Open set: the threshold is the
  score that non-mated probes' best scores exceed at rate FPIR; TPIR = fraction
  of mated probes whose rank-1 match is their subject with a score above it.

  Both need only each probe's max(ranks) best gallery templates: they come from
  jaxset.eval.search.top_k_search (inner products of the L2-normalised
  templates, float32, `query_block` probes at a time, ties to the lower gallery
  index), so no [probes, gallery] score matrix is built.
  """
  gs = np.asarray(gallery_subjects)
  ps = np.asarray(probe_subjects)
  pf = np.asarray(probe_f, np.float32)
  gf = np.asarray(gallery_f, np.float32)
  k = min(max(int(r) for r in ranks), len(gs))
  top_s, top_i = top_k_search(pf, gf, k, metric="ip", query_block=query_block)
  mated = np.isin(ps, gs)
  hit = gs[top_i] == ps[:, None]
  out = {}
  for r in ranks:
    out[f"rank{r}"] = float(hit[mated, :r].any(1).mean()) if mated.any() else 0.0
  top = top_s[:, 0]
  nonmated = np.sort(top[~mated])[::-1]
  for fpir in fpirs:
    if nonmated.size == 0:
      out[f"tpir@fpir={fpir:g}"] = float("nan")
      continue
    n = int(np.floor(fpir * nonmated.size))
    thr = nonmated[n] if n < nonmated.size else -np.inf
    ok = hit[mated, 0] & (top[mated] > thr)
    out[f"tpir@fpir={fpir:g}"] = float(ok.mean()) if mated.any() else 0.0
  return out


def ijb(embed, config) -> Result:
  """IJB-B/C 1:1 template verification and, with its csv files, 1:N identification."""
  from jaxset.data.faces import _int_table, read_landmarks
  root, prefix = _ijb_root(config)
  meta = root / "meta"
  faces_txt = meta / f"{prefix}_face_tid_mid.txt"
  rows = _int_table(faces_txt, 3, '"image template_id media_id"', first_text=True)
  pairs_txt = meta / f"{prefix}_template_pair_label.txt"
  pairs = np.asarray(_int_table(pairs_txt, 3, '"template_1 template_2 label"'), np.int64)
  names = [r[0] for r in rows]
  tids = np.asarray([r[1] for r in rows], np.int64)
  mids = np.asarray([r[2] for r in rows], np.int64)
  align = bool(config.eval.get("ijb_align", True))
  use_det = bool(config.eval.get("ijb_detector", False))
  points_txt = meta / f"{prefix}_name_5pts_score.txt"
  points = read_landmarks(points_txt)
  if points is None and (align or use_det):
    raise FileNotFoundError(
        f"{points_txt}: expected the landmarks and detector scores (lines \"image x1 y1 ... "
        f"x5 y5 score\"), needed to align the loose crops and for the D flag; it is missing "
        f"({formats.describe_dir(meta)}). Add it, or pass --config.eval.ijb_align=False "
        "--config.eval.ijb_detector=False for crops that are already aligned.")
  if points is not None:
    missing = [n for n in names if n not in points]
    if missing:
      raise format_error(points_txt, f"a line for every image of {faces_txt.name}",
                         f"none for {missing[0]!r} ({len(missing)} images)")
  marks = [points[n][0] for n in names] if points is not None else None
  scores = (np.asarray([points[n][1] for n in names], np.float64) if points is not None
            else None)
  crops = formats.require_dir(root / "loose_crop", "loose_crop/ with the face crops")
  images = IjbImages(crops, names, marks, embed.image_size, align,
                     config.eval.get("resize", False))
  flip = bool(config.eval.get("flip", True))
  emb = embed.source(images, flip=flip, description=f"{prefix} faces")
  feats = np.asarray(emb["embedding"], np.float64)
  if flip:  # eval_ijbc's F flag: the two raw features summed
    feats = feats + np.asarray(emb["flip_embedding"], np.float64)
  norm = bool(config.eval.get("ijb_norm", False))
  tf, tlist = aggregate_templates(feats, tids, mids, weights=scores if use_det else None,
                                  mode="ijb", normalize_features=not norm)
  known = set(tlist.tolist())
  bad = [i for i, (a, b, _) in enumerate(pairs) if a not in known or b not in known]
  if bad:
    a, b, _ = pairs[bad[0]]
    raise format_error(f"{pairs_txt}:{bad[0] + 1}", f"template ids listed in {faces_txt.name}",
                       f"{a} {b}")
  from jaxset.eval import template_pair_scores
  s = template_pair_scores(tf, tlist, pairs[:, 0], pairs[:, 1])
  same = pairs[:, 2].astype(bool)
  flags = "".join(x for x, on in (("N", norm), ("D", use_det), ("F", flip)) if on) or "-"
  metrics, table = {}, []
  curves = {}
  for method in ("insightface", "floor"):
    r = tar_at_far(s, same, DEFAULT_FARS, method=method)
    row = {"method": f"{prefix.upper()} 1:1 {method} [{flags}]"}
    for far in DEFAULT_FARS:
      metrics[f"tar@far={far:g}_{method}"] = r["tar"][far]
      row[f"{far:g}"] = r["tar"][far]
    table.append(row)
    if method == "floor":
      curves[f"{prefix}_roc"] = {"x": np.maximum(r["fpr"], 1e-7), "y": r["tpr"], "logx": True,
                                 "xlabel": "false accept rate", "ylabel": "true accept rate",
                                 "title": f"{prefix.upper()} 1:1 ROC [{flags}]"}
  # Quality proxies on the template pairs: the mean of each template's image proxy.
  prox = {}
  for label, values in _quality_proxies(emb).items():
    tq, tl = aggregate_templates(values[:, None], tids, mode="mean", normalize_features=False,
                                 normalize_output=False)
    rows_a = np.searchsorted(tl, pairs[:, 0])
    rows_b = np.searchsorted(tl, pairs[:, 1])
    prox[label] = (tq[rows_a, 0], tq[rows_b, 0])
  curves[f"{prefix}_erc"] = _erc(prefix.upper(), s, same, {k: v[0] for k, v in prox.items()},
                                 {k: v[1] for k, v in prox.items()}, metrics, "")
  text = format_rows(table)
  g_names = GALLERIES[prefix]
  csvs = [meta / f"{prefix}_1N_gallery_{g}.csv" for g in g_names]
  probe_csv = meta / f"{prefix}_1N_probe_mixed.csv"
  if all(p.is_file() for p in csvs + [probe_csv]):
    probes = read_1n_list(probe_csv)
    id_rows = []
    pt = np.asarray(sorted(probes), np.int64)
    pf = tf[_rows(tlist, pt, probe_csv)]
    for g, path in zip(g_names, csvs):
      gallery = read_1n_list(path)
      gt = np.asarray(sorted(gallery), np.int64)
      r = identification(pf, [probes[t] for t in pt], tf[_rows(tlist, gt, path)],
                         [gallery[t] for t in gt])
      id_rows.append({"gallery": g, **r})
    mean = {k: float(np.mean([r[k] for r in id_rows])) for k in id_rows[0] if k != "gallery"}
    id_rows.append({"gallery": "mean", **mean})
    metrics.update({f"1n_{k}": v for k, v in mean.items()})
    text += "\n\n" + format_rows(id_rows)
    table += id_rows
  else:
    text += (f"\n\n(1:N skipped: no {', '.join(p.name for p in csvs + [probe_csv])} in "
             f"{meta})")
  return Result(metrics, table, curves, text=text)


def _rows(tlist, tids, where) -> np.ndarray:
  pos = np.searchsorted(tlist, tids)
  pos_c = np.minimum(pos, len(tlist) - 1)
  bad = tlist[pos_c] != tids
  if bad.any():
    raise format_error(where, "template ids that the face list (face_tid_mid) holds",
                       f"template {tids[bad][0]} with no image")
  return pos_c
