"""NetVLAD place recognition model (Arandjelovic et al., CVPR 2016) and pooling baselines.

backbone (VGG16 cropped at conv5_3 before ReLU) -> local descriptors [B, N, D]
-> pooling -> optional PCA-whitening (Dense, set from data) -> L2.

pooling="netvlad": jaxset.ops.netvlad_layer.netvlad (eq. (3)-(4), intra-norm + L2),
  output K*D flattened [K, D] row-major (see ops.netvlad_layer for MATLAB order).
pooling="avg" / "max" / "gem": jaxset.ops.pooling over the descriptors
  (the f_avg / f_max baselines of the paper, and GeM with a learned p).
pooling="salad" / "mixvpr" / "boq" / "convap": the later aggregators of
  jaxset.models.aggregators on the backbone's [B, H, W, D] map, configured by
  `aggregator_kwargs` (docs/aggregators.md compares them).

Initialisation from data (the official recipe): run the model's
`local_descriptors` on ~500 images, sample ~100 descriptors per image,
k-means them (jaxset.ops.netvlad_layer.kmeans on `descriptors_as_seen`), then
`init_netvlad_params(model, params, centroids, descriptors)`. PCA-whitening:
`fit_pca_whitening(vectors, dim)` on pooled training vectors, then
`set_pca_params(params, mean, projection)`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxset.models import aggregators, backbones
from jaxset.models.heads import l2_normalize
from jaxset.ops import netvlad_layer as netvlad_ops
from jaxset.ops import pooling as pooling_ops

__all__ = ["NetVLADPool", "VPRModel", "StripClassifier", "descriptors_as_seen",
           "init_netvlad_params", "fit_pca_whitening", "apply_pca_whitening", "set_pca_params"]

Dtype = Any
POOLINGS = ("netvlad", "avg", "max", "gem") + tuple(aggregators.AGGREGATORS)


class NetVLADPool(nn.Module):
  """The NetVLAD layer's parameters around jaxset.ops.netvlad_layer.netvlad.

  Params: "centroids" [K, D], "assign_weight" [K, D] (row k = w_k) and, for
  assignment="paper", "assign_bias" [K] (b_k; the official "v1" layer,
  assignment="official", has none). Random init until init_netvlad_params.
  descriptors [B, N, D], mask [B, N] or None -> [B, K*D] float32.
  """
  num_clusters: int = 64
  assignment: str = "paper"
  normalize_input: bool = True

  @nn.compact
  def __call__(self, descriptors, mask=None):
    if self.assignment not in ("paper", "official"):
      raise ValueError(f"assignment must be 'paper' or 'official'; got {self.assignment!r}.")
    k, d = self.num_clusters, descriptors.shape[-1]
    c = self.param("centroids", nn.initializers.normal(1.0 / d ** 0.5), (k, d), jnp.float32)
    w = self.param("assign_weight", nn.initializers.normal(1.0 / d ** 0.5), (k, d),
                   jnp.float32)
    b = None
    if self.assignment == "paper":
      b = self.param("assign_bias", nn.initializers.zeros, (k,), jnp.float32)
    return netvlad_ops.netvlad(descriptors.astype(jnp.float32), c, w, b, mask,
                               self.normalize_input)


class VPRModel(nn.Module):
  """Backbone + NetVLAD (or avg / max / GeM) + optional PCA-whitening.

  Attributes:
    backbone: trunk name, "vgg16" (paper) or "small_cnn" / "resnet18" etc.
    pooling: "netvlad" | "avg" | "max" | "gem" | "salad" | "mixvpr" | "boq" | "convap".
    num_clusters: K (64).
    assignment: "paper" (w_k = 2 alpha c_k, b_k = -alpha |c_k|^2) or "official"
      (w_k = alpha c_k / |c_k|, no bias), used by init_netvlad_params.
    normalize_input: L2-normalise each descriptor before NetVLAD (official v1).
    gem_p: initial GeM exponent (a learned parameter "gem_p").
    pca_dim: if set, a Dense "pca" layer to this size (4096 in the paper)
      followed by L2; set its params with set_pca_params.
    dtype: backbone compute dtype.
    aggregator_kwargs: the fields of the salad / mixvpr / boq / convap module
      (None: the paper's defaults).

  __call__(images [B, H, W, 3] uint8, train=False) -> dict (float32):
    descriptor [B, out]: the L2-normalised image representation (after PCA
      when pca_dim is set); out = pca_dim, K*D (netvlad) or D.
    pooled     [B, K*D or D]: the pooled vector before PCA (what
      fit_pca_whitening is fitted on); the aggregator's output for the others.
  local_descriptors(images, train=False) -> [B, h*w, D] float32, the conv map
  flattened row-major (for k-means initialisation).
  """
  backbone: str = "vgg16"
  pooling: str = "netvlad"
  num_clusters: int = 64
  assignment: str = "paper"
  normalize_input: bool = True
  gem_p: float = 3.0
  pca_dim: int | None = None
  dtype: Dtype = jnp.float32
  backbone_kwargs: Any = None
  aggregator_kwargs: Any = None

  def setup(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}; got {self.pooling!r}.")
    self.trunk = backbones.create_backbone(self.backbone, self.dtype,
                                           **(self.backbone_kwargs or {}))
    if self.pooling == "netvlad":
      self.vlad = NetVLADPool(self.num_clusters, self.assignment, self.normalize_input)
    if self.pooling in aggregators.AGGREGATORS:
      self.aggregator = aggregators.AGGREGATORS[self.pooling](**(self.aggregator_kwargs or {}))
    if self.pooling == "gem":
      self.p = self.param("gem_p", nn.initializers.constant(self.gem_p), (), jnp.float32)
    if self.pca_dim is not None:
      self.pca = nn.Dense(self.pca_dim, param_dtype=jnp.float32)

  def local_descriptors(self, images, train: bool = False):
    fmap = self.trunk(images, train)
    b, h, w, d = fmap.shape
    return jnp.reshape(fmap, (b, h * w, d)).astype(jnp.float32)

  def __call__(self, images, train: bool = False):
    if self.pooling in aggregators.AGGREGATORS:
      pooled = self.aggregator(self.trunk(images, train), train)
      descriptor = l2_normalize(self.pca(pooled)) if self.pca_dim is not None else pooled
      return {"descriptor": descriptor, "pooled": pooled}
    x = self.local_descriptors(images, train)
    if self.pooling == "netvlad":
      pooled = self.vlad(x)
    elif self.pooling == "avg":
      pooled = l2_normalize(pooling_ops.mean_pool(x))
    elif self.pooling == "max":
      pooled = l2_normalize(pooling_ops.max_pool(x))
    else:
      pooled = l2_normalize(pooling_ops.gem_pool(x, p=self.p))
    descriptor = pooled
    if self.pca_dim is not None:
      descriptor = l2_normalize(self.pca(pooled))
    return {"descriptor": descriptor, "pooled": pooled}


class StripClassifier(nn.Module):
  """A backbone with a per-strip classifier, for pretraining it on labelled views.

  The conv map is averaged over rows; each of its columns (a vertical strip of
  the image) gets `num_classes` logits from one shared Dense. The trunk's
  variables sit under "trunk" as in VPRModel, so the pretrained backbone
  loads into it (train/tasks/common.load_pretrained).

  __call__(images [B, H, W, 3] uint8, train=False) -> logits [B, w, num_classes] float32.
  """
  backbone: str = "small_cnn"
  num_classes: int = 25
  dtype: Dtype = jnp.float32
  backbone_kwargs: Any = None

  def setup(self):
    self.trunk = backbones.create_backbone(self.backbone, self.dtype,
                                           **(self.backbone_kwargs or {}))
    self.head = nn.Dense(self.num_classes, param_dtype=jnp.float32)

  def __call__(self, images, train: bool = False):
    fmap = self.trunk(images, train)
    return self.head(jnp.mean(fmap.astype(jnp.float32), axis=1))


def descriptors_as_seen(model: VPRModel, descriptors):
  """Local descriptors [..., D] as the NetVLAD layer sees them (L2-normalised when
  model.normalize_input): feed these to ops.netvlad_layer.kmeans."""
  return l2_normalize(descriptors) if model.normalize_input else jnp.asarray(descriptors)


def init_netvlad_params(model: VPRModel, params, centroids, descriptors=None, *,
                        alpha=None):
  """NetVLAD params from k-means centroids (paper sec. 3.1 / official alpha rule).

  Args:
    model: the VPRModel (its assignment and normalize_input are used).
    params: the model's params (variables["params"]); not modified.
    centroids: [K, D] k-means centres of descriptors_as_seen(model, local descriptors).
    descriptors: [M, D] raw local descriptors for the alpha rule
      (ops.netvlad_layer.netvlad_alpha); needed unless alpha is given.
    alpha: the assignment sharpness, overriding the rule.

  Returns:
    a new params tree with vlad/{centroids, assign_weight[, assign_bias]} set.
  """
  if model.pooling != "netvlad":
    raise ValueError(f"init_netvlad_params needs pooling='netvlad'; got {model.pooling!r}.")
  k = params["vlad"]["centroids"].shape
  if tuple(jnp.shape(centroids)) != tuple(k):
    raise ValueError(f"centroids must be {tuple(k)} (num_clusters, descriptor dim); got "
                     f"{tuple(jnp.shape(centroids))}.")
  if alpha is None:
    if descriptors is None:
      raise ValueError("give the training descriptors (for the alpha rule) or alpha.")
    alpha = netvlad_ops.netvlad_alpha(descriptors_as_seen(model, descriptors), centroids)
  new = netvlad_ops.netvlad_params_from_centroids(jnp.asarray(centroids, jnp.float32), alpha,
                                                  assignment=model.assignment)
  vlad = dict(params["vlad"])
  vlad["centroids"] = new["centroids"]
  vlad["assign_weight"] = new["assign_weight"]
  if new["assign_bias"] is not None:
    vlad["assign_bias"] = new["assign_bias"]
  return {**params, "vlad": vlad}


def fit_pca_whitening(vectors, dim: int, eps: float = 1e-9, *, block_size: int = 4096):
  """PCA-whitening fitted on training vectors (NetVLAD sec. 5: K*D -> 4096).

  vectors: [M, Din], or an iterable of [m_i, Din] blocks (streamed: e.g. the
  training database's descriptors batch by batch). Returns (mean [Din],
  projection [Din, dim]) with y = (x - mean) @ projection: the top `dim`
  principal directions, each divided by sqrt(its variance + eps), so the
  training vectors come out decorrelated with unit variance.

  The covariance is accumulated in float64, block_size rows at a time, around
  the first block's mean (so a large common offset does not cancel digits),
  then eigendecomposed: memory Din^2 float64 whatever M (Din = 4096: 134 MB;
  Din = 32768 (NetVLAD 64 x 512): 8.6 GB). An array with M <= Din is
  decomposed by an SVD of the centred data instead (M x Din, no Din^2). Each
  direction's sign makes its largest component positive. Raises if
  dim > min(M - 1, Din) (there are not that many non-trivial directions).
  """
  if isinstance(vectors, (np.ndarray, jnp.ndarray)) or hasattr(vectors, "__array__"):
    x = np.asarray(vectors, np.float64)
    if x.ndim != 2:
      raise ValueError(f"vectors must be [M, Din]; got shape {x.shape}.")
    if x.shape[0] <= x.shape[1]:
      m = x.shape[0]
      _check_pca_dim(dim, m, x.shape[1])
      mean = x.mean(axis=0)
      _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
      return _whitening(mean, vt[:dim].T, sv[:dim] ** 2 / (m - 1), eps)
    blocks = (x[i:i + block_size] for i in range(0, x.shape[0], block_size))
  else:
    blocks = iter(vectors)
  m, shift, total, gram = 0, None, None, None
  for block in blocks:
    b = np.asarray(block, np.float64)
    if b.ndim != 2 or b.shape[0] == 0:
      raise ValueError(f"Each block of vectors must be a non-empty [m, Din]; got {b.shape}.")
    if shift is None:
      shift = b.mean(axis=0)
      total = np.zeros_like(shift)
      gram = np.zeros((shift.size, shift.size))
    elif b.shape[1] != shift.size:
      raise ValueError(f"Blocks disagree on Din: {b.shape[1]} vs {shift.size}.")
    b = b - shift
    total += b.sum(axis=0)
    gram += b.T @ b
    m += b.shape[0]
  if shift is None:
    raise ValueError("vectors is empty: fit on at least dim + 1 vectors.")
  _check_pca_dim(dim, m, shift.size)
  centre = total / m
  cov = (gram - m * np.outer(centre, centre)) / (m - 1)
  var, vec = np.linalg.eigh(cov)  # ascending
  return _whitening(shift + centre, vec[:, ::-1][:, :dim], var[::-1][:dim], eps)


def _check_pca_dim(dim: int, m: int, d: int) -> None:
  if not 1 <= dim <= min(m - 1, d):
    raise ValueError(f"dim={dim} must be in [1, min(M - 1, Din)] = [1, {min(m - 1, d)}]; "
                     "fit on more vectors or ask for fewer dimensions.")


def _whitening(mean, directions, var, eps):
  big = np.argmax(np.abs(directions), axis=0)
  signs = np.sign(directions[big, np.arange(directions.shape[1])])
  proj = directions * np.where(signs == 0, 1.0, signs) / np.sqrt(np.maximum(var, 0.0) + eps)
  return jnp.asarray(mean, jnp.float32), jnp.asarray(proj, jnp.float32)


def apply_pca_whitening(vectors, mean, projection, normalize: bool = True):
  """(x - mean) @ projection, then L2 (NetVLAD's PCA-whitened descriptor).

  vectors [M, Din] (numpy, any size: done on the host in float32 blocks) ->
  float32 [M, dim].
  """
  x = np.asarray(vectors, np.float32)
  mean, proj = np.asarray(mean, np.float32), np.asarray(projection, np.float32)
  out = np.empty((x.shape[0], proj.shape[1]), np.float32)
  for i in range(0, x.shape[0], 4096):
    y = (x[i:i + 4096] - mean) @ proj
    if normalize:
      y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    out[i:i + 4096] = y
  return out


def set_pca_params(params, mean, projection):
  """Sets the "pca" Dense so that pca(x) = (x - mean) @ projection. Returns new params."""
  if "pca" not in params:
    raise ValueError("params has no 'pca' layer: build VPRModel(pca_dim=...).")
  shape = params["pca"]["kernel"].shape
  if tuple(projection.shape) != tuple(shape):
    raise ValueError(f"projection must be {tuple(shape)}; got {tuple(projection.shape)}.")
  projection = jnp.asarray(projection, jnp.float32)
  return {**params, "pca": {"kernel": projection,
                            "bias": -jnp.asarray(mean, jnp.float32) @ projection}}
