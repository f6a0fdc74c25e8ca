"""jaxset.eval.search, rerank and edc against references written here from the
definitions (tests/rerank_reference.py, tests/edc_reference.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxset import eval as jeval
from jaxset.eval import rerank, search
from jaxset.models import netvlad
from tests import edc_reference, rerank_reference


def brute_force(q, x, k, metric):
  """Exact scores in int64 (integer data), ranked by score then index."""
  qi, xi = q.astype(np.int64), x.astype(np.int64)
  s = qi @ xi.T
  if metric == "l2":
    s = -((qi * qi).sum(1)[:, None] + (xi * xi).sum(1)[None] - 2 * s)
  order = np.argsort(-s, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("db_block,query_block", [(7, 5), (64, 16), (5000, 100)])
def test_top_k_search_equals_brute_force_with_ties(metric, db_block, query_block):
  # Small integers: every score is exact in float32 and most of them tie.
  rng = np.random.default_rng(0)
  q = rng.integers(-2, 3, (23, 6)).astype(np.float32)
  x = rng.integers(-2, 3, (301, 6)).astype(np.float32)
  s, i = search.top_k_search(q, x, 30, metric=metric, db_block=db_block,
                             query_block=query_block)
  rs, ri = brute_force(q, x, 30, metric)
  assert (np.diff(rs, axis=1) == 0).sum() > 100  # the lists really are full of ties
  np.testing.assert_array_equal(i, ri)
  np.testing.assert_array_equal(s, rs if metric == "ip" else -rs)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("db_block,k", [(256, 3), (512, 16), (4096, 8)])
def test_grouped_top_k_equals_brute_force_with_ties(metric, db_block, k):
  # Blocks of >= k groups of search.GROUP rows take the grouped top-k; the
  # padding of the last block (8001 rows) must never rank, and ties must keep
  # the lower index across groups, blocks and the running list.
  rng = np.random.default_rng(3)
  q = rng.integers(-2, 3, (37, 5)).astype(np.float32)
  x = rng.integers(-2, 3, (8001, 5)).astype(np.float32)
  db = search.ShardedDatabase(x, metric=metric, db_block=db_block)
  assert db.db_block % search.GROUP == 0 and db.db_block // search.GROUP >= k
  s, i, far = search.top_k_search(q, db, k, metric=metric, query_block=16,
                                  return_farthest=True)
  rs, ri = brute_force(q, x, k, metric)
  np.testing.assert_array_equal(i, ri)
  np.testing.assert_array_equal(s, rs if metric == "ip" else -rs)
  full = brute_force(q, x, x.shape[0], metric)[0]
  np.testing.assert_array_equal(far, -full[:, -1])


def test_negative_inner_products_beat_the_padding():
  # Every real score is negative; the zero rows that pad the last block would
  # win an inner-product search if they were not masked.
  x = -np.ones((1001, 4), np.float32) * np.arange(1, 1002, dtype=np.float32)[:, None]
  db = search.ShardedDatabase(x, db_block=300)
  assert db.x.shape[0] > x.shape[0]  # padded, on one device or eight
  s, i = search.top_k_search(np.ones((2, 4), np.float32), db, 3)
  np.testing.assert_array_equal(i, [[0, 1, 2]] * 2)
  np.testing.assert_array_equal(s, [[-4, -8, -12]] * 2)


def test_top_k_search_bfloat16_and_k_above_n():
  rng = np.random.default_rng(1)
  q = rng.integers(-3, 4, (9, 8)).astype(jnp.bfloat16)
  x = rng.integers(-3, 4, (12, 8)).astype(jnp.bfloat16)
  s, i = search.top_k_search(q, x, 50, metric="l2", db_block=5)
  rs, ri = brute_force(np.asarray(q, np.float32), np.asarray(x, np.float32), 12, "l2")
  assert i.shape == (9, 12)
  np.testing.assert_array_equal(i, ri)
  np.testing.assert_array_equal(s, -rs)


def test_top_k_search_bad_input():
  with pytest.raises(ValueError, match="metric"):
    search.top_k_search(np.zeros((2, 3)), np.zeros((4, 3)), 1, metric="cos")
  with pytest.raises(ValueError, match="Descriptor sizes"):
    search.top_k_search(np.zeros((2, 3)), np.zeros((4, 5)), 1)
  with pytest.raises(ValueError, match="empty"):
    search.top_k_search(np.zeros((2, 3)), np.zeros((0, 3)), 1)


def test_approx_search_reports_its_recall():
  rng = np.random.default_rng(2)
  q = rng.standard_normal((40, 16)).astype(np.float32)
  x = rng.standard_normal((2000, 16)).astype(np.float32)
  _, exact = search.top_k_search(q, x, 20)
  _, approx = search.top_k_search(q, x, 20, approx=True, recall_target=0.9, db_block=512)
  r = search.measured_recall(approx, exact)
  assert 0.9 <= r <= 1.0
  assert search.measured_recall(exact[:, ::-1], exact) == 1.0
  assert search.measured_recall(exact[::-1], exact) < 0.2


def test_sharded_memory_is_a_shard_plus_a_block():
  mem = search.search_memory_per_device(256, 80000, 64, 20, query_block=256, db_block=2048)
  ndev = mem["num_devices"]
  per_dev_db = -(-80000 // ndev)
  assert mem["database_bytes"] >= per_dev_db * 64 * 4
  # Everything else a device holds is bounded by the stated step.
  held = mem["argument_bytes"] + mem["temp_bytes"] + mem["output_bytes"]
  assert held <= 80000 * 64 * 4 / ndev + search.step_bytes(64, 20, query_block=256,
                                                          db_block=2048)


def test_recall_at_n_unchanged_by_blocks():
  rng = np.random.default_rng(3)
  q = rng.standard_normal((30, 8)).astype(np.float32)
  x = rng.standard_normal((200, 8)).astype(np.float32)
  qu = rng.uniform(0, 100, (30, 2))
  xu = rng.uniform(0, 100, (200, 2))
  a = jeval.recall_at_n(q, x, qu, xu, pos_radius=20.0, chunk_size=7, db_chunk_size=13)
  b = jeval.recall_at_n(q, x, qu, xu, pos_radius=20.0)
  d = ((q[:, None] - x[None]) ** 2).sum(-1)
  order = np.argsort(d, axis=1, kind="stable")
  geo = np.linalg.norm(xu[order] - qu[:, None], axis=-1) <= 20.0
  for n in (1, 5, 10, 20):
    assert a[n] == b[n] == pytest.approx(geo[:, :n].any(1).mean())


def _dists(rng, nq, ng, d, dup=False):
  qf = rng.standard_normal((nq, d))
  gf = rng.standard_normal((ng, d))
  if dup:
    gf[1] = gf[0]  # an exact tie in every row
  f = lambda a, b: ((a[:, None] - b[None]) ** 2).sum(-1)
  return qf, gf, f(qf, gf), f(qf, qf), f(gf, gf)


@pytest.mark.parametrize("nq,ng,k1,k2,lam", [(30, 90, 20, 6, 0.3), (12, 40, 5, 3, 0.5),
                                             (25, 60, 7, 1, 0.0), (4, 9, 20, 6, 1.0)])
def test_k_reciprocal_rerank_equals_the_dense_reference(nq, ng, k1, k2, lam):
  rng = np.random.default_rng(nq + ng)
  qf, gf, qg, qq, gg = _dists(rng, nq, ng, 6)
  ref = rerank_reference.dense_rerank(qg, qq, gg, k1, k2, lam)
  got = jeval.k_reciprocal_rerank(qg, qq, gg, k1, k2, lam, row_block=16, pair_budget=3000)
  assert got.shape == (nq, ng)
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
  # Re-ranking does move the ranking (the test can fail).
  if lam < 1:
    assert np.abs(got - ref).max() < np.abs(got - qg / qg.max()).max()


def test_k_reciprocal_rerank_float32_inputs_and_features_entry():
  rng = np.random.default_rng(7)
  qf, gf, qg, qq, gg = _dists(rng, 20, 70, 5)
  ref = rerank_reference.dense_rerank(qg.astype(np.float32), qq.astype(np.float32),
                                      gg.astype(np.float32))
  got = jeval.k_reciprocal_rerank(qg.astype(np.float32), qq.astype(np.float32),
                                  gg.astype(np.float32))
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
  feat = rerank.k_reciprocal_rerank_features(qf, gf, row_block=8)
  np.testing.assert_allclose(feat, ref, atol=1e-4, rtol=0)
  d, i = rerank.k_reciprocal_rerank_features(qf, gf, top_k=5, row_block=8)
  np.testing.assert_array_equal(i, np.argsort(feat, axis=1, kind="stable")[:, :5])
  np.testing.assert_allclose(d, np.sort(feat, axis=1)[:, :5], atol=1e-6)


def test_k_reciprocal_rerank_bad_input():
  with pytest.raises(ValueError, match="g_g_dist"):
    jeval.k_reciprocal_rerank(np.ones((2, 3)), np.ones((2, 2)), np.ones((2, 2)))
  with pytest.raises(ValueError, match="k1"):
    jeval.k_reciprocal_rerank(np.ones((2, 3)), np.ones((2, 2)), np.ones((3, 3)), k1=0)


def test_query_expansion_and_dba():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((50, 8)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  q = x[:5] + 0.1 * rng.standard_normal((5, 8)).astype(np.float32)
  aqe = jeval.average_query_expansion(q, x, k=3, normalize=False)
  idx = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :3]
  np.testing.assert_allclose(aqe, (q + x[idx].sum(1)) / 4, rtol=1e-5, atol=1e-6)
  a = jeval.alpha_query_expansion(q, x, k=3, alpha=3.0)
  w = np.take_along_axis(q @ x.T, idx, 1) ** 3
  ref = q + np.einsum("qk,qkd->qd", np.maximum(w, 0), x[idx])
  ref /= np.linalg.norm(ref, axis=1, keepdims=True)
  np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
  dba = jeval.database_side_augmentation(x, k=2)
  nn = np.argsort(-(x @ x.T), axis=1, kind="stable")[:, :2]
  ref = x[nn].sum(1)
  ref /= np.linalg.norm(ref, axis=1, keepdims=True)
  np.testing.assert_allclose(dba, ref, rtol=1e-5, atol=1e-6)


def test_streamed_pca_whitening_equals_the_array_fit():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((600, 12)) * np.arange(1.0, 13.0) + 1000.0
  mean, proj = netvlad.fit_pca_whitening(x, 4)
  blocks = (x[i:i + 97] for i in range(0, 600, 97))
  mean_s, proj_s = netvlad.fit_pca_whitening(blocks, 4)
  np.testing.assert_allclose(mean, mean_s, rtol=1e-6)
  np.testing.assert_allclose(proj, proj_s, rtol=1e-4, atol=1e-6)
  y = (x - np.asarray(mean, np.float64)) @ np.asarray(proj, np.float64)
  np.testing.assert_allclose(np.cov(y.T), np.eye(4), atol=1e-3)
  # The SVD path (M <= Din) gives the same directions and signs.
  small = x[:10]
  _, p_svd = netvlad.fit_pca_whitening(small, 3)
  _, p_cov = netvlad.fit_pca_whitening(iter([small[:4], small[4:]]), 3)
  np.testing.assert_allclose(p_svd, p_cov, rtol=1e-3, atol=1e-5)
  z = netvlad.apply_pca_whitening(x, mean, proj)
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="dim="):
    netvlad.fit_pca_whitening(iter([x[:3]]), 3)


def _edc_data(rng, p, tied):
  same = rng.random(p) < 0.5
  same[:2] = (True, False)
  s = rng.standard_normal(p) + same
  if tied:
    qa = rng.integers(0, 4, p).astype(float)
    qb = rng.integers(0, 4, p).astype(float)
    s = np.round(s, 1)
  else:
    qa, qb = rng.random(p), rng.random(p)
  return s, same, qa, qb


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("error", ["fnmr", "fmr"])
def test_edc_and_pauc_equal_the_reference(tied, error):
  rng = np.random.default_rng(11 + tied)
  for trial in range(5):
    s, same, qa, qb = _edc_data(rng, int(rng.integers(6, 300)), tied)
    for se in (0.05, 0.2, 0.0, 1.0):
      d, e, thr = edc_reference.edc_points(s, same, qa, qb, error, se)
      out = jeval.edc(s, same, qa, qb, error=error, starting_error=se)
      assert out["threshold"] == thr
      np.testing.assert_array_equal(out["discard_fractions"], d)
      np.testing.assert_array_equal(out["error_fractions"], e)
      for limit in (0.0, 0.05, 0.2, 1.0):
        for best in (False, True):
          got = jeval.edc_pauc(s, same, qa, qb, error=error, starting_error=se,
                               discard_limit=limit, relative_to_best=best)
          assert got == pytest.approx(edc_reference.pauc(d, e, limit, best), abs=1e-14)


def test_edc_tied_qualities_are_discarded_together():
  # Four mated comparisons, the two worst tied: one step removes both.
  s = np.array([0.1, 0.9, 0.2, 0.8])
  out = jeval.edc(s, np.ones(4, bool), np.array([0.0, 0.0, 1.0, 2.0]), np.full(4, 9.0),
                  threshold=0.5)
  np.testing.assert_array_equal(out["discard_fractions"], [0.0, 0.5, 0.75, 1.0])
  np.testing.assert_array_equal(out["error_fractions"], [0.5, 0.5, 0.0, 0.0])
  # Area to 0.6: 0.5 * 0.5 + 0.5 * 0.1.
  assert jeval.edc_pauc(s, np.ones(4, bool), np.array([0.0, 0.0, 1.0, 2.0]), np.full(4, 9.0),
                        threshold=0.5, discard_limit=0.6) == pytest.approx(0.3)


def test_edc_under_jit_and_bootstrap():
  rng = np.random.default_rng(3)
  s, same, qa, qb = _edc_data(rng, 200, False)
  eager = jeval.edc_pauc(s, same, qa, qb)
  jitted = jax.jit(lambda *a: jeval.edc_pauc(*a))(s, same, qa, qb)
  assert float(jitted) == pytest.approx(eager, abs=1e-6)
  curve = jax.jit(lambda *a: jeval.edc(*a))(s, same, qa, qb)
  v = np.asarray(curve["valid"])
  np.testing.assert_allclose(np.asarray(curve["error_fractions"])[v],
                             jeval.edc(s, same, qa, qb)["error_fractions"], atol=1e-6)
  boot = jeval.edc_pauc_bootstrap(s, same, qa, qb, num_resamples=200)
  assert boot["low"] < eager < boot["high"]
  # Random quality (no information) has a larger pAUC than the oracle order.
  oracle = jeval.edc_pauc(s, same, s, s)
  assert oracle < eager


def test_edc_bad_input():
  with pytest.raises(ValueError, match="error"):
    jeval.edc([1.0], [True], [1.0], error="eer")
  with pytest.raises(ValueError, match="mated"):
    jeval.edc([1.0, 2.0], [False, False], [1.0, 2.0])
  with pytest.raises(ValueError, match="Comparison counts"):
    jeval.edc([1.0, 2.0], [True, False], [1.0])


def test_netvlad_evaluation_applies_pca_whitening(tiny_data, monkeypatch):
  from tests.train_helpers import make_config, tiny_overrides
  from train import tasks
  from train.tasks import netvlad as netvlad_task
  config = make_config("netvlad", tiny_overrides(tiny_data, 1, **{"model.num_clusters": 4}))
  task = tasks.get("netvlad")
  state = task.create_state(config, jax.random.key(0))
  seen = {}

  def fake_recall(fq, fdb, *args, **kwargs):
    seen["fq"], seen["fdb"] = np.asarray(fq), np.asarray(fdb)
    return {1: 0.0}

  monkeypatch.setattr(netvlad_task, "recall_at_n", fake_recall)
  task.evaluate(state, config)
  full = seen["fq"].shape[1]
  config.eval.pca_dim = 5
  task.evaluate(state, config)
  assert full > 5
  assert seen["fq"].shape[1] == seen["fdb"].shape[1] == 5
  np.testing.assert_allclose(np.linalg.norm(seen["fdb"], axis=1), 1.0, rtol=1e-5)
