"""jaxset.ops.pooling: QAN quality pooling (eq. (2), (5)-(8)) and the baselines."""
import functools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxset import gradcheck
from jaxset.gradcheck import qan as qan_cases
from jaxset.ops.pooling import gem_pool, max_pool, mean_pool, quality_pool, segment_quality_pool

SETTINGS = dict(max_examples=12, deadline=None,
                suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _data(rng, shape, dtype=np.float32):
  *batch, n, d = shape
  x = rng.standard_normal(shape).astype(dtype)
  q = rng.uniform(0.1, 1.0, (*batch, n)).astype(dtype)
  return jnp.asarray(x), jnp.asarray(q)


def np_quality_pool(x, q, mask=None):
  """float64 numpy eq. (2) with jaxset's degenerate-set convention."""
  x, q = np.asarray(x, np.float64), np.asarray(q, np.float64)
  mask = np.ones(q.shape, bool) if mask is None else np.asarray(mask)
  out = np.zeros(x.shape[:-2] + x.shape[-1:])
  for b in np.ndindex(q.shape[:-1]):
    m = np.where(mask[b], q[b], 0.0)
    if m.sum() <= 1e-6:
      m = mask[b].astype(np.float64)
    if m.sum() > 0:
      out[b] = (m[:, None] * np.where(mask[b][:, None], x[b], 0)).sum(0) / m.sum()
  return out


# --------------------------------------------------------------------------
# Gradients: autodiff, finite differences, the paper.


@pytest.mark.parametrize("name", ["quality_pool", "quality_pool/masked", "segment_quality_pool"])
def test_gradcheck_cases(name):
  (case,) = [c for c in qan_cases.cases() if c.name == name]
  rows = gradcheck.check_case(case, seed=1)
  assert {r.against for r in rows} == {"forward", "autodiff", "finite_diff", "paper",
                                       "check_grads(order=2)"}
  bad = [r for r in rows if not r.ok]
  assert not bad, gradcheck.format_table(bad)


def test_custom_vjp_equals_autodiff_of_reference(x64):
  rng = np.random.default_rng(0)
  x, q = _data(rng, (3, 6, 4), np.float64)
  mask = jnp.asarray(rng.uniform(size=(3, 6)) < 0.6).at[:, 0].set(True)
  loss = lambda f: lambda x, q: jnp.sum(jnp.sin(f(x, q, mask)))
  got = jax.grad(loss(quality_pool), argnums=(0, 1))(x, q)
  want = jax.grad(loss(qan_cases.reference_quality_pool), argnums=(0, 1))(x, q)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-12)
  jax.test_util.check_grads(lambda x, q: quality_pool(x, q, mask), (x, q), order=1,
                            modes=("rev",))


def test_paper_form_times_inverse_sum(x64):
  """Eq. (5)-(6) as printed (no 1/sum mu) equal the exact Jacobian times sum mu."""
  rng = np.random.default_rng(2)
  x, q = _data(rng, (5, 3), np.float64)
  jac_x, jac_q = jax.jacrev(quality_pool, argnums=(0, 1))(x, q)  # [D, N, D], [D, N]
  total = float(jnp.sum(q))
  r_a = np.asarray(quality_pool(x, q))
  for i in range(5):
    paper_5 = float(q[i]) * np.eye(3)            # dR_a/dR_i = mu_i
    paper_6 = np.asarray(x[i]) - r_a              # dR_a/dmu_i = R_i - R_a
    np.testing.assert_allclose(jac_x[:, i, :], paper_5 / total, rtol=1e-12)
    np.testing.assert_allclose(jac_q[:, i], paper_6 / total, rtol=1e-10, atol=1e-14)
  # Where mu is already normalised, as the paper assumes, the printed form is exact.
  qn = q / total
  jac_x, jac_q = jax.jacrev(quality_pool, argnums=(0, 1))(x, qn)
  np.testing.assert_allclose(jac_x[:, 1, :], float(qn[1]) * np.eye(3), rtol=1e-12)
  np.testing.assert_allclose(jac_q[:, 1], np.asarray(x[1]) - r_a, rtol=1e-10)


def test_quality_grad_sign_follows_section_3_3(x64):
  """Sec. 3.3: mu_i grows when R_i - R_a points along the descent direction."""
  x = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
  q = jnp.array([0.5, 0.5])
  target = jnp.array([2.0, 0.0])
  g = jax.grad(lambda q: jnp.sum((quality_pool(x, q) - target) ** 2))(q)
  assert g[0] < 0 < g[1]  # gradient descent raises mu_0, lowers mu_1


