"""QAN, the Quality Aware Network (Liu et al., CVPR 2017).

Images of a set go through a shared fully convolutional trunk; the network
then splits in two branches (QAN sec. 3.1, fig. 2):

* quality generation: a small CNN ending in a sigmoid gives mu_i = Q(I_i)
  (eq. (3)), one score per frame or one per horizontal part;
* feature generation: per-frame (per-part) representations R_i.

The set pooling unit is jaxset.ops.pooling.quality_pool (eq. (2),
R_a = sum_i mu_i R_i / sum_i mu_i, with the exact gradients of eq. (5)-(8)),
followed by a fully connected layer giving the set embedding.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxset.models import backbones
from jaxset.ops import pooling

__all__ = ["QualityCNN", "QAN", "horizontal_parts"]

Dtype = Any


def horizontal_parts(feature_map, num_parts: int):
  """Average-pools a map [N, h, w, C] into num_parts horizontal strips -> [N, P, C].

  Strip p covers rows [floor(p h / P), floor((p + 1) h / P)). Raises
  ValueError if h < num_parts (a strip would be empty).
  """
  h = feature_map.shape[1]
  if num_parts < 1 or h < num_parts:
    raise ValueError(f"num_parts={num_parts} must be in [1, h={h}] (the feature map's "
                     "height); use fewer parts or a larger input.")
  bounds = [(p * h) // num_parts for p in range(num_parts + 1)]
  x = feature_map.astype(jnp.float32)
  return jnp.stack([jnp.mean(x[:, a:b], axis=(1, 2)) for a, b in zip(bounds, bounds[1:])],
                   axis=1)


class QualityCNN(nn.Module):
  """QAN's quality branch as in the official Caffe code.

  conv7x7/2-64 - maxpool3x3/2 - conv3x3-64 - conv3x3-64 - global avgpool -
  fc(num_outputs) - sigmoid. relu=False: no ReLU between the layers, as
  released; relu=True: a ReLU after each conv, the usual "small CNN".
  x [N, H, W, C] -> mu [N, num_outputs] in (0, 1), float32.
  """
  num_outputs: int = 1
  width: int = 64
  relu: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    act = nn.relu if self.relu else (lambda y: y)
    conv = lambda k, s, name: nn.Conv(self.width, (k, k), (s, s), padding=((k // 2,) * 2,) * 2,
                                      dtype=self.dtype, param_dtype=jnp.float32, name=name)
    x = act(conv(7, 2, "conv1")(x.astype(self.dtype)))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    x = act(conv(3, 1, "conv2")(x))
    x = act(conv(3, 1, "conv3")(x))
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.Dense(self.num_outputs, param_dtype=jnp.float32, name="fc")(x)
    return nn.sigmoid(x)


class PartDense(nn.Module):
  """One Dense layer per part: x [N, P, C] -> [N, P, features] (kernel [P, C, F])."""
  features: int

  @nn.compact
  def __call__(self, x):
    p, c = x.shape[-2:]
    kernel = self.param("kernel", nn.initializers.lecun_normal(batch_axis=(0,)),
                        (p, c, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (p, self.features), jnp.float32)
    return jnp.einsum("npc,pcf->npf", x.astype(jnp.float32), kernel) + bias


class QAN(nn.Module):
  """Quality Aware Network for set-to-set recognition.

  Attributes:
    backbone: trunk name (backbones.BACKBONES), "small_cnn" for the embedded sets.
    feature_dim: size F of each frame's (part's) representation R_i.
    embedding_dim: size E of the set embedding (the FC after the pooling).
    num_parts: P horizontal parts, each with its own quality score and
      features (the official code pools per body part); 1 = whole frame.
    num_classes: if set, a softmax identity classifier on single frames
      (QAN sec. 3.2 single-image training); its params are created at init.
    quality_input: "trunk" (the quality branch reads the trunk's last map, the
      one the features come from), "middle" (paper fig. 2: the branches split
      after the trunk's block `quality_tap`) or "image" (the released code:
      it reads the image).
    quality_tap: the trunk block whose map "middle" reads (SmallCNN 1..3,
      ResNet 1..3).
    quality_relu: ReLUs inside the quality CNN (QualityCNN.relu).
    dtype: compute dtype of the convolutions.

  __call__(images [B, S, H, W, 3] uint8, mask [B, S] bool or None, train=False)
  returns a dict (float32):
    embedding       [B, E]        FC(quality-pooled features), the set's R_a(S)
    pooled          [B, P*F]      the quality-pooled features before the FC
    quality         [B, S] (P = 1) or [B, S, P]: mu in (0, 1)
    frame_features  [B, S, F] (P = 1) or [B, S, P, F]: R_i
    frame_logits    [B, S, num_classes] (only with num_classes)
  Padded frames (mask False) get no weight and no gradient through the pool.
  In training mode they still enter the trunk's BatchNorm statistics, so pad
  with real-looking frames (e.g. repeat a valid one) rather than zeros.

  classify(images [N, H, W, 3], train=False) -> logits [N, num_classes]: the
  single-image pretraining path (frame features, flattened over parts).
  """
  backbone: str = "small_cnn"
  feature_dim: int = 128
  embedding_dim: int = 128
  num_parts: int = 1
  num_classes: int | None = None
  quality_input: str = "trunk"
  quality_tap: int = 2
  quality_relu: bool = False
  dtype: Dtype = jnp.float32
  backbone_kwargs: Any = None

  def setup(self):
    if self.quality_input not in ("trunk", "middle", "image"):
      raise ValueError("quality_input must be 'trunk', 'middle' or 'image'; got "
                       f"{self.quality_input!r}.")
    kwargs = dict(self.backbone_kwargs or {})
    if self.quality_input == "middle":
      kwargs["tap"] = self.quality_tap
    self.trunk = backbones.create_backbone(self.backbone, self.dtype, **kwargs)
    self.quality_branch = QualityCNN(self.num_parts, relu=self.quality_relu, dtype=self.dtype)
    self.frame_fc = PartDense(self.feature_dim)
    self.set_fc = nn.Dense(self.embedding_dim, param_dtype=jnp.float32)
    if self.num_classes is not None:
      self.classifier = nn.Dense(self.num_classes, param_dtype=jnp.float32)

  def frames(self, images, train: bool = False):
    """images [N, H, W, 3] -> (features [N, P, F], quality [N, P]), float32."""
    fmap = self.trunk(images, train)
    if self.quality_input == "middle":
      q_in, fmap = fmap
    elif self.quality_input == "trunk":
      q_in = fmap
    else:
      q_in = backbones.normalize_images(images, "imagenet", self.dtype)
    features = self.frame_fc(horizontal_parts(fmap, self.num_parts))
    return features, self.quality_branch(q_in)

  def classify(self, images, train: bool = False):
    """Single-image identity logits [N, num_classes] (softmax pretraining)."""
    if self.num_classes is None:
      raise ValueError("QAN.classify needs num_classes; build QAN(num_classes=...).")
    features, _ = self.frames(images, train)
    return self.classifier(jnp.reshape(features, (features.shape[0], -1)))

  def __call__(self, images, mask=None, train: bool = False):
    if images.ndim != 5:
      raise ValueError(f"images must be [batch, set, H, W, 3]; got shape {images.shape}. "
                       "Use QAN.classify for single images.")
    b, s = images.shape[:2]
    if mask is None:
      mask = jnp.ones((b, s), bool)
    elif mask.shape != (b, s):
      raise ValueError(f"mask must be [batch, set] = {(b, s)}; got {mask.shape}.")
    features, quality = self.frames(jnp.reshape(images, (b * s,) + images.shape[2:]), train)
    p, f = features.shape[1:]
    features = jnp.reshape(features, (b, s, p, f))
    quality = jnp.reshape(quality, (b, s, p))
    # quality_pool pools axis -2: put the part axis before the set axis.
    part_mask = jnp.broadcast_to(jnp.asarray(mask, bool)[:, None, :], (b, p, s))
    pooled = pooling.quality_pool(jnp.swapaxes(features, 1, 2), jnp.swapaxes(quality, 1, 2),
                                  part_mask)  # [B, P, F]
    pooled = jnp.reshape(pooled, (b, p * f))
    out = {"embedding": self.set_fc(pooled), "pooled": pooled,
           "quality": quality[..., 0] if p == 1 else quality,
           "frame_features": features[:, :, 0] if p == 1 else features}
    if self.num_classes is not None:
      out["frame_logits"] = self.classifier(jnp.reshape(features, (b, s, p * f)))
    return out
