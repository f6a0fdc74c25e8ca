"""Classifier heads shared by the face models: the cosine classifier and margin heads.

Every margin head is a registered spec of jaxset.ops.margins (HEADS);
`SpecHead` applies any of them to a cosine classifier, and keeps the
spec's statistics (AdaFace's EMA) in the Flax collection STATS_COLLECTION.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import optax

from jaxset.ops import margins as margin_ops
from jaxset.ops._norms import l2_normalize, safe_norm

__all__ = ["CosineClassifier", "MarginHead", "STATS_COLLECTION", "SpecHead", "apply_spec",
           "l2_normalize", "safe_norm", "spec_stats"]

Dtype = Any
# The collection of a head's statistics (AdaFace's EMA norm mean and std).
STATS_COLLECTION = "adaface_stats"


def spec_stats(module: nn.Module, head: str):
  """The Flax variables of head `head`'s statistics in STATS_COLLECTION,
  created at their spec's initial values ({} for a head that keeps none).
  Call inside the module's compact __call__."""
  spec = margin_ops.head_spec(head)
  if not spec.keeps_stats:
    return {}
  init = spec.init_stats()
  return {k: module.variable(STATS_COLLECTION, k, lambda v=v: v) for k, v in init.items()}


class CosineClassifier(nn.Module):
  """cos = normalize(embeddings) @ normalize(W), W [D, num_classes] ("kernel").

  The class-weight matrix of ArcFace / CosFace / AdaFace / EQFace, column j
  the class centre W_j. __call__(embeddings [B, D]) -> cos [B, num_classes]
  float32 (the matmul runs in `dtype`, the normalisation in float32).
  kernel init: normal(0, 0.01), as insightface.
  """
  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, embeddings):
    if embeddings.ndim != 2:
      raise ValueError(f"embeddings must be [batch, dim]; got shape {embeddings.shape}.")
    w = self.param("kernel", nn.initializers.normal(0.01),
                   (embeddings.shape[-1], self.num_classes), jnp.float32)
    e = l2_normalize(embeddings, -1).astype(self.dtype)
    w = l2_normalize(w, 0).astype(self.dtype)
    return jnp.dot(e, w, preferred_element_type=jnp.float32).astype(jnp.float32)


class MarginHead(nn.Module):
  """ArcFace / CosFace / combined-margin head: CosineClassifier + margin_logits.

  Defaults (m1, m2, m3) = (1, 0.5, 0): ArcFace; CosFace is (1, 0, 0.35).
  __call__(embeddings [B, D], labels [B] int or None) -> dict:
    cos [B, C] float32; logits [B, C]: the margin logits of
    jaxset.ops.margins.margin_logits when labels are given (labels < 0: no
    margin on that row), scale * cos otherwise (evaluation).
  Parameters: "classifier" (CosineClassifier).
  """
  num_classes: int
  scale: float = 64.0
  m1: float = 1.0
  m2: float = 0.5
  m3: float = 0.0
  grad: str = "exact"
  m1_mode: str = "cosine"
  fallback: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, embeddings, labels=None):
    cos = CosineClassifier(self.num_classes, self.dtype, name="classifier")(embeddings)
    if labels is None:
      logits = self.scale * cos
    else:
      logits = margin_ops.margin_logits(
          cos, labels, scale=self.scale, m1=self.m1, m2=self.m2, m3=self.m3,
          grad=self.grad, m1_mode=self.m1_mode, fallback=self.fallback)
    return {"cos": cos, "logits": logits}


def softmax_cross_entropy(logits, labels):
  """Mean softmax cross-entropy (optax) over rows with labels >= 0; 0 if none.

  labels < 0 mark rows to ignore (docs/design.md): they add nothing to the loss
  or its gradient.
  """
  valid = labels >= 0
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, labels, 0))
  return labelled_mean(ce, labels)


def labelled_mean(per_row, labels):
  """Mean of per_row [B] over the rows with labels >= 0; 0 if there are none."""
  valid = labels >= 0
  return jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


class SpecHead(nn.Module):
  """CosineClassifier + any registered margin head (jaxset.ops.margins.HEADS).

  Attributes: num_classes; head: the spec's name ("margin", "eqface",
  "adaface", "magface"); head_kwargs: ((name, value), ...) of its keyword
  arguments (as margin_logits, adaface_logits, ... take them); axis_name:
  the batch axis of the statistics (AdaFace), None: per-device.

  __call__(embeddings [B, D], labels [B] int or None, row [B] or None (the
  head's per-row input: EQFace's quality, AdaFace's / MagFace's norms),
  train=False) -> dict(cos [B, C] float32, logits [B, C], and row_loss [B]
  for a head with a loss term of its own (MagFace's lambda_g g(a))). Without
  labels: logits = scale * cos and the statistics are untouched. With
  labels: the head's logits; its statistics are stored when train=True (and
  not at init). Parameters: "classifier" (CosineClassifier, kernel [D, C]).
  """
  num_classes: int
  head: str = "margin"
  head_kwargs: Any = ()
  axis_name: Any = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, embeddings, labels=None, row=None, train: bool = False):
    return apply_spec(self, self.head, dict(self.head_kwargs), embeddings, labels, row, train)


def apply_spec(module: nn.Module, head: str, kw: dict, embeddings, labels, row, train: bool):
  """SpecHead's body, for a compact module with the attributes num_classes,
  axis_name and dtype: its "classifier" and statistics become `module`'s own."""
  cos = CosineClassifier(module.num_classes, module.dtype, name="classifier")(embeddings)
  variables = spec_stats(module, head)
  if labels is None:
    return {"cos": cos, "logits": margin_ops.head_spec(head).resolve(kw)[1] * cos}
  stats = {k: v.value for k, v in variables.items()} or None
  logits, new, row_loss = margin_ops.head_logits(
      head, cos, labels, row=row, stats=stats, axis_name=module.axis_name, **kw)
  if new is not None and train and not module.is_initializing():
    for k, v in variables.items():
      v.value = new[k]
  out = {"cos": cos, "logits": logits}
  if row_loss is not None:
    out["row_loss"] = row_loss
  return out
