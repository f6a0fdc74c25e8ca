"""Re-ID, video re-ID and place benchmarks of train/evaluators.py (docs/evaluation.md).

Each reads its dataset through the jaxset.data builder named by
config.eval.dataset (default: config.data.name) from config.eval.dir (default:
config.data.dir), embeds the images with any weights (a run's checkpoint or
converted torch weights) and applies the field's protocol:

reid (market1501, dukemtmc_reid, cuhk03_np, msmt17): query vs gallery, torchreid
  / fast-reid rules (same pid AND camera removed, queries without a match
  skipped), squared Euclidean distance of the L2-normalised embeddings
  (config.eval.reid_metric "cosine" ranks the same), rank-1/5/10, mAP, mINP;
  with config.eval.rerank / query_expansion, extra rows for k-reciprocal
  re-ranking and (alpha-)query expansion beside the plain one (reid_options).
video_reid (mars, prid2011, ilids_vid): frames embedded one by one, pooled per
  tracklet two ways: "mean" (the plain average) and "quality" (QAN's mu
  weights, per part where the model scores parts: R_a = sum mu_i R_i / sum
  mu_i) when the weights have a quality output; rank-1/5/10, mAP, mINP of each.
  MARS: its query / gallery tracks (query_IDX.mat). PRID2011 / iLIDS-VID: the
  test identities of the builder's split (config.eval.builder_config, default
  split_0), camera 0 tracks query camera 1 tracks.
places (pittsburgh30k/250k, tokyo247, msls, vpr_folder): Recall@N of
  config.eval.recall_ns at config.eval.pos_radius metres on the
  config.eval.benchmark_split (test) database/queries; Tokyo 24/7 with panorama NMS
  (config.eval.panorama_nms; each panorama's best cutout stands for it);
  MSLS val per city, with config.eval.msls_queries saying which queries count.
"""
from __future__ import annotations

import numpy as np

from jaxset import data as jdata
from jaxset.data import transforms
from jaxset.data.records import read_metadata
from jaxset.eval import (
  average_query_expansion,
  cmc_map,
  cmc_map_from_distances,
  k_reciprocal_rerank_features,
  recall_at_n,
)
from train.evaluators import Result

REID_DATASETS = ("market1501", "dukemtmc_reid", "cuhk03_np", "msmt17")
VIDEO_DATASETS = ("mars", "prid2011", "ilids_vid")
PLACE_DATASETS = ("pittsburgh30k", "pittsburgh250k", "tokyo247", "msls", "vpr_folder")
MSLS_QUERIES = ("all", "with_positives")
RERANKS = ("none", "k_reciprocal")
REID_METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def _int_key(config, key: str, default: int, low: int) -> int:
  v = config.eval.get(key, default)
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
    raise ValueError(f"config.eval.{key}={v!r}; use an integer >= {low}.")
  return int(v)


def _float_key(config, key: str, default: float, low: float, high: float) -> float:
  v = config.eval.get(key, default)
  if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) \
      or not low <= float(v) <= high:
    allowed = f">= {low}" if high == np.inf else f"in [{low}, {high}]"
    raise ValueError(f"config.eval.{key}={v!r}; use a number {allowed}.")
  return float(v)


def reid_options(config) -> dict:
  """The re-ranking and query-expansion keys of config.eval, checked (docs/evaluation.md).

  rerank: "none" or "k_reciprocal" (Zhong et al.: rerank_k1, rerank_k2,
  rerank_lambda; the paper's 20, 6, 0.3). query_expansion: 0 (off) or k, the
  gallery neighbours averaged into each query; qe_alpha 0 is AQE, > 0 alpha-QE.
  """
  rerank = config.eval.get("rerank", "none")
  if rerank not in RERANKS:
    raise ValueError(f"config.eval.rerank={rerank!r}; use one of {RERANKS}.")
  metric = config.eval.get("reid_metric", "euclidean")
  if metric not in ("euclidean", "cosine"):
    raise ValueError(f"config.eval.reid_metric={metric!r}; use 'euclidean' or 'cosine'.")
  return {"metric": metric, "rerank": rerank,
          "k1": _int_key(config, "rerank_k1", 20, 1), "k2": _int_key(config, "rerank_k2", 6, 1),
          "lambda": _float_key(config, "rerank_lambda", 0.3, 0.0, 1.0),
          "qe": _int_key(config, "query_expansion", 0, 0),
          "qe_alpha": _float_key(config, "qe_alpha", 0.0, 0.0, np.inf)}


