"""Tests for jaxset.ops.netvlad_layer: values, gradients, memory form, devices, init, bad input."""
import functools
import importlib
import math

import jax
import jax.extend.core
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxset import gradcheck

# Modules by full name: jaxset.ops.netvlad_layer and jaxset.gradcheck.netvlad would
# otherwise resolve to the function `netvlad` that the packages re-export.
netvlad_cases = importlib.import_module("jaxset.gradcheck.netvlad")
nv = importlib.import_module("jaxset.ops.netvlad_layer")

reference_netvlad = netvlad_cases.reference_netvlad


def _inputs(rng, batch=(2,), n=6, k=3, d=4, dtype=np.float32, bias=True):
  x = rng.standard_normal(batch + (n, d)).astype(dtype)
  c = (0.5 * rng.standard_normal((k, d))).astype(dtype)
  w = rng.standard_normal((k, d)).astype(dtype)
  b = (0.3 * rng.standard_normal(k)).astype(dtype) if bias else None
  return x, c, w, b


def _loop_netvlad(x, c, w, b, mask, normalize_input, eps=1e-12):
  """Per-descriptor, per-cluster numpy loops straight from eqs. (3)-(4), one set."""
  n, d = x.shape
  k = c.shape[0]
  v = np.zeros((k, d))
  for i in range(n):
    if mask is not None and not mask[i]:
      continue
    xi = x[i] / math.sqrt(eps + x[i] @ x[i]) if normalize_input else x[i]
    s = w @ xi + (0 if b is None else b)
    a = np.exp(s - s.max())
    a /= a.sum()
    for kk in range(k):
      v[kk] += a[kk] * (xi - c[kk])
  for kk in range(k):
    v[kk] /= math.sqrt(eps + v[kk] @ v[kk])
  v = v.ravel()
  return v / math.sqrt(eps + v @ v)


# ---------------------------------------------------------------------------------
# Values and gradients.


@pytest.mark.parametrize("normalize_input", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_per_cluster_loop(x64, normalize_input, bias):
  rng = np.random.default_rng(0)
  x, c, w, b = _inputs(rng, (3,), dtype=np.float64, bias=bias)
  mask = rng.random((3, 6)) < 0.7
  mask[:, 0] = True
  got = np.asarray(nv.netvlad(x, c, w, b, mask=mask, normalize_input=normalize_input))
  want = np.stack([_loop_netvlad(x[s], c, w, b, mask[s], normalize_input) for s in range(3)])
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


# The gradcheck cases below cover the other two bias / normalize_input combinations.
@pytest.mark.parametrize("normalize_input,bias", [(True, True), (False, False)])
def test_custom_vjp_equals_autodiff_of_plain_forms(x64, normalize_input, bias):
  rng = np.random.default_rng(1)
  x, c, w, b = _inputs(rng, (2, 2), n=7, k=4, d=5, dtype=np.float64, bias=bias)
  mask = jnp.asarray(rng.random((2, 2, 7)) < 0.8)
  args = (x, c, w) + ((b,) if bias else ())
  ct = jnp.asarray(rng.standard_normal((2, 2, 4 * 5)))

  def ours(*a):
    return nv.netvlad(*a[:3], a[3] if bias else None, mask=mask,
                      normalize_input=normalize_input)

  def naive(*a):
    return reference_netvlad(*a[:3], a[3] if bias else None, mask=mask,
                             normalize_input=normalize_input)

  def matmul_plain(*a):  # the same matmul forward, differentiated by jax
    bb = a[3] if bias else jnp.zeros(4)
    xs = jnp.reshape(a[0], (4, 7, 5))
    out = nv._netvlad_plain(jnp.where(mask.reshape(4, 7)[..., None], xs, 0), a[1], a[2],
                            bb, mask.reshape(4, 7), normalize_input, 1e-12)
    return out.reshape(2, 2, 20)

  @jax.jit
  def value_and_vjp(*a):
    return [(lambda y, pull: (y, pull(ct)))(*jax.vjp(f, *a))
            for f in (ours, naive, matmul_plain)]

  (y, got), *others = value_and_vjp(*args)
  for y_ref, want in others:
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    for g, r in zip(got, want):
      np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-12)
  jax.test_util.check_grads(jax.jit(ours), args, order=1, modes=("rev",))


