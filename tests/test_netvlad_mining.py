"""NetVLAD's mining cache: float32 distances from float64 products, and a ranking
that float noise below the tie tolerance cannot reorder (train/tasks/netvlad.py)."""
import numpy as np

from train.tasks import netvlad as tn


def test_distance_matrix_matches_direct_differences():
  rng = np.random.default_rng(0)
  fq = rng.standard_normal((300, 64)).astype(np.float32)   # > one chunk of 256 queries
  fdb = rng.standard_normal((50, 64)).astype(np.float32)
  got = tn._distance_matrix(fq, fdb)
  want = ((fq[:, None].astype(np.float64) - fdb[None]) ** 2).sum(-1)
  assert got.dtype == np.float32 and got.shape == (300, 50)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert np.all(tn._distance_matrix(fq[:3], fq[:3])[np.arange(3), np.arange(3)] >= 0)


def test_ranking_breaks_ties_by_database_index():
  d = np.asarray([0.5, 0.2, 0.5, 0.2], np.float32)
  idx = np.asarray([40, 30, 10, 20])
  assert idx[tn._ranking(d, idx)].tolist() == [20, 30, 10, 40]


def test_ranking_ignores_noise_below_the_tie_tolerance():
  # Distances on the tolerance grid's centres, perturbed by 1e-3 of a step (far
  # more than another instruction set's float rounding): the order is unchanged.
  rng = np.random.default_rng(1)
  idx = rng.permutation(1000)
  grid = rng.integers(0, 50, 1000) * tn.TIE_TOLERANCE + 1.0
  noisy = grid + rng.uniform(-1e-3, 1e-3, 1000) * tn.TIE_TOLERANCE
  assert np.array_equal(tn._ranking(grid, idx), tn._ranking(noisy, idx))
  # Without the tolerance the same noise reorders the ties.
  assert not np.array_equal(np.argsort(grid, kind="stable"), np.argsort(noisy, kind="stable"))


def test_nearest_takes_the_m_nearest_candidates():
  dist_q = np.asarray([3.0, 1.0, 2.0, 0.5, 4.0], np.float32)
  assert tn._nearest(dist_q, np.asarray([0, 1, 2, 4]), 2).tolist() == [1, 2]
