"""Tests for jaxset/ops/margins.py: combined margin, EQFace, AdaFace."""
import math

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxset import gradcheck
from jaxset.gradcheck import margins as gm
from jaxset.ops import margins

S = 16.0


def _data(b=4, c=6, seed=0, lo=-0.9, hi=0.9, dtype=np.float32):
  rng = np.random.default_rng(seed)
  cos = rng.uniform(lo, hi, (b, c)).astype(dtype)
  labels = rng.integers(0, c, b).astype(np.int32)
  labels[-1] = -1
  return jnp.asarray(cos), jnp.asarray(labels)


def _target(x, labels):
  lab = np.asarray(labels)
  x = np.asarray(x, np.float64)
  return x[np.arange(len(lab)), np.clip(lab, 0, None)]


def _non_target_mask(labels, c):
  lab = np.asarray(labels)
  mask = np.ones((len(lab), c), bool)
  rows = np.nonzero(lab >= 0)[0]
  mask[rows, lab[rows]] = False
  return mask


# --------------------------------------------------------------------------
# Gradients: custom_vjp == autodiff == finite differences == the papers.


@pytest.mark.parametrize("case", gm.cases(), ids=lambda c: c.name)
def test_gradcheck_rows(case):
  rows = gradcheck.check_case(case)
  bad = [r for r in rows if not r.ok]
  assert not bad, gradcheck.format_table(rows)
  assert {r.against for r in rows} >= {"autodiff", "finite_diff", "paper"}


@pytest.mark.parametrize("grad", ["exact", "straight_through"])
@pytest.mark.parametrize("margin", [
    dict(m2=0.5), dict(m3=0.35), dict(m1=1.3, m1_mode="angle"),
    dict(m1=0.9, m2=0.3, m3=0.2), dict(m1=1.2, m2=0.1, m3=0.1, m1_mode="angle"),
])
def test_raw_op_matches_reference_autodiff(x64, grad, margin):
  cos, labels = _data(5, 7, seed=1, dtype=np.float64)
  fn = lambda c: margins.margin_logits(c, labels, scale=S, grad=grad, **margin)
  ref = lambda c: gm.reference_margin_logits(c, labels=labels, scale=S, grad=grad, **margin)
  out, vjp = jax.vjp(fn, cos)
  ref_out, ref_vjp = jax.vjp(ref, cos)
  cot = jnp.asarray(np.random.default_rng(2).standard_normal(out.shape))
  np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(vjp(cot)[0], ref_vjp(cot)[0], rtol=1e-6, atol=1e-12)
  paper = gm.paper_margin_grad((cos,), dict(labels=labels, scale=S, grad=grad, **margin), cot)
  np.testing.assert_allclose(vjp(cot)[0], paper[0], rtol=1e-6, atol=1e-12)
  if grad == "exact":
    jax.test_util.check_grads(fn, (cos,), order=1, modes=("rev",))