# --------------------------------------------------------------------------
# Transformations: jit, vmap, pmap, shard_map give the one-device numbers.


def _loss_and_grads(x, q, mask):
  f = lambda x, q: jnp.sum(jnp.tanh(quality_pool(x, q, mask)))
  return jax.value_and_grad(f, argnums=(0, 1))(x, q)


def test_jit_vmap_match_eager():
  rng = np.random.default_rng(3)
  x, q = _data(rng, (8, 5, 6))
  mask = jnp.asarray(rng.uniform(size=(8, 5)) < 0.7)
  eager = quality_pool(x, q, mask)
  np.testing.assert_allclose(jax.jit(quality_pool)(x, q, mask), eager, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jax.vmap(quality_pool)(x, q, mask), eager, rtol=1e-6, atol=1e-7)
  (v0, g0), (v1, g1) = _loss_and_grads(x, q, mask), jax.jit(_loss_and_grads)(x, q, mask)
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  for a, b in zip(g1, g0):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  per_set = jax.vmap(jax.grad(lambda x, q, m: jnp.sum(jnp.tanh(quality_pool(x, q, m))),
                              argnums=(0, 1)))(x, q, mask)
  for a, b in zip(per_set, g0):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_pmap_matches_single_device():
  n_dev = jax.device_count()
  assert n_dev == 8
  rng = np.random.default_rng(4)
  x, q = _data(rng, (n_dev, 2, 5, 4))
  mask = jnp.asarray(rng.uniform(size=(n_dev, 2, 5)) < 0.7)

  def step(x, q, m):
    loss, grads = _loss_and_grads(x, q, m)
    return jax.lax.psum(loss, "batch"), grads

  loss, grads = jax.pmap(step, axis_name="batch")(x, q, mask)
  loss0, grads0 = _loss_and_grads(x, q, mask)
  np.testing.assert_allclose(loss[0], loss0, rtol=1e-5)
  for a, b in zip(grads, grads0):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_shard_map_matches_single_device():
  mesh = jax.make_mesh((8,), ("data",))
  rng = np.random.default_rng(5)
  x, q = _data(rng, (16, 5, 4))
  mask = jnp.asarray(rng.uniform(size=(16, 5)) < 0.7)
  put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))

  def local(x, q, m):
    # psum the loss, not the gradients: shard_map already sums the latter.
    return jax.lax.psum(jnp.sum(jnp.tanh(quality_pool(x, q, m))), "data")

  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("data"),) * 3, out_specs=P())
  loss, grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(put(x), put(q), put(mask))
  loss0, grads0 = _loss_and_grads(x, q, mask)
  np.testing.assert_allclose(loss, loss0, rtol=1e-5)
  for a, b in zip(grads, grads0):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  pooled = jax.jit(jax.shard_map(quality_pool, mesh=mesh, in_specs=(P("data"),) * 3,
                                 out_specs=P("data")))(put(x), put(q), put(mask))
  np.testing.assert_allclose(pooled, quality_pool(x, q, mask), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------
# Properties over shapes, set sizes, masks and dtypes.


@jax.jit
def _grad_sum_pool(x, q, mask):
  f = lambda x, q: jnp.sum(quality_pool(x, q, mask).astype(jnp.float32))
  return jax.grad(f, argnums=(0, 1))(x, q)


@functools.partial(jax.jit, static_argnums=0)
def _grad_sum_baseline(fn, x, mask):
  return jax.grad(lambda x: jnp.sum(fn(x, mask).astype(jnp.float32)))(x)


@st.composite
def padded_sets(draw):
  # Few distinct shapes so compiled functions are reused across examples.
  batch = draw(st.sampled_from([1, 3]))
  n = draw(st.sampled_from([1, 2, 5]))
  d = draw(st.sampled_from([1, 4]))
  dtype = draw(st.sampled_from([np.float32, jnp.bfloat16]))
  seed = draw(st.integers(0, 2 ** 16))
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, n, d))
  q = rng.uniform(0.0, 1.0, (batch, n))
  q[rng.uniform(size=q.shape) < 0.2] = 0.0  # some zero weights, maybe whole sets
  mask = draw(hnp.arrays(bool, (batch, n)))
  return x.astype(dtype), q.astype(dtype), mask


