"""Numbers the tasks do not report, measured on a trained state (benchmark library).

Quality proxies per image (proxy_fn) and per stored degradation tier
(proxy_tiers, LEVEL_EDGES), EQFace's error-versus-reject, the degradation
tiers of recognition, CASN's identification attention, and facts about the
embedded test data.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

LEVEL_EDGES = (0.2, 0.5, 0.8, 1.0)   # stored levels are drawn from [0.2, 1]
SEVERE_TIER = 0.6         # degradation level of the most degraded tier: [0.6, 1]
REJECT_FRACTION = 0.2     # ERC: the share of pairs dropped
ERC_START_FNMR = 0.1      # ERC threshold: FNMR 0.1 before rejection (as train.eval's ERC plot)


def state_variables(state):
  """The Flax variables of a TrainState (train.tasks.common.variables, imported late)."""
  from train.tasks import common
  return common.variables(state)


def proxy_fn(method: str, model):
  """(state, batch) -> {"e": embedding [B, D], "q": proxy [B]} for single images."""
  import jax.numpy as jnp

  if method == "qan":
    def fn(state, batch):
      f, q = model.apply(state_variables(state), batch["image"], method=model.frames)
      f = f.reshape(f.shape[0], -1)
      return {"e": f, "q": jnp.mean(q, axis=-1), "norm": jnp.linalg.norm(f, axis=-1)}
  else:
    key = "quality" if method == "eqface" else "norm"

    def fn(state, batch):
      out = model.apply(state_variables(state), batch["image"])
      return {"e": out["embedding"], "q": out[key], "cos": out["cos"], "norm": out["norm"]}
  return fn


# EDC (ISO/IEC 29794-1:2024): FNMR at a threshold fixed at this FNMR before any
# discard, pAUC up to this discarded fraction (jaxset.eval.edc_pauc's defaults).
EDC_START_FNMR = 0.05
EDC_DISCARD_LIMIT = 0.2
EDC_RESAMPLES = 200  # per seed; the two-level interval draws one of them per seed
# The qualities every proxy is compared with, on the same comparisons.
EDC_BASELINES = ("random", "sharpness", "contrast", "brightness", "feature norm", "oracle")


def mated_cross_camera_pairs(q: dict, g: dict) -> tuple[np.ndarray, np.ndarray]:
  """(query index, gallery index) of every same-identity, different-camera pair:
  the mated comparisons of the re-ID protocol, every one of them."""
  same = (q["identity"][:, None] == g["identity"][None, :]) & (
      q["camera"][:, None] != g["camera"][None, :])
  return np.nonzero(same)


def quality_edc(task, state, config) -> dict:
  """EDC pAUC (FNMR) of the method's quality proxy and of every EDC_BASELINES
  quality on the test split's mated cross-camera comparisons (query x gallery,
  cosine of the embeddings; background frames included: a quality should flag
  them). Pair quality min(q_a, q_b), threshold fixed at FNMR EDC_START_FNMR,
  ties discarded together (jaxset.eval.edc_pauc). Lower is better.

  Returns edc_pauc_<source> per source ("proxy" and the baselines), and under
  "replicates" edc_pauc_proxy_minus_<baseline>: that difference on
  EDC_RESAMPLES bootstrap resamples of the comparisons, the same resamples for
  every source (paired), for the claims' two-level interval
  (jaxset.eval.stats.replicate_bootstrap).
  """
  import jax

  from jaxset.data.records import fetch
  from jaxset.eval import edc_pauc_bootstrap, image_statistics, l2_normalize
  from train.tasks import common, identities

  fn = proxy_fn(config.method, task.model(config))
  q = identities.split_embeddings(fn, state, config, "query")
  g = identities.split_embeddings(fn, state, config, "gallery")
  qi, gi = mated_cross_camera_pairs(q, g)
  scores = np.sum(l2_normalize(q["e"])[qi] * l2_normalize(g["e"])[gi], axis=1)

  def per_image(split):
    src = common.source(config, split)
    imgs = np.stack([r["image"] for r in fetch(src, np.arange(len(src)))])
    return image_statistics(imgs)

  stats_q, stats_g = per_image("query"), per_image("gallery")
  rng = np.random.default_rng(0)
  sources = {
      "proxy": (q["q"], g["q"]),
      "random": (rng.random(len(q["q"])), rng.random(len(g["q"]))),
      **{k: (stats_q[k], stats_g[k]) for k in ("sharpness", "contrast", "brightness")},
      "feature norm": (q["norm"], g["norm"]),
      "oracle": (1.0 - q["degradation"], 1.0 - g["degradation"]),
  }
  same = np.ones(len(scores), bool)
  key = jax.random.key(0)  # one key: every source is scored on the same resamples
  out, samples = {}, {}
  for name, (a, b) in sources.items():
    res = edc_pauc_bootstrap(scores, same, np.asarray(a)[qi], np.asarray(b)[gi], key=key,
                             num_resamples=EDC_RESAMPLES, starting_error=EDC_START_FNMR,
                             discard_limit=EDC_DISCARD_LIMIT)
    out[f"edc_pauc_{name}"] = float(res["pauc"])
    samples[name] = res["samples"]
  out["edc_comparisons"] = int(len(scores))
  reps = {f"edc_pauc_proxy_minus_{b}": (samples["proxy"] - samples[b]).tolist()
          for b in EDC_BASELINES}
  return {**out, "replicates": reps}


def eqface_erc(task, state, config) -> dict:
  """FNMR at a threshold fixed before rejection (initial FNMR 0.1), after dropping
  the REJECT_FRACTION of pairs with the lowest min(s_a, s_b), and after dropping
  as many at random (mean of 10 draws): jaxset.eval.error_vs_reject."""
  from jaxset.data.records import read_metadata
  from jaxset.eval import error_vs_reject, l2_normalize
  from train.tasks import common

  model = task.model(config)

  def describe_pair(state, batch):
    a = model.apply(state_variables(state), batch["image_a"])
    b = model.apply(state_variables(state), batch["image_b"])
    return {"a": a["embedding"], "b": b["embedding"], "qa": a["quality"], "qb": b["quality"]}

  src = common.source(config, "pairs")
  p = common.extract(describe_pair, state, src, config, keys=["image_a", "image_b"])
  same = read_metadata(src, ["same"])["same"].astype(bool)
  scores = np.sum(l2_normalize(p["a"]) * l2_normalize(p["b"]), axis=1)
  erc = error_vs_reject(scores, same, p["qa"], p["qb"], fnmr=ERC_START_FNMR,
                        reject_fractions=(0.0, REJECT_FRACTION))
  return {"erc_fnmr_before": float(erc["fnmr"][0]),
          "erc_fnmr_quality": float(erc["fnmr"][1]),
          "erc_fnmr_random": float(erc["fnmr_random"][1])}


def _query_gallery_embeddings(task, state, config, key: str = "embedding"):
  """The test query and gallery embeddings (model output `key`) with their metadata."""
  from train.tasks import identities

  model = task.model(config)

  def describe(state, batch):
    return {"f": model.apply(state_variables(state), batch["image"])[key]}

  return (identities.split_embeddings(describe, state, config, "query"),
          identities.split_embeddings(describe, state, config, "gallery"))


def _tiers(q) -> dict:
  """Query masks of the degradation tiers (background frames in none)."""
  from jaxset.data.synthetic_identities import BACKGROUND
  deg, present = q["degradation"], q["degradation_type"] != BACKGROUND
  return {"clean": present & (deg == 0), "mild": present & (deg > 0) & (deg < SEVERE_TIER),
          "severe": present & (deg >= SEVERE_TIER)}


def degradation_tiers(task, state, config) -> dict:
  """Rank-1 (cross-camera, torchreid rules) of the query images of each
  degradation tier against the whole gallery. Tiers by the true level: clean
  (0), mild (0 < level < SEVERE_TIER), severe (>= SEVERE_TIER). Background
  frames (identity absent, level 1) are left out of every tier: there is no
  one to recognise. Also returns, under "units", the severe tier's per-query
  rank-1 hits (their mean is tier_severe_rank1), from the same embeddings."""
  q, g = _query_gallery_embeddings(task, state, config)
  out, units = {}, {}
  for name, keep in _tiers(q).items():
    out[f"tier_{name}_queries"] = int(keep.sum())
    if keep.any():
      hits = _rank1_and_ap({k: v[keep] for k, v in q.items()}, g)["rank1"]
      out[f"tier_{name}_rank1"] = float(hits.mean())
      if name == "severe":
        units["tier_severe_rank1"] = hits
  return {**out, "units": units}


def _rank1_and_ap(q, g) -> dict:
  """Per valid query (a true match in another camera): rank-1 hit and AP."""
  from jaxset.eval import cmc_map
  r = cmc_map(q["f"], g["f"], q["identity"], g["identity"], q["camera"], g["camera"])
  return {"rank1": (r["first_rank"][r["valid"]] == 0).astype(float),
          "mAP": r["ap"][r["valid"]]}


def reid_units(task, state, config) -> dict:
  """Per valid test query: rank-1 hit and AP (means: the task's rank1 and mAP)."""
  return _rank1_and_ap(*_query_gallery_embeddings(task, state, config, key="features"))


def place_units(task, state, config) -> dict:
  """Per test query: its Recall@1 hit (mean: the task's recall@1)."""
  fq, fdb = place_features(task, state, config)
  q_utm, db_utm = place_utm(config)
  return {"recall@1": place_hits_at_1(fq, fdb, q_utm, db_utm,
                                      config.eval.pos_radius).astype(float)}


def casn_identification_attention(task, state, config) -> dict:
  """Consistency of the identification Grad-CAM (of each image's predicted
  identity) over the test pairs, a map that IDE and CASN both have: the mean
  attention_consistency_loss of the positive pairs whose maps are both
  non-zero (lower = more consistent), the same over negative pairs (the
  reference), and the fraction of all-zero maps among positive pairs' images."""
  import jax.numpy as jnp

  from jaxset.data.records import read_metadata
  from jaxset.models.casn import identification_attention
  from jaxset.ops.losses import attention_consistency_loss
  from train.tasks import common

  model = task.model(config)
  lcfg = task.loss_config(config)

  def attention(state, batch):
    v = state_variables(state)
    o = model.apply(v, batch["image_a"], batch["image_b"])
    m1 = identification_attention(model, v, o["feature_map"], jnp.argmax(o["logits"], -1))
    m2 = identification_attention(model, v, o["feature_map_b"], jnp.argmax(o["logits_b"], -1))
    ones = jnp.ones(m1.shape[:1], jnp.float32)
    return {"d": attention_consistency_loss(m1, m2, ones, threshold=lcfg.consistency_threshold,
                                            size=lcfg.consistency_size),
            "z1": jnp.max(m1, axis=(1, 2)) <= 1e-12, "z2": jnp.max(m2, axis=(1, 2)) <= 1e-12}

  src = common.source(config, "pairs")
  r = common.extract(attention, state, src, config, keys=["image_a", "image_b"])
  same = read_metadata(src, ["same"])["same"].astype(bool)
  live = ~(r["z1"] | r["z2"])
  out = {"id_attention_zero_maps": float(np.mean(np.concatenate([r["z1"][same],
                                                                 r["z2"][same]])))}
  if (same & live).any():
    out["id_attention_inconsistency"] = float(np.mean(r["d"][same & live]))
  if (~same & live).any():
    out["id_attention_inconsistency_neg"] = float(np.mean(r["d"][~same & live]))
  return out


def proxy_tiers(task, state, config) -> list[dict]:
  """The learned quality proxy's mean per stored degradation type and level
  (jaxset.eval.proxy_by_tier) over every query and gallery image."""
  from jaxset.data.synthetic_identities import DEGRADATION_TYPES
  from jaxset.eval import proxy_by_tier
  from train.tasks import identities

  fn = proxy_fn(config.method, task.model(config))
  q = identities.split_embeddings(fn, state, config, "query")
  g = identities.split_embeddings(fn, state, config, "gallery")
  cat = lambda k: np.concatenate([q[k], g[k]])
  return proxy_by_tier(cat("q"), cat("degradation_type"), cat("degradation"),
                       DEGRADATION_TYPES, LEVEL_EDGES)


# The setups whose learned quality proxy is tabulated by tier, and its name.
PROXIES = {"qan": "QAN mu", "eqface": "EQFace s_i", "adaface": "AdaFace norm",
           "arcface": "ArcFace norm"}

EXTRA: dict[str, Callable] = {
    "eqface": eqface_erc, "adaface": degradation_tiers, "arcface": degradation_tiers,
    "casn": casn_identification_attention, "ide": casn_identification_attention,
}

# Per-unit values (queries) of the judged metrics, for the claims' paired intervals:
# setup -> fn(task, state, config) -> {metric: [units] float}, whose means are the metrics.
# (An EXTRA measure that already holds them returns them under "units" instead:
# degradation_tiers, for AdaFace / ArcFace's severe tier.)
UNITS: dict[str, Callable] = {
    "casn": reid_units, "ide": reid_units,
    **{s: place_units for s in ("netvlad", "netvlad_avg", "netvlad_max", "netvlad_gem")},
}


def data_facts(config) -> dict:
  """How many test tracklets (and set pairs) hold at least one degraded frame."""
  from jaxset.data.records import read_metadata
  from train.tasks import common

  tracklets, degraded = set(), set()
  for split in ("query", "gallery"):
    m = read_metadata(common.source(config, split), ["tracklet", "degradation"])
    tracklets |= set(m["tracklet"].tolist())
    degraded |= set(m["tracklet"][m["degradation"] > 0].tolist())
  p = read_metadata(common.source(config, "set_pairs"), ["tracklet_a", "tracklet_b"])
  either = [int(a) in degraded or int(b) in degraded for a, b in zip(p["tracklet_a"],
                                                                    p["tracklet_b"])]
  return {"tracklets_degraded": len(degraded), "tracklets": len(tracklets),
          "set_pairs_degraded": int(np.sum(either)), "set_pairs": len(either)}


# -- places (the NetVLAD baselines and diagnosis) --------------------------------

def place_hits_at_1(fq, fdb, q_utm, db_utm, radius: float) -> np.ndarray:
  """Per-query top-1 hit (bool [Q]) under the evaluation protocol."""
  from jaxset.eval import recall_at_n
  _, idx, _ = recall_at_n(fq, fdb, q_utm, db_utm, ns=(1,), pos_radius=radius,
                          return_neighbors=True)
  return np.linalg.norm(np.asarray(db_utm)[idx[:, 0]] - np.asarray(q_utm), axis=-1) <= radius


def place_features(task, state, config):
  """[query descriptors, database descriptors] of a VPR state on config.eval.split."""
  from train.tasks import common
  model = task.model(config)
  split = config.eval.split

  def describe(state, batch):
    return {"f": model.apply({"params": state.params, **state.model_state},
                             batch["image"])["descriptor"]}

  out = []
  for part in ("queries", "database"):
    src = common.source(config, f"{split}_{part}")
    out.append(common.extract(describe, state, src, config, keys=["image"])["f"])
  return out


def place_utm(config):
  """[query UTM, database UTM] of config.eval.split."""
  from jaxset.data.records import read_metadata
  from train.tasks import common
  split = config.eval.split
  return [read_metadata(common.source(config, f"{split}_{p}"), ["utm"])["utm"]
          for p in ("queries", "database")]
