"""Every later aggregator trains with configs/netvlad.py in both modes (tuples, pk)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train_helpers import make_config, tiny_overrides, train_losses
from train import loop, tasks

TINY_AGGREGATORS = {
    "model.salad.num_clusters": 4, "model.salad.cluster_dim": 8, "model.salad.token_dim": 8,
    "model.salad.score_hidden": 16, "model.salad.feature_hidden": 16,
    "model.salad.token_hidden": 16,
    "model.mixvpr.out_channels": 16, "model.mixvpr.mix_depth": 1,
    "model.boq.proj_channels": 32, "model.boq.num_queries": 4, "model.boq.num_layers": 1,
    "model.boq.row_dim": 2,
    "model.convap.out_channels": 16,
}


def _config(tiny_data, pooling, mode, steps=2, **extra):
  return make_config("netvlad", tiny_overrides(tiny_data, steps, **{
      "model.pooling": pooling, "train.mode": mode, "train.devices": 1,
      "train.batch_size": 2, "tuples.num_positives": 1, "tuples.num_negatives": 2,
      "tuples.negative_pool": 20, "mining.enabled": False,
      "kmeans.bn_calibration_batches": 0, "pk.places": 4, "pk.views": 2,
      **TINY_AGGREGATORS, **extra}))


@pytest.mark.parametrize("mode", ["tuples", "pk"])
def test_each_aggregator_takes_two_training_steps(tiny_data, mode):
  for pooling in ("salad", "mixvpr", "boq", "convap"):
    config = _config(tiny_data, pooling, mode)
    task = tasks.get("netvlad")
    state = task.create_state(config, jax.random.key(0))
    (stage,) = task.stages(config)
    batches = stage.make_iterator()
    step = jax.jit(stage.train_step)
    start = state.params
    for _ in range(2):
      state, metrics = step(state, next(batches))
      assert np.isfinite(float(metrics["loss"])), (pooling, mode)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), start, state.params)
    assert max(jax.tree.leaves(moved["aggregator"])) > 0, (pooling, mode)
    if mode == "pk":
      assert int(metrics["mined_pairs"]) > 0


def test_salad_in_pk_mode_reports_recall_before_and_after(tiny_data, tmp_path):
  config = _config(tiny_data, "salad", "pk", **{"eval.at_start": True})
  summary = loop.train_and_evaluate(config, tmp_path / "run")
  assert sorted(train_losses(tmp_path / "run")) == [1, 2]
  assert set(summary["before"]) == set(summary["after"]) >= {"recall@1", "recall@5"}


def test_unknown_mode_is_an_error_that_names_the_choices(tiny_data, tmp_path):
  config = make_config("netvlad", tiny_overrides(tiny_data, 1, **{"train.mode": "triplets"}))
  with pytest.raises(ValueError, match="'tuples', 'pk'"):
    loop.train_and_evaluate(config, tmp_path / "bad")
