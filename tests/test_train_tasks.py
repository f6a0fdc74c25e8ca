"""The tasks' stage plans and per-stage objectives (no training)."""
import importlib

import numpy as np
import pytest

from train import tasks


def _casn(**over):
  c = importlib.import_module("configs.casn").get_config()
  for k, v in over.items():
    c.casn[k] = v
  return c


def test_casn_warmup_fits_the_verifier_head_alone_by_default():
  task = tasks.get("casn")
  c = _casn()
  assert [(n, s, w) for n, s, w in task.schedule(c)] == [
      ("warmup", c.casn.warmup_steps, True), ("casn", c.train.steps - c.casn.warmup_steps, False)]
  warm, full = task.loss_config(c, warmup=True), task.loss_config(c)
  assert (warm.ia_weight, warm.sa_weight) == (0.0, 0.0)
  assert (warm.verification_weight, warm.verifier_only) == (c.casn.verification_weight, True)
  assert (full.ia_weight, full.verification_weight, full.sa_weight, full.verifier_only) == (
      c.casn.ia_weight, c.casn.verification_weight, c.casn.sa_weight, False)
  none = task.loss_config(_casn(warmup_verification="none"), warmup=True)
  assert none.verification_weight == 0.0
  trunk = task.loss_config(_casn(warmup_verification="full"), warmup=True)
  assert (trunk.verification_weight, trunk.verifier_only) == (c.casn.verification_weight, False)
  with pytest.raises(ValueError, match="warmup_verification='both'"):
    task.loss_config(_casn(warmup_verification="both"))


def test_casn_ide_baseline_has_no_warmup_and_verification_alone_has_one():
  task = tasks.get("casn")
  ide = _casn(ia_weight=0.0, sa_weight=0.0, verification_weight=0.0)
  assert [n for n, _, _ in task.schedule(ide)] == ["casn"]
  for mode in ("head", "none"):
    ver = _casn(ia_weight=0.0, sa_weight=0.0, warmup_verification=mode)
    assert [n for n, _, _ in task.schedule(ver)] == ["warmup", "casn"]
  assert [n for n, _, _ in task.schedule(_casn(ia_weight=0.0, sa_weight=0.0,
                                               warmup_verification="full"))] == ["casn"]


def _tiny(config, cache_dir, steps):
  config.data.cache_dir, config.data.builder_config = cache_dir, "tiny"
  config.train.batch_size, config.train.steps = 8, steps
  return config


def test_casn_stages_continue_one_batch_sequence(tiny_data):
  """The full objective's first batch is the batch of that step in a run with no
  warmup (the IDE baseline), not a replay of the warmup's first batch."""
  task = tasks.get("casn")
  warm, full = task.stages(_tiny(_casn(warmup_steps=4), tiny_data, 6))
  (only,) = task.stages(_tiny(_casn(ia_weight=0.0, sa_weight=0.0, verification_weight=0.0),
                              tiny_data, 6))
  seq = only.make_iterator()
  batches = [next(seq) for _ in range(6)]
  first = next(full.make_iterator())
  np.testing.assert_array_equal(first["index"], batches[4]["index"])
  np.testing.assert_array_equal(first["image"], batches[4]["image"])
  np.testing.assert_array_equal(next(warm.make_iterator())["index"], batches[0]["index"])
  assert not np.array_equal(batches[0]["index"], batches[4]["index"])
