"""Why each learned quality proxy does or does not track image quality, by mechanism.

  python -m benchmarks.quality_diagnosis
      [--methods qan,qan_adam,eqface,adaface,arcface,magface,adaface_oracle]
      [--budget 1.0] [--seed 0] [--workdir runs/quality_diagnosis]
      [--out docs/quality_diagnosis.md] [--quick]

Trains each method's default config (configs/<method>.py, train.steps scaled
by --budget; a finished run in the workdir is reused) and measures, on the
trained state, the proxy that the method learns without quality labels (QAN's
mu, EQFace's s_i, the feature norm of AdaFace and ArcFace):

- by tier: the proxy's mean per stored degradation type and level
  (jaxset.eval.proxy_by_tier) on the test images, and Spearman rho overall;
- on probes: clean test images degraded after the fact (jaxset.data.probes:
  blur, low resolution, JPEG, dark exposure, sensor noise, occlusion), the
  proxy's mean per level and the cosine of each embedding to its clean one,
  so a proxy that learned only the training tiers shows it;
- input statistics: rho of the proxy against the image's pixel contrast and
  high-frequency energy (does it read the signal's energy, not its quality?);
- fit of the training split by tier: the classifier's target cosine on the
  TRAINING images, which is what loss (6) (EQFace) and the margin see: a tier
  that is fitted as well as the clean one gives s_i no reason to fall;
- QAN only: set verification with the learned mu against an oracle quality
  (mu = 1 - true level) and mean pooling, and the eq. (8) gradient each frame
  receives on training triplets, by tier.

Two diagnoses that are no method of their own: qan_adam (QAN's quality branch
on the run's Adam with its steps scaled by 0.1, the recipe before the branch
got its own SGD) and adaface_oracle (AdaFace whose margin reads an oracle
quality from the stored level instead of the norm). Each method also gets the
proxy's rank within tracklets against across the test set, the clean tier's
spread by tracklet, identity and camera, an error-versus-reject test on clean
pairs only, and the proxy by type at checkpoints over training (EQFace: the
ends of its three steps; QAN: eq. (8)'s gradient at each; AdaFace: its EMA
statistics); the face methods their rank-1 by tier.

--quick: the tiny datasets and a few steps (checks the script end to end; its
numbers mean nothing).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import runs  # noqa: E402
from benchmarks.measures import (  # noqa: E402
  LEVEL_EDGES,
  degradation_tiers,
  proxy_fn,
  state_variables,
)
from benchmarks.report import kept_notes  # noqa: E402
from configs.base import with_overrides  # noqa: E402

METHODS = ("qan", "qan_adam", "eqface", "adaface", "arcface", "magface", "adaface_oracle")
# Diagnoses that are no method of their own: a method's config with overrides
# (QAN's quality branch on the run's Adam scaled by 0.1, the recipe before the
# branch got its own SGD) or with another task (AdaFace with an oracle margin).
VARIANTS = {"qan_adam": ("qan", {"qan.quality_optimizer": "run"}),
            "adaface_oracle": ("adaface", {})}
CONFIG_OF = {k: v[0] for k, v in VARIANTS.items()}
PROBE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
NUM_PROBE_IMAGES = 160
REJECT = 0.2                         # share of pairs the error-versus-reject tests drop
QUICK = {**runs.QUICK, "train.steps": 6}


def make_config(method: str, budget: float, seed: int, quick: bool, quick_data: str = ""):
  config = importlib.import_module(f"configs.{CONFIG_OF.get(method, method)}").get_config()
  steps = {"train.steps": max(1, int(round(config.train.steps * budget)))}
  over = runs.run_overrides(steps, seed, QUICK if quick else None, quick_data,
                            VARIANTS.get(method, ("", {}))[1])
  return with_overrides(config, over)


def task_for(method: str):
  from train import tasks
  return (oracle_margin_task() if method == "adaface_oracle"
          else tasks.get(CONFIG_OF.get(method, method)))


def keep_checkpoints_at(config, steps) -> None:
  """Checkpoints every gcd(steps) and keeps them all, so each step is restorable."""
  every = int(np.gcd.reduce(np.asarray(steps, np.int64)))
  config.train.ckpt_every = every
  config.train.keep_checkpoints = config.train.steps // every + 1


# -- per-image proxies ------------------------------------------------------------


def _images(src, idx):
  from jaxset.data.records import fetch
  return np.stack([r["image"] for r in fetch(src, np.asarray(idx))])


def _cosine(a, b):
  a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
  b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
  return np.sum(a * b, axis=1)


def tiers_and_probes(method, task, state, config) -> dict:
  """The proxy by stored tier (test images), on probes, and against input energy."""
  from scipy import ndimage

  from jaxset.data import probes
  from jaxset.data.synthetic_identities import BACKGROUND, DEGRADATION_TYPES
  from jaxset.eval import proxy_by_tier, spearman
  from train.tasks import common, identities

  model = task.model(config)
  fn = proxy_fn(method, model)
  res = {}
  q = identities.split_embeddings(fn, state, config, "query")
  g = identities.split_embeddings(fn, state, config, "gallery")
  proxy = np.concatenate([q["q"], g["q"]])
  deg = np.concatenate([q["degradation"], g["degradation"]])
  dtype = np.concatenate([q["degradation_type"], g["degradation_type"]])
  res["tiers"] = proxy_by_tier(proxy, dtype, deg, DEGRADATION_TYPES, LEVEL_EDGES)
  res["rho"] = spearman(proxy, deg)
  present = dtype != BACKGROUND
  res["rho_no_background"] = spearman(proxy[present], deg[present])
  for k, name in enumerate(DEGRADATION_TYPES[1:BACKGROUND], start=1):
    keep = (dtype == 0) | (dtype == k)
    res[f"rho_{name}"] = spearman(proxy[keep], deg[keep])

  # Input energy: the normalised image's contrast and its Laplacian energy.
  srcs = [common.source(config, "query"), common.source(config, "gallery")]
  imgs = np.concatenate([_images(s, np.arange(len(s))) for s in srcs]).astype(np.float32) / 255
  contrast = imgs.std(axis=(1, 2, 3))
  hf = np.stack([np.abs(ndimage.laplace(im.mean(-1))).mean() for im in imgs])
  res["rho_contrast"] = spearman(proxy, contrast)
  res["rho_high_frequency"] = spearman(proxy, hf)

  # Probes on clean query images.
  src = srcs[0]
  clean = np.nonzero(q["degradation_type"] == 0)[0][:NUM_PROBE_IMAGES]
  base = _images(src, clean)
  ref = None
  res["probes"] = {}
  for kind in probes.PROBES:
    rows, levels_all, q_all = [], [], []
    for level in PROBE_LEVELS:
      batch = [{"image": im} for im in probes.degrade_batch(base, kind, level, seed=1)]
      out = common.extract(fn, state, batch, config, keys=["image"])
      if ref is None:
        ref = out["e"]
      rows.append({"level": level, "mean": float(out["q"].mean()),
                   "cos_to_clean": float(_cosine(out["e"], ref).mean())})
      levels_all.append(np.full(len(base), level))
      q_all.append(out["q"])
    res["probes"][kind] = {"rows": rows,
                           "rho": spearman(np.concatenate(q_all), np.concatenate(levels_all))}
  return res


def train_fit(method, task, state, config) -> list[dict]:
  """The classifier's target cosine and accuracy on the TRAINING images, by tier."""
  from jaxset.data.records import read_metadata
  from jaxset.data.synthetic_identities import DEGRADATION_TYPES
  from jaxset.eval import proxy_by_tier
  from train.tasks import common

  if method == "qan":
    return []
  model = task.model(config)
  fn = proxy_fn(method, model)
  src = common.source(config, "train")
  out = common.extract(fn, state, src, config, keys=["image"])
  meta = read_metadata(src, ["label", "degradation", "degradation_type"])
  lab = meta["label"]
  target = out["cos"][np.arange(len(lab)), lab]
  correct = (np.argmax(out["cos"], axis=1) == lab).astype(np.float64)
  cos_rows = proxy_by_tier(target, meta["degradation_type"], meta["degradation"],
                           DEGRADATION_TYPES, LEVEL_EDGES)
  acc_rows = proxy_by_tier(correct, meta["degradation_type"], meta["degradation"],
                           DEGRADATION_TYPES, LEVEL_EDGES)
  q_rows = proxy_by_tier(out["q"], meta["degradation_type"], meta["degradation"],
                         DEGRADATION_TYPES, LEVEL_EDGES)
  return [{**c, "target_cos": c["mean"], "accuracy": a["mean"], "proxy": p["mean"]}
          for c, a, p in zip(cos_rows, acc_rows, q_rows)]


