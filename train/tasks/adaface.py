"""The margin-head face methods: AdaFace (Kim et al., CVPR 2022), its fixed-margin
baselines ArcFace / CosFace, and MagFace (Meng et al., CVPR 2021).

One task; config.model.head picks the head (jaxset.models.adaface.FACE_HEADS),
so ArcFace, CosFace and MagFace are configs of the same step
(train/tasks/faces.py), with the same data and evaluation, and compare at
the same budget. What differs from the shared loop: AdaFace's EMA norm
statistics live in the "adaface_stats" collection of the TrainState and are
updated inside the jitted step; since the step is jitted over the global
batch (sharded on the 'data' axis), the statistics are those of the whole
global batch on any number of devices. MagFace adds its regulariser
lambda_g g(a) to each row's loss. Evaluation: 10-fold pair accuracy,
cross-camera rank-1/mAP, and the Spearman correlation of the feature norm
(AdaFace's and MagFace's quality) with the true degradation.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import traverse_util

from jaxset.models import MarginFaceModel
from jaxset.models.heads import STATS_COLLECTION
from train import partial_fc, task
from train.tasks import common, faces, identities


class Task(faces.FaceTask):
  class_kernel_path = ("head", "classifier", "kernel")

  def build_model(self, config):
    # margin 0 in the config: the head's own default margin.
    return common.model_from_config(MarginFaceModel, config,
                                    num_classes=identities.num_classes(config),
                                    margin=config.model.margin or None,
                                    **partial_fc.model_kwargs(config))

  def create_state(self, config, rng):
    h, w = config.data.image_size
    return common.create_state(self.model(config), config, rng,
                               jnp.zeros((1, h, w, 3), jnp.uint8), config.train.steps,
                               labels=jnp.zeros((1,), jnp.int32))

  def margin_quality(self, batch):
    """What a norm-reading margin (AdaFace, MagFace) reads in place of the
    feature norm, from a training batch; None (the papers): the norm.
    benchmarks/quality_diagnosis.py overrides it with an oracle built from the
    stored levels, a diagnosis that no training run of the library makes."""
    del batch
    return None

  def forward(self, model, state, batch, params, stage=None):
    return common.apply(model, state, batch["image"], batch["label"], params=params,
                        train=True, margin_quality=self.margin_quality(batch))

  def metrics(self, out, new_model_state):
    metrics = {"norm_mean": jnp.mean(out["norm"])}
    if STATS_COLLECTION in new_model_state:
      flat = traverse_util.flatten_dict(new_model_state[STATS_COLLECTION])
      metrics["ema_norm_mean"] = next(v for k, v in flat.items() if k[-1] == "mean")
    return metrics

  def stages(self, config):
    return [task.Stage("train", config.train.steps,
                       lambda: identities.pk_iterator(config), self.train_step(config))]

  def evaluate(self, state, config):
    return identities.face_metrics(self.model(config), state, config, "norm", "norm")

  def curves(self, state, config):
    return identities.face_curves(self.model(config), state, config, "norm", "norm")
