"""Evaluation and batching shared by the identity methods (QAN, EQFace, AdaFace, ArcFace, CASN).

The embedded synthetic_identities (and the real re-ID / face datasets) share
one schema: train / query / gallery splits of images with label, identity,
camera, tracklet and ground-truth degradation, plus "pairs" for 10-fold image
verification and "set_pairs" for tracklet verification.
"""
from __future__ import annotations

import numpy as np

from jaxset.data.records import read_metadata
from jaxset.data.samplers.pk import pk_batches
from jaxset.eval import cmc_map, kfold_verification_accuracy, spearman
from train.tasks import common


def num_classes(config) -> int:
  """Identities of the training split (the classifier's width)."""
  labels = read_metadata(common.source(config, "train"), ["label"])["label"]
  if len(labels) == 0:
    raise ValueError(f"the train split of {config.data.name!r} is empty.")
  return int(labels.max()) + 1


def pk_iterator(config, split: str = "train", start: int = 0):
  """P identities x K images per batch; P*K = config.train.batch_size.

  start: the step of the first batch (a later stage of a run continues the
  run's batch sequence instead of replaying it from step 0)."""
  p, k = config.train.batch_size // config.data.k, config.data.k
  ds = pk_batches(common.source(config, split), p=p, k=k, seed=config.seed,
                  image_fn=common.image_fn(config, train=True))
  it = iter(ds)
  if start:
    it.set_state({**it.get_state(), "next_index": int(start)})
  return it


def split_embeddings(describe, state, config, split: str) -> dict:
  """Runs describe(state, batch) -> {"f": ..., ...} over a split plus its metadata."""
  src = common.source(config, split)
  out = common.extract(describe, state, src, config, keys=["image"])
  meta = read_metadata(src)
  return {**out, **{k: v for k, v in meta.items() if k not in out}}


def reid_metrics(q: dict, g: dict, key: str = "f") -> dict:
  """torchreid CMC rank-1/5/10, mAP and fast-reid's mINP, query vs gallery (cross-camera)."""
  r = cmc_map(q[key], g[key], q["identity"], g["identity"], q["camera"], g["camera"])
  return {k: float(r[k]) for k in ("rank1", "rank5", "rank10", "mAP", "mINP")}


def pair_metrics(describe_pair, state, config) -> dict:
  """10-fold verification accuracy on the "pairs" split (insightface protocol)."""
  src = common.source(config, "pairs")
  out = common.extract(describe_pair, state, src, config, keys=["image_a", "image_b"])
  meta = read_metadata(src, ["same", "fold"])
  res = kfold_verification_accuracy(out["a"], out["b"], meta["same"].astype(bool),
                                    fold_ids=meta["fold"])
  return {"pair_acc": float(res["accuracy_mean"])}


def quality_correlation(quality, degradation, name: str) -> dict:
  """Spearman rho of a predicted quality against the ground-truth degradation.

  Images with unknown degradation (-1, real datasets) are left out; a good
  quality estimate gives rho close to -1.
  """
  known = degradation >= 0
  if known.sum() < 3:
    return {}
  return {f"{name}_spearman": float(spearman(quality[known], degradation[known]))}


def benchmark_metrics(model, state, config) -> dict:
  """config.eval.benchmark's metrics for the state (train/evaluators.py), {} without one.

  The validation of insightface's verification callback: the face presets
  set eval.benchmark=face_bin, so every eval.every steps the .bin sets in
  eval.dir (or data.dir) are scored and eval.best_metric (bin_acc_mean)
  picks the best checkpoint.
  """
  if not config.eval.get("benchmark"):
    return {}
  from train import evaluators
  embed = evaluators.Embedder(model.apply, {"params": state.params, **state.model_state},
                              config.data.image_size, config.eval.batch_size,
                              progress=False)
  return evaluators.get(config.eval.benchmark)(embed, config).metrics


def face_metrics(model, state, config, quality_key: str, name: str) -> dict:
  """Pair accuracy, rank-1/mAP and Spearman(quality_key output, degradation).

  `model` returns a dict with "embedding" and `quality_key` ("norm" for
  AdaFace/ArcFace, "quality" for EQFace) for a batch of images. A training
  set without evaluation splits (MS1M / WebFace RecordIO, a folder) gives
  only the benchmark's metrics (benchmark_metrics), {} without one.
  """
  out = benchmark_metrics(model, state, config)
  if not {"query", "gallery", "pairs"} <= common.splits(config):
    return out
  def describe(state, batch):
    out = common.apply(model, state, batch["image"])
    return {"f": out["embedding"], "q": out[quality_key]}

  def describe_pair(state, batch):
    return {"a": common.apply(model, state, batch["image_a"])["embedding"],
            "b": common.apply(model, state, batch["image_b"])["embedding"]}

  q = split_embeddings(describe, state, config, "query")
  g = split_embeddings(describe, state, config, "gallery")
  out.update(pair_metrics(describe_pair, state, config))
  out.update(reid_metrics(q, g))
  out.update(quality_correlation(np.concatenate([q["q"], g["q"]]),
                                 np.concatenate([q["degradation"], g["degradation"]]), name))
  return out


