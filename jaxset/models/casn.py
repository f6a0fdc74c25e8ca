"""CASN, Consistent Attentive Siamese Networks (Zheng et al., CVPR 2019).

No public code exists; this follows the paper's description (docs/conventions.md,
CASN):

* Identification module (IDE): backbone -> global average pool (or, with
  num_parts = p > 1, PCB's p horizontal stripes, concatenated) -> FC ->
  BatchNorm1d (feature f) -> ReLU -> FC (identity logits): the two FC layers
  of IDE with the BatchNorm of the common IDE implementations (head_norm=True;
  False drops it). Without it f is tiny at init (GAP of a ReLU map through a
  lecun-normal FC, |f| ~ 0.1) and a plain softmax over 160 classes barely
  moves in 600 steps. Grad-CAM differentiates the head with BatchNorm in
  inference mode (running statistics), so each example's map depends on that
  example only; the training forward pass uses the batch statistics.
* Identification attention (attention mining, as GAIN): Grad-CAM of the
  predicted identity on the last conv map, a soft mask
  T = sigmoid(w (cam - sigma)) of the most attended region, and a penalty on
  the classifier still predicting that identity on image * (1 - T).
* Siamese module: BCE same/different logit from FC((f1 - f2)^2) (the
  squared difference; siamese="abs" uses |f1 - f2|). Logit > 0 means "same".
  By default the FC's weights are kept <= 0 (verifier_sign="nonpositive"):
  a larger difference on any dim can only mean "different", so the BCE is a
  learned diagonal metric on the features re-ID ranks by.
* Siamese attention: the indicator of feature dims voting "same", i.e. whose
  contribution w_j * d_j to the Siamese logit is positive; Grad-CAM of
  (indicator . f) gives M1, M2; jaxset.ops.losses.attention_consistency_loss
  (horizontal max-pool, threshold, resize, ||.||^2 for positive pairs).

The attention losses differentiate through Grad-CAM (gradients of
gradients); `casn_loss` returns the total and the parts.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxset.models import backbones, heads
from jaxset.ops import attention as grad_cam_ops
from jaxset.ops import losses as loss_ops

__all__ = ["CASN", "CASNLossConfig", "identification_loss", "identification_attention",
           "mining_mask", "masked_probability", "identification_attention_loss",
           "verifier_weight",
           "siamese_indicator", "siamese_attention_maps", "siamese_attention_loss", "casn_loss",
           "zero_map_fraction"]

Dtype = Any
VERIFIER_INITS = {"zeros": nn.initializers.zeros,
                  "lecun_normal": nn.initializers.lecun_normal()}
_ROOT_AT_ZERO = 1e-3   # r of a "zeros" nonpositive verifier (w = -r^2 = -1e-6)


class _NonPositiveVerifier(nn.Module):
  """Siamese logit b - sum_j r_j^2 d_j [B, 1]: weights w = -r^2 <= 0."""
  init: str = "zeros"

  @nn.compact
  def __call__(self, d):
    f = d.shape[-1]
    init = (nn.initializers.constant(_ROOT_AT_ZERO) if self.init == "zeros"
            else nn.initializers.normal(f ** -0.5))
    root = self.param("root", init, (f,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (1,), jnp.float32)
    return bias - (d @ (root * root))[:, None]


def verifier_weight(model, params):
  """[F] the verifier's weights w (logit = b + sum_j w_j d_j)."""
  v = params["verifier"]
  return v["kernel"][:, 0] if model.verifier_sign == "free" else -v["root"] ** 2


