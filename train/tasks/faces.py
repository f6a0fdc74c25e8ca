"""The train step every face method shares: model forward, an overridable loss, update.

AdaFace, ArcFace / CosFace and MagFace (train/tasks/adaface.py, one task:
the head is config.model.head) and EQFace (train/tasks/eqface.py) differ in
what the model is asked (`forward`: EQFace's step picks its s_i) and, for
EQFace's staged training, in how the gradients update the state (`update`).
Every face model applies its own margin head given the labels, Partial FC
included (train/partial_fc.model_kwargs builds the sharded head into the
model): the loss is `head_loss` of its output for all of them. A sharded
head's output carries "class_mask", and the unsampled classes are restored
after the update (train/partial_fc.py).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxset.models.heads import labelled_mean
from train import partial_fc, task
from train.tasks import common


def head_loss(out: dict, labels) -> jax.Array:
  """The mean over labelled rows of a margin head's per-row loss: the sharded
  head's "ce" (Partial FC), or the softmax cross-entropy of "logits" plus the
  head's own "row_loss" (MagFace's lambda_g g(a)) where it has one."""
  if "ce" in out:
    return labelled_mean(out["ce"], labels)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      out["logits"].astype(jnp.float32), jnp.where(labels >= 0, labels, 0))
  if "row_loss" in out:
    ce = ce + out["row_loss"]
  return labelled_mean(ce, labels)


class FaceTask(task.Task):
  """A face method trained with a margin head; subclasses override the hooks."""
  # The weight Partial FC shards by class (train/meshes.py places it).
  class_kernel_path: tuple = ("head", "classifier", "kernel")

  def forward(self, model, state, batch, params, stage: Any = None):
    """(model output, new model_state) of a training forward pass."""
    return common.apply(model, state, batch["image"], batch["label"], params=params, train=True)

  def loss(self, out, batch, params, state, config, stage: Any = None):
    """(loss, extra outputs) from the forward pass; default: `head_loss`."""
    del params, state, config, stage
    return head_loss(out, batch["label"]), {}

  def update(self, state, grads, new_model_state, config, stage: Any = None):
    """The state after one optimiser step."""
    del config, stage
    return state.apply_gradients(grads=grads, model_state=new_model_state)

  def metrics(self, out, new_model_state) -> dict:
    """Scalars logged beside the loss."""
    del new_model_state
    return {"norm_mean": jnp.mean(out["norm"])}

  def train_step(self, config, stage: Any = None):
    """The jit-able step (state, batch) -> (state, metrics) for one stage."""
    model = self.model(config)

    def step(state, batch):
      def loss_fn(params):
        out, new_state = self.forward(model, state, batch, params, stage)
        loss, extra = self.loss(out, batch, params, state, config, stage)
        return loss, (new_state, {**out, **extra})

      (loss, (new_state, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      old, state = state, self.update(state, grads, new_state, config, stage)
      if "class_mask" in out:
        state = partial_fc.keep_unsampled(state, old, out["class_mask"],
                                          self.class_kernel_path, config)
      return state, {"loss": loss, **self.metrics(out, new_state)}

    return step
