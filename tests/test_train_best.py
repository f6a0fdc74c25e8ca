"""The best checkpoint across resumes (train/checkpoints.py save_best / best_record).

The scenario of issue 25: a run's newest checkpoint is damaged, moved aside,
and the run resumes from the one before, older than workdir/best's step.
Retraining reaches the best's step again; it must neither crash (orbax's
StepAlreadyExistsError) nor lose or replace the best by a worse one.
"""
import json
import shutil

import jax.numpy as jnp
import pytest

from tests.test_bad_inputs import _largest_file, _overwrite
from tests.test_loop import ToyTask, toy_config
from train import checkpoints, loop


class FitTask(ToyTask):
  """The toy regression with a metric that grows as it fits (higher = better)."""

  def evaluate(self, state, config):
    err = jnp.sum(jnp.abs(state.params["w"] - jnp.array([1., -2., .5, 3.])))
    return {"fit": -float(err)}


def _config(steps):
  c = toy_config(steps, devices=1)
  c.eval.at_start = False
  c.eval.every = 5
  c.eval.best_metric = "fit"
  return c


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
  """Checkpoints 5 and 10, best = step 10 (fit grows every evaluation)."""
  wd = tmp_path_factory.mktemp("best") / "run"
  out = loop.train_and_evaluate(_config(10), wd, FitTask())
  assert out["best"]["step"] == 10
  return wd


def _best(wd):
  return checkpoints.step_dirs(wd / "best"), json.loads((wd / "best" / "best.json").read_text())


def test_best_is_replaced_by_renames_with_its_record(fitted):
  steps, rec = _best(fitted)
  assert steps == [10] and rec["step"] == 10 and rec["fit"] < 0
  assert checkpoints.verify(fitted / "best", 10) is True
  assert not list(fitted.glob("best.tmp-*")) and not list(fitted.glob("best.old-*"))


@pytest.mark.parametrize("legacy", [False, True])
def test_resume_older_than_best_neither_crashes_nor_loses_it(fitted, tmp_path, capsys, legacy):
  wd = tmp_path / "run"
  shutil.copytree(fitted, wd)
  _, before = _best(wd)
  if legacy:  # a best folder written before best.json existed: metrics.jsonl has its record
    (wd / "best" / "best.json").unlink()
  _overwrite(_largest_file(wd / "checkpoints" / "10"))
  out = loop.train_and_evaluate(_config(10), wd, FitTask())
  err = capsys.readouterr().err
  assert "resumed from step 5" in err and "keeping the best checkpoint of step 10" in err
  assert out["step"] == 10 and out["best"]["step"] == 10
  assert checkpoints.step_dirs(wd / "best") == [10]
  assert checkpoints.verify(wd / "best", 10) is True
  if not legacy:
    assert _best(wd)[1] == before


def test_resume_older_than_best_then_improving_replaces_it(fitted, tmp_path):
  wd = tmp_path / "run"
  shutil.copytree(fitted, wd)
  _overwrite(_largest_file(wd / "checkpoints" / "10"))
  out = loop.train_and_evaluate(_config(15), wd, FitTask())
  steps, rec = _best(wd)
  assert out["best"]["step"] == 15 and steps == [15] and rec["step"] == 15
  assert rec["fit"] > _best(fitted)[1]["fit"]


def test_same_step_saved_twice_replaces_it(tmp_path):
  """save_best of a step the best folder already holds (the orbax crash) is fine."""
  calls = []

  def save(directory):
    (directory / "7").mkdir(parents=True)
    (directory / "7" / "w").write_text(str(len(calls)))
    calls.append(directory)

  for value in (0.5, 0.7):
    checkpoints.save_best(tmp_path, 7, save, {"acc": value})
  assert (tmp_path / "best" / "7" / "w").read_text() == "1"
  assert json.loads((tmp_path / "best" / "best.json").read_text()) == {"acc": 0.7, "step": 7}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_interrupted_swap_is_recovered(tmp_path):
  (tmp_path / "best.old-3" / "3").mkdir(parents=True)
  checkpoints.recover_best(tmp_path)
  assert checkpoints.step_dirs(tmp_path / "best") == [3]


def test_better_best_keeps_the_higher():
  a, b = {"acc": 0.5, "step": 3}, {"acc": 0.6, "step": 9}
  assert checkpoints.better_best(a, b, "acc") is b
  assert checkpoints.better_best(b, a, "acc") is b
  assert checkpoints.better_best(None, a, "acc") is a
  assert checkpoints.better_best(a, None, "acc") is a


def test_validation_files_are_checked_before_training(tmp_path):
  """A run that validates on .bin files every N steps checks them before step 1."""
  c = _config(10)
  c.eval.benchmark = "face_bin"
  c.eval.dir = str(tmp_path / "no_bins")
  (tmp_path / "no_bins").mkdir()
  with pytest.raises(FileNotFoundError, match=r"no_bins: expected insightface \.bin files"):
    loop.train_and_evaluate(c, tmp_path / "run", FitTask())
  assert not (tmp_path / "run" / "checkpoints").exists()
