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
from jaxset.data.formats import format_error
from jaxset.eval import (
  combine_flip,
  error_vs_reject,
  kfold_verification_accuracy,
  l2_normalize,
  val_at_far,
)
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
        raise format_error(
            f"{path} image {i}", f"{h}x{w} images (the model's input, config.data.image_size)",
            f"a {img.shape[0]}x{img.shape[1]} image. Set --config.data.image_size="
            f"'({img.shape[0]}, {img.shape[1]})' if the model takes that size, or "
            "--config.eval.resize=True to resize every image")
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
