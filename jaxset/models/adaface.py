"""AdaFace (Kim et al., CVPR 2022): feature-norm adaptive margin, and its baselines.

The embedding norm ||z_i|| is the image-quality proxy. The head keeps the EMA
batch statistics of the norms (mean, std) in the Flax collection
"adaface_stats" (heads.STATS_COLLECTION; variables "mean" and "std", starting
at 20 and 100 as the official head); they change only when the head runs
with train=True and labels, with the collection mutable:

  out, updates = model.apply(variables, images, labels, train=True,
                             mutable=["batch_stats", "adaface_stats"])

The margin math is the "adaface" spec of jaxset.ops.margins (eq. (7)-(10),
EMA updated before use). The same model (MarginFaceModel) runs the ArcFace / CosFace
baselines ("margin" spec) and MagFace (Meng et al., CVPR 2021; "magface"
spec: the magnitude-aware margin and its regulariser, output "row_loss").
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxset.models import backbones
from jaxset.models.heads import STATS_COLLECTION, SpecHead, apply_spec, l2_normalize
from jaxset.models.partial_fc import ShardedMarginHead

__all__ = ["AdaFaceHead", "FACE_HEADS", "MarginFaceModel", "STATS_COLLECTION", "face_head"]

Dtype = Any

class AdaFaceHead(nn.Module):
  """Cosine classifier + AdaFace margin with EMA norm statistics.

  Attributes: num_classes; m (0.4), h (0.333), scale (64), t_alpha (0.01: the
  paper's momentum 0.99), eps (1e-3); axis_name: inside shard_map / pmap,
  the batch axis name so the norm statistics cover the global batch (None:
  per-device statistics, as the official code).

  __call__(embeddings [B, D], norms [B], labels [B] int or None, train=False)
  -> dict(cos [B, C] float32, logits [B, C]): heads.SpecHead with the
  "adaface" spec (same parameters and statistics).
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
    kw = dict(m=self.m, h=self.h, scale=self.scale, t_alpha=self.t_alpha, eps=self.eps)
    return apply_spec(self, "adaface", kw, embeddings, labels, norms, train)


# method-level head name -> (the ops spec, the keyword its `margin` sets, default margin)
FACE_HEADS = {
    "adaface": ("adaface", "m", 0.4),
    "arcface": ("margin", "m2", 0.5),
    "cosface": ("margin", "m3", 0.35),
    "magface": ("magface", None, None),
}


def face_head(head: str, margin: float | None = None, **kw) -> tuple[str, dict]:
  """(spec name, its keyword arguments) of a face model's head `head`
  (FACE_HEADS): `margin` (None: the head's default) set where the head has
  one; kw the spec's other arguments, those it does not take dropped."""
  from jaxset.ops.margins import head_spec
  if head not in FACE_HEADS:
    raise ValueError(f"head must be one of {sorted(FACE_HEADS)}; got {head!r}.")
  spec, key, default = FACE_HEADS[head]
  args = {k: v for k, v in kw.items() if k in head_spec(spec).defaults}
  if key is not None:
    args[key] = default if margin is None else margin
  return spec, args


class MarginFaceModel(nn.Module):
  """Face embedder + a margin head: AdaFace, the ArcFace / CosFace baselines, MagFace.

  Attributes:
    num_classes: identities.
    backbone: "iresnet50" / "iresnet100" (112x112), "small_cnn" on CPU.
    embedding_dim (512), dropout_rate (AdaFace uses 0.4; insightface 0).
    head: "adaface", "arcface" (m2 = margin), "cosface" (m3 = margin) or
      "magface" (FACE_HEADS).
    margin: m; None = 0.4 (adaface), 0.5 (arcface), 0.35 (cosface).
    h, scale, t_alpha, eps, axis_name: AdaFaceHead's.
    l_a, u_a, l_m, u_m, lambda_g: MagFace's (jaxset.ops.margins.magface_logits).
    margin_grad: "exact" or "straight_through" (arcface / cosface / magface).
    dtype: backbone compute dtype.
    mesh: a Mesh with a 'model' axis: the class-sharded head
      (jaxset.models.partial_fc.ShardedMarginHead; outputs "ce" [B] and
      "class_mask" instead of cos / logits); None: the unsharded head.
    sample_rate, loss_cap, chunk_classes: the sharded head's Partial FC options.

  __call__(images [B, H, W, 3] uint8, labels [B] int or None, train=False,
           margin_quality=None) -> dict:
    feature_map [B, h, w, C]; embedding [B, D] L2-NORMALISED; norm [B] the
    norm ||z|| before normalisation; cos [B, C]; logits [B, C] (margin logits
    with labels, scale * cos without); MagFace with labels: row_loss [B]
    (lambda_g g(a), to add to the cross-entropy).
    margin_quality [B]: what a norm-reading margin (AdaFace, MagFace) reads
    in place of the norm; None = the norm, as the papers. For diagnostics
    only, e.g. an oracle quality (benchmarks/quality_diagnosis.py): a real
    run has no quality labels.
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
  l_a: float = 10.0
  u_a: float = 110.0
  l_m: float = 0.45
  u_m: float = 0.8
  lambda_g: float = 35.0
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
    spec, kw = face_head(self.head, self.margin, scale=self.scale, h=self.h,
                         t_alpha=self.t_alpha, eps=self.eps, l_a=self.l_a, u_a=self.u_a,
                         l_m=self.l_m, u_m=self.u_m, lambda_g=self.lambda_g,
                         grad=self.margin_grad)
    out = backbones.FaceEmbedder(self.backbone, self.embedding_dim, self.dropout_rate,
                                 self.dtype, self.backbone_kwargs, name="backbone")(
                                     images, train)
    embedding = l2_normalize(out["embedding"])
    norms = out["norm"] if margin_quality is None else jnp.asarray(margin_quality, jnp.float32)
    kw = tuple(sorted(kw.items()))
    if self.mesh is not None:
      res = ShardedMarginHead(self.num_classes, self.mesh, spec, kw, self.sample_rate,
                              self.loss_cap, chunk_classes=self.chunk_classes, name="head")(
                                  out["embedding"], labels, norms, train)
    else:
      res = SpecHead(self.num_classes, spec, kw, self.axis_name, name="head")(
          out["embedding"], labels, norms, train)
    return {"feature_map": out["feature_map"], "embedding": embedding,
            "norm": out["norm"], **res}