@hypothesis.settings(**SETTINGS)
@hypothesis.given(padded_sets())
def test_quality_pool_property(data):
  x, q, mask = data
  out = quality_pool(x, q, mask)
  assert out.dtype == x.dtype and out.shape == x.shape[:1] + x.shape[2:]
  tol = 1e-5 if x.dtype == np.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(out, np.float64), np_quality_pool(x, q, mask),
                             rtol=tol, atol=tol)
  # A weighted average stays inside the valid features' range (per dim).
  xf = np.asarray(x, np.float64)
  lo = np.where(mask[..., None], xf, np.inf).min(1)
  hi = np.where(mask[..., None], xf, -np.inf).max(1)
  o = np.asarray(out, np.float64)
  inside = ((o >= lo - tol) & (o <= hi + tol)) | ~mask.any(1)[:, None]
  assert inside.all()
  gx, gq = _grad_sum_pool(jnp.asarray(x), jnp.asarray(q), mask)
  assert gx.dtype == x.dtype and gq.dtype == q.dtype
  assert np.isfinite(np.asarray(gx, np.float32)).all()
  assert np.isfinite(np.asarray(gq, np.float32)).all()
  assert not np.asarray(gx, np.float32)[~mask].any() and not np.asarray(gq, np.float32)[~mask].any()
  # d/dR of sum(R_a) gives each valid element its normalised weight: rows sum to 1.
  w = np.asarray(gx, np.float32)[..., 0].sum(-1)
  np.testing.assert_allclose(w, mask.any(1).astype(np.float32), atol=tol * 4)


@hypothesis.settings(**SETTINGS)
@hypothesis.given(padded_sets())
def test_segment_pool_matches_padded(data):
  x, q, mask = data
  batch, n, _ = x.shape
  ids = np.where(mask, np.arange(batch)[:, None], -1).reshape(-1)
  seg = jax.jit(segment_quality_pool, static_argnums=3)(
      x.reshape(batch * n, -1), q.reshape(-1), ids, batch)
  tol = 1e-5 if x.dtype == np.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(seg, np.float64),
                             np.asarray(quality_pool(x, q, mask), np.float64),
                             rtol=tol, atol=tol)


@hypothesis.settings(**SETTINGS)
@hypothesis.given(padded_sets())
def test_baselines_property(data):
  x, _, mask = data
  xf = np.asarray(x, np.float64)
  count = mask.sum(1)[:, None]
  want_mean = np.where(count > 0, (xf * mask[..., None]).sum(1) / np.maximum(count, 1), 0)
  want_max = np.where(count > 0, np.where(mask[..., None], xf, -np.inf).max(1), 0)
  clamped = np.maximum(xf, 1e-6) ** 3
  want_gem = np.where(count > 0, ((clamped * mask[..., None]).sum(1) / np.maximum(count, 1))
                      ** (1 / 3), 0)
  tol = 1e-5 if x.dtype == np.float32 else 2e-2
  for fn, want in ((mean_pool, want_mean), (max_pool, want_max), (gem_pool, want_gem)):
    out = jax.jit(fn)(x, mask)
    assert out.dtype == x.dtype
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=tol, atol=tol)
    g = _grad_sum_baseline(fn, jnp.asarray(x), mask)
    assert np.isfinite(np.asarray(g, np.float32)).all()


# --------------------------------------------------------------------------
# Degenerate and bad input.


def test_all_zero_quality_falls_back_to_masked_mean(x64):
  rng = np.random.default_rng(6)
  x, _ = _data(rng, (2, 4, 3), np.float64)
  q = jnp.zeros((2, 4))
  mask = jnp.array([[1, 1, 0, 1], [1, 1, 1, 1]], bool)
  np.testing.assert_allclose(quality_pool(x, q, mask), mean_pool(x, mask), rtol=1e-12)
  # The documented gradient: that of quality_pool at mu = mask (weights 1).
  ones = mask.astype(jnp.float64)
  f = lambda q: lambda x, qq: jnp.sum(jnp.sin(quality_pool(x, qq, mask)))
  got = jax.grad(f(q), argnums=(0, 1))(x, q)
  want = jax.grad(f(ones), argnums=(0, 1))(x, ones)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)
  assert np.abs(np.asarray(got[1])).max() > 0  # the quality branch still learns


@pytest.mark.parametrize("fn", [quality_pool, mean_pool, max_pool, gem_pool])
def test_empty_and_fully_masked_sets_give_zeros(fn):
  call = (lambda x, m: fn(x, jnp.ones(x.shape[:-1]), m)) if fn is quality_pool else fn
  x = jnp.ones((2, 0, 3))
  np.testing.assert_array_equal(call(x, None), np.zeros((2, 3)))
  x = jnp.asarray(np.random.default_rng(7).standard_normal((2, 4, 3)), jnp.float32)
  mask = jnp.array([[0, 0, 0, 0], [1, 0, 1, 0]], bool)
  out = jax.jit(call)(x, mask)
  np.testing.assert_array_equal(out[0], np.zeros(3))
  g = jax.grad(lambda x: jnp.sum(call(x, mask)))(x)
  assert np.isfinite(g).all() and not np.asarray(g)[0].any()