@pytest.mark.parametrize("case", netvlad_cases.cases(), ids=lambda c: c.name)
def test_gradcheck_case_every_row_ok(case):
  rows = gradcheck.check_case(case)
  against = {r.against for r in rows}
  assert {"autodiff", "finite_diff", "paper"} <= against
  assert any(a.startswith("check_grads") for a in against)
  bad = [r for r in rows if not r.ok]
  assert not bad, gradcheck.format_table(rows)


# ---------------------------------------------------------------------------------
# No N x K x D array anywhere, forward or backward.

N_, K_, D_, B_ = 7, 5, 11, 3


def _avals_of(jaxpr):
  """Every variable's aval in a jaxpr, recursing into all sub-jaxprs in params."""
  for v in list(jaxpr.invars) + list(jaxpr.constvars):
    yield v.aval
  for eqn in jaxpr.eqns:
    for v in list(eqn.invars) + list(eqn.outvars):
      if hasattr(v, "aval"):
        yield v.aval
    for p in eqn.params.values():
      yield from _avals_in_param(p)


def _avals_in_param(p):
  if isinstance(p, jax.extend.core.ClosedJaxpr):
    yield from _avals_of(p.jaxpr)
  elif isinstance(p, jax.extend.core.Jaxpr):
    yield from _avals_of(p)
  elif isinstance(p, (tuple, list)):
    for q in p:
      yield from _avals_in_param(q)


def _residual_shaped(jaxpr, n=N_, k=K_, d=D_):
  """Shapes holding N, K and D as three separate axes (any order, any batch dims)."""
  bad = []
  for aval in _avals_of(jaxpr.jaxpr):
    shape = list(getattr(aval, "shape", ()))
    try:
      for size in (n, k, d):
        shape.remove(size)
    except ValueError:
      continue
    bad.append(aval.shape)
  return bad


def _jaxprs(f, args):
  """Forward, jax.vjp (with its pullback applied) and jax.grad jaxprs of f."""
  ct = jnp.ones(jax.eval_shape(f, *args).shape)
  argnums = tuple(range(len(args)))
  return {
      "forward": jax.make_jaxpr(f)(*args),
      "vjp": jax.make_jaxpr(lambda *a: jax.vjp(f, *a)[1](ct))(*args),
      "grad": jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(f(*a) * ct), argnums))(*args),
  }


def _nkd_args(rng):
  x, c, w, b = _inputs(rng, (B_,), n=N_, k=K_, d=D_)
  mask = jnp.asarray(rng.random((B_, N_)) < 0.8)
  return (jnp.asarray(x), jnp.asarray(c), jnp.asarray(w), jnp.asarray(b)), mask


@pytest.mark.parametrize("normalize_input", [True, False])
def test_no_n_k_d_array_in_forward_or_backward(normalize_input):
  args, mask = _nkd_args(np.random.default_rng(0))
  f = functools.partial(nv.netvlad, mask=mask, normalize_input=normalize_input)
  for name, jaxpr in _jaxprs(f, args).items():
    assert "custom_vjp" in str(jaxpr) or name != "forward"
    assert _residual_shaped(jaxpr) == [], name
  # Hard VLAD too (its assignment one-hot is [N, K]).
  g = functools.partial(nv.vlad, mask=mask)
  for name, jaxpr in _jaxprs(g, args[:2]).items():
    assert _residual_shaped(jaxpr) == [], name


def test_residual_check_flags_the_naive_forms():
  args, mask = _nkd_args(np.random.default_rng(0))
  # The broadcast residual x_i - c_k of the naive form.
  naive = functools.partial(reference_netvlad, mask=mask)
  for name, jaxpr in _jaxprs(naive, args).items():
    assert (B_, N_, K_, D_) in _residual_shaped(jaxpr), name

  # A per-cluster residual vmapped over clusters: K x (N x D) in one array.
  def per_cluster(x, c, w, b):
    x = x / jnp.sqrt(1e-12 + jnp.sum(x * x, -1, keepdims=True))
    a = jax.nn.softmax(x @ w.T + b, -1)

    def one_cluster(ck, ak):
      return jnp.sum(ak[..., None] * (x - ck), axis=-2)
    v = jax.vmap(one_cluster, in_axes=(0, -1), out_axes=-2)(c, a)
    return jnp.reshape(v, v.shape[:-2] + (-1,))
  assert (K_, B_, N_, D_) in _residual_shaped(jax.make_jaxpr(per_cluster)(*args))


