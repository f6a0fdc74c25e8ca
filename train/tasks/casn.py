"""CASN (Zheng et al., CVPR 2019): Siamese re-ID with consistent Grad-CAM attention.

Each step takes a P x K batch and forms balanced in-batch pairs
(pipeline.pk_pairs); the objective sums, with the weights in config.casn,
identification (softmax), identification attention (attention mining through
Grad-CAM), Siamese verification (BCE) and Siamese attention consistency. The
attention terms differentiate through Grad-CAM: gradients of gradients.
Evaluation: cross-camera rank-1/5 and mAP (torchreid protocol) on the
identification features, and the attention consistency of positive test
pairs (mean ||M1 - M2||^2 of the thresholded horizontal profiles).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxset.data import pipeline
from jaxset.models import CASN, CASNLossConfig, casn_loss
from jaxset.models.casn import siamese_attention_loss
from train import loop
from train.tasks import common, identities


class Task:

  def model(self, config):
    m = config.model
    return CASN(num_classes=identities.num_classes(config), backbone=m.backbone,
                feature_dim=m.feature_dim, siamese=m.siamese,
                dtype=common.compute_dtype(config))

  def loss_config(self, config):
    c = config.casn
    return CASNLossConfig(id_weight=c.id_weight, ia_weight=c.ia_weight,
                          verification_weight=c.verification_weight, sa_weight=c.sa_weight,
                          mask_scale=c.mask_scale, mask_threshold=c.mask_threshold,
                          consistency_threshold=c.consistency_threshold)

  def create_state(self, config, rng):
    h, w = config.data.image_size
    x = jnp.zeros((2, h, w, 3), jnp.uint8)
    return common.create_state(self.model(config), config, rng, x, config.train.steps,
                               images_b=x)

  def stages(self, config):
    model = self.model(config)
    lcfg = self.loss_config(config)
    k = config.data.k
    p = config.train.batch_size // k
    a_idx, b_idx, same = pipeline.pk_pairs(p, k)

    def train_step(state, batch):
      pairs = {"images_a": batch["image"][a_idx], "images_b": batch["image"][b_idx],
               "labels_a": batch["label"][a_idx], "labels_b": batch["label"][b_idx],
               "same": jnp.asarray(same, jnp.float32)}

      def loss_fn(params):
        return casn_loss(model, params, state.model_state["batch_stats"], pairs,
                         config=lcfg, train=True)

      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      state = state.apply_gradients(grads=grads,
                                    model_state={"batch_stats": aux["batch_stats"]})
      return state, {"loss": loss, **{k: v for k, v in aux["metrics"].items() if k != "total"}}

    return [loop.Stage("train", config.train.steps, lambda: identities.pk_iterator(config),
                       train_step)]

  def evaluate(self, state, config):
    model = self.model(config)
    lcfg = self.loss_config(config)

    def describe(state, batch):
      out = model.apply({"params": state.params, **state.model_state}, batch["image"])
      return {"f": out["features"]}

    q = identities.split_embeddings(describe, state, config, "query")
    g = identities.split_embeddings(describe, state, config, "gallery")
    out = identities.reid_metrics(q, g)

    def consistency(state, batch):
      v = {"params": state.params, **state.model_state}
      o = model.apply(v, batch["image_a"], batch["image_b"])
      same = batch["same"].astype(jnp.float32)
      _, (m1, m2) = siamese_attention_loss(model, state.params, o["feature_map"],
                                           o["feature_map_b"], o["features"],
                                           o["features_b"], same, config=lcfg)
      from jaxset.ops.losses import attention_consistency_loss
      return {"c": attention_consistency_loss(m1, m2, same,
                                              threshold=lcfg.consistency_threshold)}

    src = common.source(config, "pairs")
    c = common.extract(consistency, state, src, config,
                       keys=["image_a", "image_b", "same"])["c"]
    same = pipeline.read_metadata(src, ["same"])["same"].astype(bool)
    out["attention_inconsistency"] = float(np.mean(c[same]))
    return out

  def curves(self, state, config):
    return identities.face_curves(self.model(config), state, config, None)
