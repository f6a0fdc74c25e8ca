"""Boundary numerics of the ops: degenerate p, empty sets, masked NaN padding,
float16 distances, traced scales, empty AdaFace batches, tiny weights, zero
descriptors, the easy-margin fallback and signed attention profiles.

Each test names the value the op used to get wrong (issue 15)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxset import ops
from jaxset.ops import netvlad_layer, pooling


def _positive(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0.2, 2.0, shape), jnp.float32)


# --------------------------------------------------------------------------
# gem_pool at p = 0 (was NaN value, NaN p-gradient).


def test_gem_p_zero_is_the_geometric_mean_with_the_true_p_gradient(x64):
  x = _positive((5, 3)).astype(jnp.float64)
  out, grad_p = jax.value_and_grad(lambda p: ops.gem_pool(x, p=p).sum())(0.0)
  geo = np.exp(np.log(np.asarray(x)).mean(0))
  np.testing.assert_allclose(ops.gem_pool(x, p=0.0), geo, rtol=1e-12)
  # Finite difference of the plain formula at p = +-h (outside the expansion).
  h = 1e-2
  plain = lambda p: ((np.asarray(x) ** p).mean(0) ** (1 / p)).sum()
  np.testing.assert_allclose(grad_p, (plain(h) - plain(-h)) / (2 * h), rtol=1e-3)
  assert grad_p > 0
  g_x = jax.grad(lambda x: ops.gem_pool(x, p=0.0).sum())(x)
  assert np.isfinite(np.asarray(g_x)).all()


def test_gem_small_p_is_continuous_across_the_expansion(x64):
  x = _positive((4, 2), seed=1).astype(jnp.float64)
  below = ops.gem_pool(x, p=pooling.GEM_SMALL_P * 0.999)
  above = ops.gem_pool(x, p=pooling.GEM_SMALL_P * 1.001)
  np.testing.assert_allclose(below, above, rtol=1e-6)


def test_gem_float32_p_zero_is_finite_under_jit():
  x = _positive((3, 4))
  out, g = jax.jit(jax.value_and_grad(lambda p: ops.gem_pool(x, p=p).sum()))(0.0)
  assert np.isfinite(float(out)) and np.isfinite(float(g))


# --------------------------------------------------------------------------
# netvlad: N = 0 (was ZeroDivisionError), NaN padding (was rejected),
# zero-descriptor gradients (were up to 1e6).


def _nv_params(k=2, d=3, seed=1):
  c = jax.random.normal(jax.random.key(seed), (k, d))
  return c, 2.0 * c


@pytest.mark.parametrize("shape", [(0, 3), (2, 0, 3)])
def test_netvlad_empty_set_is_the_zero_vector(shape):
  c, w = _nv_params()
  out = ops.netvlad(jnp.zeros(shape), c, w)
  assert out.shape == shape[:-2] + (6,)
  assert not np.asarray(out).any()
  assert ops.vlad(jnp.zeros(shape), c).shape == shape[:-2] + (6,)


def test_netvlad_nan_in_masked_padding_is_ignored_like_quality_pool():
  c, w = _nv_params()
  x = jax.random.normal(jax.random.key(2), (2, 4, 3))
  mask = jnp.array([[True, True, False, False], [True, True, True, False]])
  garbage = jnp.where(mask[..., None], x, jnp.nan)
  np.testing.assert_allclose(ops.netvlad(garbage, c, w, mask=mask),
                             ops.netvlad(x, c, w, mask=mask), rtol=1e-6)
  g = jax.grad(lambda x: ops.netvlad(x, c, w, mask=mask).sum())(garbage)
  assert np.isfinite(np.asarray(g)).all() and not np.asarray(g)[~np.asarray(mask)].any()
  # The same convention in quality_pool (the reference for it).
  assert np.isfinite(np.asarray(ops.quality_pool(garbage, jnp.ones((2, 4)), mask))).all()
  with pytest.raises(ValueError, match="descriptors holds 1 NaN"):
    ops.netvlad(x.at[0, 0, 0].set(jnp.nan), c, w, mask=mask)


def test_netvlad_zero_descriptor_gradient_is_clipped():
  c, w = _nv_params()
  x = jnp.zeros((3, 3)).at[0].set(jnp.array([1.0, -0.5, 0.2]))
  loss = lambda x: jnp.sum(ops.netvlad(x, c, w) ** 2 * jnp.arange(6.0))
  g = jax.grad(loss)(x)
  bound = 1 / np.sqrt(netvlad_layer.INPUT_GRAD_EPS)
  assert np.abs(np.asarray(g)).max() <= 10 * bound       # was ~1e6
  # Descriptors of norm >= 1e-3 keep the exact (autodiff) gradient.
  y = jax.random.normal(jax.random.key(4), (5, 3)) * 1e-2
  plain = lambda y: jnp.sum(netvlad_layer._netvlad_plain(
      y[None], c, w, jnp.zeros(2), jnp.ones((1, 5), bool), True, 1e-12) ** 2 * jnp.arange(6.0))
  np.testing.assert_allclose(jax.grad(loss)(y), jax.grad(plain)(y), rtol=2e-3, atol=1e-5)


# --------------------------------------------------------------------------
# float16 distances (were Inf).


def test_distance_losses_do_not_overflow_in_float16():
  q = jnp.full((2, 8), 100.0, jnp.float16)
  pos = jnp.full((2, 1, 8), -100.0, jnp.float16)   # |q - p|^2 = 320000 > 65504
  neg = jnp.zeros((2, 1, 8), jnp.float16)
  want = 8 * 200.0 ** 2 + 0.1 - 8 * 100.0 ** 2
  loss = ops.weakly_supervised_ranking_loss(q, pos, neg)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, [want, want], rtol=1e-6)
  trip = ops.set_triplet_loss(q, pos[:, 0], neg[:, 0], margin=0.5)
  np.testing.assert_allclose(trip, want - 0.1 + 0.5, rtol=1e-6)
  g = jax.grad(lambda q: ops.weakly_supervised_ranking_loss(q, pos, neg).sum())(q)
  assert g.dtype == jnp.float16 and np.isfinite(np.asarray(g, np.float32)).all()
  maps = jnp.full((1, 4, 3), 200.0, jnp.float16).at[0, 0].set(0.0)
  cons = ops.attention_consistency_loss(maps, jnp.zeros_like(maps), jnp.ones(1), threshold=0.0)
  np.testing.assert_allclose(cons, [3 * 200.0 ** 2], rtol=1e-6)


# --------------------------------------------------------------------------
# margin_logits: traced scale (gradient was 0), easy fallback (dropped m1, m3).


def test_margin_logits_traced_scale_gets_its_gradient():
  cos = jnp.array([[0.3, 0.1, -0.2], [0.2, 0.5, 0.4]])
  labels = jnp.array([0, 1])
  loss = lambda s: jnp.sum(jax.nn.log_softmax(
      ops.margin_logits(cos, labels, scale=s, m2=0.5)) * jnp.array([[1.0, 0, 0], [0, 1, 0]]))
  got = jax.grad(loss)(16.0)
  h = 1e-2
  fd = (loss(16.0 + h) - loss(16.0 - h)) / (2 * h)
  np.testing.assert_allclose(got, fd, rtol=1e-3)
  assert abs(float(got)) > 0.01
  eq = jax.grad(lambda s: jnp.sum(jax.nn.log_softmax(ops.eqface_logits(
      cos, labels, jnp.ones(2), scale=s, m2=0.5)) * jnp.array([[1.0, 0, 0], [0, 1, 0]])))(16.0)
  np.testing.assert_allclose(got, eq, rtol=1e-5)


@pytest.mark.parametrize("m1_mode", ["cosine", "angle"])
def test_easy_fallback_keeps_m1_and_m3(m1_mode):
  c = jnp.array([[-0.5, 0.1], [0.6, 0.1]])
  labels = jnp.array([0, 0])
  m1, m2, m3, s = 1.2 if m1_mode == "cosine" else 2.0, 0.5, 0.2, 4.0
  out, vjp = jax.vjp(lambda c: ops.margin_logits(c, labels, scale=s, m1=m1, m2=m2, m3=m3,
                                                 m1_mode=m1_mode, fallback="easy"), c)
  theta = np.arccos(np.array([-0.5, 0.6]))
  if m1_mode == "cosine":
    easy, margined = m1 * -0.5 - m3, m1 * np.cos(theta[1] + m2) - m3
    easy_deriv = m1
  else:
    easy, margined = np.cos(m1 * theta[0]) - m3, np.cos(m1 * theta[1] + m2) - m3
    easy_deriv = m1 * np.sin(m1 * theta[0]) / np.sin(theta[0])
  np.testing.assert_allclose(out[:, 0], [s * easy, s * margined], rtol=1e-5)
  (d_cos,) = vjp(jnp.zeros((2, 2)).at[0, 0].set(1.0))
  np.testing.assert_allclose(d_cos[0, 0], s * easy_deriv, rtol=1e-5)


# --------------------------------------------------------------------------
# adaface_logits on an empty batch (moved the EMA mean 20 -> 19.8).


def test_adaface_empty_batch_keeps_the_ema():
  stats = ops.adaface_init_stats()
  logits, new = ops.adaface_logits(jnp.zeros((0, 5)), jnp.zeros((0,)), jnp.zeros((0,), jnp.int32),
                                   stats)
  assert logits.shape == (0, 5)
  assert float(new["mean"]) == 20.0 and float(new["std"]) == 100.0


def test_adaface_empty_shard_without_axis_name_keeps_the_ema():
  mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
  spec = jax.sharding.NamedSharding(mesh, jax.P("d"))
  step = jax.jit(jax.shard_map(
      lambda c, n, y: ops.adaface_logits(c, n, y, ops.adaface_init_stats())[1]["mean"][None],
      mesh=mesh, in_specs=(jax.P("d"),) * 3, out_specs=jax.P("d")))
  args = (jnp.zeros((0, 3)), jnp.zeros((0,)), jnp.zeros((0,), jnp.int32))
  means = step(*(jax.device_put(a, spec) for a in args))
  np.testing.assert_array_equal(means, [20.0, 20.0])


# --------------------------------------------------------------------------
# quality_pool: the degenerate test is scale invariant (was absolute 1e-6).


@pytest.mark.parametrize("scale", [1.0, 1.1e-6, 9e-7, 1e-12])
def test_quality_pool_is_scale_invariant_down_to_tiny_weights(scale):
  f = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
  mu = jnp.array([1.0, 0.0, 0.0]) * scale
  np.testing.assert_allclose(ops.quality_pool(f, mu), [1.0, 0.0], rtol=1e-6)
  seg = ops.segment_quality_pool(f, mu, jnp.zeros(3, jnp.int32), 1)
  np.testing.assert_allclose(seg, [[1.0, 0.0]], rtol=1e-6)
  g = jax.grad(lambda q: ops.quality_pool(f, q)[1])(mu)
  assert np.isfinite(np.asarray(g)).all()


def test_quality_pool_all_zero_quality_is_still_the_mean():
  f = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
  np.testing.assert_allclose(ops.quality_pool(f, jnp.zeros(3)), [1 / 3, 1 / 3], rtol=1e-6)


# --------------------------------------------------------------------------
# attention_consistency_loss on signed profiles (dropped every row).


def test_attention_consistency_keeps_rows_of_an_all_negative_profile():
  rows = jnp.array([-1.0, -2.0, -3.0, -4.0])
  map_a = jnp.tile(rows[None, :, None], (1, 1, 3))
  map_b = 2 * map_a
  loss = ops.attention_consistency_loss(map_a, map_b, jnp.ones(1), threshold=0.5)
  # floor a: -4, cut -2.5 -> keeps -1, -2; floor b: -8, cut -5 -> keeps -2, -4.
  pa = np.array([-1.0, -2.0, -4.0, -4.0])
  pb = np.array([-2.0, -4.0, -8.0, -8.0])
  np.testing.assert_allclose(loss, [np.sum((pa - pb) ** 2)], rtol=1e-6)
  g = jax.grad(lambda a: ops.attention_consistency_loss(a, map_b, jnp.ones(1)).sum())(map_a)
  assert np.abs(np.asarray(g)).sum() > 0


def test_attention_consistency_non_negative_maps_unchanged():
  rng = np.random.default_rng(0)
  map_a = jnp.asarray(rng.uniform(0, 1, (2, 5, 3)), jnp.float32)
  map_b = jnp.asarray(rng.uniform(0, 1, (2, 5, 3)), jnp.float32)
  prof = lambda m: np.where(m.max(-1) >= 0.5 * m.max(-1).max(-1, keepdims=True), m.max(-1), 0)
  want = ((prof(np.asarray(map_a)) - prof(np.asarray(map_b))) ** 2).sum(-1)
  np.testing.assert_allclose(ops.attention_consistency_loss(map_a, map_b, jnp.ones(2)), want,
                             rtol=1e-6)


# --------------------------------------------------------------------------
# gradcheck judges the forward, and its boundary cases reach the boundaries.


def test_gradcheck_fails_a_wrong_forward():
  from jaxset import gradcheck
  from jaxset.gradcheck import margins as gm
  (case,) = [c for c in gm.cases() if c.name == "margin_logits[cosface]"]
  # Off by 1.0 everywhere: every gradient row still agrees, the forward must not.
  shifted = lambda *a, **k: case.fn(*a, **k) + 1.0
  wrong = gradcheck.GradCase(**{**case.__dict__, "fn": shifted, "name": "shifted"})
  rows = {r.against: r for r in gradcheck.check_case(wrong, seed=0)}
  assert not rows["forward"].ok and rows["forward"].max_abs == pytest.approx(1.0)
  assert rows["autodiff"].ok and rows["paper"].ok
  assert all(r.ok for r in gradcheck.check_case(case, seed=0))
  from jaxset.gradcheck.__main__ import main
  assert main(["--only", "margin_logits[cosface]"]) == 0


def test_gradcheck_arcface_seed_7_paper_row_covers_the_fallback():
  from jaxset import gradcheck
  from jaxset.gradcheck import margins as gm
  (case,) = [c for c in gm.cases() if c.name == "margin_logits[arcface exact]"]
  (cos,), fixed = case.make(np.random.default_rng(7))
  lab = np.asarray(fixed["labels"])
  rows = np.nonzero(lab >= 0)[0]
  assert (np.asarray(cos)[rows, lab[rows]] <= np.cos(np.pi - 0.5)).any()  # in the fallback
  assert all(r.ok for r in gradcheck.check_case(case, seed=7))


def test_gradcheck_boundary_cases_reach_their_regions():
  from jaxset.gradcheck import margins as gm
  cases = {c.name: c for c in gm.cases()}
  rng = np.random.default_rng(0)
  (cos,), fixed = cases["margin_logits[arcface fallback]"].make(rng)
  lab = np.asarray(fixed["labels"])
  rows = np.nonzero(lab >= 0)[0]
  t = np.asarray(cos)[rows, lab[rows]]
  assert (t <= np.cos(np.pi - 0.5)).any() and (t > np.cos(np.pi - 0.5)).any()
  (cos, q), fixed = cases["eqface_logits[official clamp]"].make(rng)
  assert (np.asarray(q) < 0.2).any() and (np.asarray(q) > 0.2).any()
  (cos,), fixed = cases["adaface_logits[clamps]"].make(rng)
  c = np.asarray(cos)
  assert (np.abs(c) > 1 - 1e-3).any()                       # the cosine clamp binds
  z_high_target = c[0, np.asarray(fixed["labels"])[0]]
  assert np.arccos(z_high_target) < 0.4 + 1e-3              # theta - m*1 < eps: angle clamp