def qan_sets(task, state, config) -> dict:
  """Set verification / re-ID with learned mu, an oracle (1 - true level) and the mean."""
  import jax.numpy as jnp

  from jaxset.data.records import read_metadata
  from jaxset.eval import cmc_map, kfold_verification_accuracy
  from train.tasks import common

  model = task.model(config)
  fc = state.params["set_fc"]

  def frames(state, batch):
    f, q = model.apply(state_variables(state), batch["image"], method=model.frames)
    return {"f": f.reshape(f.shape[0], -1), "q": jnp.mean(q, axis=-1)}

  emb, info = {}, {}
  weights = {}
  for split in ("query", "gallery"):
    src = common.source(config, split)
    out = common.extract(frames, state, src, config, keys=["image"])
    meta = read_metadata(src)
    info[split] = meta
    deg = meta["degradation"]
    weights[split] = {"learned mu": out["q"], "oracle 1 - level": np.clip(1.0 - deg, 0, 1),
                      "mean": np.ones_like(deg)}
    emb[split] = {}
    tids = meta["tracklet"]
    for name, w in weights[split].items():
      rows = []
      for t in np.unique(tids):
        m = tids == t
        ww = w[m]
        ww = ww if ww.sum() > 1e-12 else np.ones_like(ww)
        pooled = (ww[:, None] * out["f"][m]).sum(0) / ww.sum()
        rows.append(pooled @ np.asarray(fc["kernel"]) + np.asarray(fc["bias"]))
      e = np.stack(rows)
      emb[split][name] = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
  pairs = read_metadata(common.source(config, "set_pairs"))
  row = {}
  for split in ("query", "gallery"):
    for i, t in enumerate(np.unique(info[split]["tracklet"])):
      row[int(t)] = (split, i)
  res = {}
  for name in weights["query"]:
    pick = lambda ts: np.stack([emb[row[int(t)][0]][name][row[int(t)][1]] for t in ts])
    acc = kfold_verification_accuracy(pick(pairs["tracklet_a"]), pick(pairs["tracklet_b"]),
                                      pairs["same"].astype(bool), fold_ids=pairs["fold"])
    first = {s: np.array([np.nonzero(info[s]["tracklet"] == t)[0][0]
                          for t in np.unique(info[s]["tracklet"])]) for s in info}
    r = cmc_map(emb["query"][name], emb["gallery"][name],
                info["query"]["identity"][first["query"]],
                info["gallery"]["identity"][first["gallery"]],
                info["query"]["camera"][first["query"]],
                info["gallery"]["camera"][first["gallery"]])
    res[name] = {"set_pair_acc": float(acc["accuracy_mean"]), "set_rank1": float(r["rank1"]),
                 "set_mAP": float(r["mAP"])}
  return res


