"""EQFace (Liu et al., CVPR 2021): a face embedder with an explicit quality branch.

Given labels, the model also applies loss (6)'s margin and s_i * S row scale
(jaxset.ops.margins' "eqface" head), as MarginFaceModel applies its head:
logits, or with Partial FC the sharded head's per-row loss, so the quality
head trains inside the margin softmax on either path. Parameters are split
into three top-level groups so the paper's three training steps can freeze
parts with optax.multi_transform:

  "backbone"  FaceEmbedder (trunk + embedding layer)
  "head"      the class weights W: CosineClassifier, or ShardedMarginHead
              (Partial FC)
  "quality"   the quality head

Step 1 trains backbone + head with s_i = 1; step 2 freezes the backbone and
trains the quality head (the released code also trains the classifier);
step 3 freezes the quality head and trains backbone + head again
(`stage_trainable`, `param_labels`, `masked_optimizer`).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxset.models import backbones
from jaxset.models.heads import CosineClassifier
from jaxset.models.partial_fc import ShardedMarginHead
from jaxset.ops.margins import eqface_logits

__all__ = ["QualityHead", "EQFace", "GROUPS", "LOSS_QUALITY", "param_labels", "stage_trainable",
           "masked_optimizer"]

Dtype = Any
GROUPS = ("backbone", "head", "quality")
# The s_i of loss (6): 1 (step 1), the quality head's score (step 2: it
# trains through the loss), or the score without gradient (step 3: it only
# weights the loss).
LOSS_QUALITY = ("one", "trained", "frozen")


class QualityHead(nn.Module):
  """EQFace's quality branch -> s_i in [0, 1], shape [B] float32.

  form="paper" (sec. 3.4): FC(hidden) - BN - ReLU - FC(1) - Sigmoid on the
    embedding.
  form="official" (released code): FC(flattened last feature map -> hidden,
    25088 -> 512 for a 7x7x512 map) - BN - ReLU - FC(2) - softmax, column 0.
  The caller picks the input (EQFace feeds the embedding or the map).
  """
  form: str = "paper"
  hidden: int = 512

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.form not in ("paper", "official"):
      raise ValueError(f"form must be 'paper' or 'official'; got {self.form!r}.")
    x = jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32)
    x = nn.Dense(self.hidden, name="fc1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
    x = nn.relu(x)
    if self.form == "paper":
      return nn.sigmoid(nn.Dense(1, name="fc2")(x))[:, 0]
    return jax.nn.softmax(nn.Dense(2, name="fc2")(x), axis=-1)[:, 0]


class EQFace(nn.Module):
  """Face embedder + cosine classifier + quality head.

  Attributes:
    num_classes: identities in the training set.
    backbone: trunk name ("iresnet50", "iresnet100", or "small_cnn" on CPU).
    embedding_dim, dropout_rate: the embedding layer (FaceEmbedder).
    quality_form: "paper" (quality head on the embedding) or "official"
      (on the flattened last feature map, softmax column 0).
    quality_hidden: the quality head's hidden width (512).
    dtype: compute dtype of the backbone.
    scale, m1, m2, m3, quality_transform, margin_grad: loss (6)'s margin
      (jaxset.ops.margins.eqface_logits; margin_grad is its `grad`).
    mesh: a Mesh with a 'model' axis for Partial FC: "head" is then the
      class-sharded head (jaxset.models.partial_fc.ShardedMarginHead) and
      the output's "cos" is None.
    sample_rate, loss_cap, chunk_classes: the sharded head's Partial FC options.

  __call__(images [B, H, W, 3] uint8, train=False, frozen_backbone=False,
           labels=None, loss_quality="trained") -> dict:
    feature_map [B, h, w, C], embedding [B, D] (unnormalised), norm [B],
    cos [B, num_classes] = normalize(embedding) @ normalize(W), quality [B];
    with labels [B] int, the margin head of loss (6) with s_i as
    `loss_quality` says (LOSS_QUALITY): logits [B, C], or with Partial FC
    ce [B] (the row's loss) and class_mask [C padded].
  The quality head reads a stop-gradient copy of its input: it never trains
  the backbone (in step 3 the scores only weight the loss).
  frozen_backbone=True (step 2) runs the backbone in inference mode (running
  BN statistics, not updated) and stops its gradient.
  """
  num_classes: int
  backbone: str = "iresnet50"
  embedding_dim: int = 512
  dropout_rate: float = 0.0
  quality_form: str = "paper"
  quality_hidden: int = 512
  dtype: Dtype = jnp.float32
  backbone_kwargs: Any = None
  scale: float = 64.0
  m1: float = 1.0
  m2: float = 0.5
  m3: float = 0.0
  quality_transform: str = "paper"
  margin_grad: str = "exact"
  mesh: Any = None
  sample_rate: float = 1.0
  loss_cap: Any = None
  chunk_classes: Any = None

  @nn.compact
  def __call__(self, images, train: bool = False, frozen_backbone: bool = False,
               labels=None, loss_quality: str = "trained"):
    if loss_quality not in LOSS_QUALITY:
      raise ValueError(f"loss_quality must be one of {LOSS_QUALITY}; got {loss_quality!r}.")
    out = backbones.FaceEmbedder(self.backbone, self.embedding_dim, self.dropout_rate,
                                 self.dtype, self.backbone_kwargs, name="backbone")(
                                     images, train and not frozen_backbone)
    if frozen_backbone:
      out = jax.lax.stop_gradient(out)
    q_in = out["embedding"] if self.quality_form == "paper" else out["feature_map"]
    quality = QualityHead(self.quality_form, self.quality_hidden, name="quality")(
        jax.lax.stop_gradient(q_in), train)
    s = {"one": jnp.ones_like(quality), "trained": quality,
         "frozen": jax.lax.stop_gradient(quality)}[loss_quality]
    margin = dict(scale=self.scale, m1=self.m1, m2=self.m2, m3=self.m3,
                  quality_transform=self.quality_transform, grad=self.margin_grad)
    if self.mesh is None:
      cos = CosineClassifier(self.num_classes, name="head")(out["embedding"])
      res = {} if labels is None else {"logits": eqface_logits(cos, labels, s, **margin)}
    else:
      cos = None
      res = ShardedMarginHead(self.num_classes, self.mesh, "eqface", tuple(sorted(margin.items())),
                              self.sample_rate, self.loss_cap, chunk_classes=self.chunk_classes,
                              name="head")(out["embedding"], labels, s, train)
    return {**out, "cos": cos, "quality": quality, **res}


def param_labels(params) -> Any:
  """A tree like `params` whose leaves name their group: "backbone", "head" or "quality"."""
  unknown = set(params) - set(GROUPS)
  if unknown:
    raise ValueError(f"params has top-level keys {sorted(unknown)} outside {GROUPS}; "
                     "pass EQFace's params (variables['params']).")
  return {k: jax.tree.map(lambda _, k=k: k, v) for k, v in params.items()}


def stage_trainable(stage: int, official: bool = False) -> tuple[str, ...]:
  """The groups trained in EQFace step 1, 2 or 3 (paper sec. 3.4).

  1: backbone + head (s_i = 1). 2: quality only (official=True: quality +
  head, as the released code). 3: backbone + head, quality frozen.
  """
  table = {1: ("backbone", "head"), 2: ("quality", "head") if official else ("quality",),
           3: ("backbone", "head")}
  if stage not in table:
    raise ValueError(f"stage must be 1, 2 or 3; got {stage!r}.")
  return table[stage]


def masked_optimizer(tx: optax.GradientTransformation,
                     trainable: Sequence[str]) -> optax.GradientTransformation:
  """optax.multi_transform: `tx` on the groups in `trainable`, zero updates elsewhere.

  Frozen groups get optax.set_to_zero(), so their parameters stay bit-for-bit
  unchanged (weight decay inside `tx` does not touch them either).
  """
  bad = set(trainable) - set(GROUPS)
  if bad:
    raise ValueError(f"trainable groups {sorted(bad)} are not in {GROUPS}.")
  transforms = {g: (tx if g in trainable else optax.set_to_zero()) for g in GROUPS}
  return optax.multi_transform(transforms, param_labels)