def face_curves(model, state, config, quality_key: str | None, name: str = "quality",
                also: dict | None = None) -> dict:
  """Curves for train.eval's plots: CMC, pair ROC, and with a quality output,
  the error-versus-discard curve (ERC, the EDC of ISO/IEC 29794-1) of every
  quality proxy and the proxy against the true degradation.

  The ERC holds one series per proxy: `quality_key` (labelled `name`) and
  `also` ({label: model output key}, e.g. EQFace's feature norm beside s_i),
  random discarding, and where the pairs store their degradation levels,
  the oracle that discards the most degraded pairs first: the best any
  proxy could do on these pairs.
  """
  from jaxset.eval import error_vs_reject, roc_curve

  proxies = {name: quality_key, **(also or {})} if quality_key else {}

  def describe(state, batch):
    out = common.apply(model, state, batch["image"])
    res = {"f": out["embedding"] if "embedding" in out else out["features"]}
    if quality_key:
      res["q"] = out[quality_key]
    return res

  def describe_pair(state, batch):
    res = {}
    for side in ("a", "b"):
      out = common.apply(model, state, batch[f"image_{side}"])
      res[side] = out["embedding"] if "embedding" in out else out["features"]
      for label, key in proxies.items():
        res[f"{label}_{side}"] = out[key]
    return res

  q = split_embeddings(describe, state, config, "query")
  g = split_embeddings(describe, state, config, "gallery")
  r = cmc_map(q["f"], g["f"], q["identity"], g["identity"], q["camera"], g["camera"])
  curves = {"cmc": {"x": np.arange(1, len(r["cmc"]) + 1), "y": r["cmc"], "xlabel": "rank",
                    "ylabel": "matching rate", "title": f"CMC (mAP {r['mAP']:.3f})"}}
  src = common.source(config, "pairs")
  p = common.extract(describe_pair, state, src, config, keys=["image_a", "image_b"])
  meta = read_metadata(src)
  same = meta["same"].astype(bool)
  a = p["a"] / np.linalg.norm(p["a"], axis=1, keepdims=True).clip(1e-12)
  b = p["b"] / np.linalg.norm(p["b"], axis=1, keepdims=True).clip(1e-12)
  scores = np.sum(a * b, axis=1)
  fpr, tpr, _ = roc_curve(scores, same)
  curves["roc"] = {"x": np.maximum(fpr, 1e-4), "y": tpr, "xlabel": "false accept rate",
                   "ylabel": "true accept rate", "logx": True, "title": "pair ROC"}
  if quality_key:
    series = {}
    for label in proxies:
      erc = error_vs_reject(scores, same, p[f"{label}_a"], p[f"{label}_b"], fnmr=0.1)
      series[f"lowest {label} first (AUC {erc['auc']:.3f})"] = (erc["reject_fractions"],
                                                                 erc["fnmr"])
    series[f"random (AUC {erc['auc_random']:.3f})"] = (erc["reject_fractions"],
                                                      erc["fnmr_random"])
    levels = [meta.get(f"degradation_{side}") for side in ("a", "b")]
    if all(lv is not None and np.all(lv >= 0) for lv in levels):
      oracle = error_vs_reject(scores, same, -levels[0], -levels[1], fnmr=0.1)
      series[f"oracle: most degraded first (AUC {oracle['auc']:.3f})"] = (
          oracle["reject_fractions"], oracle["fnmr"])
    curves["erc"] = {"x": erc["reject_fractions"], "y": erc["fnmr"],
                     "xlabel": "fraction of pairs discarded", "ylabel": "FNMR",
                     "title": "error vs discard (ERC / EDC), threshold at FNMR 0.1",
                     "series": series}
    curves[f"{name}_vs_degradation"] = {
        "x": np.concatenate([q["degradation"], g["degradation"]]),
        "y": np.concatenate([q["q"], g["q"]]), "kind": "scatter",
        "xlabel": "true degradation", "ylabel": name, "title": f"{name} vs degradation"}
  return curves