def qan_mu_gradients(task, state, config, num_batches: int = 8) -> list[dict]:
  """dL/dmu_i of the set triplet loss (eq. (8)) on training triplets, by frame tier.

  Gradient descent moves mu_i by -lr * dL/dmu_i: a positive mean gradient on a
  tier pushes its mu down. Also the share of triplets with a non-zero loss (the
  only ones that give mu any gradient)."""
  import jax
  import jax.numpy as jnp

  from jaxset.data.samplers.sets import set_triplet_batches
  from jaxset.data.synthetic_identities import DEGRADATION_TYPES
  from jaxset.eval import proxy_by_tier
  from jaxset.models.heads import l2_normalize
  from jaxset.ops.losses import set_triplet_loss
  from jaxset.ops.pooling import quality_pool
  from train.tasks import common
  from train.tasks.qan import fill_padding

  model = task.model(config)
  cq = config.qan
  v = state_variables(state)
  fc = state.params["set_fc"]

  @jax.jit
  def grads(batch):
    parts = [batch["anchor"], batch["positive"], batch["negative"]]
    images = jnp.concatenate([fill_padding(p["images"], p["mask"]) for p in parts])
    mask = jnp.concatenate([p["mask"] for p in parts])
    b, s = images.shape[:2]
    f, q = model.apply(v, images.reshape((b * s,) + images.shape[2:]), method=model.frames)
    f = f.reshape(b, s, -1)
    mu = jnp.mean(q, -1).reshape(b, s)

    def loss(mu):
      pooled = quality_pool(f, mu, mask)
      e = l2_normalize(pooled @ fc["kernel"] + fc["bias"])
      n = b // 3
      per = set_triplet_loss(e[:n], e[n:2 * n], e[2 * n:], margin=cq.margin)
      return jnp.mean(per), per
    (_, per), g = jax.value_and_grad(loss, has_aux=True)(mu)
    return g, per

  ds = set_triplet_batches(
      common.source(config, "train"), batch_size=cq.sets_per_batch,
      set_size=tuple(cq.set_size_range) if cq.set_size_range else cq.set_size,
      seed=config.seed + 1000, image_fn=common.image_fn(config, train=True))
  gs, types, levels, active = [], [], [], []
  for _, batch in zip(range(num_batches), iter(ds)):
    g, per = grads(batch)
    parts = [batch["anchor"], batch["positive"], batch["negative"]]
    mask = np.concatenate([p["mask"] for p in parts])
    deg = np.concatenate([p["degradation"] for p in parts])
    if "degradation_type" in parts[0]:
      dty = np.concatenate([p["degradation_type"] for p in parts])
    else:  # types are not in the set batches: level 0 is clean, else "degraded"
      dty = np.where(deg > 0, 1, 0)
    gs.append(np.asarray(g)[mask])
    types.append(dty[mask])
    levels.append(deg[mask])
    active.append(np.asarray(per) > 0)
  g, t, lv = np.concatenate(gs), np.concatenate(types), np.concatenate(levels)
  names = DEGRADATION_TYPES if "degradation_type" in batch["anchor"] else ("clean", "degraded")
  rows = proxy_by_tier(g, t, lv, names, LEVEL_EDGES)
  share = float(np.mean(np.concatenate(active)))
  for r in rows:
    r["active_triplets"] = share
  return rows


