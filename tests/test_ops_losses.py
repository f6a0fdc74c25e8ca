"""jaxset.ops.losses: QAN triplet, NetVLAD ranking, CASN BCE and attention consistency."""
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxset import gradcheck
from jaxset.gradcheck import casn as casn_cases
from jaxset.gradcheck import qan as qan_cases
from jaxset.ops.losses import (
  attention_consistency_loss,
  set_triplet_loss,
  verification_bce,
  weakly_supervised_ranking_loss,
)

SETTINGS = dict(max_examples=10, deadline=None,
                suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _cases():
  return {c.name: c for c in qan_cases.cases() + casn_cases.cases()}


@pytest.mark.parametrize("name", ["set_triplet_loss", "ranking_loss/squared",
                                  "ranking_loss/plain", "verification_bce",
                                  "attention_consistency_loss"])
def test_gradcheck_cases(name):
  rows = gradcheck.check_case(_cases()[name], seed=2)
  assert {"autodiff", "finite_diff", "paper"} <= {r.against for r in rows}
  assert any(r.against.startswith("check_grads") for r in rows)
  bad = [r for r in rows if not r.ok]
  assert not bad, gradcheck.format_table(bad)


def test_custom_vjps_equal_autodiff_of_references(x64):
  rng = np.random.default_rng(0)
  a, p, n = (jnp.asarray(rng.standard_normal((6, 4)) * 0.6) for _ in range(3))
  got = jax.grad(lambda *x: jnp.sum(set_triplet_loss(*x) ** 2), argnums=(0, 1, 2))(a, p, n)
  want = jax.grad(lambda *x: jnp.sum(qan_cases.reference_set_triplet(*x) ** 2),
                  argnums=(0, 1, 2))(a, p, n)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-12)
  z = jnp.asarray(rng.standard_normal(7) * 4)
  y = jnp.asarray(rng.uniform(size=7) < 0.5)
  np.testing.assert_allclose(jax.grad(lambda z: jnp.sum(verification_bce(z, y)))(z),
                             jax.grad(lambda z: jnp.sum(casn_cases.reference_bce(z, y)))(z),
                             rtol=1e-6)


def test_triplet_official_scaling():
  a = jnp.zeros((2, 2))
  p = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  n = jnp.array([[0.0, 0.5], [3.0, 0.0]])
  loss = set_triplet_loss(a, p, n)  # default margin 1.2 (official code's m)
  np.testing.assert_allclose(loss, [1.0 - 0.25 + 1.2, 0.0], rtol=1e-6)
  np.testing.assert_allclose(0.5 * jnp.mean(loss), (1.0 - 0.25 + 1.2) / 4, rtol=1e-6)


def test_ranking_loss_values_and_no_positive():
  q = jnp.zeros((2, 2))
  pos = jnp.array([[[1.0, 0.0], [0.5, 0.0]], [[1.0, 0.0], [2.0, 0.0]]])
  neg = jnp.array([[[0.0, 0.6], [0.0, 2.0]], [[0.0, 0.1], [0.0, 0.2]]])
  pm = jnp.array([[True, True], [False, False]])
  loss = weakly_supervised_ranking_loss(q, pos, neg, pm, margin=0.1)
  # p* = the 0.5 positive (d = 0.25); negatives d = 0.36, 4.0: 0.25 + 0.1 - 0.36 < 0.
  np.testing.assert_allclose(loss, [0.0, 0.0], atol=1e-7)
  loss = weakly_supervised_ranking_loss(q, pos, neg, pm, margin=0.2)
  np.testing.assert_allclose(loss, [0.25 + 0.2 - 0.36, 0.0], rtol=1e-5)
  plain = weakly_supervised_ranking_loss(q, pos, neg, pm, margin=0.2, squared=False)
  np.testing.assert_allclose(plain, [0.5 + 0.2 - 0.6, 0.0], rtol=1e-5)
  g = jax.grad(lambda *x: jnp.sum(weakly_supervised_ranking_loss(*x, pm, margin=5.0)),
               argnums=(0, 1, 2))(q, pos, neg)
  assert all(np.isfinite(a).all() for a in g)
  assert not g[1][1].any() and not g[2][1].any() and g[1][0, 1].any() and not g[1][0, 0].any()


