"""jaxset.ops.salad: SALAD's dustbin Sinkhorn assignment and its aggregation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from jaxset.ops import salad
from jaxset.ops.salad import _augment, _sinkhorn


def _inputs(rng, b=2, n=7, m=3, scale=1.5):
  return jnp.asarray(rng.normal(size=(b, n, m)) * scale), jnp.asarray(0.7)


def _plain_unrolled(scores, dustbin, iters):
  """The forward written as plain JAX (no custom_vjp): autodiff's reference."""
  return _sinkhorn(_augment(scores, jnp.asarray(dustbin, scores.dtype)), iters)[0]


def _multiplicative_sinkhorn(scores, dustbin, iters):
  """The paper's problem in the exp domain (numpy float64): K = exp([S, z]),
  alternately scale columns to a = (1.., N - M) / (N + M), rows to 1 / (N + M)."""
  s = np.asarray(scores, np.float64)
  n, m = s.shape
  k = np.exp(np.concatenate([s, np.full((n, 1), float(dustbin))], axis=1))
  a = np.append(np.ones(m), n - m) / (n + m)
  b = np.ones(n) / (n + m)
  row = np.ones(n)
  for _ in range(iters):
    col = a / (k.T @ row)
    row = b / (k @ col)
  return row[:, None] * k * col[None, :] * (n + m)


@pytest.mark.parametrize("iters", [1, 3, 5])
def test_custom_vjp_equals_autodiff_of_unrolled_forward(x64, iters):
  s, z = _inputs(np.random.default_rng(iters))
  ct = jnp.asarray(np.random.default_rng(9).normal(size=(2, 7, 4)))
  got = jax.grad(lambda s: jnp.sum(ct * salad.salad_log_transport(s, z, iters)))(s)
  want = jax.grad(lambda s: jnp.sum(ct * _plain_unrolled(s, z, iters)))(s)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
  # Through exp and the dropped dustbin, as the model uses it.
  ct2 = ct[..., :3]
  got = jax.grad(lambda s: jnp.sum(ct2 * salad.salad_assignment(s, z, iters)))(s)
  want = jax.grad(lambda s: jnp.sum(ct2 * jnp.exp(_plain_unrolled(s, z, iters)[..., :-1])))(s)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_gradient_matches_finite_differences(x64):
  s, z = _inputs(np.random.default_rng(1), b=1, n=5, m=2)
  check_grads(lambda s: salad.salad_assignment(s, z, 3), (s,), order=1, modes=("rev",),
              atol=1e-6, rtol=1e-6, eps=1e-6)
  check_grads(lambda s, z: salad.salad_log_transport(s, z, 3), (s, z), order=1,
              modes=("rev",), atol=1e-6, rtol=1e-6, eps=1e-6)


def test_forward_is_the_papers_transport_problem(x64):
  s, z = _inputs(np.random.default_rng(2), b=1, n=9, m=4)
  for iters in (1, 3):
    plan = np.exp(np.asarray(salad.salad_log_transport(s, z, iters)[0]))
    np.testing.assert_allclose(plan, _multiplicative_sinkhorn(s[0], z, iters), rtol=1e-10)
    # The last update is over features: each row (dustbin included) sums to 1.
    np.testing.assert_allclose(plan.sum(-1), 1.0, rtol=1e-12)
  # Three iterations leave the cluster marginals near, not at, their targets ...
  cols3 = np.exp(np.asarray(salad.salad_log_transport(s, z, 3)[0])).sum(0)
  assert 1e-6 < np.abs(cols3 - np.append(np.ones(4), 5.0)).max() < 0.5
  # ... and converged iterations meet them: clusters 1 each, the dustbin N - M.
  cols = np.exp(np.asarray(salad.salad_log_transport(s, z, 300)[0])).sum(0)
  np.testing.assert_allclose(cols, np.append(np.ones(4), 9 - 4), rtol=1e-9)
  # The dustbin column is dropped from the assignment.
  p = salad.salad_assignment(s, z, 3)
  assert p.shape == (1, 9, 4)
  np.testing.assert_allclose(p, np.exp(salad.salad_log_transport(s, z, 3))[..., :4])


