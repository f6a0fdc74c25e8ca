"""Evaluation protocols: hand-computed cases and independent numpy references."""
import numpy as np
import pytest
import scipy.stats

from jaxset import eval as E

# --------------------------------------------------------------------------- #
# Recall@N
# --------------------------------------------------------------------------- #

def _recall_reference(q, db, q_utm, db_utm, ns, radius):
  """Brute force: full distance matrix, stable sort, any positive in the top N."""
  d = np.linalg.norm(q[:, None, :] - db[None, :, :], axis=-1)
  order = np.argsort(d, axis=1, kind="stable")
  out = {}
  for n in ns:
    hits = 0
    for i in range(q.shape[0]):
      geo = np.linalg.norm(db_utm[order[i, :n]] - q_utm[i], axis=-1)
      hits += bool((geo <= radius).any())
    out[n] = hits / q.shape[0]
  return out


def test_recall_hand_case_no_positive_query_counts_as_miss():
  db = np.array([[0.], [1.], [2.], [3.]])
  db_utm = np.array([[100., 0.], [0., 10.], [0., 0.], [500., 500.]])
  q = np.array([[0.1], [2.9], [10.]])
  # q0 ranks db0 (100 m), db1 (10 m): first hit at rank 2. q1 ranks db3 (far), db2
  # (0 m): rank 2. q2 has no database image within 25 m at all: always a miss.
  q_utm = np.array([[0., 0.], [0., 0.], [1000., 1000.]])
  r = E.recall_at_n(q, db, q_utm, db_utm, ns=(1, 2, 4))
  assert r == {1: 0.0, 2: pytest.approx(2 / 3), 4: pytest.approx(2 / 3)}


def test_recall_radius_is_inclusive():
  db = np.array([[0.], [5.]])
  db_utm = np.array([[15., 20.], [0., 0.]])  # db0 exactly 25 m from the query
  q_utm = np.array([[0., 0.]])
  r = E.recall_at_n(np.array([[0.]]), db, q_utm, db_utm, ns=(1,), pos_radius=25.0)
  assert r[1] == 1.0
  r = E.recall_at_n(np.array([[0.]]), db, q_utm, db_utm, ns=(1,), pos_radius=24.99)
  assert r[1] == 0.0


def test_nearest_neighbors_ties_keep_lower_index_across_db_chunks():
  db = np.array([[1.], [0.], [0.], [0.], [2.]])
  for db_chunk in (None, 1, 2, 3):
    d, i = E.nearest_neighbors(np.array([[0.]]), db, 4, db_chunk_size=db_chunk)
    np.testing.assert_array_equal(i, [[1, 2, 3, 0]])
    np.testing.assert_allclose(d, [[0., 0., 0., 1.]])


@pytest.mark.parametrize("chunk,db_chunk", [(1, None), (8, 13), (37, 101), (64, 7), (5, 1000)])
def test_recall_chunked_equals_unchunked_and_reference(chunk, db_chunk):
  rng = np.random.default_rng(0)
  q = rng.normal(size=(37, 6))
  db = rng.normal(size=(101, 6))
  q_utm = rng.uniform(0, 120, (37, 2))
  db_utm = rng.uniform(0, 120, (101, 2))
  ns = (1, 5, 10, 20)
  want = _recall_reference(q, db, q_utm, db_utm, ns, 25.0)
  got, idx, dist = E.recall_at_n(q, db, q_utm, db_utm, ns, chunk_size=chunk,
                                 db_chunk_size=db_chunk, return_neighbors=True)
  assert got == pytest.approx(want)
  full = np.linalg.norm(q[:, None] - db[None], axis=-1)
  np.testing.assert_array_equal(idx, np.argsort(full, 1, kind="stable")[:, :20])
  np.testing.assert_allclose(dist, np.sort(full, 1)[:, :20], atol=1e-4)
  assert 0 < want[1] < want[20] < 1  # the case is not trivial