@pytest.mark.parametrize("grad", ["exact", "straight_through"])
@pytest.mark.parametrize("transform", ["paper", "official"])
def test_eqface_raw_op_matches_reference(x64, grad, transform):
  cos, labels = _data(5, 7, seed=3, dtype=np.float64)
  q = jnp.asarray(np.random.default_rng(4).uniform(0.25, 0.95, 5))
  fn = lambda c, q: margins.eqface_logits(c, labels, q, scale=S, quality_transform=transform,
                                          grad=grad)
  ref = lambda c, q: gm.reference_eqface_logits(c, q, labels=labels, scale=S, m2=0.5,
                                                quality_transform=transform, grad=grad)
  out, vjp = jax.vjp(fn, cos, q)
  ref_out, ref_vjp = jax.vjp(ref, cos, q)
  cot = jnp.asarray(np.random.default_rng(5).standard_normal(out.shape))
  np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
  for got, want in zip(vjp(cot), ref_vjp(cot)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
  fixed = dict(labels=labels, scale=S, m2=0.5, quality_transform=transform, grad=grad)
  for got, want in zip(vjp(cot), gm.paper_eqface_grad((cos, q), fixed, cot)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_straight_through_gradient_is_s_times_g_and_differs_from_exact():
  cos, labels = _data()
  cot = jnp.asarray(np.random.default_rng(0).standard_normal(cos.shape), jnp.float32)
  g_st = jax.vjp(lambda c: margins.margin_logits(c, labels, scale=S, m2=0.5,
                                                 grad="straight_through"), cos)[1](cot)[0]
  g_ex = jax.vjp(lambda c: margins.margin_logits(c, labels, scale=S, m2=0.5), cos)[1](cot)[0]
  np.testing.assert_allclose(g_st, S * cot, rtol=1e-6)
  mask = _non_target_mask(labels, cos.shape[1])
  np.testing.assert_allclose(np.asarray(g_ex)[mask], np.asarray(g_st)[mask], rtol=1e-6)
  assert not np.allclose(np.asarray(g_ex)[~mask], np.asarray(g_st)[~mask])


# --------------------------------------------------------------------------
# Special cases of the combined margin.


def test_no_margin_is_scaled_cosine_exactly():
  cos, labels = _data()
  cos = cos.at[0, 0].set(1.0000001).at[1, 1].set(-1.0)
  out = margins.margin_logits(cos, labels, scale=S)
  np.testing.assert_array_equal(out, S * cos)


def test_cosface_target():
  cos, labels = _data()
  out = np.asarray(margins.margin_logits(cos, labels, scale=S, m3=0.35))
  valid = np.asarray(labels) >= 0
  np.testing.assert_allclose(_target(out, labels)[valid], S * (_target(cos, labels) - 0.35)[valid],
                             rtol=1e-6)
  mask = _non_target_mask(labels, cos.shape[1])
  np.testing.assert_array_equal(out[mask], (S * np.asarray(cos))[mask])


def test_arcface_target_and_fallback_region():
  m = 0.5
  threshold = math.cos(math.pi - m)
  cos = jnp.asarray([[0.3, 0.1], [-0.95, 0.2], [threshold + 0.01, 0.0], [-0.99, 0.5]], jnp.float32)
  labels = jnp.asarray([0, 0, 0, 0])
  c = np.asarray(cos, np.float64)[:, 0]
  arc = np.cos(np.arccos(c) + m)
  fallback = c - m * math.sin(m)
  in_region = c <= threshold
  assert in_region.tolist() == [False, True, False, True]
  out = np.asarray(margins.margin_logits(cos, labels, scale=S, m2=m))[:, 0]
  np.testing.assert_allclose(out, S * np.where(in_region, fallback, arc), rtol=1e-5, atol=1e-5)
  none = np.asarray(margins.margin_logits(cos, labels, scale=S, m2=m, fallback="none"))[:, 0]
  np.testing.assert_allclose(none, S * arc, rtol=1e-5, atol=1e-5)
  easy = np.asarray(margins.margin_logits(cos, labels, scale=S, m2=m, fallback="easy"))[:, 0]
  np.testing.assert_allclose(easy, S * np.where(c <= 0, c, arc), rtol=1e-5, atol=1e-5)
  # In the fallback region the exact gradient is s * m1 (a linear function of cos).
  g = jax.grad(lambda x: margins.margin_logits(x, labels, scale=S, m2=m)[:, 0].sum())(cos)
  np.testing.assert_allclose(np.asarray(g)[in_region, 0], S, rtol=1e-6)
  factor = np.sin(np.arccos(c) + m) / np.sin(np.arccos(c))
  np.testing.assert_allclose(np.asarray(g)[~in_region, 0], S * factor[~in_region], rtol=1e-4)


def test_sphereface_angle_mode():
  cos, labels = _data(seed=5)
  out = margins.margin_logits(cos, labels, scale=S, m1=1.35, m1_mode="angle")
  valid = np.asarray(labels) >= 0
  want = S * np.cos(1.35 * np.arccos(_target(cos, labels)))
  np.testing.assert_allclose(_target(out, labels)[valid], want[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.5, 0.2), (0.9, 0.3, 0.35), (1.2, 0.0, 0.1),
                                      (1.4, 0.2, 0.0)])
def test_combinations_insightface_mishandles(m1, m2, m3):
  """m3 > 0 together with m1/m2 (insightface drops m1, m2), and pure m1."""
  cos, labels = _data(seed=6, lo=-0.5, hi=0.9)
  valid = np.asarray(labels) >= 0
  c = _target(cos, labels)
  theta = np.arccos(c)
  out = margins.margin_logits(cos, labels, scale=S, m1=m1, m2=m2, m3=m3)
  np.testing.assert_allclose(_target(out, labels)[valid],
                             (S * (m1 * np.cos(theta + m2) - m3))[valid], rtol=1e-5, atol=1e-5)
  out = margins.margin_logits(cos, labels, scale=S, m1=m1, m2=m2, m3=m3, m1_mode="angle")
  np.testing.assert_allclose(_target(out, labels)[valid],
                             (S * (np.cos(m1 * theta + m2) - m3))[valid], rtol=1e-5, atol=1e-5)
  # The margin really lowers the target (for these settings and cosines).
  assert np.all(_target(out, labels)[valid] < S * c[valid])


def test_modes_agree_when_m1_is_one_and_ignored_rows_untouched():
  cos, labels = _data(seed=7)
  a = margins.margin_logits(cos, labels, scale=S, m2=0.4, m3=0.1, fallback="none")
  b = margins.margin_logits(cos, labels, scale=S, m2=0.4, m3=0.1, m1_mode="angle")
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(a[-1], S * cos[-1])  # labels[-1] == -1


# --------------------------------------------------------------------------
# Never NaN: cos at +-1 and slightly outside, float32 and bfloat16.


def _edge_cos(dtype):
  row = [1.0, -1.0, 1.0 + 1e-6, -1.0 - 1e-6, 1.0 + 1e-3, -1.0 - 1e-3, 0.0, 0.99999]
  cos = np.tile(np.asarray(row, np.float32), (8, 1))
  return jnp.asarray(cos, dtype), jnp.arange(8, dtype=jnp.int32)  # each row a different target


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kw", [
    dict(m2=0.5), dict(m2=0.5, fallback="none"), dict(m2=0.5, grad="straight_through"),
    dict(m1=1.35, m1_mode="angle"), dict(m1=0.9, m2=0.3, m3=0.2), dict(m3=0.35),
    dict(m1=1.1, m2=0.2, m3=0.1, m1_mode="angle"),
])
def test_margin_finite_at_edges(dtype, kw):
  cos, labels = _edge_cos(dtype)
  out = margins.margin_logits(cos, labels, scale=64.0, **kw)
  assert out.dtype == dtype
  assert np.isfinite(np.asarray(out, np.float32)).all()
  g = jax.grad(lambda c: margins.margin_logits(c, labels, scale=64.0, **kw)
               .astype(jnp.float32).sum())(cos)
  assert g.dtype == dtype
  g = np.asarray(g, np.float32)
  assert np.isfinite(g).all()
  # Bounded by s * m1 / sqrt(2 * COS_CLIP_EPS) (see COS_CLIP_EPS).
  assert np.abs(g).max() <= 64.0 * max(kw.get("m1", 1.0), 1.0) / math.sqrt(2e-6) * 1.01


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_eqface_and_adaface_finite_at_edges(dtype):
  cos, labels = _edge_cos(dtype)
  q = jnp.linspace(0.0, 1.0, 8).astype(dtype)
  for transform in ("paper", "official"):
    f = lambda c, q: margins.eqface_logits(c, labels, q, scale=64.0,
                                           quality_transform=transform).astype(jnp.float32).sum()
    out = margins.eqface_logits(cos, labels, q, scale=64.0, quality_transform=transform)
    assert np.isfinite(np.asarray(out, np.float32)).all()
    for g in jax.grad(f, argnums=(0, 1))(cos, q):
      assert np.isfinite(np.asarray(g, np.float32)).all()
  norms = jnp.asarray([0.0, 1e-5, 5.0, 20.0, 50.0, 99.0, 150.0, 1e6], dtype)
  stats = margins.adaface_init_stats()
  out, new = margins.adaface_logits(cos, norms, labels, stats)
  assert out.dtype == dtype and np.isfinite(np.asarray(out, np.float32)).all()
  assert np.isfinite(float(new["mean"])) and np.isfinite(float(new["std"]))
  g = jax.grad(lambda c: margins.adaface_logits(c, norms, labels, stats)[0]
               .astype(jnp.float32).sum())(cos)
  assert np.isfinite(np.asarray(g, np.float32)).all()


