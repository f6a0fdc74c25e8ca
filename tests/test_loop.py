"""The shared loop on a toy task: resume, NaN guard, 1 vs 8 devices, logs."""
import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.base import base_config
from train import loop
from train.task import Stage, Task, TrainState


class ToyTask(Task):
  """Linear regression: enough to exercise every part of the loop."""

  def __init__(self, poison_step=None):
    self.poison_step = poison_step

  def create_state(self, config, rng):
    params = {"w": jnp.zeros((4,)), "b": jnp.zeros(())}
    return TrainState.create(apply_fn=None, params=params,
                             tx=optax.sgd(config.optim.lr), model_state={}, rng=rng)

  def _iterator(self, config):
    w_true = np.array([1.0, -2.0, 0.5, 3.0], np.float32)

    def make(i):
      r = np.random.default_rng(i)
      x = r.standard_normal(4).astype(np.float32)
      return {"x": x, "y": np.float32(x @ w_true + 0.1)}

    ds = (grain.MapDataset.range(10_000).map(make).batch(config.train.batch_size)
          .repeat())
    return ds.to_iter_dataset().__iter__()

  def stages(self, config):
    poison = self.poison_step

    def step(state, batch):
      def loss_fn(p):
        pred = batch["x"] @ p["w"] + p["b"]
        noise = 1e-3 * jax.random.normal(jax.random.fold_in(state.rng, state.step))
        loss = jnp.mean((pred - batch["y"]) ** 2) + noise
        if poison is not None:
          loss = jnp.where(state.step + 1 == poison, jnp.nan, loss)
        return loss
      loss, g = jax.value_and_grad(loss_fn)(state.params)
      return state.apply_gradients(grads=g), {"loss": loss}

    half = config.train.steps // 2
    return [Stage("a", half, lambda: self._iterator(config), step),
            Stage("b", config.train.steps - half, lambda: self._iterator(config), step)]

  def evaluate(self, state, config):
    return {"w_err": float(jnp.sum(jnp.abs(state.params["w"] - jnp.array([1., -2., .5, 3.]))))}


def toy_config(steps=20, devices=0):
  c = base_config()
  c.method = "toy"
  c.data.name = "toy"
  c.optim.lr = 0.05
  c.train.steps = steps
  c.train.batch_size = 16
  c.train.log_every = 5
  c.train.ckpt_every = 5
  c.train.progress_bar = False
  c.train.devices = devices
  return c


def test_learns_and_logs(tmp_path):
  out = loop.train_and_evaluate(toy_config(40), tmp_path, ToyTask())
  assert out["after"]["w_err"] < 0.5 * out["before"]["w_err"]
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_steps = [l["step"] for l in lines if l["split"] == "train"]
  assert train_steps == [5, 10, 15, 20, 25, 30, 35, 40]
  assert list((tmp_path / "tensorboard").iterdir())


def test_resume_continues_the_same_trajectory(tmp_path):
  straight = loop.train_and_evaluate(toy_config(20), tmp_path / "a", ToyTask())
  # Stop at step 10 (the stage boundary) by running a 10-step config, then
  # resume the 20-step run in the same workdir.
  class Stop(Exception):
    pass

  class Interrupted(ToyTask):
    def refresh_due(self, config, step):  # asked before every step
      if step == 15:
        raise Stop
      return False

  with pytest.raises(Stop):
    loop.train_and_evaluate(toy_config(20), tmp_path / "b", Interrupted())
  resumed = loop.train_and_evaluate(toy_config(20), tmp_path / "b", ToyTask())
  for a, b in zip(jax.tree.leaves(straight["state"].params),
                  jax.tree.leaves(resumed["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nan_stops_with_step_and_metric_and_keeps_last_good(tmp_path):
  with pytest.raises(loop.NonFiniteLossError, match=r"step 8: metric 'loss'.*checkpoint is step 5"):
    loop.train_and_evaluate(toy_config(20), tmp_path, ToyTask(poison_step=8))
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [5]


def test_one_and_eight_devices_give_the_same_curve(tmp_path):
  assert len(jax.devices()) == 8
  a = loop.train_and_evaluate(toy_config(10, devices=1), tmp_path / "one", ToyTask())
  b = loop.train_and_evaluate(toy_config(10, devices=8), tmp_path / "eight", ToyTask())
  def losses(run):
    lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"train"' in line]
  la, lb = losses("one"), losses("eight")
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  np.testing.assert_allclose(a["state"].params["w"], b["state"].params["w"], rtol=1e-5)