def check_options(config) -> None:
  """CHECKS entry of reid / video_reid: bad option values stop a run before step 1."""
  reid_options(config)


def reid_variants(qf, gf, q_ids, g_ids, q_cams, g_cams, options: dict) -> list[tuple]:
  """(label, metric suffix, cmc_map result) of the plain ranking and each variant
  the options turn on: query expansion, re-ranking, and both (the expanded
  queries re-ranked)."""
  metric = options["metric"]
  ids = (q_ids, g_ids, q_cams, g_cams)
  out = [("", "", cmc_map(qf, gf, *ids, metric=metric))]
  queries = [("", "", qf)]
  if options["qe"]:
    k, alpha = options["qe"], options["qe_alpha"]
    label = f"alpha-QE k={k} alpha={alpha:g}" if alpha > 0 else f"AQE k={k}"
    # The expanded queries are L2-normalised, as the features they replace.
    q_exp = average_query_expansion(qf, gf, k, alpha=alpha)
    queries.append((label, "_qe", q_exp))
    out.append((label, "_qe", cmc_map(q_exp, gf, *ids, metric=metric)))
  if options["rerank"] == "k_reciprocal":
    k1, k2, lam = options["k1"], options["k2"], options["lambda"]
    tag = f"k-reciprocal k1={k1} k2={k2} lambda={lam:g}"
    for label, suffix, q in queries:
      d = k_reciprocal_rerank_features(q, gf, k1, k2, lam, metric=metric)
      out.append((f"{label} + {tag}" if label else tag, f"{suffix}_rerank",
                  cmc_map_from_distances(d, *ids)))
  return out


def _dataset(config, allowed, benchmark):
  name = config.eval.get("dataset", "") or config.data.name
  if name not in allowed:
    raise ValueError(f"benchmark {benchmark!r} scores {', '.join(allowed)}; "
                     f"config.eval.dataset={name!r}. Set --config.eval.dataset.")
  root = config.eval.dir or config.data.dir
  if not root:
    raise ValueError(f"benchmark {benchmark!r} reads your copy of {name}: give its folder "
                     "with --config.eval.dir=/path/to/it.")
  b = jdata.builder(name, data_dir=config.data.cache_dir or None, manual_dir=root,
                    config=config.eval.get("builder_config", "") or None)
  return name, b


class _Resized:
  """A data source whose images come resized to the model's input size."""

  def __init__(self, src, size):
    self.src, self.fn = src, transforms.eval_transform(size)

  def __len__(self):
    return len(self.src)

  def __getitems__(self, idx):
    recs = (self.src.__getitems__(idx) if hasattr(self.src, "__getitems__")
            else [self.src[i] for i in idx])
    return [{"image": self.fn(np.asarray(r["image"]))} for r in recs]

  def __getitem__(self, i):
    return self.__getitems__([i])[0]


def _embed(embed, src, what):
  return embed.source(_Resized(src, embed.image_size), description=what)


