"""Backbones: conv trunks that map NHWC images to their last conv feature map.

Every backbone here is a Flax Linen module with the same call:

  backbone(images, train=False) -> feature_map [B, h, w, C]

* images: [B, H, W, 3] NHWC, uint8 (or float already in [0, 255], e.g. a
  masked image in CASN's attention mining). The conversion to float and the
  normalisation happen inside the model: ImageNet mean/std for the
  torchvision layouts (ResNet, VGG, SmallCNN), (x - 127.5) / input_scale for
  the insightface IResNet.
* BatchNorm keeps its running statistics in the "batch_stats" collection;
  `train=True` normalises with batch statistics and updates them (apply with
  mutable=["batch_stats"]).
* `dtype` is the compute dtype (e.g. jnp.bfloat16); parameters stay float32.
* Padding is explicit and symmetric, as PyTorch's, so converted torchvision /
  insightface weights (jaxset.convert) give the same outputs.

Face models need an embedding on top of the trunk: `FaceEmbedder` adds the
insightface output layer (BN2d - dropout - flatten - FC - BN1d) to any trunk
and returns the embedding with its norm.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxset.models.heads import safe_norm

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "normalize_images", "PReLU", "SmallCNN",
    "ResNet", "ResNet18", "ResNet50", "VGG16", "IResNet", "IResNet50", "IResNet100",
    "ADAFACE_KWARGS",
    "EmbeddingHead", "FaceEmbedder", "BACKBONES", "create_backbone",
]

Dtype = Any

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def normalize_images(images, mode: str = "imagenet", dtype: Dtype = jnp.float32,
                     input_scale: float = 128.0):
  """uint8 (or [0, 255] float) NHWC images -> normalised float of `dtype`.

  mode="imagenet": (x - mean) / std per channel (torchvision's constants,
  scaled to [0, 255]). mode="insightface": (x - 127.5) / input_scale
  (128 for the MXNet-era insightface models, 127.5 for arcface_torch and
  AdaFace). The arithmetic is float32; the result is cast to `dtype`.
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [batch, height, width, 3] NHWC; got shape "
                     f"{tuple(images.shape)}. Transpose NCHW input with "
                     "x.transpose(0, 2, 3, 1).")
  x = images.astype(jnp.float32)
  if mode == "imagenet":
    x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
  elif mode == "insightface":
    x = (x - 127.5) / input_scale
  else:
    raise ValueError(f"mode must be 'imagenet' or 'insightface'; got {mode!r}.")
  return x.astype(dtype)


def _check_tap(tap, last: int, name: str):
  if tap is not None and not 1 <= tap <= last:
    raise ValueError(f"{name}.tap must be a block index in 1..{last} (the map it returns "
                     f"beside the last one) or None; got {tap!r}.")


def _pad(k: int):
  return ((k // 2, k // 2), (k // 2, k // 2))


def _conv(features, kernel, stride=1, *, bias=False, dtype=jnp.float32, name=None):
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=_pad(kernel),
                 use_bias=bias, dtype=dtype, param_dtype=jnp.float32, name=name,
                 kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))


def _bn(train, dtype, name=None, scale_init=nn.initializers.ones):
  # PyTorch BN: momentum 0.1 (Flax 0.9), eps 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, param_dtype=jnp.float32, name=name,
                      scale_init=scale_init)


