"""A toy method's model: a one-layer CNN embedding an image on the unit sphere."""
import flax.linen as nn
import jax.numpy as jnp

from jaxset.models.heads import l2_normalize


class ToyEmbedder(nn.Module):
  """uint8 [B, H, W, 3] -> {"embedding": [B, embedding_dim], unit norm}."""
  width: int = 8
  embedding_dim: int = 16
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images.astype(self.dtype) / 255.0
    x = nn.relu(nn.Conv(self.width, (3, 3), strides=(2, 2), dtype=self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    return {"embedding": l2_normalize(nn.Dense(self.embedding_dim)(x.astype(jnp.float32)))}
