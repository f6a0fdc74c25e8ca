"""Real tasks in-process: 1 versus 8 devices give one loss curve; NaN stops the run."""
import jax
import numpy as np
import pytest

from tests.train_helpers import make_config, tiny_overrides, train_losses
from train import loop, tasks


class _NoEval:
  """The method's task without its evaluation (these tests look at training only)."""

  def __init__(self, method):
    self._task = tasks.get(method)

  def __getattr__(self, name):
    return getattr(self._task, name)

  def evaluate(self, state, config):
    return {}


@pytest.mark.parametrize("method,extra", [
    ("arcface", {}),
    # Mining off: its picks are argsorts over a float16 feature cache, and the 1- and
    # 8-device caches differ by float noise, so a near-tie can flip a positive or a
    # negative (a discrete jump in the loss, not a sharding error). BatchNorm
    # calibration runs 4 passes, not the default 32: the same placement path.
    ("netvlad", {"train.batch_size": 8, "mining.enabled": False,
                 "kmeans.bn_calibration_batches": 4}),
])
def test_one_and_eight_devices_give_the_same_losses(method, extra, tiny_data, tmp_path):
  curves = {}
  for n in (1, 8):
    over = tiny_overrides(tiny_data, 4, **{"train.devices": n, **extra})
    config = make_config(method, over)
    loop.train_and_evaluate(config, tmp_path / str(n), _NoEval(method))
    curves[n] = train_losses(tmp_path / str(n))
  assert sorted(curves[1]) == sorted(curves[8]) == [1, 2, 3, 4]
  one = np.array([curves[1][s] for s in range(1, 5)])
  eight = np.array([curves[8][s] for s in range(1, 5)])
  assert np.all(np.isfinite(one))
  # Sums over 8 shards add in another order: float32 noise, grown by 3 Adam steps.
  np.testing.assert_allclose(eight, one, rtol=1e-3, atol=1e-5)


def test_absurd_learning_rate_stops_with_the_step_and_last_good_checkpoint(
    tiny_data, tmp_path):
  over = tiny_overrides(tiny_data, 12, **{"train.devices": 1, "train.ckpt_every": 1,
                                          "train.log_every": 1, "optim.lr": 1e30,
                                          "optim.schedule": "constant"})
  config = make_config("arcface", over)
  with pytest.raises(loop.NonFiniteLossError, match=r"step \d+: metric '\w+' is") as err:
    loop.train_and_evaluate(config, tmp_path, _NoEval("arcface"))
  bad_step = int(str(err.value).split(":")[0].split()[1])
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  # Step 1 (from the initial params) is finite and saved; every checkpoint on
  # disk is from before the bad step and holds finite params.
  assert saved and all(s < bad_step for s in saved)
  from tests.train_helpers import load_checkpoint_state
  params = load_checkpoint_state(tmp_path, saved[-1])["params"]
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
  assert f"last good checkpoint is step {saved[-1]}" in str(err.value)