def test_recall_small_database_pads_neighbors():
  db = np.array([[0.], [1.]])
  db_utm = np.array([[99., 0.], [0., 0.]])
  rec, idx, dist = E.recall_at_n(np.array([[0.]]), db, np.zeros((1, 2)), db_utm,
                                 ns=(1, 5), return_neighbors=True)
  assert rec == {1: 0.0, 5: 1.0}
  np.testing.assert_array_equal(idx, [[0, 1, -1, -1, -1]])
  assert np.isinf(dist[0, 2:]).all()


def test_recall_tokyo_panorama_dedup():
  db = np.arange(5.)[:, None]  # ranked db0, db1, db2, db3, db4 for a query at 0
  pano = np.array([0, 0, 1, 1, 2])
  db_utm = np.array([[500., 0.], [500., 0.], [0., 500.], [0., 500.], [1., 1.]])
  q, q_utm = np.array([[0.]]), np.zeros((1, 2))
  plain = E.recall_at_n(q, db, q_utm, db_utm, ns=(1, 2, 3))
  assert plain == {1: 0.0, 2: 0.0, 3: 0.0}  # 3 images cover only panoramas 0 and 1
  dedup, idx, _ = E.recall_at_n(q, db, q_utm, db_utm, ns=(1, 2, 3), db_panorama_ids=pano,
                                return_neighbors=True)
  assert dedup == {1: 0.0, 2: 0.0, 3: 1.0}  # 3 panoramas reach panorama 2
  np.testing.assert_array_equal(idx, [[0, 2, 4]])


def test_recall_faiss_missing_warns_and_falls_back():
  try:
    import faiss  # noqa: F401
    has_faiss = True
  except ImportError:
    has_faiss = False
  rng = np.random.default_rng(1)
  q, db = rng.normal(size=(4, 3)), rng.normal(size=(9, 3))
  want = E.nearest_neighbors(q, db, 3)
  if has_faiss:
    got = E.nearest_neighbors(q, db, 3, use_faiss=True)
  else:
    with pytest.warns(RuntimeWarning, match="faiss is not installed"):
      got = E.nearest_neighbors(q, db, 3, use_faiss=True)
  np.testing.assert_array_equal(got[1], want[1])