# ---------------------------------------------------------------------------------
# jit / vmap / pmap / shard_map agree with one device.


@pytest.fixture(scope="module")
def eight_sets():
  rng = np.random.default_rng(3)
  x, c, w, b = _inputs(rng, (8,), n=5, k=3, d=4)
  mask = rng.random((8, 5)) < 0.8
  mask[:, 0] = True
  ct = rng.standard_normal((8, 12)).astype(np.float32)
  return tuple(jnp.asarray(a) for a in (x, c, w, b, mask, ct))


def _loss(x, c, w, b, mask, ct):
  return jnp.sum(nv.netvlad(x, c, w, b, mask=mask) * ct)


def test_jit_and_vmap_match_eager(eight_sets):
  x, c, w, b, mask, ct = eight_sets
  want = nv.netvlad(x, c, w, b, mask=mask)
  np.testing.assert_allclose(jax.jit(nv.netvlad)(x, c, w, b, mask), want, rtol=1e-5, atol=1e-6)
  vm = jax.jit(jax.vmap(nv.netvlad, in_axes=(0, None, None, None, 0)))(x, c, w, b, mask)
  np.testing.assert_allclose(vm, want, rtol=1e-5, atol=1e-6)
  g_want = jax.grad(_loss, (0, 1, 2, 3))(x, c, w, b, mask, ct)
  g_vm = jax.jit(jax.vmap(jax.grad(_loss, (0, 1, 2, 3)), in_axes=(0, None, None, None, 0, 0)))(
      x, c, w, b, mask, ct)
  np.testing.assert_allclose(g_vm[0], g_want[0], rtol=1e-5, atol=1e-6)
  for got, want_ in zip(g_vm[1:], g_want[1:]):
    np.testing.assert_allclose(jnp.sum(got, 0), want_, rtol=1e-4, atol=1e-5)


def test_pmap_matches_one_device(eight_sets):
  assert jax.device_count() == 8
  x, c, w, b, mask, ct = eight_sets
  want = nv.netvlad(x, c, w, b, mask=mask)
  g_want = jax.grad(_loss, (0, 1, 2, 3))(x, c, w, b, mask, ct)

  def per_device(x, mask, ct):
    y = nv.netvlad(x[None], c, w, b, mask=mask[None])[0]
    g = jax.grad(lambda xx, cc, ww, bb: _loss(xx[None], cc, ww, bb, mask[None], ct[None]),
                 (0, 1, 2, 3))(x, c, w, b)
    # Parameter gradients: summed over the devices' sets through the named axis.
    return y, g[0], jax.lax.psum(g[1:], axis_name="data")

  y, g_x, g_params = jax.pmap(per_device, axis_name="data")(x, mask, ct)
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_x, g_want[0], rtol=1e-5, atol=1e-6)
  for got, want_ in zip(g_params, g_want[1:]):
    np.testing.assert_allclose(got[0], want_, rtol=1e-4, atol=1e-5)