def _auc_below(clean, degraded) -> tuple[float, int]:
  """(U, n_c * n_d): U counts the (clean, degraded) pairs whose degraded proxy is
  below the clean one, ties half (Mann-Whitney); U / (n_c n_d) is the AUC."""
  from scipy.stats import rankdata
  r = rankdata(np.concatenate([clean, degraded]))
  n = len(clean)
  return float(r[:n].sum() - n * (n + 1) / 2), n * len(degraded)


def _between_share(values, groups) -> float:
  """Share of the variance of `values` that lies between the means of `groups`."""
  total = np.sum((values - values.mean()) ** 2)
  if total == 0:
    return 0.0
  between = sum(np.sum(groups == k) * (values[groups == k].mean() - values.mean()) ** 2
                for k in np.unique(groups))
  return float(between / total)


def within_tracklets(method, task, state, config) -> dict:
  """Ranks within a tracklet against ranks across the test set.

  A tracklet is one person under one camera at one time, so comparing the
  degraded frames of a tracklet with its clean frames holds the content
  fixed. AUC = P(a degraded frame's proxy < a clean frame's), ties half:
  over every (clean, degraded) pair of the test images ("global"), and over
  the pairs within each tracklet ("within"). QAN's eq. (2) is invariant to a
  common scale of a set's mu, so its loss trains the within-set contrast
  only; rho over all images also needs a scale that is comparable across
  sets. The clean tier's spread is split into what lies between tracklets,
  identities and cameras."""
  from train.tasks import identities

  fn = proxy_fn(method, task.model(config))
  q = identities.split_embeddings(fn, state, config, "query")
  g = identities.split_embeddings(fn, state, config, "gallery")
  cat = lambda k: np.concatenate([q[k], g[k]])
  proxy, lv, tid = cat("q").astype(np.float64), cat("degradation"), cat("tracklet")
  clean, bad = lv == 0, lv > 0
  u, n = _auc_below(proxy[clean], proxy[bad])
  u_in = n_in = 0
  for t in np.unique(tid[bad]):
    m = tid == t
    if (m & clean).any():
      du, dn = _auc_below(proxy[m & clean], proxy[m & bad])
      u_in, n_in = u_in + du, n_in + dn
  return {"auc_global": u / n, "auc_within": u_in / max(n_in, 1), "pairs_within": int(n_in),
          "clean_between_tracklets": _between_share(proxy[clean], tid[clean]),
          "clean_between_identities": _between_share(proxy[clean], cat("identity")[clean]),
          "clean_between_cameras": _between_share(proxy[clean], cat("camera")[clean])}


