"""QAN (Liu et al., CVPR 2017): quality-aware set embedding, trained without quality labels.

Two stages (sec. 3.2): single-image softmax pretraining of the trunk and
feature branch, then set triplet training through quality_pool, where the
quality branch learns from eq. (8) alone. Evaluation is set-level: tracklet
verification on "set_pairs" (10-fold), tracklet re-identification (query
vs gallery tracklets, rank-1/mAP), and the Spearman correlation of the
learned per-frame quality mu with the ground-truth degradation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxset.data.records import fetch, read_metadata
from jaxset.data.samplers.sets import set_triplet_batches
from jaxset.eval import cmc_map, kfold_verification_accuracy
from jaxset.models import QAN
from jaxset.models.heads import l2_normalize, softmax_cross_entropy
from jaxset.ops.losses import set_triplet_loss
from jaxset.ops.pooling import mean_pool
from train import optim, task
from train.tasks import common, identities


def fill_padding(images, mask):
  """Padded frames repeat the set's first frame: they get no pooling weight, and
  BatchNorm statistics see real frames instead of black ones."""
  return jnp.where(mask[:, :, None, None, None], images, images[:, :1])


class Task(task.Task):

  def build_model(self, config):
    return common.model_from_config(QAN, config, num_classes=identities.num_classes(config))

  def create_state(self, config, rng):
    h, w = config.data.image_size
    s = config.qan.set_size
    return common.create_state(self.model(config), config, rng,
                               jnp.zeros((1, s, h, w, 3), jnp.uint8), config.train.steps,
                               tx=self.optimizer(config), mask=jnp.ones((1, s), bool))

  def optimizer(self, config):
    """The run's optimiser, with the quality branch on its own solver.

    Eq. (2) is invariant to a common rescaling of a set's mu, so the set loss
    gives the branch's overall offset almost no gradient. Adam normalises that
    near-zero gradient into full-size steps: the offset random-walks until the
    sigmoid saturates (mu = 1 for every frame, mean pooling, no gradient
    left). config.qan.quality_optimizer:
      "sgd": SGD with momentum 0.9 at qan.quality_lr on the run's schedule
        (the paper's Caffe solver): a step in proportion to the gradient, so
        the offset stays where the loss leaves it and the directions that eq.
        (8) does train move at their own rate;
      "run": the run's optimiser with the branch's steps scaled by
        qan.quality_lr_scale (Adam at 0.1 keeps mu out of saturation but
        leaves the branch near its initialisation in a default run).
    """
    base = optim.make_optimizer(config.optim, config.train.steps)
    cq = config.qan
    if cq.quality_optimizer == "sgd":
      lr = optim.schedule(config.optim, config.train.steps)
      branch = optax.sgd(lambda step: lr(step) * (cq.quality_lr / config.optim.lr),
                         momentum=0.9)
    elif cq.quality_optimizer == "run":
      if cq.quality_lr_scale == 1.0:
        return base
      branch = optax.chain(base, optax.scale(cq.quality_lr_scale))
    else:
      raise ValueError(f"config.qan.quality_optimizer={cq.quality_optimizer!r}; use 'sgd' "
                       "(the branch's own SGD) or 'run' (the run's optimiser, scaled).")
    labels = lambda params: {k: "quality" if k == "quality_branch" else "rest" for k in params}
    return optax.multi_transform({"rest": base, "quality": branch}, labels)

  def stages(self, config):
    model = self.model(config)
    cq = config.qan

    def pretrain_step(state, batch):
      def loss_fn(params):
        logits, new_state = common.apply(model, state, batch["image"], params=params,
                                         train=True, method=model.classify)
        return softmax_cross_entropy(logits, batch["label"]), new_state

      (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      return state.apply_gradients(grads=grads, model_state=new_state), {"loss": loss}

    def set_step(state, batch):
      parts = [batch["anchor"], batch["positive"], batch["negative"]]
      images = jnp.concatenate([fill_padding(p["images"], p["mask"]) for p in parts])
      mask = jnp.concatenate([p["mask"] for p in parts])
      labels = jnp.concatenate([p["label"] for p in parts])
      b = parts[0]["mask"].shape[0]

      def loss_fn(params):
        out, new_state = common.apply(model, state, images, mask, params=params, train=True)
        e = l2_normalize(out["embedding"])
        triplet = jnp.mean(set_triplet_loss(e[:b], e[b:2 * b], e[2 * b:], margin=cq.margin))
        loss = triplet
        if cq.softmax_weight:
          # The official code keeps an identity loss on the frames during set training.
          frame_labels = jnp.where(mask, labels[:, None], -1).reshape(-1)
          logits = out["frame_logits"].reshape(-1, out["frame_logits"].shape[-1])
          loss = loss + cq.softmax_weight * softmax_cross_entropy(logits, frame_labels)
        return loss, (new_state, out, triplet)

      (loss, (new_state, out, triplet)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(state.params)
      q = out["quality"] if out["quality"].ndim == 2 else jnp.mean(out["quality"], -1)
      deg = jnp.concatenate([p["degradation"] for p in parts])
      clean = mask & (deg >= 0) & (deg < 0.05)
      bad = mask & (deg >= 0.5)
      metrics = {"loss": loss, "triplet": triplet,
                 "mu_clean": jnp.sum(q * clean) / jnp.maximum(jnp.sum(clean), 1),
                 "mu_degraded": jnp.sum(q * bad) / jnp.maximum(jnp.sum(bad), 1)}
      return state.apply_gradients(grads=grads, model_state=new_state), metrics

    def sets_iterator():
      ds = set_triplet_batches(
          common.source(config, "train"), batch_size=cq.sets_per_batch,
          set_size=tuple(cq.set_size_range) if cq.set_size_range else cq.set_size,
          seed=config.seed, image_fn=common.image_fn(config, train=True))
      return iter(ds)

    n_pre = int(round(cq.pretrain_fraction * config.train.steps))
    return [task.Stage("pretrain", n_pre, lambda: identities.pk_iterator(config), pretrain_step),
            task.Stage("sets", config.train.steps - n_pre, sets_iterator, set_step)]

  # -- evaluation ------------------------------------------------------------------
  def _query_gallery(self, config):
    """(split, camera or None) of the query and the gallery tracklets: the dataset's
    query / gallery splits (embedded data, MARS), else PRID2011 / iLIDS-VID's
    protocol on the "test" identities: camera 0 tracklets query camera 1's."""
    have = common.splits(config)
    if {"query", "gallery"} <= have:
      return [("query", None), ("gallery", None)]
    if "test" in have:
      return [("test", 0), ("test", 1)]
    raise ValueError(f"{config.data.name!r} has neither query/gallery nor test splits "
                     f"(it has {sorted(have)}): nothing to evaluate QAN on.")

  def _tracklet_sets(self, config, split, camera=None):
    """Every tracklet of a split (of one camera) as one padded set (all its frames,
    in order)."""
    src = common.source(config, split)
    meta = read_metadata(src)
    order = np.lexsort((meta["frame"], meta["tracklet"]))
    if camera is not None:
      order = order[meta["camera"][order] == camera]
    tids, starts = np.unique(meta["tracklet"][order], return_index=True)
    groups = np.split(order, starts[1:])
    s = max(len(g) for g in groups)
    resize = common.image_fn(config, train=False)
    images = np.stack([resize(np.asarray(r["image"]))
                       for r in fetch(src, np.arange(len(src)))])
    h, w = images.shape[1:3]
    sets = []
    for t, g in zip(tids, groups):
      imgs = np.zeros((s, h, w, 3), np.uint8)
      imgs[:len(g)] = images[g]
      imgs[len(g):] = images[g[0]]
      m = np.zeros(s, bool)
      m[:len(g)] = True
      sets.append({"images": imgs, "mask": m})
    first = np.array([g[0] for g in groups])
    info = {"tracklet": tids, "identity": meta["identity"][first],
            "camera": meta["camera"][first], "frames": groups,
            "degradation": meta["degradation"]}
    return sets, info

  def evaluate(self, state, config):
    model = self.model(config)

    def describe(state, batch):
      out = common.apply(model, state, batch["images"], batch["mask"])
      q = out["quality"] if out["quality"].ndim == 2 else jnp.mean(out["quality"], -1)
      # The same frame features mean-pooled (mu ignored) through the same set FC:
      # the baseline that quality pooling has to beat.
      x = out["frame_features"]
      x = x if x.ndim == 4 else x[:, :, None]                       # [B, S, P, F]
      b, s, p = x.shape[:3]
      part_mask = jnp.broadcast_to(batch["mask"][:, None, :], (b, p, s))
      pooled = mean_pool(jnp.swapaxes(x, 1, 2), part_mask).reshape(x.shape[0], -1)
      fc = state.params["set_fc"]
      mean_f = pooled @ fc["kernel"] + fc["bias"]
      return {"f": l2_normalize(out["embedding"]), "f_mean": l2_normalize(mean_f), "mu": q}

    feats, infos = {}, {}
    for side, (split, camera) in zip(("query", "gallery"), self._query_gallery(config)):
      sets, info = self._tracklet_sets(config, split, camera)
      feats[side] = common.extract(describe, state, sets, config)
      infos[side] = info
    out = {}
    # Tracklet re-ID with QAN's pooling (eq. 2) and with mean pooling, through the
    # same set FC: the comparison the paper's claim rests on.
    for key, suffix in (("f", ""), ("f_mean", "_meanpool")):
      r = cmc_map(feats["query"][key], feats["gallery"][key], infos["query"]["identity"],
                  infos["gallery"]["identity"], infos["query"]["camera"],
                  infos["gallery"]["camera"])
      out.update({f"set_rank1{suffix}": float(r["rank1"]), f"set_mAP{suffix}": float(r["mAP"]),
                  f"set_mINP{suffix}": float(r["mINP"])})
    if "set_pairs" not in common.splits(config):  # real video re-ID sets: no pair protocol
      return self._with_quality(out, feats, infos)

    # Tracklet verification: set_pairs refer to tracklet ids of query + gallery.
    row = {}
    for split in ("query", "gallery"):
      for i, t in enumerate(infos[split]["tracklet"]):
        row[int(t)] = (split, i)
    pairs = read_metadata(common.source(config, "set_pairs"))
    for key, name in (("f", "set_pair_acc"), ("f_mean", "set_pair_acc_meanpool")):
      fa = np.stack([feats[row[int(t)][0]][key][row[int(t)][1]] for t in pairs["tracklet_a"]])
      fb = np.stack([feats[row[int(t)][0]][key][row[int(t)][1]] for t in pairs["tracklet_b"]])
      acc = kfold_verification_accuracy(fa, fb, pairs["same"].astype(bool),
                                        fold_ids=pairs["fold"])
      out[name] = float(acc["accuracy_mean"])

    return self._with_quality(out, feats, infos)

  @staticmethod
  def _with_quality(out, feats, infos):
    """`out` plus Spearman(mu, degradation) where the degradation is known."""
    mus, degs = [], []
    for split in ("query", "gallery"):
      for i, g in enumerate(infos[split]["frames"]):
        mus.append(feats[split]["mu"][i][:len(g)])
        degs.append(infos[split]["degradation"][g])
    out.update(identities.quality_correlation(np.concatenate(mus), np.concatenate(degs), "mu"))
    return out

  def embed_apply(self, config):
    """train.eval's per-frame outputs: the frame features R_i (parts concatenated)
    and their quality mu_i, per part ("part_quality") and averaged ("quality"),
    which the video_reid benchmark pools by mean and by eq. (2)."""
    model = self.model(config)

    def apply(variables, images):
      f, q = model.apply(variables, images, method=model.frames)
      q = q if q.ndim == 2 else q[:, None]
      return {"embedding": jnp.reshape(f, (f.shape[0], -1)), "quality": jnp.mean(q, axis=-1),
              "part_quality": q}
    return apply

  def curves(self, state, config):
    """train.eval's plots for single frames: CMC, pair ROC, the error-versus-reject
    curve of the pairs ordered by each frame's mu, and mu against the true
    degradation (the set-level numbers are in evaluate)."""
    return identities.face_curves(_Frames(self.model(config)), state, config, "quality", "mu")


class _Frames:
  """QAN's single-image path with the model-call interface face_curves reads:
  apply(variables, images) -> {"embedding": R_i flattened, "quality": mu_i}."""

  def __init__(self, model):
    self.model = model

  def apply(self, variables, images):
    f, q = self.model.apply(variables, images, method=self.model.frames)
    return {"embedding": jnp.reshape(f, (f.shape[0], -1)), "quality": jnp.mean(q, axis=-1)}