def test_constant_dustbin_is_absorbed_by_its_potential(x64):
  # The first update of every iteration rescales columns, so adding c to the
  # whole dustbin column only shifts its potential by -c: the plan does not
  # depend on z, and z gets zero gradient (SALAD learns it all the same).
  s, _ = _inputs(np.random.default_rng(3))
  a = salad.salad_log_transport(s, jnp.asarray(-2.0), 3)
  b = salad.salad_log_transport(s, jnp.asarray(4.0), 3)
  np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
  g = jax.grad(lambda z: jnp.sum(jnp.sin(salad.salad_log_transport(s, z, 3))))(jnp.asarray(1.0))
  assert abs(float(g)) < 1e-12


def test_aggregate_is_the_papers_formula(x64):
  rng = np.random.default_rng(4)
  f = jnp.asarray(rng.normal(size=(2, 7, 5)))
  s, z = _inputs(rng)
  t = jnp.asarray(rng.normal(size=(2, 6)))
  p = salad.salad_assignment(s, z)
  out = np.asarray(salad.salad_aggregate(f, p, t))
  for i in range(2):
    v = [sum(float(p[i, n, j]) * np.asarray(f[i, n]) for n in range(7)) for j in range(3)]
    v = [x / np.linalg.norm(x) for x in v]
    want = np.concatenate([np.asarray(t[i]) / np.linalg.norm(t[i])] + v)
    np.testing.assert_allclose(out[i], want / np.linalg.norm(want), rtol=1e-10)
  no_token = salad.salad_aggregate(f, p)
  assert no_token.shape == (2, 15)
  np.testing.assert_allclose(np.linalg.norm(no_token, axis=-1), 1.0, rtol=1e-12)


def test_jit_vmap_shard_map_agree():
  s, z = _inputs(np.random.default_rng(5), b=8)
  s = s.astype(jnp.float32)
  want = salad.salad_assignment(s, z)
  np.testing.assert_allclose(jax.jit(salad.salad_assignment)(s, z), want, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(salad.salad_assignment, (0, None))(s, z), want,
                             rtol=1e-6)
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  fn = jax.shard_map(lambda s: salad.salad_assignment(s, z), mesh=mesh, in_specs=P("data"),
                     out_specs=P("data"))
  xs = jax.device_put(s, NamedSharding(mesh, P("data")))
  np.testing.assert_allclose(jax.jit(fn)(xs), want, rtol=1e-6)
  g = jax.jit(jax.grad(lambda s: jnp.sum(fn(s) ** 2)))(xs)
  np.testing.assert_allclose(g, jax.grad(lambda s: jnp.sum(salad.salad_assignment(s, z) ** 2))(s),
                             rtol=1e-5, atol=1e-7)


def test_bad_input_names_problem_and_fix():
  with pytest.raises(ValueError, match="fewer clusters"):
    salad.salad_assignment(jnp.zeros((4, 4)), jnp.asarray(1.0))
  with pytest.raises(ValueError, match="scalar"):
    salad.salad_assignment(jnp.zeros((5, 4)), jnp.ones(2))
  with pytest.raises(ValueError, match="NaN"):
    salad.salad_assignment(jnp.full((5, 2), jnp.nan), jnp.asarray(1.0))
  # Large scores stay finite (log space).
  p = salad.salad_assignment(jnp.asarray([[800.0, -800.0]] * 5), jnp.asarray(0.0))
  assert np.isfinite(np.asarray(p)).all()


@pytest.mark.parametrize("name", ["salad_log_transport", "multi_similarity_loss"])
def test_gradcheck_cases(name):
  from jaxset import gradcheck
  from jaxset.gradcheck import vpr
  rows = gradcheck.check_case({c.name: c for c in vpr.cases()}[name], seed=1)
  assert {"autodiff", "finite_diff"} <= {r.against for r in rows}
  bad = [r for r in rows if not r.ok]
  assert not bad, gradcheck.format_table(bad)