# --------------------------------------------------------------------------
# EQFace specifics.


def test_eqface_rows_scaled_by_quality():
  cos, labels = _data(seed=8)
  q = jnp.asarray([0.0, 0.3, 1.0, 0.7])
  base = margins.margin_logits(cos, labels, scale=1.0, m2=0.5)
  out = margins.eqface_logits(cos, labels, q, scale=S)
  np.testing.assert_allclose(out, S * q[:, None] * base, rtol=1e-6, atol=1e-6)
  off = margins.eqface_logits(cos, labels, q, scale=S, quality_transform="official")
  r = np.clip(np.asarray(q) - 0.2, 0, 1) * 1.2
  np.testing.assert_allclose(off, S * r[:, None] * np.asarray(base), rtol=1e-6, atol=1e-6)
  # s_i = 0: the row's cos gradient vanishes, its quality gradient does not.
  gc, gq = jax.grad(lambda c, q: margins.eqface_logits(c, labels, q, scale=S)[:, 0].sum(),
                    argnums=(0, 1))(cos, q)
  assert np.all(np.asarray(gc)[0] == 0) and gq[0] != 0


# --------------------------------------------------------------------------
# AdaFace.


def _np_adaface(cos, norms, labels, mean, std, m=0.4, h=0.333, s=64.0, t_alpha=0.01,
                eps=1e-3):
  """The official head's steps in numpy float64, for one step."""
  n = np.clip(np.asarray(norms, np.float64), 0.001, 100)
  mean = t_alpha * n.mean() + (1 - t_alpha) * mean
  std = t_alpha * n.std(ddof=1) + (1 - t_alpha) * std
  z = np.clip(h * (n - mean) / (std + eps), -1, 1)
  c = np.clip(np.asarray(cos, np.float64), -1 + eps, 1 - eps)
  theta = np.arccos(c)
  lab = np.asarray(labels)
  rows = np.nonzero(lab >= 0)[0]
  theta[rows, lab[rows]] = np.clip(theta[rows, lab[rows]] - m * z[rows], eps, math.pi - eps)
  out = np.cos(theta)
  out[rows, lab[rows]] -= m * z[rows] + m
  return s * out, mean, std