def clean_pairs_erc(method, task, state, config) -> dict:
  """Is the proxy's spread among CLEAN images quality? The error-versus-reject
  test on the test pairs whose two images are both clean (level 0, so the
  stored level cannot tell them apart): FNMR at the threshold that gives 0.1
  on those pairs, after dropping the REJECT share with the lowest
  min(q_a, q_b), against dropping as many at random."""
  from jaxset.data.records import read_metadata
  from jaxset.eval import error_vs_reject
  from train.tasks import common

  fn = proxy_fn(method, task.model(config))

  def describe_pair(state, batch):
    a, b = fn(state, {"image": batch["image_a"]}), fn(state, {"image": batch["image_b"]})
    return {"a": a["e"], "b": b["e"], "qa": a["q"], "qb": b["q"]}

  src = common.source(config, "pairs")
  p = common.extract(describe_pair, state, src, config, keys=["image_a", "image_b"])
  meta = read_metadata(src, ["same", "degradation_a", "degradation_b"])
  keep = (meta["degradation_a"] == 0) & (meta["degradation_b"] == 0)
  same = meta["same"].astype(bool)[keep]
  scores = _cosine(p["a"][keep], p["b"][keep])
  erc = error_vs_reject(scores, same, p["qa"][keep], p["qb"][keep], fnmr=0.1,
                        reject_fractions=(0.0, REJECT))
  return {"pairs": int(keep.sum()), "genuine": int(same.sum()),
          "fnmr_before": float(erc["fnmr"][0]), "fnmr_quality": float(erc["fnmr"][1]),
          "fnmr_random": float(erc["fnmr_random"][1])}


def checkpoint_steps(method, task, config) -> list[int]:
  """The steps whose state over_training reads: a quarter, half, three
  quarters and the end of the run, plus every stage boundary (QAN's start
  of set training; the ends of EQFace's steps 1, 2 and 3)."""
  total = config.train.steps
  bounds = np.cumsum([st.steps for st in task.stages(config)]).tolist()
  return sorted({int(round(total * f)) for f in (0.25, 0.5, 0.75, 1.0)} | set(bounds))


def over_training(method, task, config, run_dir: Path, steps) -> list[dict]:
  """The proxy by degradation type (levels pooled) at each checkpoint step, and
  for QAN the mean eq. (8) gradient dL/dmu on clean and on degraded frames."""
  from jaxset.data.synthetic_identities import DEGRADATION_TYPES
  from jaxset.eval import spearman
  from train.eval import restore_state
  from train.tasks import identities

  fn = proxy_fn(method, task.model(config))
  rows = []
  for step in steps:
    state, _ = restore_state(task, config, run_dir, str(step))
    q = identities.split_embeddings(fn, state, config, "query")
    g = identities.split_embeddings(fn, state, config, "gallery")
    cat = lambda k: np.concatenate([q[k], g[k]])
    proxy, kind = cat("q"), cat("degradation_type")
    row = {"step": int(step), "rho": spearman(proxy, cat("degradation")),
           "clean_std": float(proxy[kind == 0].std())}
    row.update({name: float(proxy[kind == k].mean()) for k, name in enumerate(DEGRADATION_TYPES)
                if (kind == k).any()})
    stats = state.model_state.get("adaface_stats")
    if stats:  # the EMA statistics AdaFace's margin normalises the norm with
      row["ema_mean"], row["ema_std"] = (float(stats["head"][k]) for k in ("mean", "std"))
    if method == "qan" and step > task.stages(config)[0].steps:
      grads = qan_mu_gradients(task, state, config, num_batches=4)
      row["grad_clean"] = next(r["mean"] for r in grads if r["type"] == "clean")
      bad = [r for r in grads if r["type"] != "clean"]
      row["grad_degraded"] = float(sum(r["mean"] * r["n"] for r in bad) /
                                   max(sum(r["n"] for r in bad), 1))
      row["active_triplets"] = grads[0]["active_triplets"]
    rows.append(row)
  return rows