def test_ranking_loss_plain_distance_at_zero_is_finite():
  q = jnp.zeros((1, 3))
  g = jax.grad(lambda q: jnp.sum(weakly_supervised_ranking_loss(
      q, jnp.zeros((1, 1, 3)), jnp.ones((1, 2, 3)), margin=5.0, squared=False)))(q)
  assert np.isfinite(g).all()


def test_bce_extreme_logits_are_finite():
  z = jnp.array([1e4, -1e4, 0.0])
  y = jnp.array([0, 1, 1])
  np.testing.assert_allclose(verification_bce(z, y), [1e4, 1e4, np.log(2)], rtol=1e-6)
  g = jax.grad(lambda z: jnp.sum(verification_bce(z, y)))(z)
  np.testing.assert_allclose(g, [1.0, -1.0, -0.5], atol=1e-7)


def test_attention_consistency_values_and_negative_pairs():
  ma = jnp.array([[[0.0, 1.0], [0.2, 0.1], [0.9, 0.3]]])   # profile [1, .2, .9]
  mb = jnp.array([[[0.5, 0.0], [0.4, 0.8], [0.1, 0.0]]])   # profile [.5, .8, .1]
  # threshold 0.5 of each max: a -> [1, 0, .9], b -> [.5, .8, 0]
  loss = attention_consistency_loss(ma, mb, jnp.array([1]), threshold=0.5)
  np.testing.assert_allclose(loss, [0.25 + 0.64 + 0.81], rtol=1e-6)
  assert attention_consistency_loss(ma, mb, jnp.array([0]))[0] == 0
  resized = attention_consistency_loss(ma, mb, jnp.array([1]), threshold=0.0, size=6)
  assert resized.shape == (1,) and resized[0] > 0
  zero = jnp.zeros((2, 4, 3))
  g = jax.grad(lambda a: jnp.sum(attention_consistency_loss(a, zero, jnp.array([1, 1]),
                                                            size=5)))(zero)
  assert np.isfinite(g).all()


def test_through_grad_cam_case():
  rows = gradcheck.check_case(_cases()["attention_consistency/grad_cam"], seed=0)
  bad = [r for r in rows if not r.ok]
  assert not bad, gradcheck.format_table(bad)


# --------------------------------------------------------------------------
# Transformations.


def _ranking_inputs(rng, b=8):
  q = jnp.asarray(rng.standard_normal((b, 4)), jnp.float32)
  pos = jnp.asarray(rng.standard_normal((b, 3, 4)), jnp.float32)
  neg = jnp.asarray(rng.standard_normal((b, 5, 4)), jnp.float32)
  pm = jnp.asarray(rng.uniform(size=(b, 3)) < 0.7)
  nm = jnp.asarray(rng.uniform(size=(b, 5)) < 0.8)
  return q, pos, neg, pm, nm


def _all_losses(q, pos, neg, pm, nm):
  return (jnp.sum(weakly_supervised_ranking_loss(q, pos, neg, pm, nm, margin=2.0))
          + jnp.sum(set_triplet_loss(q, pos[:, 0], neg[:, 0]))
          + jnp.sum(verification_bce(jnp.sum(q * pos[:, 0], -1), pm[:, 0])))


def test_jit_vmap_pmap_shard_map_match():
  rng = np.random.default_rng(3)
  args = _ranking_inputs(rng)
  loss0, g0 = jax.value_and_grad(_all_losses, argnums=(0, 1, 2))(*args)
  loss1, g1 = jax.jit(jax.value_and_grad(_all_losses, argnums=(0, 1, 2)))(*args)
  per_example = jax.vmap(lambda *a: _all_losses(*(x[None] for x in a)))(*args)
  np.testing.assert_allclose(loss1, loss0, rtol=1e-5)
  np.testing.assert_allclose(jnp.sum(per_example), loss0, rtol=1e-5)

  def step(*a):
    loss, grads = jax.value_and_grad(_all_losses, argnums=(0, 1, 2))(*(x[None] for x in a))
    return jax.lax.psum(loss, "batch"), jax.tree.map(lambda g: g[0], grads)

  loss2, g2 = jax.pmap(step, axis_name="batch")(*args)
  np.testing.assert_allclose(loss2[0], loss0, rtol=1e-5)

  mesh = jax.make_mesh((8,), ("data",))
  put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
  sharded = jax.shard_map(lambda *a: jax.lax.psum(_all_losses(*a), "data"), mesh=mesh,
                          in_specs=(P("data"),) * 5, out_specs=P())
  loss3, g3 = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2)))(*map(put, args))
  np.testing.assert_allclose(loss3, loss0, rtol=1e-5)
  for grads in (g1, g2, g3):
    for a, b in zip(grads, g0):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Properties and bad input.


