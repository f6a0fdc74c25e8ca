"""CASN (Zheng et al., CVPR 2019): Siamese re-ID with consistent Grad-CAM attention.

Each step takes a P x K batch and forms balanced in-batch pairs
(samplers.pk.pk_pairs) after the backbone, which sees each image once; the
objective sums, with the weights in config.casn,
identification (softmax), identification attention (attention mining through
Grad-CAM), Siamese verification (BCE) and Siamese attention consistency. The
attention terms differentiate through Grad-CAM: gradients of gradients.
Evaluation: cross-camera rank-1/5 and mAP (torchreid protocol) on the
identification features, and the Siamese attention of the test pairs:
attention_inconsistency = mean ||M1 - M2||^2 of the thresholded horizontal
profiles over the positive pairs whose two maps are both non-zero,
attention_inconsistency_neg the same over negative pairs (the reference: a
consistent model has pos << neg), and attention_zero_maps the fraction of
all-zero maps among the positive pairs' images (an all-zero Grad-CAM gives a
trivially perfect consistency, so the first number means something only when
this one is small).

Stages (config.casn.warmup_steps, a choice the paper leaves open): first
identification ("warmup"), so that the predicted identity (attention mining)
and the verifier's indicator (Siamese attention) mean something before the
attention terms are switched on; then the whole objective ("casn"). The two
stages share one optimiser and LR schedule, and the second continues the
first's batch sequence (it does not replay it from step 0).
config.casn.warmup_verification says what the Siamese BCE does in the warmup:
"head" trains the verifier alone on the (stop-gradient) features, so that it
is fitted when its gradient starts to reach the trunk; "none" leaves it
untrained until the full objective starts; "full" trains it, trunk included,
from step 0 (then the warmup only delays the attention terms).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxset.data.records import read_metadata
from jaxset.data.samplers.pk import pk_pairs
from jaxset.models import CASN, CASNLossConfig, casn_loss
from jaxset.models.casn import siamese_attention_maps, siamese_indicator
from jaxset.ops.losses import attention_consistency_loss
from train import task
from train.tasks import common, identities

WARMUP_VERIFICATION = ("head", "none", "full")


def warmup_verification(config) -> str:
  """config.casn.warmup_verification, checked: one of WARMUP_VERIFICATION."""
  mode = config.casn.get("warmup_verification", "full")
  if mode not in WARMUP_VERIFICATION:
    raise ValueError(f"config.casn.warmup_verification={mode!r}; use one of "
                     f"{', '.join(WARMUP_VERIFICATION)}.")
  return mode


class Task(task.Task):

  def build_model(self, config):
    return common.model_from_config(CASN, config, num_classes=identities.num_classes(config))

  def loss_config(self, config, warmup: bool = False):
    c = config.casn
    mode = warmup_verification(config)
    ver = 0.0 if warmup and mode == "none" else c.verification_weight
    return CASNLossConfig(id_weight=c.id_weight, ia_weight=0.0 if warmup else c.ia_weight,
                          verification_weight=ver,
                          verifier_only=warmup and mode == "head",
                          sa_weight=0.0 if warmup else c.sa_weight,
                          mask_scale=c.mask_scale, mask_threshold=c.mask_threshold,
                          consistency_threshold=c.consistency_threshold,
                          indicator=c.get("indicator", "relative"),
                          siamese_map=c.get("siamese_map", "gradcam"))

  def create_state(self, config, rng):
    h, w = config.data.image_size
    x = jnp.zeros((2, h, w, 3), jnp.uint8)
    return common.create_state(self.model(config), config, rng, x, config.train.steps,
                               images_b=x)

  def schedule(self, config):
    """[(stage name, steps, warmup?)]: warmup_steps of identification (and the
    BCE as warmup_verification says), then the whole objective."""
    total = config.train.steps
    warm = min(max(int(config.casn.get("warmup_steps", 0)), 0), total)
    if not (config.casn.ia_weight or config.casn.sa_weight or (
        config.casn.verification_weight and warmup_verification(config) != "full")):
      warm = 0  # nothing to warm up for (the IDE baseline)
    plan = [("warmup", warm, True), ("casn", total - warm, False)]
    return [p for p in plan if p[1] > 0]

  def stages(self, config):
    model = self.model(config)
    k = config.data.k
    p = config.train.batch_size // k
    pairs = pk_pairs(p, k)

    def make_step(lcfg):
      def train_step(state, batch):
        def loss_fn(params):
          return casn_loss(model, params, state.model_state["batch_stats"],
                           {"images": batch["image"], "labels": batch["label"]}, pairs,
                           config=lcfg, train=True)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads,
                                      model_state={"batch_stats": aux["batch_stats"]})
        metrics = {k: v for k, v in aux["metrics"].items() if k != "total"}
        return state, {"loss": loss, **metrics}
      return train_step

    plan = self.schedule(config)
    starts = np.cumsum([0] + [n for _, n, _ in plan])
    # Each stage continues the run's batch sequence from its first step.
    return [task.Stage(name, n, lambda s=int(s): identities.pk_iterator(config, start=s),
                       make_step(self.loss_config(config, warmup)))
            for (name, n, warmup), s in zip(plan, starts)]

  def evaluate(self, state, config):
    model = self.model(config)
    lcfg = self.loss_config(config)

    def describe(state, batch):
      out = common.apply(model, state, batch["image"])
      return {"f": out["features"]}

    q = identities.split_embeddings(describe, state, config, "query")
    g = identities.split_embeddings(describe, state, config, "gallery")
    out = identities.reid_metrics(q, g)
    if "pairs" not in common.splits(config):  # real re-ID data: no verification pairs
      return out

    def attention(state, batch):
      v = common.variables(state)
      o = model.apply(v, batch["image_a"], batch["image_b"])
      ind = siamese_indicator(model, state.params, o["features"], o["features_b"],
                              lcfg.indicator)
      # float32 maps whatever the trunk's compute dtype, as in training (casn_loss).
      fa, fb = (o[k].astype(jnp.float32) for k in ("feature_map", "feature_map_b"))
      m1, m2 = siamese_attention_maps(model, v, fa, fb, ind, lcfg.siamese_map)
      ones = jnp.ones(m1.shape[:1], jnp.float32)
      return {"d": attention_consistency_loss(m1, m2, ones,
                                              threshold=lcfg.consistency_threshold,
                                              size=lcfg.consistency_size),
              "z1": jnp.max(m1, axis=(1, 2)) <= 1e-12, "z2": jnp.max(m2, axis=(1, 2)) <= 1e-12}

    src = common.source(config, "pairs")
    r = common.extract(attention, state, src, config, keys=["image_a", "image_b", "same"])
    same = read_metadata(src, ["same"])["same"].astype(bool)
    live = ~(r["z1"] | r["z2"])
    pos, neg = same & live, ~same & live
    # 0.0 (with attention_zero_maps = 1) when every positive pair has a dead map.
    out["attention_inconsistency"] = float(np.mean(r["d"][pos])) if pos.any() else 0.0
    out["attention_inconsistency_neg"] = float(np.mean(r["d"][neg])) if neg.any() else 0.0
    out["attention_zero_maps"] = float(np.mean(np.concatenate([r["z1"][same],
                                                               r["z2"][same]])))
    return out

  def curves(self, state, config):
    return identities.face_curves(self.model(config), state, config, None)