def test_shard_map_matches_one_device(eight_sets):
  x, c, w, b, mask, ct = eight_sets
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  want = nv.netvlad(x, c, w, b, mask=mask)
  g_want = jax.grad(_loss, (0, 1, 2, 3))(x, c, w, b, mask, ct)
  pooled = jax.shard_map(lambda x, c, w, b, m: nv.netvlad(x, c, w, b, mask=m), mesh=mesh,
                         in_specs=(P("data"), P(), P(), P(), P("data")),
                         out_specs=P("data"))
  shard = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))  # noqa: E731
  rep = lambda a: jax.device_put(a, NamedSharding(mesh, P()))  # noqa: E731
  xs, ms, cts = shard(x), shard(mask), shard(ct)
  cr, wr, br = rep(c), rep(w), rep(b)
  np.testing.assert_allclose(jax.jit(pooled)(xs, cr, wr, br, ms), want, rtol=1e-5, atol=1e-6)
  grads = jax.jit(jax.grad(lambda x, c, w, b: jnp.sum(pooled(x, c, w, b, ms) * cts),
                           (0, 1, 2, 3)))(xs, cr, wr, br)
  for got, want_ in zip(grads, g_want):
    np.testing.assert_allclose(got, want_, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------
# Properties over shapes, masks and dtypes; degenerate input.


@functools.partial(jax.jit, static_argnames="normalize_input")
def _pool_and_grads(x, c, w, b, mask, normalize_input):
  def loss(x, c, w):
    y = nv.netvlad(x, c, w, b, mask=mask, normalize_input=normalize_input)
    return jnp.sum(y.astype(jnp.float32) * jnp.arange(y.shape[-1], dtype=jnp.float32)), y
  return jax.grad(loss, (0, 1, 2), has_aux=True)(x, c, w)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.sampled_from([1, 2, 5]), k=st.sampled_from([1, 3]), d=st.sampled_from([1, 4]),
       batch=st.sampled_from([1, 3]), dtype=st.sampled_from(["float32", "bfloat16"]),
       bias=st.booleans(), normalize_input=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_property_shapes_masks_dtypes(n, k, d, batch, dtype, bias, normalize_input, seed):
  rng = np.random.default_rng(seed)
  x, c, w, b = _inputs(rng, (batch,), n=n, k=k, d=d, bias=bias)
  mask = rng.random((batch, n)) < 0.6
  mask[0] = False                      # set 0 is fully masked
  if batch > 1:
    mask[1] = True                     # set 1 is complete
  x = jnp.asarray(x, dtype)
  g, y = _pool_and_grads(x, c, w, b, mask, normalize_input)
  assert y.shape == (batch, k * d) and y.dtype == jnp.dtype(dtype)
  y32 = np.asarray(y, np.float32)
  assert np.all(np.isfinite(y32))
  norms = np.linalg.norm(y32, axis=-1)
  tol = 1e-5 if dtype == "float32" else 2e-2
  for s in range(batch):
    # A set whose residual sums all vanish (fully masked; or, with probability 0
    # for random input, descriptors sitting exactly on their anchors) pools to 0.
    if not mask[s].any():
      assert norms[s] == 0
    else:
      assert abs(norms[s] - 1) < tol
  assert all(np.all(np.isfinite(np.asarray(gi, np.float32))) for gi in g)
  assert g[0].dtype == jnp.dtype(dtype)
  assert np.all(np.asarray(g[0], np.float32)[~mask] == 0)


def test_degenerate_inputs_are_finite():
  rng = np.random.default_rng(4)
  x, c, w, b = _inputs(rng, (3,), n=4, k=3, d=5)
  x[0] = 0                              # set 0: all-zero descriptors
  b = np.array([-1e4, 0.0, 0.0], np.float32)  # cluster 0 gets exactly zero mass
  mask = np.ones((3, 4), bool)
  mask[2] = False                       # set 2: fully masked
  f = lambda x, c, w, b: nv.netvlad(x, c, w, b, mask=mask)  # noqa: E731
  y = np.asarray(f(x, c, w, b))
  assert np.all(np.isfinite(y))
  # Zero descriptors normalise to 0, so V_k = -(sum_i a_ik) c_k.
  a0 = jax.nn.softmax(b)                # zero descriptors: logits are the biases
  v0 = -(4 * a0)[:, None] * c
  v0 = v0 / np.sqrt(1e-12 + np.sum(v0 ** 2, -1, keepdims=True))
  np.testing.assert_allclose(y[0], v0.ravel() / np.linalg.norm(v0), atol=1e-6)
  assert np.all(y[:2, :5] == 0)         # the zero-mass cluster's block is 0
  np.testing.assert_allclose(np.linalg.norm(y[:2], axis=-1), 1, atol=1e-6)
  assert np.all(y[2] == 0)              # fully masked: the zero vector
  ct = rng.standard_normal(y.shape).astype(np.float32)
  grads = jax.grad(lambda *a: jnp.sum(f(*a) * ct), (0, 1, 2, 3))(x, c, w, b)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
  assert np.all(np.asarray(grads[0])[2] == 0)


def test_bfloat16_close_to_float32():
  rng = np.random.default_rng(5)
  x, c, w, b = _inputs(rng, (2,), n=30, k=8, d=16)
  xb = jnp.asarray(x, jnp.bfloat16)
  y = nv.netvlad(xb, c, w, b)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             nv.netvlad(np.asarray(xb, np.float32), c, w, b), atol=1e-2)


# ---------------------------------------------------------------------------------
# Hard VLAD.


