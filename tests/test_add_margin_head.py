"""docs/adding_a_method.md, a margin head: one HeadSpec, registered, runs everywhere.

A toy head (the target cosine minus m: CosFace written as a spec of its own)
is described once in this file and registered with margins.register_head;
the logits function, the fused cross-entropy, Partial FC and the Flax
SpecHead then run it by name and agree with the built-in "margin" head at
m3 = m. No library file changes.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxset.models.heads import SpecHead
from jaxset.ops import margin_ce, margins
from jaxset.ops import partial_fc as pfc


def _params(kw):
  # Checks and static parameters: ranges raise a clear error, as every head's do.
  if not 0.0 <= kw["m"] < 1.0:
    raise ValueError(f"m must be in [0, 1); got {kw['m']!r}.")
  return float(kw["m"])


def _terms(c_t, row, stats, m, scale, axis_name):
  del row, stats, axis_name
  r = jnp.full(c_t.shape, scale, c_t.dtype)
  return margins.HeadTerms(r, c_t - m, jnp.ones_like(c_t), None, False, None, None)


TOY = margins.HeadSpec("toy_cosface", {"scale": 8.0, "m": 0.35}, None, False, _params, _terms)


@pytest.fixture
def registered(monkeypatch):
  monkeypatch.setattr(margins, "HEADS", dict(margins.HEADS))  # the registration ends here
  margins.register_head(TOY)


def test_a_registered_head_runs_through_every_entry_point(registered):
  r = np.random.default_rng(0)
  cos = jnp.asarray(r.uniform(-0.9, 0.9, (8, 6)), jnp.float32)
  labels = jnp.asarray(r.integers(0, 6, 8)).at[0].set(-1)
  want = margins.margin_logits(cos, labels, scale=8.0, m3=0.35)
  got, _, _ = margins.head_logits("toy_cosface", cos, labels)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  ce, _ = margin_ce.head_cross_entropy("toy_cosface", cos, labels)
  np.testing.assert_allclose(ce, margin_ce.margin_cross_entropy(cos, labels, scale=8.0, m3=0.35),
                             rtol=1e-5, atol=1e-6)
  e = jnp.asarray(r.normal(size=(8, 4)), jnp.float32)
  w = jnp.asarray(r.normal(size=(4, 8)), jnp.float32)
  mesh = Mesh(np.asarray(jax.devices()[:2]).reshape(1, 2), ("data", "model"))
  toy = pfc.partial_fc_cross_entropy(e, labels, w, mesh=mesh, num_classes=6, head="toy_cosface")
  ref = pfc.partial_fc_cross_entropy(e, labels, w, mesh=mesh, num_classes=6,
                                     head_kwargs={"scale": 8.0, "m3": 0.35})
  np.testing.assert_allclose(toy.ce, ref.ce, rtol=1e-5, atol=1e-6)
  head = SpecHead(6, "toy_cosface")
  variables = head.init(jax.random.key(0), e, labels)
  out = head.apply(variables, e, labels)
  assert out["logits"].shape == (8, 6)
  with pytest.raises(ValueError, match=r"m must be in \[0, 1\)"):
    margins.head_logits("toy_cosface", cos, labels, m=2.0)
  with pytest.raises(ValueError, match="already registered"):
    margins.register_head(margins.HeadSpec("margin", {}, None, False, _params, _terms))
