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


def test_qan_quality_branch_has_its_own_solver():
  """quality_optimizer='sgd': the branch steps by -lr x gradient (SGD, first
  momentum step) at qan.quality_lr on the run's schedule, the rest by Adam;
  'run': the branch takes Adam's step times quality_lr_scale."""
  import jax.numpy as jnp

  from train import optim
  task = tasks.get("qan")
  c = importlib.import_module("configs.qan").get_config()
  params = {"quality_branch": {"w": jnp.ones(3)}, "trunk": {"w": jnp.ones(3)}}
  grads = {"quality_branch": {"w": jnp.array([0.5, -2.0, 1e-4])},
           "trunk": {"w": jnp.array([0.5, -2.0, 1e-4])}}
  adam = optim.make_optimizer(c.optim, c.train.steps)
  adam_step, _ = adam.update(grads["trunk"], adam.init(params["trunk"]), params["trunk"])
  tx = task.optimizer(c)
  upd, _ = tx.update(grads, tx.init(params), params)
  lr0 = optim.schedule(c.optim, c.train.steps)(0)
  np.testing.assert_allclose(upd["quality_branch"]["w"],
                             -lr0 * c.qan.quality_lr / c.optim.lr * grads["quality_branch"]["w"],
                             rtol=1e-6)
  np.testing.assert_allclose(upd["trunk"]["w"], adam_step["w"], rtol=1e-6)
  c.qan.quality_optimizer = "run"
  tx = task.optimizer(c)
  upd, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(upd["quality_branch"]["w"], c.qan.quality_lr_scale * adam_step["w"],
                             rtol=1e-6)
  c.qan.quality_optimizer = "adam"
  with pytest.raises(ValueError, match="quality_optimizer"):
    task.optimizer(c)


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