def test_adaface_ema_updated_before_use_two_steps():
  rng = np.random.default_rng(9)
  stats = margins.adaface_init_stats()
  mean, std = 20.0, 100.0
  for step in range(2):
    cos, labels = _data(6, 5, seed=10 + step)
    norms = jnp.asarray(rng.uniform(5, 40, 6), jnp.float32)
    out, stats = margins.adaface_logits(cos, norms, labels, stats)
    want, mean, std = _np_adaface(cos, norms, labels, mean, std)
    np.testing.assert_allclose(float(stats["mean"]), mean, rtol=1e-6)
    np.testing.assert_allclose(float(stats["std"]), std, rtol=1e-6)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
  assert stats["mean"].dtype == jnp.float32 and stats["std"].dtype == jnp.float32
  # Hand-computed first EMA step from the initial stats (20, 100): norms
  # 10, 20, 30 have batch mean 20 and unbiased std 10, so the new mean is
  # 0.01*20 + 0.99*20 = 20 and the new std 0.01*10 + 0.99*100 = 99.1; norms
  # 4, 6 give mean 0.01*5 + 0.99*20 = 19.85, std 0.01*sqrt(2) + 99 = 99.014142.
  cos, labels = _data(3, 5, seed=30)
  _, first = margins.adaface_logits(cos, jnp.asarray([10.0, 20.0, 30.0]), labels,
                                    margins.adaface_init_stats())
  assert float(first["mean"]) == pytest.approx(20.0, rel=1e-6)
  assert float(first["std"]) == pytest.approx(99.1, rel=1e-6)
  cos, labels = _data(2, 5, seed=31)
  _, first = margins.adaface_logits(cos, jnp.asarray([4.0, 6.0]), labels,
                                    margins.adaface_init_stats())
  assert float(first["mean"]) == pytest.approx(19.85, rel=1e-6)
  assert float(first["std"]) == pytest.approx(99.0 + 0.01 * math.sqrt(2), rel=1e-6)


