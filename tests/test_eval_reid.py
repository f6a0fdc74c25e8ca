"""mINP beside mAP: a hand case and a per-query reference written from fast-reid's definition."""
import numpy as np
import pytest

from jaxset import eval as E


def _fastreid_style(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50):
  """Per-query loop as fast-reid's evaluate_rank defines it (Market-1501 rules).

  Sort the gallery; drop entries with the query's pid AND camera; skip queries
  with no match left; CMC truncated to min(max_rank, G); AP over the whole kept
  list; INP = matches / (0-based index of the last match + 1) in the kept list.
  """
  max_rank = min(max_rank, distmat.shape[1])
  cmcs, aps, inps = [], [], []
  for i in range(distmat.shape[0]):
    order = np.argsort(distmat[i])
    keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
    raw = (g_pids[order] == q_pids[i])[keep].astype(np.int64)
    if not raw.any():
      continue
    hits = raw.cumsum()
    hardest = np.flatnonzero(raw).max()
    inps.append(hits[hardest] / (hardest + 1.0))
    cmcs.append(np.minimum(hits, 1)[:max_rank])
    aps.append(np.sum(hits / np.arange(1, raw.size + 1) * raw) / raw.sum())
  return np.mean(cmcs, 0), float(np.mean(aps)), float(np.mean(inps))


def test_minp_hand_case():
  # q0 keeps g1 x, g2 v, g3 x, g4 v (g0 shares its pid and camera): 2 matches,
  # the hardest at rank 4: INP 2/4. q1 (pid 3) has no match: skipped. q2: its
  # only match at rank 1: INP 1.
  g_pids, g_cams = np.array([1, 2, 1, 0, 1]), np.array([0, 1, 1, 1, 2])
  dist = np.array([[.1, .2, .3, .4, .5], [.1, .2, .3, .4, .5], [.3, .05, .2, .4, .6]])
  r = E.cmc_map_from_distances(dist, [1, 3, 2], g_pids, [0, 0, 0], g_cams, max_rank=2)
  np.testing.assert_allclose(r["inp"], [0.5, 0.0, 1.0])
  assert r["mINP"] == pytest.approx(0.75)
  # Removed same-camera matches do not count towards the hardest rank: g0 is
  # the farthest entry now, and INP stays 2/4.
  far = dist.copy()
  far[0, 0] = 9.0
  assert E.cmc_map_from_distances(far[:1], [1], g_pids, [0], g_cams)["inp"][0] == 0.5


def test_minp_is_one_iff_every_match_precedes_every_non_match():
  g_pids, g_cams = np.array([7, 7, 7, 8]), np.array([1, 2, 1, 1])
  good = E.cmc_map_from_distances([[.1, .2, .3, .4]], [7], g_pids, [0], g_cams)
  bad = E.cmc_map_from_distances([[.1, .2, .5, .4]], [7], g_pids, [0], g_cams)
  assert good["mINP"] == 1.0 and good["mAP"] == 1.0
  assert bad["mINP"] == pytest.approx(3 / 4) and bad["rank1"] == 1.0


@pytest.mark.parametrize("seed,max_rank", [(0, 50), (1, 5), (2, 90)])
def test_minp_map_cmc_match_fastreid_reference(seed, max_rank):
  rng = np.random.default_rng(seed)
  nq, ng, ids = 31, 97, 12
  centers = rng.normal(size=(ids, 8))
  g_pids = rng.integers(0, ids, ng)          # pid 0 only in the gallery: distractors
  q_pids = rng.integers(1, ids + 3, nq)      # some queries without any match
  gf = centers[g_pids] + rng.normal(size=(ng, 8))
  qf = centers[np.minimum(q_pids, ids - 1)] + rng.normal(size=(nq, 8))
  g_cams, q_cams = rng.integers(0, 4, ng), rng.integers(0, 4, nq)
  d = ((qf[:, None] - gf[None]) ** 2).sum(-1)
  cmc, m_ap, m_inp = _fastreid_style(d, q_pids, g_pids, q_cams, g_cams, max_rank)
  got = E.cmc_map_from_distances(d, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
  np.testing.assert_allclose(got["cmc"], cmc, atol=1e-12)
  assert got["mAP"] == pytest.approx(m_ap, abs=1e-12)
  assert got["mINP"] == pytest.approx(m_inp, abs=1e-12)
  assert 0 < got["mINP"] < 1 and 0 < got["mAP"] < 1  # neither trivially 0 nor 1
  feats = E.cmc_map(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank, chunk_size=7)
  assert feats["mINP"] == pytest.approx(m_inp, abs=1e-6)