def test_vlad_matches_hand_loop_and_large_alpha_netvlad():
  rng = np.random.default_rng(6)
  c = np.eye(3, 4, dtype=np.float32) * 2
  x = (c[np.arange(20) % 3] + 0.1 * rng.standard_normal((20, 4))).reshape(2, 10, 4)
  x = x.astype(np.float32)
  y = np.asarray(nv.vlad(x, c, normalize_input=False))
  for s in range(2):
    v = np.zeros((3, 4))
    for xi in x[s]:
      kk = np.argmin(np.sum((xi - c) ** 2, -1))
      v[kk] += xi - c[kk]
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    np.testing.assert_allclose(y[s], v.ravel() / np.linalg.norm(v), atol=1e-5)
  params = nv.netvlad_params_from_centroids(c, 1e3, assignment="paper")
  soft = nv.netvlad(x, normalize_input=False, **params)
  np.testing.assert_allclose(soft, y, atol=1e-4)
  g = jax.grad(lambda x, c: jnp.sum(nv.vlad(x, c) ** 3), (0, 1))(x, c)
  assert all(np.all(np.isfinite(np.asarray(gi))) for gi in g)


# ---------------------------------------------------------------------------------
# Initialisation.


def _blobs(rng, centres, per=40, noise=0.05):
  return np.concatenate([ctr + noise * rng.standard_normal((per, centres.shape[1]))
                         for ctr in centres]).astype(np.float32)


def test_kmeans_recovers_separated_clusters_and_is_deterministic():
  rng = np.random.default_rng(7)
  centres = 5 * rng.standard_normal((5, 6)).astype(np.float32)
  x = _blobs(rng, centres)
  for init in ("kmeans++", "random"):
    got = np.asarray(nv.kmeans(x, 5, key=jax.random.key(0), init=init))
    dist = np.linalg.norm(got[:, None] - centres[None], axis=-1)
    # k-means++ finds every blob; random init may merge two, never here with key 0.
    assert np.all(dist.min(0) < 0.05) and np.all(dist.min(1) < 0.05), init
  again = nv.kmeans(x, 5, key=jax.random.key(0))
  np.testing.assert_array_equal(again, nv.kmeans(x, 5, key=jax.random.key(0)))
  jitted = jax.jit(lambda x, key: nv.kmeans(x, 5, key=key, iters=20))(x, jax.random.key(0))
  np.testing.assert_allclose(jitted, again, atol=1e-5)


def test_kmeans_reseeds_empty_clusters_finitely():
  # Two distinct points, three clusters: one cluster must start empty or duplicate.
  x = np.array([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5 + [[4.0, 0.0]], np.float32)
  got = np.asarray(nv.kmeans(x, 3, key=jax.random.key(1), init="random", iters=5))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(sorted(map(tuple, got)), [(0, 0), (1, 1), (4, 0)], atol=1e-6)
  dup = np.zeros((6, 2), np.float32)
  got = np.asarray(nv.kmeans(dup, 3, key=jax.random.key(2)))
  np.testing.assert_array_equal(got, np.zeros((3, 2)))


def test_alpha_rule_hand_example():
  c = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]], np.float32)   # unit: e1, e2, -e1
  x = np.array([[1.0, 0.0], [0.6, 0.2], [0.0, -1.0]], np.float32)
  # dots with unit centroids: [1, 0, -1], [0.6, 0.2, -0.6], [0, -1, 0] -> gaps 1, 0.4, 0
  want = -math.log(0.01) / ((1.0 + 0.4 + 0.0) / 3)
  np.testing.assert_allclose(nv.netvlad_alpha(x, c), want, rtol=1e-6)
  np.testing.assert_allclose(nv.netvlad_alpha(x.reshape(1, 3, 2), c), want, rtol=1e-6)
  with pytest.raises(ValueError, match="mean gap 0"):
    nv.netvlad_alpha(np.array([[0.0, 1.0]], np.float32), c[[0, 2]])


