"""Place-recognition aggregators after NetVLAD, on the same [B, H, W, D] feature map.

Each module maps a backbone feature map [B, H, W, D] to an L2-normalised
global descriptor [B, out] (float32). The defaults are the papers'; the
embedded configs shrink them for a 128-channel 8 x 8 map (configs/netvlad.py).

- SALAD (Izquierdo & Civera, CVPR 2024, arXiv 2311.15937): a score MLP gives
  feature-to-cluster scores, jaxset.ops.salad turns them into an optimal
  transport plan with a dustbin (3 Sinkhorn iterations), a second MLP
  reduces the features, and the assigned features are summed per cluster.
  Defaults: 64 clusters, cluster_dim 128, global token 256, hidden width 512
  in all three MLPs: 8448-d. The official code flattens the [cluster_dim,
  clusters] matrix (dim-major); here it is cluster-major like NetVLAD, a fixed
  permutation of the same descriptor. The paper's global token comes from
  DINOv2's class token; a CNN has none, so the token MLP reads the feature
  map's mean (use_token=False drops it).
- MixVPR (Ali-bey et al., WACV 2023, arXiv 2303.02190): the map flattened to
  D rows of H*W, mix_depth Feature-Mixer blocks x + MLP(LayerNorm(x)) over
  each row (MLP H*W -> mlp_ratio*H*W -> H*W, ReLU), then a channel
  projection D -> out_channels and a row projection H*W -> out_rows.
  Defaults (ResNet-50, 4096-d): mix_depth 4, mlp_ratio 1, out_channels
  1024, out_rows 4.
- BoQ (Ali-bey et al., CVPR 2024, arXiv 2405.07364): a 3x3 conv to
  proj_channels, LayerNorm, then num_layers blocks; each refines the tokens
  with a transformer encoder layer, gives its learned queries self-attention
  (+ LayerNorm) and lets them cross-attend to the tokens (+ LayerNorm). The
  blocks' outputs are concatenated over the queries and projected
  (num_layers*num_queries -> row_dim). Defaults (ResNet-50, 16384-d):
  proj_channels 512, num_queries 32, num_layers 2, row_dim 32, heads =
  proj_channels / 64.
- ConvAP (Ali-bey et al., GSV-Cities, Neurocomputing 2022, arXiv 2210.10239):
  a 1x1 conv to out_channels, adaptive average pooling to s1 x s2, flatten.
  Defaults: out_channels 512, 2 x 2 (2048-d).

Dropout of the official codes is left out (the tasks run deterministic steps).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxset.models.heads import l2_normalize
from jaxset.ops import salad as salad_ops

__all__ = ["SALAD", "MixVPR", "BoQ", "ConvAP", "AGGREGATORS"]

_trunc = nn.initializers.truncated_normal(0.02)


class _Aggregator(nn.Module):
  """What every aggregator shares: the map cast to float32 and `train` unused.

  VPRModel calls each aggregator as `agg(fmap, train)`; none of them has a
  train-time mode (the official dropout is left out, see the module doc).
  Subclasses implement `aggregate(x)`: float32 [B, H, W, D] -> [B, out].
  """

  def __call__(self, fmap, train: bool = False):
    del train
    return self.aggregate(fmap.astype(jnp.float32))


class SALAD(_Aggregator):
  """[B, H, W, D] -> [B, token_dim + num_clusters * cluster_dim] (see module doc)."""
  num_clusters: int = 64
  cluster_dim: int = 128
  token_dim: int = 256
  score_hidden: int = 512
  feature_hidden: int = 512
  token_hidden: int = 512
  num_iters: int = salad_ops.DEFAULT_ITERS
  use_token: bool = True

  @nn.compact
  def aggregate(self, x):
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    scores = nn.Dense(self.num_clusters, name="score_out")(
        nn.relu(nn.Dense(self.score_hidden, name="score_hidden")(x)))
    features = nn.Dense(self.cluster_dim, name="feature_out")(
        nn.relu(nn.Dense(self.feature_hidden, name="feature_hidden")(x)))
    dustbin = self.param("dustbin", nn.initializers.constant(1.0), (), jnp.float32)
    assignment = salad_ops.salad_assignment(scores, dustbin, self.num_iters)
    token = None
    if self.use_token:
      token = nn.Dense(self.token_dim, name="token_out")(
          nn.relu(nn.Dense(self.token_hidden, name="token_hidden")(jnp.mean(x, axis=1))))
    return salad_ops.salad_aggregate(features, assignment, token)


class _FeatureMixer(nn.Module):
  mlp_ratio: float = 1.0

  @nn.compact
  def __call__(self, x):
    n = x.shape[-1]
    y = nn.LayerNorm(name="norm")(x)
    y = nn.Dense(int(n * self.mlp_ratio), kernel_init=_trunc, name="fc1")(y)
    y = nn.Dense(n, kernel_init=_trunc, name="fc2")(nn.relu(y))
    return x + y


class MixVPR(_Aggregator):
  """[B, H, W, D] -> [B, out_channels * out_rows] (see module doc)."""
  out_channels: int = 1024
  out_rows: int = 4
  mix_depth: int = 4
  mlp_ratio: float = 1.0

  @nn.compact
  def aggregate(self, x):
    b, h, w, d = x.shape
    x = jnp.swapaxes(x.reshape(b, h * w, d), 1, 2)  # [B, D, HW]
    for i in range(self.mix_depth):
      x = _FeatureMixer(self.mlp_ratio, name=f"mixer{i}")(x)
    x = nn.Dense(self.out_channels, name="channel_proj")(jnp.swapaxes(x, 1, 2))  # [B, HW, C']
    x = nn.Dense(self.out_rows, name="row_proj")(jnp.swapaxes(x, 1, 2))  # [B, C', R]
    return l2_normalize(x.reshape(b, -1))


class _BoQBlock(nn.Module):
  num_queries: int
  num_heads: int

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    # The encoder layer: post-norm, as torch.nn.TransformerEncoderLayer's default.
    attn = nn.MultiHeadDotProductAttention(self.num_heads, name="encoder_attn")
    x = nn.LayerNorm(name="encoder_norm1")(x + attn(x, x))
    ffn = nn.Dense(d, name="encoder_fc2")(nn.relu(nn.Dense(4 * d, name="encoder_fc1")(x)))
    x = nn.LayerNorm(name="encoder_norm2")(x + ffn)
    q = self.param("queries", nn.initializers.normal(1.0), (1, self.num_queries, d),
                   jnp.float32)
    q = jnp.broadcast_to(q, (x.shape[0],) + q.shape[1:])
    q = nn.LayerNorm(name="norm_q")(
        q + nn.MultiHeadDotProductAttention(self.num_heads, name="self_attn")(q, q))
    out = nn.MultiHeadDotProductAttention(self.num_heads, name="cross_attn")(q, x)
    return x, nn.LayerNorm(name="norm_out")(out)


class BoQ(_Aggregator):
  """[B, H, W, D] -> [B, proj_channels * row_dim] (see module doc)."""
  proj_channels: int = 512
  num_queries: int = 32
  num_layers: int = 2
  row_dim: int = 32

  def __post_init__(self):
    # Checked when the module is built, before any shape is known.
    if self.proj_channels % 64 and self.proj_channels >= 64:
      raise ValueError(f"BoQ.proj_channels={self.proj_channels} must be a multiple of 64 "
                       "(one attention head per 64 channels) or below 64 (one head).")
    super().__post_init__()

  @nn.compact
  def aggregate(self, x):
    heads = max(1, self.proj_channels // 64)
    x = nn.Conv(self.proj_channels, (3, 3), padding="SAME", name="proj_c")(x)
    b = x.shape[0]
    x = nn.LayerNorm(name="norm_input")(x.reshape(b, -1, self.proj_channels))
    outs = []
    for i in range(self.num_layers):
      x, out = _BoQBlock(self.num_queries, heads, name=f"block{i}")(x)
      outs.append(out)
    out = jnp.concatenate(outs, axis=1)  # [B, L*Q, C]
    out = nn.Dense(self.row_dim, name="fc")(jnp.swapaxes(out, 1, 2))  # [B, C, row_dim]
    return l2_normalize(out.reshape(b, -1))


class ConvAP(_Aggregator):
  """[B, H, W, D] -> [B, out_channels * s1 * s2] (see module doc)."""
  out_channels: int = 512
  s1: int = 2
  s2: int = 2

  @nn.compact
  def aggregate(self, x):
    b, h, w, _ = x.shape
    if h % self.s1 or w % self.s2:
      raise ValueError(f"ConvAP pools a {h}x{w} map into {self.s1}x{self.s2} equal cells; "
                       "choose s1, s2 that divide the map's height and width.")
    x = nn.Conv(self.out_channels, (1, 1), name="channel_pool")(x)
    x = x.reshape(b, self.s1, h // self.s1, self.s2, w // self.s2, self.out_channels)
    x = jnp.mean(x, axis=(2, 4))  # [B, s1, s2, C]
    # Channel-major flattening, as the official [B, C, s1, s2].flatten(1).
    return l2_normalize(jnp.transpose(x, (0, 3, 1, 2)).reshape(b, -1))


AGGREGATORS = {"salad": SALAD, "mixvpr": MixVPR, "boq": BoQ, "convap": ConvAP}