@hypothesis.settings(**SETTINGS)
@hypothesis.given(st.sampled_from([np.float32, jnp.bfloat16]), st.integers(0, 2 ** 16),
                  st.sampled_from([1, 3]), st.sampled_from([True, False]))
def test_losses_property(dtype, seed, p, squared):
  rng = np.random.default_rng(seed)
  q, pos, neg, pm, nm = _ranking_inputs(rng, b=4)
  pos, pm = pos[:, :p], pm[:, :p]
  q, pos, neg = (x.astype(dtype) for x in (q, pos, neg))
  loss = jax.jit(weakly_supervised_ranking_loss, static_argnums=(5, 6))(
      q, pos, neg, pm, nm, 0.5, squared)
  # Distance losses come back in float32 at least (no float16 overflow).
  assert loss.dtype == np.float32 and loss.shape == (4,)
  lf = np.asarray(loss, np.float32)
  assert (lf >= 0).all() and (lf[~np.asarray(pm).any(1)] == 0).all()
  want = np.asarray(qan_cases.reference_ranking(
      *(x.astype(jnp.float32) for x in (q, pos, neg)), pm, nm, 0.5, squared))
  tol = 1e-4 if dtype == np.float32 else 1e-1
  np.testing.assert_allclose(lf, want, rtol=tol, atol=tol)
  trip = set_triplet_loss(q, pos[:, 0], neg[:, 0])
  assert trip.dtype == np.float32 and (np.asarray(trip, np.float32) >= 0).all()
  g = jax.grad(lambda q: jnp.sum(weakly_supervised_ranking_loss(
      q, pos, neg, pm, nm, squared=squared).astype(jnp.float32)))(q)
  assert g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all()


def test_nan_inputs_raise_eagerly():
  x = jnp.ones((2, 3)).at[0, 1].set(jnp.nan)
  with pytest.raises(ValueError, match="anchor holds 1 NaN"):
    set_triplet_loss(x, jnp.ones((2, 3)), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="logits holds"):
    verification_bce(jnp.array([jnp.nan]), jnp.array([1]))
  with pytest.raises(ValueError, match="query holds"):
    weakly_supervised_ranking_loss(x, jnp.ones((2, 1, 3)), jnp.ones((2, 1, 3)))
  with pytest.raises(ValueError, match="map_b holds"):
    attention_consistency_loss(jnp.ones((1, 2, 2)), jnp.full((1, 2, 2), jnp.nan), jnp.ones(1))
  assert np.isnan(jax.jit(set_triplet_loss)(x, jnp.ones((2, 3)), jnp.zeros((2, 3)))[0])


@pytest.mark.parametrize("call, name", [
    (lambda: set_triplet_loss(jnp.ones((2, 3)), jnp.ones((2, 4)), jnp.ones((2, 3))), "positive"),
    (lambda: set_triplet_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones((3, 3))), "negative"),
    (lambda: weakly_supervised_ranking_loss(jnp.ones((2, 3)), jnp.ones((2, 1, 4)),
                                            jnp.ones((2, 1, 3))), "positives"),
    (lambda: weakly_supervised_ranking_loss(jnp.ones((2, 3)), jnp.ones((2, 1, 3)),
                                            jnp.ones((2, 1, 3)), jnp.ones((2, 2), bool)),
     "pos_mask"),
    (lambda: verification_bce(jnp.ones(3), jnp.ones(2)), "same"),
    (lambda: attention_consistency_loss(jnp.ones((1, 2, 2)), jnp.ones((1, 3, 2)),
                                        jnp.ones(1)), "map_b"),
    (lambda: attention_consistency_loss(jnp.ones((2, 2)), jnp.ones((2, 2)), jnp.ones(1)),
     "map_a"),
])
def test_shape_errors_name_the_argument(call, name):
  with pytest.raises(ValueError, match=f"^{name} must"):
    call()


def test_empty_positive_or_negative_axes():
  q = jnp.ones((2, 3))
  loss, g = jax.value_and_grad(lambda q: jnp.sum(weakly_supervised_ranking_loss(
      q, jnp.ones((2, 0, 3)), jnp.ones((2, 4, 3)))))(q)
  assert loss == 0 and not np.asarray(g).any()
