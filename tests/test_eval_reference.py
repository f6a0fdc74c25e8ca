"""The reference-table options of jaxset/eval/verification.py (docs/evaluation.md):
VAL@FAR as insightface's calculate_val, TAR@FAR as insightface's IJB table."""
import numpy as np
import pytest
import scipy.interpolate

from jaxset import eval as E
from jaxset.eval import verification as V
from tests.test_eval import _dist_pairs


def test_val_at_far_insightface_hand_case():
  # fold A (pairs 0-3): genuine 1, 8; impostor 2, 18. fold B: genuine 2, 5; impostor 4, 10.
  a, b = _dist_pairs([1, 8, 2, 18, 2, 5, 4, 10])
  same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
  r = E.val_at_far(a, b, same, far_target=0.25, folds=2, thresholds=np.arange(0, 21.),
                   normalize=False, interpolation="insightface")
  # A tested, B trains: FAR 0 for t = 0..4, .5 for 5..10: the segment through
  # every point runs from (0, 4) to (.5, 5) -> t = 4.5 (distinct_far: 2.5).
  # Genuine 1 accepted, 8 not; impostor 2 accepted -> VAL .5, FAR .5.
  # B tested, A trains: (0, 2) to (.5, 3) -> 2.5: genuine 2 accepted, 5 not; no impostor.
  np.testing.assert_allclose(r["fold_thresholds"], [4.5, 2.5])
  np.testing.assert_allclose(r["fold_val"], [0.5, 0.5])
  np.testing.assert_allclose(r["fold_far"], [0.5, 0.0])
  default = E.val_at_far(a, b, same, far_target=0.25, folds=2, thresholds=np.arange(0, 21.),
                         normalize=False)
  np.testing.assert_allclose(default["fold_thresholds"], [2.5, 1.5])
  with pytest.raises(ValueError, match="interpolation must be one of"):
    E.val_at_far(a, b, same, interpolation="slinear")


def _calculate_val_reference(dist, same, far_target, folds, thresholds):
  """insightface's calculate_val from its description, with scipy's interp1d."""
  vals, fars, used = [], [], []
  for train, test in V.fold_splits(dist.size, folds):
    imp = ~same[train]
    far_train = np.array([np.sum((dist[train] < t) & imp) / imp.sum() for t in thresholds])
    if far_train.max() >= far_target:
      t = float(scipy.interpolate.interp1d(far_train, thresholds, kind="linear")(far_target))
    else:
      t = 0.0
    pred = dist[test] < t
    vals.append(np.sum(pred & same[test]) / same[test].sum())
    fars.append(np.sum(pred & ~same[test]) / (~same[test]).sum())
    used.append(t)
  return np.array(vals), np.array(fars), np.array(used)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_val_at_far_insightface_matches_scipy_interp1d_through_every_point(seed):
  rng = np.random.default_rng(seed)
  n = 400
  same = rng.random(n) < 0.5
  a = rng.standard_normal((n, 8))
  b = np.where(same[:, None], a + 0.9 * rng.standard_normal((n, 8)), rng.standard_normal((n, 8)))
  thresholds = np.arange(0, 4, 0.001)
  got = E.val_at_far(a, b, same, far_target=1e-2, interpolation="insightface")
  dist = V.pair_distances(a, b)
  vals, fars, used = _calculate_val_reference(dist, same, 1e-2, 10, thresholds)
  np.testing.assert_allclose(got["fold_thresholds"], used, rtol=1e-12)
  np.testing.assert_array_equal(got["fold_val"], vals)
  np.testing.assert_array_equal(got["fold_far"], fars)
  assert got["val_mean"] == np.mean(vals) and got["val_std"] == np.std(vals)
  default = E.val_at_far(a, b, same, far_target=1e-2)
  assert not np.allclose(default["fold_thresholds"], used)  # the two rules differ


def test_interp_every_point_rules():
  x = [0.0, 0.0, 0.5, 0.5, 1.0]
  y = [0.0, 1.0, 2.0, 3.0, 4.0]
  assert V.interp_every_point(0.25, x, y) == 1.5            # last of 0 -> first of .5
  assert V.interp_every_point(0.5, x, y) == 3.0             # an exact x: its last point
  assert V.interp_every_point(0.75, x, y) == 3.5
  want = scipy.interpolate.interp1d(x, y)(np.array([0.25, 0.5, 0.75]))
  np.testing.assert_allclose([V.interp_every_point(t, x, y) for t in (0.25, 0.5, 0.75)], want)
  with pytest.raises(ValueError, match="outside the data range"):
    V.interp_every_point(1.5, x, y)


SCORES = np.array([0.9, 0.85, 0.8, 0.4, 0.3, 0.2, 0.1])
SAME = np.array([1, 0, 1, 1, 0, 0, 0], bool)


def test_roc_drop_intermediate_hand_case():
  # Per-score counts: fps 0 1 1 1 2 3 4, tps 1 1 2 3 3 3 3. Second differences
  # are nonzero at the 2nd and 4th point only; the ends are kept.
  fpr, tpr, thr = E.roc_curve(SCORES, SAME, drop_intermediate=True)
  np.testing.assert_allclose(fpr, [0, 0, 0.25, 0.25, 1])
  np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 1, 1])
  np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.85, 0.4, 0.1])


def test_tar_at_far_insightface_hand_case():
  r = E.tar_at_far(SCORES, SAME, fars=(1e-6, 0.3, 0.7), method="insightface")
  # 1e-6: (0, 0) and (0, 1/3) are equally near; ties go to the larger TAR.
  assert r["tar"][1e-6] == pytest.approx(1 / 3) and r["threshold"][1e-6] == 0.9
  # 0.3: (.25, 1/3) and (.25, 1) tie -> 1.
  assert r["tar"][0.3] == 1.0 and r["threshold"][0.3] == 0.4
  # 0.7: the thinned ROC has no .75 point; nearest is (1, 1).
  assert r["tar"][0.7] == 1.0 and r["threshold"][0.7] == 0.1
  near = E.tar_at_far(SCORES, SAME, fars=(1e-6, 0.3), method="nearest")
  assert near["tar"][1e-6] == 0.0 and near["tar"][0.3] == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match="method must be one of"):
    E.tar_at_far(SCORES, SAME, method="sklearn")


@pytest.mark.parametrize("seed", [0, 1])
def test_drop_intermediate_keeps_every_corner(seed):
  rng = np.random.default_rng(seed)
  same = rng.random(500) < 0.4
  # Coarse scores: ties (mixed steps) and runs of one label (collinear points).
  scores = np.round(rng.standard_normal(500) + 2.5 * same, 1)
  full = E.roc_curve(scores, same)
  thin = E.roc_curve(scores, same, drop_intermediate=True)
  assert thin[0].size < full[0].size
  kept = np.isin(full[2], thin[2])
  assert kept[0] and kept[1] and kept[-1]
  # Every dropped point lies on the segment between its kept neighbours.
  idx = np.nonzero(kept)[0]
  for i in np.nonzero(~kept)[0]:
    lo, hi = idx[idx < i].max(), idx[idx > i].min()
    (x0, y0), (x1, y1), (x, y) = ((full[0][j], full[1][j]) for j in (lo, hi, i))
    assert abs((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) < 1e-12
  # ...and every kept interior point is a corner of the count curve.
  n_neg, n_pos = (~same).sum(), same.sum()
  fps, tps = np.rint(full[0][1:] * n_neg), np.rint(full[1][1:] * n_pos)
  corner = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
  np.testing.assert_array_equal(kept[1:], corner)