def oracle_margin_task():
  """AdaFace whose margin reads an oracle quality, 20 - 10 x the stored level
  (clean 20, the worst 10; on the norms' scale, so the head's EMA statistics,
  which start at 20 and 100, settle as fast as for the norm), instead of the
  feature norm. It asks whether a perfect quality signal would make AdaFace's
  margin pay off on this data: a diagnosis only, since it trains on the
  stored levels."""
  import jax.numpy as jnp

  from train.tasks import adaface

  class OracleMargin(adaface.Task):
    def margin_quality(self, batch):
      return 20.0 - 10.0 * jnp.clip(batch["degradation"], 0.0, 1.0)

  return OracleMargin()


def rho_ceilings(config, seed: int = 0) -> list[dict]:
  """What Spearman rho a proxy can reach on the test levels: most images are
  clean, all tied at level 0, so any spread of the proxy within the clean tier
  bounds |rho|. Synthetic proxies: unit-variance noise plus a shift of d noise
  SDs, linear in the level (d at level 1) or one step for every degraded image;
  and a proxy that ranks every clean image above every degraded one but is
  random among the clean ones."""
  from jaxset.data.records import read_metadata
  from jaxset.eval import spearman
  from train.tasks import common

  lv = np.concatenate([read_metadata(common.source(config, s), ["degradation"])
                       ["degradation"] for s in ("query", "gallery")])
  rng = np.random.default_rng(seed)
  noise = rng.normal(0.0, 1.0, lv.size)
  rows = [{"proxy": "clean above every degraded, random among the clean",
           "rho": spearman(np.where(lv == 0, rng.uniform(0, 1, lv.size), -lv), lv)}]
  for d in (1.0, 2.0, 3.0):
    rows.append({"proxy": f"noise - {d:g} SD x level", "rho": spearman(noise - d * lv, lv)})
  for d in (1.0, 2.0, 3.0):
    rows.append({"proxy": f"noise - {d:g} SD if degraded", "rho": spearman(noise - d * (lv > 0),
                                                                          lv)})
  share = float(np.mean(lv == 0))
  for r in rows:
    r["clean_share"] = share
  return rows


# -- report -----------------------------------------------------------------------


def _tier_label(r):
  if r["type"] in ("clean", "background") or r["lo"] == r["hi"]:
    return r["type"]
  return f"{r['type']} [{r['lo']:.1f}, {r['hi']:.1f}{']' if r['hi'] >= 1 else ')'}"