def test_adaface_unbiased_std_and_t_alpha():
  cos, labels = _data(4, 5)
  norms = jnp.asarray([10.0, 12.0, 17.0, 30.0])
  stats = margins.adaface_init_stats()
  _, new = margins.adaface_logits(cos, norms, labels, stats, t_alpha=1.0)
  np.testing.assert_allclose(float(new["mean"]), 17.25, rtol=1e-6)
  np.testing.assert_allclose(float(new["std"]), np.std([10, 12, 17, 30], ddof=1), rtol=1e-6)
  _, new = margins.adaface_logits(cos, norms, labels, stats, t_alpha=0.0)
  assert float(new["mean"]) == 20.0 and float(new["std"]) == 100.0


def test_adaface_z_hat_clip_gives_arcface_and_negative_margin():
  m, s = 0.4, 64.0
  cos = jnp.asarray([[0.5, 0.1], [0.5, 0.1], [0.5, 0.1]], jnp.float32)
  labels = jnp.asarray([0, 0, 0])
  stats = {"mean": jnp.float32(20.0), "std": jnp.float32(1.0)}
  # t_alpha = 0 keeps (20, 1); h*(norm - 20)/1.001 is far beyond +-1 for 1 and 99.
  out, _ = margins.adaface_logits(cos, jnp.asarray([1.0, 99.0, 20.0]), labels, stats,
                                  m=m, scale=s, t_alpha=0.0)
  theta = math.acos(0.5)
  np.testing.assert_allclose(out[0, 0], s * math.cos(theta + m), atol=1e-4)   # z = -1: ArcFace
  np.testing.assert_allclose(out[1, 0], s * (math.cos(theta - m) - 2 * m), atol=1e-4)  # z = 1
  np.testing.assert_allclose(out[2, 0], s * (0.5 - m), atol=1e-4)  # z = 0: CosFace
  np.testing.assert_allclose(out[:, 1], s * 0.1, rtol=1e-6)



def test_adaface_clamp_gradient_mask_per_entry():
  # The backward keeps the clamp's mask as bits, 8 columns a byte: C = 11
  # spans a padded second byte. Non-target entries pass s * g inside
  # [-1 + eps, 1 - eps], bounds included (torch.clamp), and 0 beyond.
  hi, lo = np.float32(1 - 1e-3), np.float32(-1 + 1e-3)
  edge = [hi, lo, np.nextafter(hi, np.float32(2)), np.nextafter(lo, np.float32(-2)), 1.0,
          -1.0, 0.3, -0.7, 0.9995, -0.9995, 0.0]
  rng = np.random.default_rng(3)
  cos = np.stack([np.roll(np.asarray(edge, np.float32), k) for k in range(3)])
  labels = jnp.asarray([10, 5, -1])
  w = jnp.asarray(rng.standard_normal(cos.shape), jnp.float32)
  stats = margins.adaface_init_stats()
  norms = jnp.asarray([10.0, 20.0, 30.0])
  g = jax.grad(lambda c: jnp.sum(w * margins.adaface_logits(c, norms, labels, stats)[0]))(
      jnp.asarray(cos))
  inside = (cos >= lo) & (cos <= hi)
  nontarget = np.ones(cos.shape, bool)
  nontarget[0, 10] = nontarget[1, 5] = False
  np.testing.assert_array_equal(np.asarray(g)[nontarget],
                                np.where(inside, 64.0 * np.asarray(w), 0.0)[nontarget])
  assert 0 < inside[nontarget].sum() < nontarget.sum()

