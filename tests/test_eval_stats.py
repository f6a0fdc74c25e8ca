"""jaxset.eval.stats: paired bootstrap intervals, verdicts and power."""
import doctest

import numpy as np
import pytest

from jaxset.eval import stats


def test_doctests():
  assert doctest.testmod(stats).failed == 0


def test_constant_differences_give_a_point_interval():
  r = stats.paired_bootstrap(np.full((5, 40), 0.02))
  assert r["estimate"] == pytest.approx(0.02)
  assert r["low"] == pytest.approx(0.02) and r["high"] == pytest.approx(0.02)
  assert r["n_seeds"] == 5 and r["n_units"] == 200
  assert stats.verdict(r, ">") == "held" and stats.verdict(r, "<") == "contradicted"


def test_interval_covers_the_true_mean_at_about_the_nominal_rate():
  rng = np.random.default_rng(1)
  hits = 0
  trials = 120
  for t in range(trials):
    seed_effects = rng.normal(0.05, 0.02, size=5)      # training noise
    d = [rng.normal(e, 0.3, size=60) for e in seed_effects]  # test-unit noise
    r = stats.paired_bootstrap(d, n_resamples=400, seed=t)
    hits += r["low"] <= 0.05 <= r["high"]
  # Percentile bootstrap with 5 seeds undercovers a little; a broken resampler
  # (seeds not resampled, or units reused across slots) lands far from 0.95.
  assert 0.82 <= hits / trials <= 0.99


def test_seed_level_resampling_widens_the_interval_when_seeds_disagree():
  rng = np.random.default_rng(0)
  d = [rng.normal(m, 0.05, size=100) for m in (-0.1, 0.0, 0.1, 0.2, 0.3)]
  both = stats.paired_bootstrap(d)
  units_only = stats.paired_bootstrap(d, resample_seeds=False)
  assert both["estimate"] == pytest.approx(units_only["estimate"])
  assert (both["high"] - both["low"]) > 5 * (units_only["high"] - units_only["low"])
  assert stats.verdict(units_only, ">") == "held"
  assert stats.verdict(both, ">") == "inconclusive"


def test_ragged_seeds_and_determinism():
  d = [np.linspace(-1, 1, 11) + 0.5, np.linspace(-1, 1, 7) + 0.4]
  a = stats.paired_bootstrap(d, seed=3)
  b = stats.paired_bootstrap(d, seed=3)
  assert a == b
  assert a["estimate"] == pytest.approx((0.5 + 0.4) / 2)
  assert a["n_units"] == 18


def test_minimum_detectable_effect_scales_with_the_standard_error():
  assert stats.minimum_detectable_effect(0.0) == 0.0
  m1 = stats.minimum_detectable_effect(0.01)
  assert m1 == pytest.approx(0.01 * (1.959964 + 0.841621), rel=1e-5)
  assert stats.minimum_detectable_effect(0.02) == pytest.approx(2 * m1)
  r = stats.paired_bootstrap(np.random.default_rng(0).normal(0, 1, (5, 50)))
  assert r["mde"] == pytest.approx(stats.minimum_detectable_effect(r["std_error"]))


@pytest.mark.parametrize("bad, match", [
    ([], "no seeds"),
    ([[]], "non-empty"),
    ([[0.1, np.nan]], "NaN"),
    (np.zeros(4), "wrap one seed"),
    ([[[0.1]]], "non-empty \\[units\\]"),
])
def test_bad_differences_are_named(bad, match):
  with pytest.raises(ValueError, match=match):
    stats.paired_bootstrap(bad)


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="confidence"):
    stats.paired_bootstrap([[0.1, 0.2]], confidence=95)
  with pytest.raises(ValueError, match="n_resamples"):
    stats.paired_bootstrap([[0.1, 0.2]], n_resamples=10)
  with pytest.raises(ValueError, match="direction"):
    stats.verdict((0.1, 0.2), "greater")
  with pytest.raises(ValueError, match="low <= high"):
    stats.verdict((0.2, 0.1), ">")


def test_replicate_bootstrap_draws_seeds_then_their_replicates():
  from jaxset.eval import stats
  rng = np.random.default_rng(0)
  # Every seed's replicates lie below 0: held. One seed far above: the seed level
  # is resampled, so the interval reaches past 0 and the verdict is inconclusive.
  low = [-0.01 + 0.002 * rng.standard_normal(300) for _ in range(5)]
  r = stats.replicate_bootstrap(low, [x.mean() for x in low])
  assert stats.verdict(r, "<") == "held" and r["n_seeds"] == 5 and r["n_units"] == 1500
  mixed = low[:4] + [0.05 + 0.002 * rng.standard_normal(300)]
  r = stats.replicate_bootstrap(mixed, [x.mean() for x in mixed])
  assert stats.verdict(r, "<") == "inconclusive" and r["low"] < 0 < r["high"]
  # Without seed resampling the same five seeds give a narrow interval above -0.01.
  fixed = stats.replicate_bootstrap(mixed, [x.mean() for x in mixed], resample_seeds=False)
  assert fixed["high"] - fixed["low"] < 0.01 < r["high"] - r["low"]
  with pytest.raises(ValueError, match="one finite value per seed"):
    stats.replicate_bootstrap(low, [0.0])