class PReLU(nn.Module):
  """Per-channel PReLU (torch.nn.PReLU(C)): max(x, 0) + a_c * min(x, 0), a_c init 0.25."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    a = self.param("negative_slope", nn.initializers.constant(0.25), (x.shape[-1],),
                   jnp.float32)
    a = a.astype(self.dtype)
    return jnp.where(x >= 0, x, a * x)


class SmallCNN(nn.Module):
  """A small conv-BN-ReLU trunk, the CPU default for the embedded 64x32 / 64x64 sets.

  conv3x3/2 - conv3x3 - maxpool2 - conv3x3 - maxpool2 - conv3x3, widths
  `widths`: a 64x32 input gives an 8x4 map, 64x64 an 8x8 map (stride 8).
  Returns the last conv map after its ReLU, [B, H/8, W/8, widths[-1]].
  With `tap` = k in 1..3 it returns (the map after block k, the last map):
  a branch can split off the middle of the trunk (QAN fig. 2).
  The first `frozen` blocks (0..4) run in inference mode (running BatchNorm
  statistics) and pass no gradient back: fine-tuning only the top of a
  pretrained trunk (NetVLAD trains conv5 of VGG16 and above).
  """
  widths: Sequence[int] = (32, 64, 128, 128)
  dtype: Dtype = jnp.float32
  tap: int | None = None
  frozen: int = 0

  @nn.compact
  def __call__(self, images, train: bool = False):
    if len(self.widths) != 4:
      raise ValueError(f"SmallCNN.widths must list 4 channel counts; got {self.widths}.")
    _check_tap(self.tap, 3, "SmallCNN")
    x = normalize_images(images, "imagenet", self.dtype)
    tapped = None
    for i, (w, stride, pool) in enumerate(zip(self.widths, (2, 1, 1, 1),
                                              (False, True, True, False))):
      x = _conv(w, 3, stride, dtype=self.dtype, name=f"conv{i + 1}")(x)
      x = nn.relu(_bn(train and i >= self.frozen, self.dtype, name=f"bn{i + 1}")(x))
      if pool:
        x = nn.max_pool(x, (2, 2), (2, 2))
      if i + 1 == self.frozen:
        x = jax.lax.stop_gradient(x)
      if self.tap == i + 1:
        tapped = x
    return x if self.tap is None else (tapped, x)


# ----------------------------------------------------------------------------
# torchvision ResNet (v1.5: the stride sits on the 3x3 conv of the bottleneck).


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    residual = x
    y = _conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(_bn(train, self.dtype, "bn1")(y))
    y = _conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    y = _bn(train, self.dtype, "bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      residual = _conv(self.features, 1, self.stride, dtype=self.dtype,
                       name="downsample_conv")(x)
      residual = _bn(train, self.dtype, "downsample_bn")(residual)
    return nn.relu(y + residual)


class Bottleneck(nn.Module):
  features: int  # the block's output width is 4 * features
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = 4 * self.features
    residual = x
    y = _conv(self.features, 1, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(_bn(train, self.dtype, "bn1")(y))
    y = _conv(self.features, 3, self.stride, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(_bn(train, self.dtype, "bn2")(y))
    y = _conv(out, 1, dtype=self.dtype, name="conv3")(y)
    y = _bn(train, self.dtype, "bn3")(y)
    if self.stride != 1 or x.shape[-1] != out:
      residual = _conv(out, 1, self.stride, dtype=self.dtype, name="downsample_conv")(x)
      residual = _bn(train, self.dtype, "downsample_bn")(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """torchvision ResNet trunk (conv1 7x7/2 - maxpool - layer1..4), no avgpool/fc.

  Returns the layer4 map [B, H/32, W/32, 512 (basic) or 2048 (bottleneck)];
  with `tap` = k in 1..3, (the layer-k map, the layer4 map).
  Parameter names: conv1, bn1, layer{i}_{j}/{conv1, bn1, ..., downsample_conv,
  downsample_bn} (jaxset.convert maps torchvision's names onto these).
  """
  stage_sizes: Sequence[int]
  block: str = "basic"  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50+)
  dtype: Dtype = jnp.float32
  tap: int | None = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    _check_tap(self.tap, len(self.stage_sizes) - 1, "ResNet")
    block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
    x = normalize_images(images, "imagenet", self.dtype)
    x = _conv(64, 7, 2, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(_bn(train, self.dtype, "bn1")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    tapped = None
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        x = block_cls(64 * 2 ** i, stride, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
      if self.tap == i + 1:
        tapped = x
    return x if self.tap is None else (tapped, x)


def ResNet18(dtype: Dtype = jnp.float32, **kw):
  """torchvision ResNet-18 trunk; feature map [B, H/32, W/32, 512]."""
  return ResNet(stage_sizes=(2, 2, 2, 2), block="basic", dtype=dtype, **kw)


def ResNet50(dtype: Dtype = jnp.float32, **kw):
  """torchvision ResNet-50 trunk; feature map [B, H/32, W/32, 2048]."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck", dtype=dtype, **kw)