def test_adaface_degenerate_batches_and_gradients():
  stats = margins.adaface_init_stats()
  cos, _ = _data(1, 5)
  out, new = margins.adaface_logits(cos, jnp.asarray([[30.0]]), jnp.asarray([2]), stats)
  assert float(new["std"]) == 100.0  # no unbiased std from one norm: keep the EMA's
  np.testing.assert_allclose(float(new["mean"]), 0.01 * 30 + 0.99 * 20, rtol=1e-6)
  assert np.isfinite(np.asarray(out)).all()
  cos, _ = _data(4, 5)
  ignored = jnp.full((4,), -1)
  norms = jnp.asarray([10.0, 20.0, 30.0, 40.0])
  out, new = margins.adaface_logits(cos, norms, ignored, stats)
  np.testing.assert_allclose(out, 64.0 * jnp.clip(cos, -1 + 1e-3, 1 - 1e-3), rtol=1e-6)
  assert float(new["mean"]) != 20.0
  _, labels = _data(4, 5)
  g_norms = jax.grad(lambda n: margins.adaface_logits(cos, n, labels, stats)[0].sum())(norms)
  np.testing.assert_array_equal(g_norms, 0.0)
  a = margins.adaface_logits(cos, norms, labels, stats)[0]
  b = margins.adaface_logits(cos, norms[:, None], labels, stats)[0]
  np.testing.assert_array_equal(a, b)


def test_adaface_gst_public_function():
  c = jnp.asarray([0.3, -0.2, 0.8])
  z = jnp.asarray([-1.0, 0.0, 0.5])
  got = margins.adaface_gradient_scaling_term(c, z, 0.4)
  np.testing.assert_allclose(got, gm.paper_adaface_gst(c, z, 0.4), rtol=1e-5)
  # z = 0 (CosFace): factor 1; z = -1 (ArcFace): sin(theta + m)/sin(theta).
  assert abs(float(got[1]) - 1.0) < 1e-6
  t = math.acos(0.3)
  np.testing.assert_allclose(got[0], math.sin(t + 0.4) / math.sin(t), rtol=1e-5)
  at_zero = margins.adaface_gradient_scaling_term(jnp.asarray([1.0]), jnp.asarray([0.0]))
  assert float(at_zero[0]) == 0


def _mesh():
  return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))


def test_adaface_global_stats_under_pmap_and_shard_map():
  rng = np.random.default_rng(11)
  cos, labels = _data(16, 5, seed=12)
  norms = jnp.asarray(rng.uniform(5, 40, 16), jnp.float32)
  stats = margins.adaface_init_stats()
  want_out, want = margins.adaface_logits(cos, norms, labels, stats)

  def per_device(c, n, l, axis_name):
    return margins.adaface_logits(c, n, l, stats, axis_name=axis_name)

  pm = jax.pmap(lambda c, n, l: per_device(c, n, l, "data"), axis_name="data")
  out, new = pm(cos.reshape(8, 2, 5), norms.reshape(8, 2), labels.reshape(8, 2))
  np.testing.assert_allclose(new["mean"], np.full(8, want["mean"]), rtol=1e-6)
  np.testing.assert_allclose(new["std"], np.full(8, want["std"]), rtol=1e-6)
  np.testing.assert_allclose(out.reshape(16, 5), want_out, rtol=1e-5, atol=1e-5)

  mesh = _mesh()
  spec = NamedSharding(mesh, P("data"))
  args = [jax.device_put(x, spec) for x in (cos, norms, labels)]

  def both(c, n, l):
    # Global statistics (axis_name) and the official per-device ones (None).
    glob = per_device(c, n, l, "data")[1]
    local = per_device(c, n, l, None)[1]
    return jax.tree.map(lambda x: x[None], (glob, local))

  sm = jax.jit(jax.shard_map(both, mesh=mesh, in_specs=(P("data"),) * 3, out_specs=P("data")))
  glob, local = sm(*args)
  np.testing.assert_allclose(glob["mean"], np.full(8, want["mean"]), rtol=1e-6)
  np.testing.assert_allclose(glob["std"], np.full(8, want["std"]), rtol=1e-6)
  # The official code's per-device statistics differ across devices and from
  # the global batch's.
  assert np.ptp(np.asarray(local["mean"])) > 1e-3
  assert not np.allclose(np.asarray(local["std"]), float(want["std"]), rtol=1e-4)