def test_params_from_centroids_and_the_softmax_identity():
  rng = np.random.default_rng(8)
  c = rng.standard_normal((4, 3)).astype(np.float32)
  x = rng.standard_normal((10, 3)).astype(np.float32)
  alpha = 2.5
  p = nv.netvlad_params_from_centroids(c, alpha, assignment="paper")
  np.testing.assert_allclose(p["assign_weight"], 2 * alpha * c, rtol=1e-6)
  np.testing.assert_allclose(p["assign_bias"], -alpha * np.sum(c ** 2, -1), rtol=1e-6)
  np.testing.assert_array_equal(p["centroids"], c)
  # Paper section 3.1: softmax(w_k.x + b_k) == softmax(-alpha |x - c_k|^2).
  a_wb = jax.nn.softmax(x @ np.asarray(p["assign_weight"]).T + p["assign_bias"], -1)
  a_dist = jax.nn.softmax(-alpha * np.sum((x[:, None] - c[None]) ** 2, -1), -1)
  np.testing.assert_allclose(a_wb, a_dist, atol=1e-5)
  q = nv.netvlad_params_from_centroids(c, alpha, assignment="official")
  np.testing.assert_allclose(q["assign_weight"],
                             alpha * c / np.linalg.norm(c, axis=-1, keepdims=True), rtol=1e-6)
  assert q["assign_bias"] is None


def test_matlab_order_hand_example_and_round_trip():
  v = jnp.arange(6.0)                   # K=2, D=3: [V00 V01 V02 V10 V11 V12]
  np.testing.assert_array_equal(nv.to_matlab_order(v, 2, 3), [0, 3, 1, 4, 2, 5])
  np.testing.assert_array_equal(nv.from_matlab_order(jnp.array([0, 3, 1, 4, 2, 5.0]), 2, 3),
                                v)
  rng = np.random.default_rng(9)
  big = jnp.asarray(rng.standard_normal((2, 5, 4 * 7)), jnp.float32)
  np.testing.assert_array_equal(nv.from_matlab_order(nv.to_matlab_order(big, 4, 7), 4, 7), big)
  vm = rng.standard_normal((4, 7)).astype(np.float32)  # V[k, d]; MATLAB: V^T flattened
  np.testing.assert_array_equal(nv.to_matlab_order(vm.ravel(), 4, 7), vm.T.ravel())
  pca = jnp.asarray(rng.standard_normal((4 * 7, 3)), jnp.float32)  # rows: VLAD entries
  np.testing.assert_array_equal(nv.to_matlab_order(pca, 4, 7, axis=0),
                                nv.to_matlab_order(pca.T, 4, 7).T)


# ---------------------------------------------------------------------------------
# Bad input.


def test_bad_shapes_name_the_argument():
  rng = np.random.default_rng(10)
  x, c, w, b = _inputs(rng, (2,), n=5, k=3, d=4)
  with pytest.raises(ValueError, match="centroids.*D = descriptors.shape"):
    nv.netvlad(x, c[:, :3], w, b)
  with pytest.raises(ValueError, match="assign_weight"):
    nv.netvlad(x, c, w.T, b)
  with pytest.raises(ValueError, match="assign_bias"):
    nv.netvlad(x, c, w, b[:2])
  with pytest.raises(ValueError, match="mask"):
    nv.netvlad(x, c, w, b, mask=np.ones((2, 4), bool))
  with pytest.raises(ValueError, match="descriptors must have at least 2 dims"):
    nv.netvlad(x[0, 0], c, w, b)
  with pytest.raises(ValueError, match="centroids"):
    nv.vlad(x, c[:, :2])
  with pytest.raises(ValueError, match="k must be in"):
    nv.kmeans(x[0], 9, key=jax.random.key(0))
  with pytest.raises(ValueError, match="K >= 2"):
    nv.netvlad_alpha(x, c[:1])
  with pytest.raises(ValueError, match="assignment must be"):
    nv.netvlad_params_from_centroids(c, 1.0, assignment="matlab")
  with pytest.raises(ValueError, match="K\\*D"):
    nv.to_matlab_order(np.zeros(11), 3, 4)


def test_nan_descriptors_raise_eagerly():
  rng = np.random.default_rng(11)
  x, c, w, b = _inputs(rng, (2,), n=5, k=3, d=4)
  x[1, 2, 3] = np.nan
  with pytest.raises(ValueError, match="descriptors holds 1 NaN"):
    nv.netvlad(x, c, w, b)
  with pytest.raises(ValueError, match="descriptors"):
    nv.vlad(x, c)
  with pytest.raises(ValueError, match="descriptors"):
    nv.kmeans(x[1], 2, key=jax.random.key(0))
  c[0, 0] = np.inf
  with pytest.raises(ValueError, match="centroids"):
    nv.netvlad(np.nan_to_num(x), c, w, b)
