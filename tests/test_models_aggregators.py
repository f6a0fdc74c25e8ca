"""jaxset.models.aggregators: SALAD, MixVPR, BoQ, ConvAP on a [B, H, W, D] map."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxset.models import aggregators as agg
from jaxset.models.netvlad import VPRModel
from jaxset.ops import salad as salad_ops

SMALL = {
    "salad": dict(num_clusters=4, cluster_dim=6, token_dim=5, score_hidden=8, feature_hidden=8,
                  token_hidden=8),
    "mixvpr": dict(out_channels=6, out_rows=3, mix_depth=2),
    "boq": dict(proj_channels=16, num_queries=4, num_layers=2, row_dim=3),
    "convap": dict(out_channels=6, s1=2, s2=2),
}
SIZES = {"salad": 5 + 4 * 6, "mixvpr": 18, "boq": 48, "convap": 24}


def _fmap(seed=0, shape=(2, 4, 4, 8)):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("name", sorted(agg.AGGREGATORS))
def test_descriptor_size_norm_and_gradient(name):
  module = agg.AGGREGATORS[name](**SMALL[name])
  x = _fmap()
  params = jax.jit(module.init)(jax.random.key(0), x)

  def first_column(p):
    out = module.apply(p, x)
    return jnp.sum(out[:, 0]), out

  # One compiled program gives the forward output and its gradient.
  grads, out = jax.jit(jax.grad(first_column, has_aux=True))(params)
  assert out.shape == (2, SIZES[name]) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def test_published_default_descriptor_sizes():
  # ResNet-50 maps (1024 channels, 20x20 at 320 px; SALAD on DINOv2's 16x16 tokens):
  # MixVPR 4096, BoQ 16384, ConvAP 2048, SALAD 8448.
  sizes = {}
  for name, shape in [("mixvpr", (1, 20, 20, 1024)), ("boq", (1, 20, 20, 1024)),
                      ("convap", (1, 20, 20, 1024)), ("salad", (1, 16, 16, 768))]:
    module = agg.AGGREGATORS[name]()
    x = jnp.zeros(shape, jnp.float32)
    out = jax.eval_shape(lambda x, m=module: m.init_with_output(jax.random.key(0), x)[0], x)
    sizes[name] = out.shape[-1]
  assert sizes == {"mixvpr": 4096, "boq": 16384, "convap": 2048, "salad": 8448}


def test_mixvpr_and_convap_equal_their_equations():
  x = _fmap(1)
  b, h, w, d = x.shape
  m = agg.MixVPR(**SMALL["mixvpr"])
  p = jax.jit(m.init)(jax.random.key(1), x)["params"]
  rows = np.asarray(x).reshape(b, h * w, d).transpose(0, 2, 1)  # [B, D, HW]
  for i in range(2):
    q = p[f"mixer{i}"]
    mu, var = rows.mean(-1, keepdims=True), rows.var(-1, keepdims=True)
    y = (rows - mu) / np.sqrt(var + 1e-6) * np.asarray(q["norm"]["scale"]) + np.asarray(
        q["norm"]["bias"])
    y = np.maximum(y @ np.asarray(q["fc1"]["kernel"]) + np.asarray(q["fc1"]["bias"]), 0)
    rows = rows + y @ np.asarray(q["fc2"]["kernel"]) + np.asarray(q["fc2"]["bias"])
  c = rows.transpose(0, 2, 1) @ np.asarray(p["channel_proj"]["kernel"]) + np.asarray(
      p["channel_proj"]["bias"])
  r = c.transpose(0, 2, 1) @ np.asarray(p["row_proj"]["kernel"]) + np.asarray(
      p["row_proj"]["bias"])
  want = r.reshape(b, -1)
  want /= np.linalg.norm(want, axis=-1, keepdims=True)
  np.testing.assert_allclose(jax.jit(m.apply)({"params": p}, x), want, rtol=2e-4, atol=2e-5)

  cm = agg.ConvAP(**SMALL["convap"])
  cp = cm.init(jax.random.key(2), x)["params"]["channel_pool"]
  y = np.asarray(x) @ np.asarray(cp["kernel"])[0, 0] + np.asarray(cp["bias"])  # 1x1 conv
  cells = [[y[:, i * 2:(i + 1) * 2, j * 2:(j + 1) * 2].mean((1, 2)) for j in range(2)]
           for i in range(2)]
  want = np.stack([np.stack(r, -1) for r in cells], -2).reshape(b, -1)  # [B, C, s1, s2]
  want /= np.linalg.norm(want, axis=-1, keepdims=True)
  np.testing.assert_allclose(cm.apply({"params": {"channel_pool": cp}}, x), want, rtol=2e-4,
                             atol=2e-5)


def test_salad_module_wraps_the_op():
  x = _fmap(2)
  m = agg.SALAD(**SMALL["salad"])
  p = jax.jit(m.init)(jax.random.key(3), x)["params"]
  flat = x.reshape(2, 16, 8)

  def mlp(name, v):
    h = jax.nn.relu(v @ p[f"{name}_hidden"]["kernel"] + p[f"{name}_hidden"]["bias"])
    return h @ p[f"{name}_out"]["kernel"] + p[f"{name}_out"]["bias"]

  assignment = salad_ops.salad_assignment(mlp("score", flat), p["dustbin"], 3)
  want = salad_ops.salad_aggregate(mlp("feature", flat), assignment,
                                   mlp("token", flat.mean(1)))
  np.testing.assert_allclose(jax.jit(m.apply)({"params": p}, x), want, rtol=1e-5, atol=1e-6)
  no_token = agg.SALAD(**SMALL["salad"], use_token=False)
  assert jax.eval_shape(lambda: no_token.init_with_output(jax.random.key(0), x)[0]).shape == (2, 24)


def test_netvlad_model_selects_every_aggregator_and_rejects_unknown():
  images = jnp.zeros((2, 64, 64, 3), jnp.uint8)
  for name in agg.AGGREGATORS:
    model = VPRModel(backbone="small_cnn", pooling=name, aggregator_kwargs=SMALL[name])
    out, _ = jax.eval_shape(lambda m=model: m.init_with_output(jax.random.key(0), images))
    assert out["descriptor"].shape == (2, SIZES[name])
  with pytest.raises(ValueError, match="pooling must be one of"):
    jax.eval_shape(lambda: VPRModel(backbone="small_cnn", pooling="vlad2").init(
        jax.random.key(0), images))
  with pytest.raises(ValueError, match="fewer clusters"):  # 8x8 map, 64 clusters
    jax.eval_shape(lambda: VPRModel(backbone="small_cnn", pooling="salad").init(
        jax.random.key(0), images))


def test_boq_rejects_channels_it_cannot_split_into_heads_when_built():
  with pytest.raises(ValueError, match="multiple of 64"):
    agg.BoQ(proj_channels=100)
  assert agg.BoQ(proj_channels=48).proj_channels == 48  # below 64: one head