class CASN(nn.Module):
  """IDE identification network + Siamese verification head.

  Attributes:
    num_classes: training identities.
    backbone: "resnet50" (real data) or "small_cnn" (embedded sets).
    feature_dim: size of the feature f (the first FC).
    siamese: "squared" (FC on (f1 - f2)^2) or "abs" (FC on |f1 - f2|).
    dtype: backbone compute dtype.
    head_norm: BatchNorm1d on f (IDE's FC-BN); False: FC only.
    num_parts: 1 = global average pool (IDE); p > 1 = PCB-style pooling of p
      horizontal stripes, concatenated before the FC (the paper's CASN+PCB
      variant; p must divide the map height).
    verifier_sign: "nonpositive": the verifier's weights are w = -r^2 <= 0
      (parameter r), so the Siamese logit falls with every dim's difference;
      "free": a plain FC (the common Siamese-IDE head; the paper does not
      say). With free signs the verifier learns w_j > 0 on the dims whose
      difference does not tell identities apart (37% of them by 2,400 steps
      on the embedded set), and on those dims the BCE pushes positive pairs
      apart and pulls negative pairs together: it makes them worse for the
      Euclidean ranking that re-ID uses (docs/casn_diagnosis.md).
    verifier_init: the verifier's weights at init: "zeros" (the logit starts
      at the bias and the BCE's gradient on the features, w_j 2 (f1_j - f2_j),
      starts at 0 and grows as the pairs teach w; with nonpositive signs r
      starts at 1e-3, w at -1e-6, since r = 0 would never move) or
      "lecun_normal" (random, Flax's default, like PyTorch's nn.Linear; the
      paper does not say): with free signs, on the dims with w_j > 0 the BCE
      pushes positive pairs apart until w has learnt its sign.

  __call__(images_a [B, H, W, 3], images_b [B, H, W, 3] or None, train=False)
  -> dict: feature_map [B, h, w, C], features [B, F], logits [B, num_classes];
  with images_b also feature_map_b, features_b, logits_b and siamese_logits
  [B] (one BatchNorm batch for both images). The head methods below take a
  feature map, so Grad-CAM can differentiate them:
    feature_map(images, train) -> [B, h, w, C]
    features_from_map(feature_map, train) -> [B, F]
    logits_from_features(features) -> [B, C]
    logits_from_map(feature_map) -> [B, C]
    siamese_logits(features_a, features_b) -> [B]
  """
  num_classes: int
  backbone: str = "resnet50"
  feature_dim: int = 512
  siamese: str = "squared"
  dtype: Dtype = jnp.float32
  backbone_kwargs: Any = None
  head_norm: bool = True
  num_parts: int = 1
  verifier_sign: str = "nonpositive"
  verifier_init: str = "zeros"

  def setup(self):
    if self.num_parts < 1:
      raise ValueError(f"num_parts must be >= 1 (1 = global average pool); got {self.num_parts}.")
    if self.siamese not in ("squared", "abs"):
      raise ValueError(f"siamese must be 'squared' or 'abs'; got {self.siamese!r}.")
    self.trunk = backbones.create_backbone(self.backbone, self.dtype,
                                           **(self.backbone_kwargs or {}))
    self.embed = nn.Dense(self.feature_dim, param_dtype=jnp.float32)
    if self.head_norm:
      self.embed_norm = nn.BatchNorm(momentum=0.9, epsilon=1e-5, param_dtype=jnp.float32)
    self.classifier = nn.Dense(self.num_classes, param_dtype=jnp.float32)
    if self.verifier_init not in VERIFIER_INITS:
      raise ValueError(f"verifier_init must be one of {sorted(VERIFIER_INITS)}; "
                       f"got {self.verifier_init!r}.")
    if self.verifier_sign == "free":
      self.verifier = nn.Dense(1, param_dtype=jnp.float32,
                               kernel_init=VERIFIER_INITS[self.verifier_init])
    elif self.verifier_sign == "nonpositive":
      self.verifier = _NonPositiveVerifier(self.verifier_init)
    else:
      raise ValueError(f"verifier_sign must be 'nonpositive' or 'free'; "
                       f"got {self.verifier_sign!r}.")

  def feature_map(self, images, train: bool = False):
    return self.trunk(images, train)

  def pool(self, feature_map):
    """[B, h, w, C] -> [B, num_parts * C]: average of each horizontal stripe."""
    b, h, _, c = feature_map.shape
    if h % self.num_parts:
      raise ValueError(f"num_parts={self.num_parts} must divide the feature map height {h}; "
                       "pick a divisor (1 = global average pool).")
    x = feature_map.astype(jnp.float32).reshape(b, self.num_parts, h // self.num_parts, -1, c)
    return jnp.mean(x, axis=(2, 3)).reshape(b, self.num_parts * c)

  def features_from_map(self, feature_map, train: bool = False):
    f = self.embed(self.pool(feature_map))
    if self.head_norm:
      f = self.embed_norm(f, use_running_average=not train)
    return f

  def logits_from_features(self, features):
    return self.classifier(nn.relu(features))

  def logits_from_map(self, feature_map):
    return self.logits_from_features(self.features_from_map(feature_map))

  def pair_difference(self, features_a, features_b):
    diff = features_a - features_b
    return diff * diff if self.siamese == "squared" else jnp.abs(diff)

  def siamese_logits(self, features_a, features_b):
    return self.verifier(self.pair_difference(features_a, features_b))[:, 0]

  def __call__(self, images_a, images_b=None, train: bool = False):
    n = images_a.shape[0]
    images = images_a if images_b is None else jnp.concatenate([images_a, images_b])
    fmap = self.feature_map(images, train)
    features = self.features_from_map(fmap, train)
    logits = self.logits_from_features(features)
    out = {"feature_map": fmap[:n], "features": features[:n], "logits": logits[:n]}
    if images_b is not None:
      out.update(feature_map_b=fmap[n:], features_b=features[n:], logits_b=logits[n:],
                 siamese_logits=self.siamese_logits(features[:n], features[n:]))
    return out


class CASNLossConfig(NamedTuple):
  """Weights and constants of the CASN objective.

  id_weight, ia_weight, verification_weight, sa_weight: the four terms.
  mask_scale (w) and mask_threshold (sigma): the soft mask
    sigmoid(w (cam - sigma)) of attention mining (GAIN's w = 10, sigma = 0.5,
    on the max-normalised Grad-CAM).
  consistency_threshold, consistency_size: attention_consistency_loss's
    relative threshold and profile length (None = the map height).
  indicator: siamese_indicator's mode ("relative" or the literal "positive").
  siamese_map: "gradcam" (the paper: Grad-CAM with its ReLU, max-normalised)
    or "signed" (no ReLU, min-max normalised; see siamese_attention_maps).
  verifier_only: the BCE trains the verifier alone: its input features are
    stop-gradient, so none of its gradient reaches the trunk or the
    embedding (train/tasks/casn.py's warmup_verification="head").
  """
  id_weight: float = 1.0
  ia_weight: float = 1.0
  verification_weight: float = 1.0
  sa_weight: float = 1.0
  consistency_threshold: float = 0.5
  consistency_size: int | None = None
  mask_scale: float = 10.0
  mask_threshold: float = 0.5
  indicator: str = "relative"
  siamese_map: str = "gradcam"
  verifier_only: bool = False


# CASN's identification loss is the masked softmax cross-entropy shared by every head.
identification_loss = heads.softmax_cross_entropy


def zero_map_fraction(maps, eps: float = 1e-12):
  """Fraction of [B, h, w] attention maps whose maximum is <= eps (all zero)."""
  return jnp.mean((jnp.max(maps, axis=(1, 2)) <= eps).astype(jnp.float32))


def _head_apply(model, variables, method):
  # Inference-mode head (BatchNorm on running statistics): per-example scores.
  return lambda *args: model.apply(variables, *args, method=method)


def identification_attention(model: CASN, variables, feature_map, classes):
  """Grad-CAM [B, h, w] (max-normalised to [0, 1]) of logit `classes` [B].

  variables: {"params", "batch_stats"} (the head's BatchNorm runs on its
  running statistics)."""
  logits_fn = _head_apply(model, variables, CASN.logits_from_map)
  score = lambda fm: jnp.take_along_axis(logits_fn(fm), classes[:, None], axis=1)[:, 0]
  return grad_cam_ops.grad_cam(score, feature_map, normalize=True)


def mining_mask(model: CASN, variables, images, feature_map, classes, *,
                config: CASNLossConfig = CASNLossConfig()):
  """GAIN's soft mask of the most attended region: T = sigmoid(w (cam - sigma)),
  cam = the Grad-CAM of logit `classes` [B], normalised to [0, 1] and resized
  to the images [B, H, W, 3]. Returns (T [B, H, W], cam [B, h, w])."""
  cam = identification_attention(model, variables, feature_map, classes)
  b, h, w = images.shape[:3]
  cam_up = jax.image.resize(cam, (b, h, w), method="linear")
  return jax.nn.sigmoid(config.mask_scale * (cam_up - config.mask_threshold)), cam


def masked_probability(model: CASN, variables, images, mask, classes, train: bool = True):
  """mean_b softmax(model(I (1 - mask)))[b, c_b]: how much of identity c's
  evidence the image keeps where `mask` [B, H, W] is not (training-mode
  BatchNorm, its statistics discarded, when train)."""
  masked = images.astype(jnp.float32) * (1.0 - mask[..., None])
  if train:
    out, _ = model.apply(variables, masked, train=True, mutable=["batch_stats"])
  else:
    out = model.apply(variables, masked)
  probs = jax.nn.softmax(out["logits"].astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.take_along_axis(probs, classes[:, None], axis=1))


def identification_attention_loss(model: CASN, variables, images, feature_map, logits, *,
                                  config: CASNLossConfig = CASNLossConfig(),
                                  train: bool = True):
  """Attention mining: the predicted identity's probability on the masked image.

  c = argmax logits (no gradient); T = mining_mask (the soft mask of the
  Grad-CAM of logit c); I* = I (1 - T); loss = masked_probability, i.e.
  mean_b softmax(model(I*))[b, c_b]. Gradients reach the backbone through
  both the mask (Grad-CAM, second order) and I*. The masked pass's BatchNorm
  statistics are discarded.
  Returns (loss, cam [B, h, w], mask_area): mask_area is the mean of T over
  the batch's pixels (the share of the image the mining erases; no gradient).
  """
  classes = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
  soft_mask, cam = mining_mask(model, variables, images, feature_map, classes, config=config)
  loss = masked_probability(model, variables, images, soft_mask, classes, train)
  return loss, cam, jax.lax.stop_gradient(jnp.mean(soft_mask))


def siamese_indicator(model: CASN, params, features_a, features_b, mode: str = "positive"):
  """[B, F] 0/1 indicator of the dims "voting same"; no gradient.

  c_j = w_j d_j is dim j's contribution to the Siamese logit (d = the pair
  difference, logit > 0 = same). mode="positive" (the paper read literally):
  c_j > 0. On d >= 0 that is the dims with w_j > 0, the same for every pair;
  with verifier_sign="nonpositive" there are none, and Grad-CAM of
  (indicator . f) is all zero. mode="relative": c_j above the pair's mean
  contribution, i.e. the dims pulling towards "same" more than the average
  dim (non-empty unless all c_j are equal).
  """
  if mode not in ("positive", "relative"):
    raise ValueError(f"mode must be 'positive' or 'relative'; got {mode!r}.")
  d = model.apply({"params": params}, features_a, features_b, method=CASN.pair_difference)
  c = d * verifier_weight(model, params)
  ref = 0.0 if mode == "positive" else jnp.mean(c, axis=-1, keepdims=True)
  return jax.lax.stop_gradient((c > ref).astype(jnp.float32))


def siamese_attention_maps(model: CASN, variables, feature_map_a, feature_map_b, indicator,
                           mode: str = "gradcam"):
  """M1, M2 [B, h, w]: Grad-CAM of (indicator . f) on each image's map, in [0, 1].

  mode="gradcam" (the paper): ReLU, then divide by the maximum. The score
  sums BatchNorm-centred features, so its conv-map part is often negative
  everywhere and the map all zero; the consistency loss is then 0 for that
  pair, and minimising it drives the maps there (notebooks/05). mode="signed":
  no ReLU, min-max normalised, so a map is never all zero and the loss can
  only fall by aligning the two profiles.
  variables: {"params", "batch_stats"}."""
  if mode not in ("gradcam", "signed"):
    raise ValueError(f"siamese_map must be 'gradcam' or 'signed'; got {mode!r}.")
  feats = _head_apply(model, variables, CASN.features_from_map)
  score = lambda fm: jnp.sum(indicator * feats(fm), axis=-1)
  relu = mode == "gradcam"
  m1 = grad_cam_ops.grad_cam(score, feature_map_a, normalize=True, relu=relu)
  m2 = grad_cam_ops.grad_cam(score, feature_map_b, normalize=True, relu=relu)
  return m1, m2


def siamese_attention_loss(model: CASN, variables, feature_map_a, feature_map_b, features_a,
                           features_b, same, *, config: CASNLossConfig = CASNLossConfig()):
  """Mean attention_consistency_loss(M1, M2, same) over pairs (0 for negatives).

  variables: {"params", "batch_stats"}. Returns (loss, (M1, M2))."""
  ind = siamese_indicator(model, variables["params"], features_a, features_b,
                          config.indicator)
  m1, m2 = siamese_attention_maps(model, variables, feature_map_a, feature_map_b, ind,
                                  config.siamese_map)
  per_pair = loss_ops.attention_consistency_loss(
      m1, m2, same, threshold=config.consistency_threshold, size=config.consistency_size)
  return jnp.mean(per_pair), (m1, m2)


def casn_loss(model: CASN, params, batch_stats, batch, pairs, *,
              config: CASNLossConfig = CASNLossConfig(), train: bool = True):
  """The CASN objective on a batch of images and the pairs formed from it.

  batch: images [N, H, W, 3]; labels [N] int (-1 = unknown identity).
  pairs: (a, b, same): [M] row indices into the batch and [M] 0/1 labels,
    e.g. samplers.pk.pk_pairs(P, K) for the in-batch pairs of a P x K batch.
    A batch of explicit pairs is the two sides stacked as images, with
    a = arange(n) and b = n + arange(n).
  Each image passes the backbone once, however many pairs it is in; the pair
  terms gather its features and feature map. Under data parallelism the
  backbone so stays on each device's own images (gathering the images into
  pairs first made XLA replicate the whole step on every device).

  total = id_weight * CE (per image) + ia_weight * attention mining (per
  image) + verification_weight * mean BCE (per pair) + sa_weight *
  consistency (per pair, positives only).

  Returns (total, aux) with aux = {"metrics": {id, ia, verification, sa},
  "batch_stats": the updated statistics (unchanged when train=False)}; the
  metrics of a term with weight 0 are 0 (not computed), and *_zero_maps give
  the fraction of all-zero Grad-CAM maps of each attention term (an all-zero
  map makes the consistency loss trivially 0), ia_mask_area the share of the
  image that attention mining erases, verification_acc the share of pairs
  whose Siamese logit has the right sign. With config.verifier_only the BCE's
  gradient stops at the features (it trains the verifier alone).
  """
  a, b, same = pairs
  a, b = jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32)
  same = jnp.asarray(same, jnp.float32)
  chex.assert_equal_shape([a, b, same])
  chex.assert_rank(a, 1)
  images = batch["images"]
  variables = {"params": params, "batch_stats": batch_stats}
  if train:
    out, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    new_stats = updates["batch_stats"]
  else:
    out, new_stats = model.apply(variables, images), batch_stats
  # The attention terms (Grad-CAM, masks, consistency) in float32 whatever the
  # trunk's compute dtype (config.train.precision).
  fmap = out["feature_map"].astype(jnp.float32)
  l_id = identification_loss(out["logits"], batch["labels"])
  zero = jnp.zeros((), jnp.float32)
  metrics = {"id": l_id, "ia": zero, "verification": zero, "sa": zero}
  total = config.id_weight * l_id
  # Terms with weight 0 are skipped (static Python floats): the IDE baseline
  # costs one forward/backward pass, not three.
  if config.ia_weight:
    l_ia, cam, area = identification_attention_loss(
        model, variables, images, fmap, out["logits"], config=config,
        train=train)
    total += config.ia_weight * l_ia
    metrics.update(ia=l_ia, ia_zero_maps=zero_map_fraction(cam), ia_mask_area=area)
  f_a, f_b = out["features"][a], out["features"][b]
  if config.verification_weight:
    v_a, v_b = ((jax.lax.stop_gradient(f_a), jax.lax.stop_gradient(f_b))
                if config.verifier_only else (f_a, f_b))
    same_logits = model.apply({"params": params}, v_a, v_b, method=CASN.siamese_logits)
    l_ver = jnp.mean(loss_ops.verification_bce(same_logits, same))
    total += config.verification_weight * l_ver
    metrics["verification"] = l_ver
    metrics["verification_acc"] = jnp.mean(((same_logits > 0) == (same > 0.5)).astype(
        jnp.float32))
  if config.sa_weight:
    l_sa, (m1, m2) = siamese_attention_loss(model, variables, fmap[a], fmap[b], f_a, f_b,
                                            same, config=config)
    total += config.sa_weight * l_sa
    metrics.update(sa=l_sa, sa_zero_maps=zero_map_fraction(jnp.concatenate([m1, m2])))
  metrics["total"] = total
  return total, {"metrics": metrics, "batch_stats": new_stats}