def test_recall_bad_inputs():
  with pytest.raises(ValueError, match="query_utm"):
    E.recall_at_n(np.zeros((3, 2)), np.zeros((4, 2)), np.zeros((2, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="ns"):
    E.recall_at_n(np.zeros((3, 2)), np.zeros((4, 2)), np.zeros((3, 2)), np.zeros((4, 2)), ns=(0,))
  with pytest.raises(ValueError, match="NaN"):
    E.recall_at_n(np.full((3, 2), np.nan), np.zeros((4, 2)), np.zeros((3, 2)), np.zeros((4, 2)))


# --------------------------------------------------------------------------- #
# CMC / mAP
# --------------------------------------------------------------------------- #

def test_cmc_map_hand_case():
  # gallery: g0 pid1 cam0 (same pid+cam as q0: removed for q0), g1 pid2 cam1,
  # g2 pid1 cam1, g3 pid0 (distractor) cam1, g4 pid1 cam2.
  g_pids = np.array([1, 2, 1, 0, 1])
  g_cams = np.array([0, 1, 1, 1, 2])
  q_pids = np.array([1, 3, 2])
  q_cams = np.array([0, 0, 0])
  dist = np.array([[.1, .2, .3, .4, .5],    # kept: g1 x, g2 v, g3 x, g4 v
                   [.1, .2, .3, .4, .5],    # pid 3 absent: skipped
                   [.3, .05, .2, .4, .6]])  # g1 first and the only match
  r = E.cmc_map_from_distances(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50)
  # q0: first match at rank 2; AP = (1/2 + 2/4) / 2 = 0.5. q2: rank 1, AP 1.
  assert r["num_valid_queries"] == 2
  np.testing.assert_allclose(r["cmc"], [0.5, 1, 1, 1, 1])  # max_rank capped at G = 5
  assert r["rank1"] == 0.5 and r["rank5"] == 1.0 and r["rank10"] == 1.0
  assert r["mAP"] == pytest.approx(0.75)
  np.testing.assert_allclose(r["ap"], [0.5, 0.0, 1.0])
  np.testing.assert_array_equal(r["valid"], [True, False, True])


def test_cmc_ties_are_stable_in_gallery_order():
  g_pids, g_cams = np.array([5, 1]), np.array([1, 1])
  r = E.cmc_map_from_distances(np.array([[.5, .5]]), [1], g_pids, [0], g_cams)
  assert r["rank1"] == 0.0 and r["mAP"] == 0.5
  r = E.cmc_map_from_distances(np.array([[.5, .5]]), [1], g_pids[::-1], [0], g_cams[::-1])
  assert r["rank1"] == 1.0 and r["mAP"] == 1.0


def test_cmc_junk_kept_by_default_and_removable():
  g_pids, g_cams = np.array([-1, 1]), np.array([1, 1])
  dist = np.array([[.1, .2]])
  assert E.cmc_map_from_distances(dist, [1], g_pids, [0], g_cams)["mAP"] == 0.5
  assert E.cmc_map_from_distances(dist, [1], g_pids, [0], g_cams, junk_pids=(-1,))["mAP"] == 1.0


def test_cmc_no_valid_query_raises():
  with pytest.raises(ValueError, match="No query has a true match"):
    # the only match shares the query's camera
    E.cmc_map_from_distances(np.array([[.1, .2]]), [1], [1, 2], [0], [0, 0])


def _torchreid_style(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
  """Straightforward per-query loop in torchreid's style (stable sort)."""
  all_cmc, all_ap = [], []
  for i in range(distmat.shape[0]):
    order = np.argsort(distmat[i], kind="stable")
    keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
    raw = (g_pids[order] == q_pids[i])[keep].astype(np.int64)
    if not raw.any():
      continue
    cmc = np.minimum(raw.cumsum(), 1)
    all_cmc.append(cmc[:max_rank])
    prec = raw.cumsum() / np.arange(1, raw.size + 1)
    all_ap.append((prec * raw).sum() / raw.sum())
  return np.mean(all_cmc, 0), np.mean(all_ap)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_cmc_map_features_match_reference(metric):
  rng = np.random.default_rng(3)
  centers = rng.normal(size=(8, 16))
  g_pids = rng.integers(0, 8, 60)
  q_pids = rng.integers(1, 8, 23)  # pid 0 only in the gallery: distractors
  gf = centers[g_pids] + 0.9 * rng.normal(size=(60, 16))
  qf = centers[q_pids] + 0.9 * rng.normal(size=(23, 16))
  g_cams, q_cams = rng.integers(0, 3, 60), rng.integers(0, 3, 23)
  got = E.cmc_map(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=20, metric=metric,
                  chunk_size=7)
  if metric == "euclidean":
    d = ((qf[:, None] - gf[None]) ** 2).sum(-1)
  else:
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    d = 1 - qn @ gn.T
  cmc, m = _torchreid_style(d, q_pids, g_pids, q_cams, g_cams, 20)
  np.testing.assert_allclose(got["cmc"], cmc, atol=1e-12)
  assert got["mAP"] == pytest.approx(m, abs=1e-9)
  assert 0 < got["mAP"] < 1 and 0 < got["rank1"] < 1


# --------------------------------------------------------------------------- #
# Verification: k-fold, VAL@FAR, TAR@FAR, flip
# --------------------------------------------------------------------------- #

def test_fold_splits_sequential_like_sklearn_kfold():
  tests = [t for _, t in E.fold_splits(23, 10)]
  sizes = [t.size for t in tests]
  assert sizes == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
  np.testing.assert_array_equal(np.concatenate(tests), np.arange(23))
  train, test = E.fold_splits(23, 10)[4]
  np.testing.assert_array_equal(test, [11, 12])
  assert set(train) == set(range(23)) - {11, 12}
  (train, test), = E.fold_splits(5, 1)
  np.testing.assert_array_equal(train, test)
  folds = E.fold_splits(6, fold_ids=[2, 0, 2, 1, 0, 1])
  np.testing.assert_array_equal([t for _, t in folds][0], [1, 4])  # sorted fold ids


def _dist_pairs(squared_dists):
  """Pairs whose squared L2 distance is exactly the given small integers."""
  roots = {0: (0, 0), 1: (1, 0), 2: (1, 1), 4: (2, 0), 5: (1, 2), 8: (2, 2),
           9: (3, 0), 10: (1, 3), 18: (3, 3)}
  b = np.array([roots[d] for d in squared_dists], np.float64)
  return np.zeros_like(b), b


def test_kfold_threshold_chosen_on_the_other_folds():
  # dists (x 0.1 scale avoided: integers are exact): pairs 0,1 fold 0; 2,3 fold 1.
  a, b = _dist_pairs([1, 5, 2, 8])
  same = np.array([True, True, True, False])
  r = E.kfold_verification_accuracy(a, b, same, folds=2, thresholds=[1.5, 4, 6, 9],
                                    normalize=False)
  # fold 0 trains on {2: T, 8: F}: t=1.5 -> .5, 4 -> 1, 6 -> 1, 9 -> .5: first best 4.
  #   test {1: T, 5: T} at 4: 1 right, 5 wrong -> 0.5
  # fold 1 trains on {1: T, 5: T}: 1.5 -> .5, 4 -> .5, 6 -> 1, 9 -> 1: first best 6.
  #   test {2: T, 8: F} at 6 -> 1.0
  np.testing.assert_allclose(r["best_thresholds"], [4, 6])
  np.testing.assert_allclose(r["fold_accuracies"], [0.5, 1.0])
  assert r["accuracy_mean"] == 0.75 and r["accuracy_std"] == 0.25


def test_kfold_strict_less_than_and_cosine():
  a, b = _dist_pairs([4, 4])
  same = np.array([True, True])
  r = E.kfold_verification_accuracy(a, b, same, folds=2, thresholds=[4.0], normalize=False)
  assert r["accuracy_mean"] == 0.0  # dist == threshold is "different"
  # cosine: same when cos > t. cos = 1, 0, -1 against t = 0.
  ea = np.array([[1., 0.], [1., 0.], [1., 0.], [1., 0.]])
  eb = np.array([[2., 0.], [0., 3.], [-1., 0.], [1., 1.]])
  same = np.array([True, False, False, True])
  r = E.kfold_verification_accuracy(ea, eb, same, folds=2, metric="cosine", thresholds=[0.0])
  assert r["accuracy_mean"] == 1.0
  same[1] = True  # cos = 0 is not > 0
  r = E.kfold_verification_accuracy(ea, eb, same, folds=2, metric="cosine", thresholds=[0.0])
  assert r["fold_accuracies"][0] == 0.5


def _insightface_style_kfold(emb_a, emb_b, same, nfolds):
  """Written from the protocol: normalise, squared L2, sequential folds, first best."""
  na = emb_a / np.linalg.norm(emb_a, axis=1, keepdims=True)
  nb = emb_b / np.linalg.norm(emb_b, axis=1, keepdims=True)
  dist = ((na - nb) ** 2).sum(1)
  th = np.arange(0, 4, 0.01)
  n = dist.size
  bounds = [0]
  for f in range(nfolds):
    bounds.append(bounds[-1] + n // nfolds + (1 if f < n % nfolds else 0))
  accs = []
  for f in range(nfolds):
    test = np.zeros(n, bool)
    test[bounds[f]:bounds[f + 1]] = True
    best, best_acc = None, -1
    for t in th:
      acc = np.mean((dist[~test] < t) == same[~test])
      if acc > best_acc:
        best, best_acc = t, acc
    accs.append(np.mean((dist[test] < best) == same[test]))
  return np.mean(accs), np.std(accs)


def test_kfold_matches_reference_and_fold_ids_reorder():
  rng = np.random.default_rng(0)
  n = 203  # not a multiple of 10: uneven folds
  same = rng.random(n) < 0.5
  a = rng.normal(size=(n, 8))
  b = np.where(same[:, None], a + 0.9 * rng.normal(size=(n, 8)), rng.normal(size=(n, 8)))
  r = E.kfold_verification_accuracy(a, b, same, folds=10)
  m, s = _insightface_style_kfold(a, b, same, 10)
  assert r["accuracy_mean"] == pytest.approx(m) and r["accuracy_std"] == pytest.approx(s)
  assert 0.6 < m < 1.0
  # fold ids on a shuffled copy reproduce the sequential folds of the original.
  perm = rng.permutation(n)
  seq_fold = np.concatenate([np.full(t.size, i) for i, (_, t) in enumerate(E.fold_splits(n, 10))])
  r2 = E.kfold_verification_accuracy(a[perm], b[perm], same[perm], fold_ids=seq_fold[perm])
  np.testing.assert_allclose(r2["fold_accuracies"], r["fold_accuracies"])


def test_val_at_far_hand_case():
  # fold A (pairs 0-3): genuine 1, 8; impostor 2, 18. fold B: genuine 2, 5; impostor 4, 10.
  a, b = _dist_pairs([1, 8, 2, 18, 2, 5, 4, 10])
  same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
  r = E.val_at_far(a, b, same, far_target=0.25, folds=2, thresholds=np.arange(0, 21.),
                   normalize=False)
  # A tested, B trains: FAR = 0 (t<=4), .5 (5..10), 1 (>=11); first t per FAR: 0, 5, 11.
  #   interp at .25 -> 2.5: genuine 1 accepted, 8 not; impostor 2 accepted -> VAL .5, FAR .5
  # B tested, A trains: FAR 0 (t<=2), .5 (3..18), 1 (>=19) -> t = 1.5: nothing accepted.
  np.testing.assert_allclose(r["fold_thresholds"], [2.5, 1.5])
  np.testing.assert_allclose(r["fold_val"], [0.5, 0.0])
  np.testing.assert_allclose(r["fold_far"], [0.5, 0.0])
  assert r["val_mean"] == 0.25 and r["val_std"] == 0.25 and r["far_mean"] == 0.25
  # grid never reaches the target FAR: threshold 0, nothing accepted.
  r = E.val_at_far(a, b, same, far_target=0.25, folds=2, thresholds=[0., 1.], normalize=False)
  np.testing.assert_allclose(r["fold_thresholds"], [0, 0])
  assert r["val_mean"] == 0.0


def _roc_reference(scores, same):
  ts = np.unique(scores)[::-1]
  fpr = [0.0] + [np.mean(scores[~same] >= t) for t in ts]
  tpr = [0.0] + [np.mean(scores[same] >= t) for t in ts]
  return np.array(fpr), np.array(tpr), np.r_[np.inf, ts]


def test_roc_and_tar_at_far_hand_case():
  scores = np.array([0.9, 0.85, 0.8, 0.4, 0.3, 0.2, 0.1])
  same = np.array([1, 0, 1, 1, 0, 0, 0], bool)
  fpr, tpr, thr = E.roc_curve(scores, same)
  np.testing.assert_allclose(fpr, [0, 0, .25, .25, .25, .5, .75, 1])
  np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1, 1])
  r = E.tar_at_far(scores, same, fars=(1e-6, 0.1, 0.25, 0.3, 0.6))
  assert r["tar"][1e-6] == pytest.approx(1 / 3) and r["threshold"][1e-6] == 0.9
  assert r["tar"][0.1] == pytest.approx(1 / 3)
  assert r["tar"][0.25] == 1.0 and r["threshold"][0.25] == 0.4
  assert r["tar"][0.3] == 1.0 and r["threshold"][0.6] == 0.3
  near = E.tar_at_far(scores, same, fars=(0.3,), method="nearest")
  assert near["tar"][0.3] == pytest.approx(1 / 3)  # first point with fpr .25


def test_roc_ties_and_reference():
  rng = np.random.default_rng(5)
  scores = rng.integers(0, 12, 300) / 4.0  # many exact ties
  same = rng.random(300) < 0.3
  got = E.roc_curve(scores, same)
  for g, w in zip(got, _roc_reference(scores, same)):
    np.testing.assert_allclose(g, w)
  with pytest.raises(ValueError, match="genuine and impostor"):
    E.roc_curve(scores, np.zeros(300, bool))


def test_combine_flip():
  e = np.array([[3., 0.], [1., 0.], [1., 2.]])
  f = np.array([[1., 0.], [0., 1.], [-1., -2.]])
  np.testing.assert_allclose(E.combine_flip(e, f), [[1, 0], [2 ** -.5, 2 ** -.5], [0, 0]])
  np.testing.assert_allclose(E.combine_flip(e, f, normalize=False), e + f)


# --------------------------------------------------------------------------- #
# Templates
# --------------------------------------------------------------------------- #

def test_ijb_templates_unequal_media_and_one_image_template():
  feats = np.array([[1., 0.], [0., 1.], [1., 0.], [0., 2.]])
  tids = np.array([7, 7, 7, 3])
  mids = np.array([1, 1, 2, 9])
  out, ids = E.aggregate_templates(feats, tids, mids)
  np.testing.assert_array_equal(ids, [3, 7])
  # template 7: media 1 mean (.5, .5) + media 2 (1, 0) = (1.5, .5)
  np.testing.assert_allclose(out, [[0, 1], np.array([3, 1]) / np.sqrt(10)], rtol=1e-6)
  mean, _ = E.aggregate_templates(feats, tids, mode="mean")
  np.testing.assert_allclose(mean[1], np.array([2, 1]) / np.sqrt(5), rtol=1e-6)
  # no media ids: every image its own media, template = sum of the 3 images.
  plain, _ = E.aggregate_templates(feats, tids)
  np.testing.assert_allclose(plain[1], np.array([2, 1]) / np.sqrt(5), rtol=1e-6)


def test_ijb_norms_as_weights_and_detector_weights():
  feats = np.array([[2., 0.], [0., 1.]])
  tids = np.array([0, 0])
  normed, _ = E.aggregate_templates(feats, tids)
  np.testing.assert_allclose(normed[0], [2 ** -.5, 2 ** -.5], rtol=1e-6)
  raw, _ = E.aggregate_templates(feats, tids, normalize_features=False)
  np.testing.assert_allclose(raw[0], np.array([2, 1]) / np.sqrt(5), rtol=1e-6)
  weighted, _ = E.aggregate_templates(feats, tids, weights=[1., 3.])
  np.testing.assert_allclose(weighted[0], np.array([1, 3]) / np.sqrt(10), rtol=1e-6)


def test_media_ids_are_grouped_within_each_template():
  feats = np.array([[1., 0.], [0., 1.], [0., 1.]])
  out, ids = E.aggregate_templates(feats, [0, 1, 1], [5, 5, 6])
  np.testing.assert_allclose(out, [[1, 0], [0, 1]], atol=1e-7)


def test_quality_mode_qan_eq2():
  feats = np.array([[1., 0.], [0., 1.], [4., 4.], [2., 0.]])
  tids = np.array([0, 0, 1, 1])
  w = np.array([3., 1., 0., 0.])
  out, _ = E.aggregate_templates(feats, tids, weights=w, mode="quality", normalize_output=False)
  np.testing.assert_allclose(out[0], [0.75, 0.25])
  np.testing.assert_allclose(out[1], [3., 2.])  # all-zero weights: unweighted mean
  with pytest.raises(ValueError, match=">= 0"):
    E.aggregate_templates(feats, tids, weights=-w, mode="quality")
  with pytest.raises(ValueError, match="needs weights"):
    E.aggregate_templates(feats, tids, mode="quality")


def test_template_pair_scores_and_ytf_like_set_verification():
  rng = np.random.default_rng(2)
  ids = rng.normal(size=(6, 32))
  video_person = np.repeat(np.arange(6), 2)  # 12 videos, two per person
  frames = np.repeat(np.arange(12), 5)  # 5 frames each
  feats = ids[video_person[frames]] + 0.05 * rng.normal(size=(60, 32))
  quality = rng.uniform(0.1, 1.0, 60)
  tf, tlist = E.aggregate_templates(feats, frames, weights=quality, mode="quality")
  pairs_a = np.arange(0, 12, 2)
  pairs_b = np.r_[np.arange(1, 12, 2)[:3], (np.arange(1, 12, 2)[3:] + 2) % 12]
  same = video_person[pairs_a] == video_person[pairs_b]
  assert same.sum() == 3
  scores = E.template_pair_scores(tf, tlist, pairs_a, pairs_b)
  np.testing.assert_allclose(scores, np.sum(tf[pairs_a] * tf[pairs_b], 1), rtol=1e-6)
  assert scores[same].min() > scores[~same].max()
  # alternate folds so that each fold has genuine and impostor pairs to train on.
  r = E.kfold_verification_accuracy(tf[pairs_a], tf[pairs_b], same, fold_ids=[0, 1] * 3)
  assert r["accuracy_mean"] == 1.0
  np.testing.assert_allclose(r["best_thresholds"], [0.01, 0.01])  # first best on the grid
  with pytest.raises(ValueError, match="no feature"):
    E.template_pair_scores(tf, tlist, [0], [99])


# --------------------------------------------------------------------------- #
# Quality: ERC and Spearman
# --------------------------------------------------------------------------- #

def _erc_case():
  scores = np.array([0.2, 0.9, 0.4, 0.1, 0.8, 0.6])
  same = np.array([1, 1, 1, 0, 1, 0], bool)
  quality = np.array([0.1, 0.5, 0.3, 0.2, 0.9, 0.4])
  return scores, same, quality


def test_error_vs_reject_hand_case():
  scores, same, q = _erc_case()
  r = E.error_vs_reject(scores, same, q, threshold=0.5, reject_fractions=[0, 0.2, 0.4, 0.5])
  # quality order p0, p3, p2, p5, p1, p4; rejected 0, 1, 2, 3 pairs.
  np.testing.assert_allclose(r["fnmr"], [0.5, 1 / 3, 1 / 3, 0.0])
  np.testing.assert_allclose(r["fmr"], [0.5, 0.5, 1.0, 1.0])
  np.testing.assert_array_equal(r["num_genuine_kept"], [4, 3, 3, 2])
  assert r["fnmr_random"][0] == 0.5  # no rejection: same for every order
  assert r["auc"] == pytest.approx(0.2 * (0.5 + 1 / 3) / 2 + 0.2 / 3 + 0.1 * (1 / 3) / 2)


def test_error_vs_reject_pair_quality_is_min_and_threshold_rules():
  scores, same, q = _erc_case()
  qb = q + 1.0
  qb[4] = 0.05  # p4 (a correct genuine pair) is now the worst pair
  r = E.error_vs_reject(scores, same, q, qb, threshold=0.5, reject_fractions=[0, 0.2])
  np.testing.assert_allclose(r["fnmr"], [0.5, 2 / 3])
  # default fmr 1e-3: the lowest threshold with no false accept is 0.8.
  assert E.error_vs_reject(scores, same, q)["threshold"] == 0.8
  # fnmr 0.25: highest threshold with at most 1 of 4 genuine scores below it.
  assert E.error_vs_reject(scores, same, q, fnmr=0.25)["threshold"] == 0.4
  with pytest.raises(ValueError, match="at most one"):
    E.error_vs_reject(scores, same, q, fmr=0.1, threshold=0.5)


def test_error_vs_reject_informative_vs_random_quality():
  rng = np.random.default_rng(0)
  n = 4000
  same = rng.random(n) < 0.5
  quality = rng.random(n)
  # low quality pulls genuine scores down: quality predicts errors.
  scores = np.where(same, quality + 0.3 * rng.normal(size=n), 0.3 * rng.normal(size=n))
  r = E.error_vs_reject(scores, same, quality, threshold=0.5, num_random=20)
  assert r["fnmr"][-1] < 0.5 * r["fnmr"][0]
  np.testing.assert_allclose(r["fnmr_random"], r["fnmr"][0], atol=0.03)
  assert r["auc"] < r["auc_random"]


def test_spearman_matches_scipy_with_ties():
  rng = np.random.default_rng(4)
  for _ in range(5):
    a = rng.integers(0, 6, 40).astype(float)
    b = a + rng.integers(0, 4, 40)
    assert E.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic)
  assert E.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
  # hand: ranks a (1, 2.5, 2.5, 4), b reversed
  assert E.spearman([1, 2, 2, 3], [3, 2, 2, 1]) == pytest.approx(-1.0)
  assert E.spearman([5, 5, 5], [1, 2, 3]) == 0.0  # constant: documented 0
  assert E.quality_degradation_spearman([0.9, 0.7, 0.2], [0, 1, 2]) == -1.0


def test_nearest_neighbors_float64_under_x64(x64):
  # squared gaps of 1e-12 and 4e-12 vanish in float32 (eps 1e-7 on ||x||^2 = 1) but
  # not in float64: the search must keep the input precision.
  db = np.array([[1.0 + 2e-6], [1.0 + 1e-6], [5.0]])
  d, i = E.nearest_neighbors(np.array([[1.0]]), db, 2, chunk_size=3)
  np.testing.assert_array_equal(i, [[1, 0]])


def test_proxy_by_tier_bins_each_type_and_keeps_clean_and_constant_types_whole():
  from jaxset.eval import proxy_by_tier
  proxy = np.array([1.0, 3.0, 0.9, 0.5, 0.1, 0.2, 7.0, 9.0])
  dtype = np.array([0, 0, 1, 1, 1, 1, 2, -1])
  level = np.array([0.0, 0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 0.5])
  rows = proxy_by_tier(proxy, dtype, level, ("clean", "blur", "background"),
                       level_edges=(0.2, 0.5, 0.8, 1.0))
  got = [(r["type"], r["lo"], r["hi"], r["n"], r["mean"]) for r in rows]
  assert got == [("clean", 0.0, 0.0, 2, 2.0), ("blur", 0.2, 0.5, 1, 0.9),
                 ("blur", 0.5, 0.8, 1, 0.5), ("blur", 0.8, 1.0, 2, pytest.approx(0.15)),
                 ("background", 1.0, 1.0, 1, 7.0)]   # the unknown (-1) row is left out
  assert rows[0]["std"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="Lengths"):
    proxy_by_tier(proxy[:3], dtype, level, ("clean",))
  with pytest.raises(ValueError, match="increasing"):
    proxy_by_tier(proxy, dtype, level, ("clean",), level_edges=(0.5, 0.2))


def test_image_statistics_rank_degraded_images_lower():
  from scipy import ndimage

  from jaxset.eval import image_statistics
  rng = np.random.default_rng(0)
  sharp = (rng.random((4, 32, 32, 3)) * 255).astype(np.uint8)
  blurred = ndimage.uniform_filter(sharp.astype(float), size=(1, 5, 5, 1)).astype(np.uint8)
  dark = (sharp // 4).astype(np.uint8)
  s, b, d = image_statistics(sharp), image_statistics(blurred), image_statistics(dark)
  assert (b["sharpness"] < s["sharpness"]).all() and (b["contrast"] < s["contrast"]).all()
  assert (d["brightness"] < s["brightness"]).all()
  # uint8 is scaled to [0, 1]: the same image as floats gives the same statistics.
  f = image_statistics(sharp.astype(np.float64) / 255)
  np.testing.assert_allclose(f["sharpness"], s["sharpness"])
  with pytest.raises(ValueError, match="H, W >= 3"):
    image_statistics(np.zeros((2, 2, 2)))