# --------------------------------------------------------------------------
# Transformations.


def _loss_margin(cos, labels, q=None):
  if q is None:
    return margins.margin_logits(cos, labels, scale=S, m1=0.95, m2=0.4, m3=0.1)
  return margins.eqface_logits(cos, labels, q, scale=S)


@pytest.mark.parametrize("which", ["margin", "eqface"])
def test_jit_vmap_pmap_shard_map_agree(which):
  cos, labels = _data(16, 5, seed=13)
  q = jnp.asarray(np.random.default_rng(14).uniform(0.1, 1.0, 16), jnp.float32)
  if which == "margin":
    f = lambda c, l, q: _loss_margin(c, l)
  else:
    f = lambda c, l, q: _loss_margin(c, l, q)
  grad_f = lambda c, l, q: jax.grad(lambda c, q: (f(c, l, q) ** 2).sum(), argnums=(0, 1))(c, q)
  want = f(cos, labels, q)
  want_g = grad_f(cos, labels, q)

  def close(a, b):
    np.testing.assert_allclose(np.asarray(a).reshape(np.shape(b)), b, rtol=1e-5, atol=1e-5)

  split = lambda x: x.reshape((8, 2) + x.shape[1:])
  got = jax.jit(lambda c, l, q: (f(c, l, q), grad_f(c, l, q)))(cos, labels, q)
  vm = jax.jit(jax.vmap(lambda c, l, q: (f(c, l, q), grad_f(c, l, q))))(
      split(cos), split(labels), split(q))
  pm = jax.pmap(lambda c, l, q: (f(c, l, q), grad_f(c, l, q)))(
      split(cos), split(labels), split(q))
  mesh = _mesh()
  spec = NamedSharding(mesh, P("data"))
  args = [jax.device_put(x, spec) for x in (cos, labels, q)]
  sm = jax.jit(jax.shard_map(lambda c, l, q: (f(c, l, q), grad_f(c, l, q)), mesh=mesh,
                             in_specs=(P("data"),) * 3, out_specs=P("data")))(*args)
  for out, grads in (got, vm, pm, sm):
    close(out, want)
    for a, b in zip(grads, want_g):
      close(a, b)


# --------------------------------------------------------------------------
# Properties.