def render(results: dict, args, seconds: float) -> str:
  import jax
  lines = ["# Quality proxies by mechanism", "",
           f"Produced by `python -m benchmarks.quality_diagnosis --budget {args.budget} "
           f"--seed {args.seed}` (benchmarks/quality_diagnosis.py) on "
           f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, jax "
           f"{jax.__version__}, {seconds / 60:.1f} min. Each method is its default config "
           f"with train.steps x {args.budget}, seed {args.seed}. rho is Spearman against the "
           "true degradation level (a quality proxy should give rho <= -0.5).", ""]
  if results.get("_ceilings"):
    c = results["_ceilings"]
    lines += [f"What rho can reach on these test images ({100 * c[0]['clean_share']:.0f}% clean, "
              "tied at level 0): synthetic proxies, unit noise within each tier.", "",
              "| synthetic proxy | rho |", "|---|---|"]
    lines += [f"| {r['proxy']} | {r['rho']:.3f} |" for r in c]
    lines.append("")
  for method, r in results.items():
    if method.startswith("_"):
      continue
    t = r["tiers"]
    lines += [f"## {method}: {r['proxy']} ({r['steps']} steps)", "",
              f"rho(proxy, level) = {t['rho']:.3f} on every test image; "
              f"{t['rho_no_background']:.3f} without the background frames; "
              "clean plus one type: " + ", ".join(
                  f"{k[4:]} {t[k]:.3f}" for k in t if k.startswith("rho_") and k[4:] in
                  ("blur", "noise", "lowres", "occlusion")) + ". "
              f"Against the input: contrast {t['rho_contrast']:.3f}, "
              f"high-frequency energy {t['rho_high_frequency']:.3f}.", "",
              "| tier (test images) | n | mean | std |", "|---|---|---|---|"]
    lines += [f"| {_tier_label(x)} | {x['n']} | {x['mean']:.4g} | {x['std']:.3g} |"
              for x in t["tiers"]]
    lines += ["", "Probes (clean query images degraded after the fact): mean proxy per level "
              "(cosine of the embedding to the clean one).", "",
              "| probe | " + " | ".join(f"{lv:g}" for lv in PROBE_LEVELS) + " | rho |",
              "|---" * (len(PROBE_LEVELS) + 2) + "|"]
    for kind, p in t["probes"].items():
      cells = [f"{x['mean']:.4g} ({x['cos_to_clean']:.2f})" for x in p["rows"]]
      lines.append(f"| {kind} | " + " | ".join(cells) + f" | {p['rho']:.3f} |")
    if r.get("fit"):
      lines += ["", "Training split, by tier: the classifier's target cosine, accuracy, "
                "and the proxy.", "", "| tier (train images) | n | target cos | accuracy | "
                "proxy |", "|---|---|---|---|---|"]
      lines += [f"| {_tier_label(x)} | {x['n']} | {x['target_cos']:.3f} | {x['accuracy']:.3f}"
                f" | {x['proxy']:.4g} |" for x in r["fit"]]
    if r.get("sets"):
      lines += ["", "Set pooling weights (same frame features and set FC):", "",
                "| weights | set-pair accuracy | set rank-1 | set mAP |", "|---|---|---|---|"]
      lines += [f"| {k} | {v['set_pair_acc']:.3f} | {v['set_rank1']:.3f} | {v['set_mAP']:.3f} |"
                for k, v in r["sets"].items()]
    if r.get("mu_grad"):
      g = r["mu_grad"]
      lines += ["", f"Eq. (8) on training triplets: dL/dmu_i by frame tier (positive pushes "
                f"mu down); {100 * g[0]['active_triplets']:.0f}% of triplets have a non-zero "
                "loss.", "", "| tier | n | mean dL/dmu | std |", "|---|---|---|---|"]
      lines += [f"| {_tier_label(x)} | {x['n']} | {x['mean']:.3g} | {x['std']:.3g} |"
                for x in g]
    lines += _render_extra(r)
    lines.append("")
  lines += _render_recognition(results)
  return "\n".join(lines)


