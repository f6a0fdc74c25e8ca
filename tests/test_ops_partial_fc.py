"""Partial FC (jaxset.ops.partial_fc): the class-sharded head equals the unsharded one.

float64 on 1, 2, 4 and 8 fake CPU devices: loss and every gradient (embeddings,
class weights, EQFace quality) agree with normalize @ normalize + the margin op
+ optax's cross-entropy to 1e-10, for margin / EQFace / AdaFace and both
gradient conventions; with sampling they agree with the unsharded head on the
sampled classes only.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from jaxset.ops import margins
from jaxset.ops import partial_fc as pfc
from jaxset.ops._norms import l2_normalize

B, D, C = 16, 5, 24
HEADS = [("margin", {"scale": 8.0, "m2": 0.5}), ("eqface", {"scale": 8.0, "m2": 0.3}),
         ("adaface", {"scale": 8.0})]
# (data, model) layouts over 1, 2, 4 and 8 devices.
LAYOUTS = [(1, 1), (1, 2), (2, 2), (2, 4)]


def _mesh(data, model):
  devs = np.asarray(jax.devices()[:data * model]).reshape(data, model)
  return Mesh(devs, ("data", "model"))


def _inputs():
  r = np.random.default_rng(0)
  lab = r.integers(0, C, B)
  lab[3] = -1  # an ignored row
  return {"e": jnp.asarray(r.normal(size=(B, D))), "w": jnp.asarray(r.normal(size=(D, C))),
              "q": jnp.asarray(r.uniform(0.2, 1.0, B)), "lab": jnp.asarray(lab),
              "norms": jnp.asarray(r.uniform(5.0, 30.0, B)),
              "stats": {"mean": jnp.float64(20.0), "std": jnp.float64(100.0)}}


def _unsharded(e, w, q, x, head, kw, lab=None):
  lab = x["lab"] if lab is None else lab
  cos = l2_normalize(e) @ l2_normalize(w, 0)
  stats = None
  if head == "margin":
    logits = margins.margin_logits(cos, lab, **kw)
  elif head == "eqface":
    logits = margins.eqface_logits(cos, lab, q, **kw)
  else:
    logits, stats = margins.adaface_logits(cos, x["norms"], lab, x["stats"], **kw)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(lab >= 0, lab, 0))
  return jnp.sum(jnp.where(lab >= 0, ce, 0.0)) / jnp.sum(lab >= 0), stats


def _sharded(e, w, q, x, head, kw, mesh, **extra):
  out = pfc.partial_fc_cross_entropy(e, x["lab"], w, mesh=mesh, head=head, head_kwargs=kw,
                                     quality=q, norms=x["norms"], stats=x["stats"], **extra)
  return jnp.sum(out.ce) / jnp.sum(x["lab"] >= 0), (out.stats, out.class_mask)


CASES = [(head, dict(kw, grad=g) if g else kw) for head, kw in HEADS
         for g in (("exact", "straight_through") if head != "adaface" else (None,))]


@functools.lru_cache(maxsize=1)
def _references():
  """The unsharded head's (loss, stats), gradients for every case (float64)."""
  with jax.enable_x64(True):
    x = _inputs()
    return jax.jit(lambda e, w, q: [jax.value_and_grad(
        lambda e, w, q, head=head, k=k: _unsharded(e, w, q, x, head, k), (0, 1, 2),
        has_aux=True)(e, w, q) for head, k in CASES])(x["e"], x["w"], x["q"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_equals_unsharded(x64, layout):
  x = _inputs()
  mesh = _mesh(*layout)

  # One executable for every head and convention (compiles dominate here).
  @jax.jit
  def all_cases(e, w, q):
    return [jax.value_and_grad(lambda e, w, q, head=head, k=k: _sharded(e, w, q, x, head, k, mesh),
                               (0, 1, 2), has_aux=True)(e, w, q) for head, k in CASES]

  for (head, k), ((l1, (s1, mask)), g1), ((l0, s0), g0) in zip(
      CASES, all_cases(x["e"], x["w"], x["q"]), _references()):
    assert abs(float(l1 - l0)) < 1e-10, (head, k)
    for a, b in zip(g1, g0):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-10, err_msg=f"{head} {k}")
    assert float(jnp.abs(g1[1]).max()) > 1e-3  # the weights do get a gradient
    assert bool(mask.all())
    if head == "eqface":
      assert float(jnp.abs(g1[2]).max()) > 1e-3
    if head == "adaface":
      # The EMA statistics are those of the whole global batch.
      for key in ("mean", "std"):
        np.testing.assert_allclose(s1[key], s0[key], rtol=0, atol=1e-12)
      assert float(s1["std"]) != 100.0


def test_sampled_equals_unsharded_on_sampled_classes(x64):
  x = _inputs()
  layout = (2, 2)
  mesh = _mesh(*layout)
  rng = jax.random.key(7)
  # B = 16 labels; C_local = 24 / 4 = 6 with 2 model shards: k = max(ceil(0.5*12), 16)
  # would keep all, so use a wider classifier to make sampling bite.
  c_wide = 96
  w = jnp.asarray(np.random.default_rng(1).normal(size=(D, c_wide)))
  res = jax.jit(lambda e, w, q: [jax.value_and_grad(lambda e, w, q, head=head, kw=kw: _sharded(
      e, w, q, x, head, kw, mesh, sample_rate=0.25, rng=rng), (0, 1, 2), has_aux=True)(
          e, w, q) for head, kw in HEADS])(x["e"], w, x["q"])
  for (head, kw), ((l1, (_, mask)), g1) in zip(HEADS, res):
    mask = np.asarray(mask)
    n_model = layout[1]
    k = pfc.num_sampled(c_wide // n_model, 0.25, B)
    assert mask.sum() == k * n_model < c_wide
    lab = np.asarray(x["lab"])
    assert mask[lab[lab >= 0]].all()  # every positive of the batch is kept
    sel = np.flatnonzero(mask)
    remap = jnp.asarray(np.where(lab >= 0, np.searchsorted(sel, np.maximum(lab, 0)), -1))
    (l0, _), g0 = jax.value_and_grad(lambda e, ws, q, head=head, kw=kw, remap=remap: _unsharded(
        e, ws, q, x, head, kw, lab=remap), (0, 1, 2), has_aux=True)(x["e"], w[:, sel], x["q"])
    assert abs(float(l1 - l0)) < 1e-10, head
    np.testing.assert_allclose(g1[0], g0[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(g1[1][:, sel], g0[1], rtol=0, atol=1e-10)
    assert float(jnp.abs(g1[1][:, ~mask]).max()) == 0.0  # unsampled rows: zero gradient
    np.testing.assert_allclose(g1[2], g0[2], rtol=0, atol=1e-10)
  # The draw is a function of the key: the same key, the same classes; another, others.
  again = jax.jit(lambda r: _sharded(x["e"], w, x["q"], x, "margin", HEADS[0][1], mesh,
                                     sample_rate=0.25, rng=r)[1][1])
  np.testing.assert_array_equal(again(rng), mask)
  assert not np.array_equal(again(jax.random.key(8)), mask)


def test_padded_classes_and_cap(x64):
  x = _inputs()
  mesh = _mesh(1, 4)
  # 22 real classes in a 24-column weight: padding gets no probability.
  lab = jnp.where(x["lab"] >= 22, 21, x["lab"])
  x = dict(x, lab=lab)
  kw = {"scale": 8.0, "m2": 0.5}
  (l1, _), g1 = jax.jit(jax.value_and_grad(lambda w: _sharded(
      x["e"], w, x["q"], x, "margin", kw, mesh, num_classes=22), has_aux=True))(x["w"])
  (l0, _), g0 = jax.value_and_grad(lambda w: _unsharded(
      x["e"], w, x["q"], x, "margin", kw), has_aux=True)(x["w"][:, :22])
  assert abs(float(l1 - l0)) < 1e-10
  np.testing.assert_allclose(g1[:, :22], g0, rtol=0, atol=1e-10)
  assert float(jnp.abs(g1[:, 22:]).max()) == 0.0
  # insightface's cap: no row above -log(1e-30), capped rows without gradient.
  big = {"scale": 200.0, "m2": 0.5}
  out, free = jax.jit(lambda e, w: [pfc.partial_fc_cross_entropy(
      e, lab, w, mesh=mesh, head_kwargs=big, loss_cap=cap)
      for cap in (pfc.CE_CAP_PARTIAL_FC, None)])(x["e"], x["w"])
  assert float(free.ce.max()) > pfc.CE_CAP_PARTIAL_FC
  np.testing.assert_allclose(out.ce, np.minimum(free.ce, pfc.CE_CAP_PARTIAL_FC))


def test_bad_input_names_the_fix():
  mesh = _mesh(1, 4)
  e, lab = jnp.zeros((8, 3)), jnp.zeros((8,), jnp.int32)
  with pytest.raises(ValueError, match="pad it to a multiple of 4"):
    pfc.partial_fc_cross_entropy(e, lab, jnp.ones((3, 10)), mesh=mesh, head_kwargs={"scale": 1.0})
  with pytest.raises(ValueError, match="needs rng"):
    pfc.partial_fc_cross_entropy(e, lab, jnp.ones((3, 8)), mesh=mesh, sample_rate=0.5,
                                 head_kwargs={"scale": 1.0})
  with pytest.raises(ValueError, match="not model_axis='model'"):
    pfc.partial_fc_cross_entropy(e, lab, jnp.ones((3, 8)), head_kwargs={"scale": 1.0},
                                 mesh=Mesh(np.asarray(jax.devices()), ("data",)))


def test_chunk_sizes_agree(x64):
  """Blocks of classes that divide C/n, do not (the last block overlaps) or exceed
  it give the unsharded head's loss and gradients, with and without sampling."""
  x = _inputs()
  mesh = _mesh(2, 2)  # C_local = 12 per shard
  chunks = (1, 5, 100)

  @jax.jit
  def all_cases(e, w, q):
    return [[jax.value_and_grad(lambda e, w, q, head=head, k=k, n=n: _sharded(
        e, w, q, x, head, k, mesh, chunk_classes=n), (0, 1, 2), has_aux=True)(e, w, q)
        for head, k in CASES] for n in chunks]

  for n, res in zip(chunks, all_cases(x["e"], x["w"], x["q"])):
    for (head, k), ((l1, _), g1), ((l0, _), g0) in zip(CASES, res, _references()):
      assert abs(float(l1 - l0)) < 1e-10, (n, head, k)
      for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10, err_msg=f"{n} {head} {k}")
  # Sampled (k = 16 classes per shard): blocks of 3 against the default blocks.
  w = jnp.asarray(np.random.default_rng(1).normal(size=(D, 96)))
  rng = jax.random.key(7)
  res = jax.jit(lambda e, w, q: [jax.value_and_grad(lambda e, w, q, n=n: _sharded(
      e, w, q, x, "eqface", HEADS[1][1], mesh, sample_rate=0.25, rng=rng, chunk_classes=n),
      (0, 1, 2), has_aux=True)(e, w, q) for n in (None, 3)])(x["e"], w, x["q"])
  ((l_a, (_, m_a)), g_a), ((l_b, (_, m_b)), g_b) = res
  np.testing.assert_array_equal(m_a, m_b)
  assert not bool(m_a.all())
  assert abs(float(l_a - l_b)) < 1e-10
  for a, b in zip(g_a, g_b):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_chunk_is_rejected(bad):
  e, lab = jnp.zeros((8, 3)), jnp.zeros((8,), jnp.int32)
  with pytest.raises(ValueError, match="chunk_classes must be a positive int"):
    pfc.partial_fc_cross_entropy(e, lab, jnp.ones((3, 8)), mesh=_mesh(1, 4),
                                 head_kwargs={"scale": 1.0}, chunk_classes=bad)
