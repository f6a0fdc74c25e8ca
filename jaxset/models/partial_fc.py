"""A Flax head over jaxset.ops.partial_fc: the class-sharded margin classifier.

ShardedMarginHead keeps the class weights "classifier"/"kernel" [D, C_pad]
under the same names as CosineClassifier. C_pad is C rounded up to a
multiple of lcm(128, shards): any power-of-two shard count up to 128 divides
it, so a checkpoint restores onto another device count; the padding columns
never enter the softmax. The head returns the per-row cross-entropy, not
the [B, C] logits, which never exist in one place.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxset.models.heads import spec_stats
from jaxset.ops import partial_fc as pfc_ops

__all__ = ["ClassWeights", "ShardedMarginHead", "padded_classes"]

def padded_classes(num_classes: int, shards: int) -> int:
  """C rounded up to a multiple of lcm(128, shards)."""
  q = math.lcm(128, max(int(shards), 1))
  return -(-int(num_classes) // q) * q


class ClassWeights(nn.Module):
  """The class weights alone: param "kernel" [dim, columns] (a loss op reads them)."""
  columns: int

  @nn.compact
  def __call__(self, dim: int):
    # normal(0, 0.01) as CosineClassifier (insightface's init).
    return self.param("kernel", nn.initializers.normal(0.01), (dim, self.columns), jnp.float32)


class ShardedMarginHead(nn.Module):
  """Partial FC head: any registered margin head (jaxset.ops.margins.HEADS).

  Attributes:
    num_classes: identities C.
    mesh: a Mesh with a 'model' axis (and usually 'data').
    head: the spec's name ("margin", "eqface", "adaface", "magface");
      head_kwargs: ((name, value), ...) of its keyword arguments.
    sample_rate: Partial FC's class sampling rate (1 = every class).
    loss_cap: None or a per-row loss cap (jaxset.ops.partial_fc.CE_CAP_PARTIAL_FC).
    chunk_classes: None (the op's default) or the classes of a shard whose
      cosines exist at once (jaxset.ops.partial_fc.partial_fc_cross_entropy).

  __call__(embeddings [B, D], labels [B] or None, row [B] (the head's per-row
  input: EQFace's quality, AdaFace's / MagFace's norms), train=False) -> {}
  without labels (and at init), else {"ce": [B] (the row's whole loss),
  "class_mask": [C_pad]}. A head's statistics (AdaFace's EMA) live in
  heads.STATS_COLLECTION (global-batch statistics on any mesh) and are
  stored when train=True.
  Sampling draws from the "dropout" rng stream (the step's key).
  """
  num_classes: int
  mesh: Any
  head: str = "margin"
  head_kwargs: Any = ()
  sample_rate: float = 1.0
  loss_cap: Any = None
  dtype: Any = jnp.float32
  chunk_classes: Any = None

  @nn.compact
  def __call__(self, embeddings, labels=None, row=None, train: bool = False):
    shards = self.mesh.shape["model"]
    w = ClassWeights(padded_classes(self.num_classes, shards), name="classifier")(
        embeddings.shape[-1])
    variables = spec_stats(self, self.head)
    stats = {k: v.value for k, v in variables.items()} or None
    if labels is None or self.is_initializing():
      return {}
    rng = self.make_rng("dropout") if self.sample_rate < 1.0 else None
    data_axis = "data" if "data" in self.mesh.axis_names else None
    out = pfc_ops.partial_fc_cross_entropy(
        embeddings, labels, w, mesh=self.mesh, num_classes=self.num_classes, head=self.head,
        head_kwargs=dict(self.head_kwargs), row=row, stats=stats,
        sample_rate=self.sample_rate, rng=rng, loss_cap=self.loss_cap, data_axis=data_axis,
        dtype=self.dtype, chunk_classes=self.chunk_classes)
    if out.stats is not None and train:
      for k, v in variables.items():
        v.value = out.stats[k]
    return {"ce": out.ce, "class_mask": out.class_mask}