def _render_extra(r: dict) -> list[str]:
  """Within tracklets, clean pairs, and the proxy over training."""
  lines = []
  if r.get("within"):
    w = r["within"]
    lines += ["", f"Within tracklets: AUC = P(degraded frame's proxy < clean frame's) "
              f"{w['auc_global']:.3f} over every test image, {w['auc_within']:.3f} within each "
              f"tracklet ({w['pairs_within']} pairs; same person, camera and moment). Of the "
              f"clean tier's variance, {100 * w['clean_between_tracklets']:.0f}% lies between "
              f"tracklets, {100 * w['clean_between_identities']:.0f}% between identities and "
              f"{100 * w['clean_between_cameras']:.0f}% between cameras."]
  if r.get("clean_erc"):
    c = r["clean_erc"]
    lines += ["", f"Clean pairs only ({c['pairs']} test pairs, {c['genuine']} genuine, both "
              f"images at level 0): FNMR {c['fnmr_before']:.3f} before rejection; dropping the "
              f"{REJECT:.0%} with the lowest proxy gives {c['fnmr_quality']:.3f}, a random "
              f"{REJECT:.0%} {c['fnmr_random']:.3f}."]
  if r.get("training"):
    rows = r["training"]
    extra = ("step", "rho", "clean_std", "grad_clean", "grad_degraded", "active_triplets",
             "ema_mean", "ema_std")
    kinds = [k for k in rows[-1] if k not in extra]
    grads = any("grad_clean" in x for x in rows)
    ema = all("ema_std" in x for x in rows)
    head = ["step", "rho"] + kinds + ["clean std"] + (["EMA mean", "EMA std"] if ema else [])
    if grads:
      head += ["dL/dmu clean", "dL/dmu degraded", "active triplets"]
    lines += ["", "Over training: the proxy's mean by degradation type (levels pooled) at each "
              "checkpoint" + ("; eq. (8)'s mean gradient on training triplets (positive "
                              "pushes mu down)" if grads else "")
              + ("; the EMA statistics the margin z-scores the norm with (h (norm - mean) / "
                 "std, from 20 and 100)" if ema else "") + ".", "",
              "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for x in rows:
      cells = [str(x["step"]), f"{x['rho']:.3f}"] + [f"{x[k]:.4g}" if k in x else ""
                                                      for k in kinds]
      cells.append(f"{x['clean_std']:.3g}")
      if ema:
        cells += [f"{x['ema_mean']:.4g}", f"{x['ema_std']:.4g}"]
      if grads:
        cells += ([f"{x['grad_clean']:.3g}", f"{x['grad_degraded']:.3g}",
                   f"{x['active_triplets']:.2f}"] if "grad_clean" in x else ["", "", ""])
      lines.append("| " + " | ".join(cells) + " |")
  return lines


def _render_recognition(results: dict) -> list[str]:
  """Rank-1 by tier of the face methods, the oracle margin among them."""
  rows = {m: r["recognition"] for m, r in results.items()
          if not m.startswith("_") and r.get("recognition")}
  if not rows:
    return []
  lines = ["## Recognition by tier", "",
           "Rank-1 of the query images of each tier against the whole gallery (cross-camera; "
           "tiers by the true level: clean 0, mild (0, 0.6), severe [0.6, 1], background "
           "frames in none). adaface_oracle is AdaFace whose margin reads 20 - 10 x the stored "
           "level instead of the norm: what a perfect quality signal would do to its margin.",
           "", "| method | clean | mild | severe |", "|---|---|---|---|"]
  for m, x in rows.items():
    lines.append(f"| {m} | " + " | ".join(f"{x.get(f'tier_{t}_rank1', float('nan')):.3f}"
                                          for t in ("clean", "mild", "severe")) + " |")
  return lines + [""]


PROXY = {"qan": "mu", "qan_adam": "mu (the branch on Adam x 0.1)", "eqface": "s_i",
         "adaface": "feature norm", "arcface": "feature norm",
         "magface": "feature magnitude (MagFace's quality)",
         "adaface_oracle": "feature norm (the margin reads the oracle)"}


def run_method(method: str, args, workdir: Path) -> dict:
  from train import loop

  quick_data = str((workdir / "quick_data").absolute()) if args.quick else ""
  config = make_config(method, args.budget, args.seed, args.quick, quick_data)
  task = task_for(method)
  steps = checkpoint_steps(method, task, config)
  keep_checkpoints_at(config, steps)
  run_dir = workdir / f"{method}_x{args.budget:g}_seed{args.seed}{'_quick' if args.quick else ''}"
  summary = loop.train_and_evaluate(config, run_dir, task)
  state = summary["state"]
  proxy_method = CONFIG_OF.get(method, method)
  res = {"proxy": PROXY[method], "steps": int(summary["step"]),
         "after": {k: float(v) for k, v in summary["after"].items()},
         "tiers": tiers_and_probes(proxy_method, task, state, config),
         "fit": train_fit(proxy_method, task, state, config),
         "within": within_tracklets(proxy_method, task, state, config),
         "clean_erc": clean_pairs_erc(proxy_method, task, state, config),
         "training": over_training(proxy_method, task, config, run_dir, steps)}
  if proxy_method == "qan":
    res["sets"] = qan_sets(task, state, config)
    res["mu_grad"] = qan_mu_gradients(task, state, config)
  else:
    tiers = degradation_tiers(task, state, config)
    tiers.pop("units")   # the claims' per-query values; not part of this report
    res["recognition"] = tiers
  return res


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--budget", type=float, default=1.0, help="x the config's train.steps")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", default="runs/quality_diagnosis")
  p.add_argument("--out", default="", help="markdown report (default: print only)")
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]  # none: only the rho ceilings
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}.")
  workdir = Path(args.workdir)
  t0 = time.perf_counter()
  quick_data = str((workdir / "quick_data").absolute()) if args.quick else ""
  results = {"_ceilings": rho_ceilings(make_config("qan", 1.0, args.seed, args.quick, quick_data))}
  results.update({m: run_method(m, args, workdir) for m in methods})
  text = render(results, args, time.perf_counter() - t0)
  print(text)
  if args.out:
    Path(args.out).write_text(text + "\n" + kept_notes(Path(args.out)))
  return results


if __name__ == "__main__":
  main()
