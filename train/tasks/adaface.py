"""AdaFace (Kim et al., CVPR 2022) and its margin baselines (ArcFace, CosFace).

What differs from the shared loop: the head's EMA norm statistics live in the
"adaface_stats" collection of the TrainState and are updated inside the
jitted step; since the step is jitted over the global batch (sharded on the
'data' axis), the statistics are those of the whole global batch on any
number of devices. Evaluation: 10-fold pair accuracy, cross-camera rank-1/mAP,
and the Spearman correlation of the feature norm with the true degradation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxset.models import AdaFace
from jaxset.models.heads import labelled_mean, softmax_cross_entropy
from train import loop, partial_fc, task
from train.tasks import common, identities


class Task(task.Task):
  # The weight Partial FC shards by class (train/meshes.py places it).
  class_kernel_path = ("head", "classifier", "kernel")

  def build_model(self, config):
    # margin 0 in the config: the head's own default margin.
    return common.model_from_config(AdaFace, config, num_classes=identities.num_classes(config),
                                    margin=config.model.margin or None,
                                    **partial_fc.model_kwargs(config))

  def create_state(self, config, rng):
    h, w = config.data.image_size
    return common.create_state(self.model(config), config, rng,
                               jnp.zeros((1, h, w, 3), jnp.uint8), config.train.steps,
                               labels=jnp.zeros((1,), jnp.int32))

  def margin_quality(self, batch):
    """What AdaFace's margin reads in place of the feature norm, from a training
    batch; None (the paper): the norm. benchmarks/quality_diagnosis.py overrides
    it with an oracle built from the stored levels, a diagnosis that no
    training run of the library makes."""
    del batch
    return None

  def stages(self, config):
    model = self.model(config)

    def train_step(state, batch):
      def loss_fn(params):
        out, new_state = model.apply(
            {"params": params, **state.model_state}, batch["image"], batch["label"],
            train=True, mutable=list(state.model_state), rngs=common.step_rng(state),
            margin_quality=self.margin_quality(batch))
        if "ce" in out:  # Partial FC: per-row cross-entropy from the sharded head
          return labelled_mean(out["ce"], batch["label"]), (new_state, out)
        return softmax_cross_entropy(out["logits"], batch["label"]), (new_state, out)

      (loss, (new_state, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      old, state = state, state.apply_gradients(grads=grads, model_state=new_state)
      if "class_mask" in out:
        state = partial_fc.keep_unsampled(state, old, out["class_mask"],
                                          self.class_kernel_path, config)
      metrics = {"loss": loss, "norm_mean": jnp.mean(out["norm"])}
      if "adaface_stats" in new_state:
        flat = traverse_util.flatten_dict(new_state["adaface_stats"])
        metrics["ema_norm_mean"] = next(v for k, v in flat.items() if k[-1] == "mean")
      return state, metrics

    return [loop.Stage("train", config.train.steps,
                       lambda: identities.pk_iterator(config), train_step)]

  def evaluate(self, state, config):
    return identities.face_metrics(self.model(config), state, config, "norm", "norm")

  def curves(self, state, config):
    return identities.face_curves(self.model(config), state, config, "norm", "norm")
