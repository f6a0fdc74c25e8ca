"""AdaFace (Kim et al., CVPR 2022): feature-norm adaptive margin, and its baselines.

The embedding norm ||z_i|| is the image-quality proxy. The head keeps the EMA
batch statistics of the norms (mean, std) in the Flax collection
"adaface_stats" (variables "mean" and "std", starting at 20 and 100 as the
official head); they change only when the head runs with train=True and
labels, with the collection mutable:

  out, updates = model.apply(variables, images, labels, train=True,
                             mutable=["batch_stats", "adaface_stats"])

The margin math is jaxset.ops.margins.adaface_logits (eq. (7)-(10), EMA
updated before use). ArcFace / CosFace baselines use the same cosine
classifier with jaxset.ops.margins.margin_logits (heads.MarginHead).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxset.models import backbones
from jaxset.models.heads import CosineClassifier, MarginHead, l2_normalize
from jaxset.models.partial_fc import ShardedMarginHead
from jaxset.ops import margins as margin_ops

__all__ = ["AdaFaceHead", "AdaFace", "STATS_COLLECTION"]

Dtype = Any
STATS_COLLECTION = "adaface_stats"


class AdaFaceHead(nn.Module):
  """Cosine classifier + AdaFace margin with EMA norm statistics.

  Attributes: num_classes; m (0.4), h (0.333), scale (64), t_alpha (0.01: the
  paper's momentum 0.99), eps (1e-3); axis_name: inside shard_map / pmap,
  the batch axis name so the norm statistics cover the global batch (None:
  per-device statistics, as the official code).

  __call__(embeddings [B, D], norms [B], labels [B] int or None, train=False)
  -> dict(cos [B, C] float32, logits [B, C]). Without labels: logits =
  scale * cos and the statistics are untouched. With labels: AdaFace logits;
  the updated statistics are stored when train=True (and not at init).
  Parameters: "classifier" (CosineClassifier, kernel [D, C]).
  """
  num_classes: int
  m: float = 0.4
  h: float = 0.333
  scale: float = 64.0
  t_alpha: float = 0.01
  eps: float = 1e-3
  axis_name: Any = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, embeddings, norms, labels=None, train: bool = False):
    cos = CosineClassifier(self.num_classes, self.dtype, name="classifier")(embeddings)
    init = margin_ops.adaface_init_stats()
    mean = self.variable(STATS_COLLECTION, "mean", lambda: init["mean"])
    std = self.variable(STATS_COLLECTION, "std", lambda: init["std"])
    if labels is None:
      return {"cos": cos, "logits": self.scale * cos}
    logits, new = margin_ops.adaface_logits(
        cos, norms, labels, {"mean": mean.value, "std": std.value}, m=self.m, h=self.h,
        scale=self.scale, t_alpha=self.t_alpha, eps=self.eps, axis_name=self.axis_name)
    if train and not self.is_initializing():
      mean.value, std.value = new["mean"], new["std"]
    return {"cos": cos, "logits": logits}


_DEFAULT_MARGIN = {"adaface": 0.4, "arcface": 0.5, "cosface": 0.35}


class AdaFace(nn.Module):
  """Face embedder + AdaFace (or ArcFace / CosFace baseline) head.

  Attributes:
    num_classes: identities.
    backbone: "iresnet50" / "iresnet100" (112x112), "small_cnn" on CPU.
    embedding_dim (512), dropout_rate (AdaFace uses 0.4; insightface 0).
    head: "adaface", "arcface" (m2 = margin) or "cosface" (m3 = margin).
    margin: m; None = 0.4 (adaface), 0.5 (arcface), 0.35 (cosface).
    h, scale, t_alpha, eps, axis_name: AdaFaceHead's.
    margin_grad: "exact" or "straight_through" (arcface / cosface only).
    dtype: backbone compute dtype.
    mesh: a Mesh with a 'model' axis: the class-sharded head
      (jaxset.models.partial_fc.ShardedMarginHead; outputs "ce" [B] and
      "class_mask" instead of cos / logits); None: the unsharded head.
    sample_rate, loss_cap, chunk_classes: the sharded head's Partial FC options.

  __call__(images [B, H, W, 3] uint8, labels [B] int or None, train=False,
           margin_quality=None) -> dict:
    feature_map [B, h, w, C]; embedding [B, D] L2-NORMALISED; norm [B] the
    norm ||z|| before normalisation; cos [B, C]; logits [B, C] (margin logits
    with labels, scale * cos without).
    margin_quality [B]: what the AdaFace margin reads in place of the norm
    (its batch statistics and z-score apply unchanged); None = the norm, as
    the paper. For diagnostics only, e.g. an oracle quality
    (benchmarks/quality_diagnosis.py): a real run has no quality labels.
  Parameter groups: "backbone" (FaceEmbedder), "head" (its "classifier").
  """
  num_classes: int
  backbone: str = "iresnet50"
  embedding_dim: int = 512
  dropout_rate: float = 0.0
  head: str = "adaface"
  margin: float | None = None
  h: float = 0.333
  scale: float = 64.0
  t_alpha: float = 0.01
  eps: float = 1e-3
  axis_name: Any = None
  margin_grad: str = "exact"
  dtype: Dtype = jnp.float32
  backbone_kwargs: Any = None
  mesh: Any = None
  sample_rate: float = 1.0
  loss_cap: Any = None
  chunk_classes: Any = None

  @nn.compact
  def __call__(self, images, labels=None, train: bool = False, margin_quality=None):
    if self.head not in _DEFAULT_MARGIN:
      raise ValueError(f"head must be one of {sorted(_DEFAULT_MARGIN)}; got {self.head!r}.")
    m = _DEFAULT_MARGIN[self.head] if self.margin is None else self.margin
    out = backbones.FaceEmbedder(self.backbone, self.embedding_dim, self.dropout_rate,
                                 self.dtype, self.backbone_kwargs, name="backbone")(
                                     images, train)
    embedding = l2_normalize(out["embedding"])
    norms = out["norm"] if margin_quality is None else jnp.asarray(margin_quality, jnp.float32)
    if self.mesh is not None:
      if self.head == "adaface":
        kind, kw = "adaface", dict(m=m, h=self.h, scale=self.scale, t_alpha=self.t_alpha,
                                   eps=self.eps)
      else:
        m2, m3 = (m, 0.0) if self.head == "arcface" else (0.0, m)
        kind, kw = "margin", dict(scale=self.scale, m2=m2, m3=m3, grad=self.margin_grad)
      res = ShardedMarginHead(self.num_classes, self.mesh, kind, tuple(sorted(kw.items())),
                              self.sample_rate, self.loss_cap,
                              chunk_classes=self.chunk_classes, name="head")(
                                  out["embedding"], labels, norms, train)
    elif self.head == "adaface":
      head = AdaFaceHead(self.num_classes, m, self.h, self.scale, self.t_alpha, self.eps,
                         self.axis_name, name="head")
      res = head(out["embedding"], norms, labels, train)
    else:
      m2, m3 = (m, 0.0) if self.head == "arcface" else (0.0, m)
      res = MarginHead(self.num_classes, self.scale, 1.0, m2, m3, self.margin_grad,
                       name="head")(out["embedding"], labels)
    return {"feature_map": out["feature_map"], "embedding": embedding,
            "norm": out["norm"], **res}
