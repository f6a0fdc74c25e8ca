"""docs/adding_a_method.md holds: a method from its own config, task and model files.

The toy method (tests/toy_method/: plain triplet loss on the embedded
identities) is registered with one call and trains through the real loop.
"""
import json

import numpy as np

from tests.toy_method import config as toy_config
from tests.toy_method.task import triplet_rows
from tests.train_helpers import tiny_overrides, with_overrides
from train import loop, tasks


def test_triplet_rows_pair_each_anchor_with_its_identity_and_the_next():
  pos, neg = triplet_rows(3, 2)
  identity = np.arange(6) // 2
  np.testing.assert_array_equal(identity[pos], identity)
  np.testing.assert_array_equal(identity[neg], (identity + 1) % 3)
  assert not np.any(pos == np.arange(6))


def test_toy_method_registers_and_trains_three_steps(tiny_data, tmp_path, monkeypatch):
  monkeypatch.setattr(tasks, "METHODS", dict(tasks.METHODS))  # the registration ends here
  tasks.register("toy_triplet", "tests.toy_method.task:Task")  # the one registry line
  config = with_overrides(toy_config.get_config(), tiny_overrides(tiny_data, 3))
  summary = loop.train_and_evaluate(config, tmp_path)
  assert summary["step"] == 3
  assert set(summary["after"]) == {"rank1", "rank5", "rank10", "mAP", "mINP"}
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [rec["loss"] for rec in lines if rec["split"] == "train"]
  assert len(losses) == 3 and all(np.isfinite(losses)) and losses[0] > 0
  # The state is the toy model's: one conv and one dense layer.
  assert set(summary["state"].params) == {"Conv_0", "Dense_0"}