def test_masked_padding_may_hold_nan():
  x = jnp.asarray(np.random.default_rng(8).standard_normal((1, 3, 2)), jnp.float32)
  x = x.at[0, 2].set(jnp.nan)
  q = jnp.array([[0.5, 0.2, jnp.nan]])
  mask = jnp.array([[True, True, False]])
  out = quality_pool(x, q, mask)
  np.testing.assert_allclose(out[0], (0.5 * x[0, 0] + 0.2 * x[0, 1]) / 0.7, rtol=1e-6)
  g = jax.grad(lambda x, q: jnp.sum(quality_pool(x, q, mask)), argnums=(0, 1))(x, q)
  assert all(np.isfinite(a).all() for a in g)


def test_nan_input_raises_eagerly_and_propagates_under_jit():
  x = jnp.ones((2, 3, 4)).at[1, 0, 2].set(jnp.nan)
  q = jnp.full((2, 3), 0.5)
  with pytest.raises(ValueError, match=r"features holds 1 NaN"):
    quality_pool(x, q)
  with pytest.raises(ValueError, match=r"quality holds 1 NaN"):
    quality_pool(jnp.ones((2, 3, 4)), q.at[0, 1].set(jnp.nan))
  with pytest.raises(ValueError, match="features holds"):
    mean_pool(x)
  out = jax.jit(quality_pool)(x, q)  # no crash; NaN stays in the set that had it
  assert np.isfinite(out[0]).all() and np.isnan(out[1, 2])


def test_negative_quality_raises():
  with pytest.raises(ValueError, match="quality holds 1 negative.*sigmoid"):
    quality_pool(jnp.ones((3, 2)), jnp.array([0.5, -0.1, 0.3]))


@pytest.mark.parametrize("args, kwargs, name", [
    ((jnp.ones((4,)), jnp.ones((4,))), {}, "features"),
    ((jnp.ones((2, 4, 3)), jnp.ones((2, 5))), {}, "quality"),
    ((jnp.ones((2, 4, 3)), jnp.ones((2, 4))), {"mask": jnp.ones((2, 3), bool)}, "mask"),
])
def test_shape_errors_name_the_argument(args, kwargs, name):
  with pytest.raises(ValueError, match=f"^{name} must"):
    quality_pool(*args, **kwargs)


def test_segment_shape_errors_and_empty_segments():
  with pytest.raises(ValueError, match="^segment_ids must"):
    segment_quality_pool(jnp.ones((4, 2)), jnp.ones(4), jnp.zeros(3, jnp.int32), 2)
  with pytest.raises(ValueError, match="^quality must"):
    segment_quality_pool(jnp.ones((4, 2)), jnp.ones(5), jnp.zeros(4, jnp.int32), 2)
  with pytest.raises(ValueError, match="segment_ids must be integers"):
    segment_quality_pool(jnp.ones((4, 2)), jnp.ones(4), jnp.zeros(4), 2)
  x = jnp.arange(8.0).reshape(4, 2)
  ids = jnp.array([0, 0, 2, -1])
  q = jnp.array([0.0, 0.0, 0.5, 0.5])  # segment 0: zero quality; 1: empty
  out = jax.jit(segment_quality_pool, static_argnums=3)(x, q, ids, 3)
  np.testing.assert_allclose(out, [[1.0, 2.0], [0.0, 0.0], [4.0, 5.0]])
  gx, gq = jax.grad(lambda x, q: jnp.sum(segment_quality_pool(x, q, ids, 3) ** 2),
                    argnums=(0, 1))(x, q)
  assert np.isfinite(gx).all() and np.isfinite(gq).all()
  assert not np.asarray(gx)[3].any() and gq[3] == 0  # id -1 is ignored


def test_gem_pool_limits_and_learnable_p():
  rng = np.random.default_rng(9)
  x = jnp.asarray(np.abs(rng.standard_normal((2, 6, 3))) + 0.1, jnp.float32)
  np.testing.assert_allclose(gem_pool(x, p=1.0), mean_pool(x), rtol=1e-5)
  np.testing.assert_allclose(gem_pool(x, p=60.0), max_pool(x), rtol=0.05)
  gp = jax.grad(lambda p: jnp.sum(gem_pool(x, p=p)))(3.0)
  assert np.isfinite(gp) and gp > 0  # the power mean grows with p
