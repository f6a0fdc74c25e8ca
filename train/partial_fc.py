"""Partial FC in the train loop: which runs use it, and the update of unsampled classes.

A face config turns the class-sharded classifier (jaxset.ops.partial_fc) on
with config.model.classifier.shards != 1 (-1: every device) or
sample_rate < 1. The shards are the 'model' axis of config.train.mesh (the
face configs tie mesh.model to classifier.shards).

Unsampled classes (sample_rate < 1) get an exactly zero gradient. An
optimiser with state would still move them: SGD momentum keeps applying its
buffer, Adam's m_hat / (sqrt(v_hat) + eps) is non-zero while m is, and weight
decay shrinks every row. By default (classifier.update_unsampled = False)
`keep_unsampled` restores their weights AND their optimiser moments after
the step, so a class changes only in the steps that sample it: the original
Partial FC, which stepped the sampled rows' weight and momentum only.
update_unsampled = True keeps the plain optimiser over the zero gradients,
as insightface's partial_fc_v2 (one parameter, decayed every step).

classifier.chunk_classes (0: the op's default) is the head's block: the
classes of a shard whose cosines against the gathered batch exist at once
(jaxset.ops.partial_fc). It trades memory for speed; loss and gradients are
the same up to float rounding (the order of the sums).
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from train import meshes


def enabled(config) -> bool:
  """True when config.model.classifier asks for a sharded or sampled head."""
  cls = config.model.get("classifier", None)
  return cls is not None and (cls.shards != 1 or cls.sample_rate < 1.0)


def mesh(config):
  """The run's mesh with a 'model' axis (size 1 when only sampling)."""
  return meshes.with_model_axis(meshes.build(config))


def chunk_classes(config):
  """config.model.classifier.chunk_classes as partial_fc_cross_entropy takes
  it: None for 0 (its default, ceil(K / shards)), else the positive int."""
  cls = config.model.classifier
  n = cls.get("chunk_classes", 0)
  if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
    raise ValueError(f"config.model.classifier.chunk_classes must be an int >= 0 (classes of "
                     f"cosines at a time; 0: the default ceil(K / shards)); got {n!r}.")
  if n and not enabled(config):
    raise ValueError(f"config.model.classifier.chunk_classes={n} sets the block of the "
                     "class-sharded head, which is off (shards=1, sample_rate=1): set "
                     "classifier.shards (-1: every device) or leave chunk_classes=0.")
  return int(n) or None


def model_kwargs(config) -> dict:
  """The face models' Partial FC arguments ({} when it is off)."""
  chunk = chunk_classes(config)
  if not enabled(config):
    return {}
  cls = config.model.classifier
  return {"mesh": mesh(config), "sample_rate": float(cls.sample_rate),
          "loss_cap": float(cls.loss_cap) if cls.get("loss_cap", 0.0) else None,
          "chunk_classes": chunk}


def keep_unsampled(new_state, old_state, class_mask, kernel_path, config):
  """new_state with the unsampled columns of the class weight, and of every
  optimiser leaf at the same path, taken from old_state (see module doc)."""
  if config.model.classifier.get("update_unsampled", False):
    return new_state

  def pick(path, new, old):
    if meshes.is_class_sharded(path, kernel_path) and jnp.ndim(new) == 2:
      return jnp.where(class_mask[None, :], new, old)
    return new

  params = jax.tree_util.tree_map_with_path(pick, new_state.params, old_state.params)
  opt_state = jax.tree_util.tree_map_with_path(pick, new_state.opt_state, old_state.opt_state)
  return new_state.replace(params=params, opt_state=opt_state)