# ----------------------------------------------------------------------------
# VGG16 cropped at conv5_3, before its ReLU (NetVLAD).

VGG16_LAYOUT = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16(nn.Module):
  """torchvision VGG16 `features` up to conv5_3, before its ReLU (NetVLAD sec. 5).

  Returns the conv5_3 map [B, H/16, W/16, 512] (4 max-pools; the 5th is
  cropped). Parameter names conv{block}_{i}, i.e. conv1_1 ... conv5_3.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    del train  # no BatchNorm
    x = normalize_images(images, "imagenet", self.dtype)
    for b, widths in enumerate(VGG16_LAYOUT):
      if b > 0:
        x = nn.max_pool(x, (2, 2), (2, 2))
      for i, w in enumerate(widths):
        x = _conv(w, 3, bias=True, dtype=self.dtype, name=f"conv{b + 1}_{i + 1}")(x)
        last = b == len(VGG16_LAYOUT) - 1 and i == len(widths) - 1
        if not last:
          x = nn.relu(x)
    return x


# ----------------------------------------------------------------------------
# insightface IResNet (arcface_torch/backbones/iresnet.py layout).


class IBasicBlock(nn.Module):
  """BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus the shortcut.

  The shortcut is a conv1x1(stride)-BN projection when the width or the
  resolution changes; with pool_shortcut (AdaFace's net.py) a strided block
  that keeps its width uses MaxPool2d(1, stride), i.e. subsampling, instead.
  """
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  pool_shortcut: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = _bn(train, self.dtype, "bn1")(x)
    y = _conv(self.features, 3, dtype=self.dtype, name="conv1")(y)
    y = _bn(train, self.dtype, "bn2")(y)
    y = PReLU(self.dtype, name="prelu")(y)
    y = _conv(self.features, 3, self.stride, dtype=self.dtype, name="conv2")(y)
    y = _bn(train, self.dtype, "bn3")(y)
    residual = x
    if x.shape[-1] == self.features and self.pool_shortcut:
      residual = x[:, ::self.stride, ::self.stride]
    elif self.stride != 1 or x.shape[-1] != self.features:
      residual = _conv(self.features, 1, self.stride, dtype=self.dtype,
                       name="downsample_conv")(x)
      residual = _bn(train, self.dtype, "downsample_bn")(residual)
    return y + residual


class IResNet(nn.Module):
  """insightface IResNet trunk: conv3x3-BN-PReLU stem, 4 stages of IBasicBlocks.

  Input 112x112 (the face crops); returns the layer4 map [B, H/16, W/16, 512]
  (7x7 at 112x112). The embedding layer is `EmbeddingHead` (see FaceEmbedder).
  `input_scale`: (x - 127.5) / input_scale; 128 as the MXNet-era insightface
  models, 127.5 for arcface_torch / AdaFace checkpoints.
  `bgr`: reverse the channels first (AdaFace's models take BGR).
  `pool_shortcut`: AdaFace's net.py shortcut (see IBasicBlock); ADAFACE_KWARGS
  holds all three settings for the official AdaFace checkpoints.
  """
  stage_sizes: Sequence[int] = (3, 4, 14, 3)
  input_scale: float = 128.0
  bgr: bool = False
  pool_shortcut: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.bgr:
      images = jnp.asarray(images)[..., ::-1]
    x = normalize_images(images, "insightface", self.dtype, self.input_scale)
    x = _conv(64, 3, dtype=self.dtype, name="conv1")(x)
    x = _bn(train, self.dtype, "bn1")(x)
    x = PReLU(self.dtype, name="prelu")(x)
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = IBasicBlock(64 * 2 ** i, 2 if j == 0 else 1, self.dtype, self.pool_shortcut,
                        name=f"layer{i + 1}_{j}")(x, train)
    return x


# The official AdaFace checkpoints (net.py IR-50 / IR-101): BGR input,
# (x - 127.5) / 127.5, subsampling shortcut in the first block.
ADAFACE_KWARGS = {"input_scale": 127.5, "bgr": True, "pool_shortcut": True}


def IResNet50(dtype: Dtype = jnp.float32, **kw):
  """insightface iresnet50 trunk, layers (3, 4, 14, 3)."""
  return IResNet(stage_sizes=(3, 4, 14, 3), dtype=dtype, **kw)


def IResNet100(dtype: Dtype = jnp.float32, **kw):
  """insightface iresnet100 trunk, layers (3, 13, 30, 3)."""
  return IResNet(stage_sizes=(3, 13, 30, 3), dtype=dtype, **kw)


class EmbeddingHead(nn.Module):
  """insightface's output layer: BN2d - dropout - flatten - FC - BN1d.

  feature_map [B, h, w, C] -> embedding [B, embedding_dim] (unnormalised).
  The flatten is NHWC order (jaxset.convert permutes PyTorch's NCHW-order fc
  weights). The final BN1d has no learned scale (insightface freezes it at 1;
  AdaFace's has affine=False: the converter drops the bias there).
  Dropout (insightface 0, AdaFace 0.4) needs a "dropout" rng when training.
  """
  embedding_dim: int = 512
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feature_map, train: bool = False):
    x = _bn(train, self.dtype, "bn2")(feature_map)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = jnp.reshape(x, (x.shape[0], -1))
    x = nn.Dense(self.embedding_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 name="fc")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     use_scale=False, dtype=self.dtype, param_dtype=jnp.float32,
                     name="features")(x)
    return x


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "vgg16": VGG16,
    "iresnet50": IResNet50,
    "iresnet100": IResNet100,
}


def create_backbone(name: str, dtype: Dtype = jnp.float32, **kwargs) -> nn.Module:
  """Backbone by name: one of BACKBONES (small_cnn, resnet18, resnet50, vgg16,
  iresnet50, iresnet100). kwargs go to the module (e.g. input_scale)."""
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}.")
  return BACKBONES[name](dtype=dtype, **kwargs)


class FaceEmbedder(nn.Module):
  """A trunk plus the insightface embedding layer.

  __call__(images, train=False) -> dict:
    feature_map [B, h, w, C]  (the trunk's last conv map, pre-BN2d),
    embedding   [B, embedding_dim] unnormalised (float32),
    norm        [B] its L2 norm (float32).
  Submodules: "trunk" (create_backbone(backbone)) and "embedding"
  (EmbeddingHead). jaxset.convert's iresnet50/iresnet100 output is the
  variables of FaceEmbedder(backbone="iresnet50"/"iresnet100").
  """
  backbone: str = "iresnet50"
  embedding_dim: int = 512
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  backbone_kwargs: Any = None

  def setup(self):
    self.trunk = create_backbone(self.backbone, self.dtype, **(self.backbone_kwargs or {}))
    self.embedding = EmbeddingHead(self.embedding_dim, self.dropout_rate, self.dtype)

  def __call__(self, images, train: bool = False):
    fmap = self.trunk(images, train)
    emb = self.embedding(fmap, train).astype(jnp.float32)
    return {"feature_map": fmap, "embedding": emb, "norm": safe_norm(emb)}