def _l2(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _reid_row(name, r) -> dict:
  return {"protocol": name, "rank-1": r["rank1"], "rank-5": r["rank5"], "rank-10": r["rank10"],
          "mAP": r["mAP"], "mINP": r["mINP"], "queries": r["num_valid_queries"]}


def _cmc_curve(r, title):
  return {"x": np.arange(1, len(r["cmc"]) + 1), "y": r["cmc"], "xlabel": "rank",
          "ylabel": "matching rate", "title": title}


def reid(embed, config) -> Result:
  """Image re-ID: rank-1/5/10, mAP and mINP of query vs gallery (plus the
  re-ranked / query-expanded rows that config.eval asks for)."""
  options = reid_options(config)  # before embedding: a bad value fails at once
  name, b = _dataset(config, REID_DATASETS, "reid")
  feats, meta = {}, {}
  for split in ("query", "gallery"):
    src = b.as_data_source(split)
    feats[split] = _l2(_embed(embed, src, f"{name} {split}")["embedding"])
    meta[split] = read_metadata(src, ["identity", "camera"])
  variants = reid_variants(feats["query"], feats["gallery"], meta["query"]["identity"],
                          meta["gallery"]["identity"], meta["query"]["camera"],
                          meta["gallery"]["camera"], options)
  metrics, rows, curves = {}, [], {}
  for label, suffix, r in variants:
    metrics.update({f"{k}{suffix}": r[k] for k in REID_METRICS})
    rows.append(_reid_row(f"{name} + {label}" if label else name, r))
    curves[f"cmc{suffix}"] = _cmc_curve(r, f"{name}{' + ' + label if label else ''} CMC "
                                           f"(mAP {r['mAP']:.3f})")
  return Result(metrics=metrics, rows=rows, curves=curves)


def pool_tracklets(out: dict, tracklets, weights: str) -> tuple[np.ndarray, np.ndarray]:
  """Per-tracklet features from per-frame outputs: (tracklet ids, [T, D] L2-normalised).

  weights "mean": the plain average; "quality": mu-weighted per part (eq. 2 of
  QAN), from "part_quality" [N, P] (D = P x F) or "quality" [N]. A tracklet
  whose weights are all zero falls back to the mean (no NaN).
  """
  emb = np.asarray(out["embedding"], np.float64)
  n, d = emb.shape
  if weights == "mean":
    w = np.ones((n, 1))
  elif "part_quality" in out:
    w = np.asarray(out["part_quality"], np.float64).reshape(n, -1)
  else:
    w = np.asarray(out["quality"], np.float64).reshape(n, 1)
  p = w.shape[1]
  if d % p:
    raise ValueError(f"{p} part qualities do not divide the embedding size {d}.")
  parts = emb.reshape(n, p, d // p)
  ids, inverse = np.unique(np.asarray(tracklets), return_inverse=True)
  num = np.zeros((len(ids), p, d // p))
  den = np.zeros((len(ids), p))
  np.add.at(num, inverse, parts * w[:, :, None])
  np.add.at(den, inverse, w)
  count = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
  mean = np.zeros_like(num)
  np.add.at(mean, inverse, parts)
  mean /= count[:, None, None]
  pooled = np.where(den[:, :, None] > 1e-12, num / np.maximum(den, 1e-12)[:, :, None], mean)
  return ids, _l2(pooled.reshape(len(ids), d))


def _video_splits(name, b, config):
  """(query, gallery) as (source, frame mask) pairs of the benchmark's own protocol."""
  if name == "mars":
    return [(b.as_data_source(s), None) for s in ("query", "gallery")]
  src = b.as_data_source("test")
  cams = read_metadata(src, ["camera"])["camera"]
  return [(src, cams == 0), (src, cams == 1)]


def video_reid(embed, config) -> Result:
  """Video re-ID: tracklet features by mean and by quality pooling; CMC / mAP / mINP."""
  options = reid_options(config)
  name, b = _dataset(config, VIDEO_DATASETS, "video_reid")
  sides, cache = [], {}
  for src, mask in _video_splits(name, b, config):
    if id(src) not in cache:
      cache[id(src)] = (_embed(embed, src, name),
                        read_metadata(src, ["identity", "camera", "tracklet"]))
    out, meta = cache[id(src)]
    keep = np.ones(len(meta["tracklet"]), bool) if mask is None else mask
    sides.append(({k: v[keep] for k, v in out.items()}, {k: v[keep] for k, v in meta.items()}))
  poolings = ["mean"] + (["quality"] if {"quality", "part_quality"} & set(sides[0][0]) else [])
  rows, metrics, curves = [], {}, {}
  for pooling in poolings:
    feats, ids, cams = [], [], []
    for out, meta in sides:
      _, f = pool_tracklets(out, meta["tracklet"], pooling)
      _, first = np.unique(meta["tracklet"], return_index=True)  # the same sorted order
      feats.append(f)
      ids.append(meta["identity"][first])
      cams.append(meta["camera"][first])
    for label, suffix, r in reid_variants(feats[0], feats[1], ids[0], ids[1], cams[0], cams[1],
                                          options):
      what = f"{name} {pooling} pooling" + (f" + {label}" if label else "")
      rows.append(_reid_row(what, r))
      metrics.update({f"{k}_{pooling}{suffix}": r[k] for k in REID_METRICS})
      curves[f"cmc_{pooling}{suffix}"] = _cmc_curve(r, f"{what} CMC")
  return Result(metrics=metrics, rows=rows, curves=curves)


def _city(filenames) -> np.ndarray:
  return np.array([str(f).split("/")[0] for f in filenames])


def places(embed, config) -> Result:
  """Recall@N (N = config.eval.recall_ns) at config.eval.pos_radius metres."""
  name, b = _dataset(config, PLACE_DATASETS, "places")
  split = "val" if name == "msls" else (
      "test" if name == "tokyo247" else config.eval.get("benchmark_split", "test"))
  ns = tuple(int(n) for n in config.eval.recall_ns)
  radius = float(config.eval.pos_radius)
  srcs = {k: b.as_data_source(f"{split}_{k}") for k in ("database", "queries")}
  meta = {k: read_metadata(s, ["utm", "filename", "panorama"]) for k, s in srcs.items()}
  feats = {k: _l2(_embed(embed, s, f"{name} {split} {k}")["embedding"]).astype(np.float32)
           for k, s in srcs.items()}
  nms = bool(config.eval.get("panorama_nms", False))
  if nms and np.all(meta["database"]["panorama"] < 0):
    raise ValueError(f"config.eval.panorama_nms=True but {name} has no panorama ids; "
                     "set it to False.")
  groups = (_city(meta["queries"]["filename"]), _city(meta["database"]["filename"])) \
      if name == "msls" else (np.zeros(len(feats["queries"]), int),
                              np.zeros(len(feats["database"]), int))
  convention = config.eval.get("msls_queries", "all") if name == "msls" else "all"
  if convention not in MSLS_QUERIES:
    raise ValueError(f"config.eval.msls_queries={convention!r}; use one of {MSLS_QUERIES}.")
  hits, counted, total = {n: 0.0 for n in ns}, 0, len(feats["queries"])
  for g in np.unique(groups[0]):
    qi, di = np.flatnonzero(groups[0] == g), np.flatnonzero(groups[1] == g)
    if convention == "with_positives":
      d = np.linalg.norm(meta["queries"]["utm"][qi][:, None] - meta["database"]["utm"][di][None],
                         axis=-1)
      qi = qi[(d <= radius).any(axis=1)]
    if len(qi) == 0:
      continue
    if len(di) == 0:
      counted += len(qi)  # no database image of this group: every query misses
      continue
    r = recall_at_n(feats["queries"][qi], feats["database"][di], meta["queries"]["utm"][qi],
                    meta["database"]["utm"][di], ns=ns, pos_radius=radius,
                    db_panorama_ids=meta["database"]["panorama"][di] if nms else None)
    for n in ns:
      hits[n] += r[n] * len(qi)
    counted += len(qi)
  if counted == 0:
    raise ValueError(f"no {name} query has a database image within {radius} m: nothing to "
                     "score (config.eval.msls_queries='all' counts every query).")
  metrics = {f"recall@{n}": hits[n] / counted for n in ns}
  row = {"dataset": name, "split": split, **{f"R@{n}": metrics[f"recall@{n}"] for n in ns},
         "queries": f"{counted}/{total}"}
  if nms:
    row["panorama NMS"] = "yes"
  if name == "msls":
    row["queries counted"] = convention
  metrics["num_queries"] = float(counted)
  curves = {"recall": {"x": np.array(ns), "y": np.array([metrics[f"recall@{n}"] for n in ns]),
                       "xlabel": "N", "ylabel": "Recall@N", "title": f"{name} {split}"}}
  return Result(metrics=metrics, rows=[row], curves=curves)


WEIGHTS_POOLINGS = ("avg", "max", "gem")


def backbone_embedder(config, path):
  """`--weights` for the re-ID / video / place configs: the converted backbone of
  config.model.backbone (python -m jaxset.convert --arch=resnet50 | vgg16) with a
  global pooling, config.eval.weights_pooling (avg: the ImageNet baseline of
  re-ID; max / GeM p = 3: NetVLAD's and later baselines), L2-normalised.

  A file for another backbone is an error naming the difference. The QAN
  quality branch and a trained NetVLAD layer are not part of torchvision
  weights: evaluate those from a run's --workdir.
  """
  import jax
  import jax.numpy as jnp

  from jaxset.models import VPRModel
  from train import evaluators
  from train.task import TrainState
  from train.tasks import common

  pooling = config.eval.get("weights_pooling", "avg")
  if pooling not in WEIGHTS_POOLINGS:
    raise ValueError(f"config.eval.weights_pooling={pooling!r}; use one of {WEIGHTS_POOLINGS}.")
  model = VPRModel(backbone=config.model.backbone, pooling=pooling,
                   dtype=common.compute_dtype(config))
  h, w = config.data.image_size
  variables = dict(model.init(jax.random.key(0), jnp.zeros((1, h, w, 3), jnp.uint8)))
  params = variables.pop("params")
  state = TrainState(step=0, apply_fn=model.apply, params=params, tx=None, opt_state=None,
                     model_state=variables, rng=None)
  state = common.load_pretrained(state, str(path))
  return evaluators.Embedder(lambda v, x: {"embedding": model.apply(v, x)["descriptor"]},
                             {"params": state.params, **state.model_state},
                             config.data.image_size, config.eval.batch_size,
                             description=str(path))