@settings(max_examples=12, deadline=None)
@given(
    # Few distinct shapes and margins: each new combination compiles.
    b=st.sampled_from([1, 3]), c=st.sampled_from([1, 4]),
    seed=st.integers(0, 2**16),
    m1=st.sampled_from([0.8, 1.0, 1.35]), m2=st.sampled_from([0.0, 0.5]),
    m3=st.sampled_from([0.0, 0.35]),
    mode=st.sampled_from(["cosine", "angle"]),
    grad=st.sampled_from(["exact", "straight_through"]),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
)
def test_property_margin(b, c, seed, m1, m2, m3, mode, grad, dtype):
  rng = np.random.default_rng(seed)
  cos = jnp.asarray(rng.uniform(-1.001, 1.001, (b, c)), dtype)
  labels = jnp.asarray(rng.integers(-1, c, b), jnp.int32)
  kw = dict(scale=S, m1=m1, m2=m2, m3=m3, m1_mode=mode, grad=grad)
  out = margins.margin_logits(cos, labels, **kw)
  assert out.shape == (b, c) and out.dtype == dtype
  out32 = np.asarray(out, np.float32)
  assert np.isfinite(out32).all()
  mask = _non_target_mask(labels, c)
  np.testing.assert_array_equal(out32[mask], np.asarray(S * cos, np.float32)[mask])
  valid = np.asarray(labels) >= 0
  cc = np.clip(_target(cos, labels), -1 + 1e-6, 1 - 1e-6)
  theta = np.arccos(cc)
  want = m1 * np.cos(theta + m2) - m3 if mode == "cosine" else np.cos(m1 * theta + m2) - m3
  if mode == "cosine" and m2 > 0:
    region = _target(cos, labels) <= math.cos(math.pi - m2)
    want = np.where(region, m1 * (_target(cos, labels) - m2 * math.sin(m2)) - m3, want)
  tol = 0.6 if dtype == jnp.bfloat16 else 2e-3  # in logits (s = 16)
  np.testing.assert_allclose(_target(out32, labels)[valid], S * want[valid], atol=tol)
  g = jax.grad(lambda x: margins.margin_logits(x, labels, **kw).astype(jnp.float32).sum())(cos)
  assert g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all()


@settings(max_examples=8, deadline=None)
@given(b=st.sampled_from([1, 3]), c=st.sampled_from([1, 4]), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([jnp.float32, jnp.bfloat16]))
def test_property_eqface_adaface(b, c, seed, dtype):
  rng = np.random.default_rng(seed)
  cos = jnp.asarray(rng.uniform(-1.001, 1.001, (b, c)), dtype)
  labels = jnp.asarray(rng.integers(-1, c, b), jnp.int32)
  q = jnp.asarray(rng.uniform(0, 1, b), dtype)
  out = margins.eqface_logits(cos, labels, q, scale=S)
  assert out.shape == (b, c) and np.isfinite(np.asarray(out, np.float32)).all()
  norms = jnp.asarray(rng.uniform(0, 120, b), jnp.float32)
  out, new = margins.adaface_logits(cos, norms, labels, margins.adaface_init_stats())
  assert out.shape == (b, c) and np.isfinite(np.asarray(out, np.float32)).all()
  assert np.isfinite(float(new["mean"])) and np.isfinite(float(new["std"]))
  assert np.abs(np.asarray(out, np.float32)).max() <= 64.0 * (1 + 2 * 0.4) + 1


# --------------------------------------------------------------------------
# Bad input.


def test_bad_input_raises():
  cos, labels = _data()
  with pytest.raises(ValueError, match="labels"):
    margins.margin_logits(cos, labels.at[0].set(6), scale=S)
  with pytest.raises(ValueError, match="labels"):
    margins.margin_logits(cos, labels[:3], scale=S)
  with pytest.raises(ValueError, match="cos"):
    margins.margin_logits(cos[0], labels, scale=S)
  with pytest.raises(ValueError, match="cos holds 1 NaN"):
    margins.margin_logits(cos.at[1, 2].set(jnp.nan), labels, scale=S)
  with pytest.raises(ValueError, match="quality"):
    margins.eqface_logits(cos, labels, jnp.ones(3), scale=S)
  with pytest.raises(ValueError, match="quality"):
    margins.eqface_logits(cos, labels, jnp.ones(4).at[0].set(jnp.inf), scale=S)
  with pytest.raises(ValueError, match="norms"):
    margins.adaface_logits(cos, jnp.ones(5), labels, margins.adaface_init_stats())
  with pytest.raises(ValueError, match="stats"):
    margins.adaface_logits(cos, jnp.ones(4), labels, {"mean": 1.0})
  with pytest.raises(ValueError, match="grad"):
    margins.margin_logits(cos, labels, scale=S, grad="stop")
  with pytest.raises(ValueError, match="fallback"):
    margins.margin_logits(cos, labels, scale=S, m1=1.2, m1_mode="angle", fallback="arcface")
  with pytest.raises(ValueError, match="labels must be integers"):
    margins.margin_logits(cos, labels.astype(jnp.float32), scale=S)
