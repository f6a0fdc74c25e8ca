"""What a user can get wrong, and the faults a run meets: each gives a clear
error that names the problem and the fix, or a documented fallback, and loses
nothing.

Part 1 drives the shared loop in-process on the toy task of tests/test_loop.py
(fast): checkpoint damage of every kind, the NaN stop, a workdir of another
config. Part 2 runs `python -m train.main` / `python -m train.eval` on the
tiniest arcface config: a missing config file, a full disk, a damaged
checkpoint under train.eval. Part 3 calls the public ops with the inputs a
user plausibly passes by mistake.
"""
import json
import resource
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxset import eval as E
from jaxset import ops
from tests.test_loop import ToyTask, toy_config
from tests.train_helpers import ROOT, cli_args, run_main, tiny_data, tiny_overrides  # noqa: F401
from train import checkpoints, loop

# --------------------------------------------------------------------------
# Part 1: checkpoints and the workdir, through the loop (toy task).


def _steps(workdir):
  return checkpoints.step_dirs(Path(workdir) / "checkpoints")


def _largest_file(step_dir: Path, under: str = "state") -> Path:
  return max((p for p in (step_dir / under).rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def _overwrite(path: Path, nbytes: int = 4096):
  data = bytearray(path.read_bytes())
  n = min(nbytes, len(data))
  data[:n] = bytes((i * 37 + 11) % 256 for i in range(n))
  path.write_bytes(bytes(data))


def _truncate(path: Path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_metadata(step_dir: Path):
  path = next(p for p in step_dir.rglob("_METADATA"))
  path.write_bytes(b"\xff\xfe\x00garbled" + path.read_bytes()[:7])


def _half_json(step_dir: Path):
  path = next(p for p in (step_dir / "data").rglob("*") if p.is_file())
  path.write_text(path.read_text()[: max(1, len(path.read_text()) // 2)])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """A finished toy run: checkpoints 5, 10 (keep 3), each with a digest."""
  wd = tmp_path_factory.mktemp("toy") / "run"
  c = toy_config(10, devices=1)
  c.eval.at_start = False
  loop.train_and_evaluate(c, wd, ToyTask())
  return wd, c


def test_every_checkpoint_gets_a_digest(toy_run):
  wd, _ = toy_run
  assert _steps(wd) == [5, 10]
  for step in (5, 10):
    assert checkpoints.verify(wd / "checkpoints", step) is True
    files = json.loads(checkpoints.digest_path(wd / "checkpoints", step).read_text())["files"]
    assert any(k.startswith("state/") for k in files) and any(k.startswith("data/") for k in files)


@pytest.mark.parametrize("damage", ["overwrite", "truncate", "metadata", "iterator_json"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(damage, toy_run, tmp_path, capsys):
  src, c = toy_run
  wd = tmp_path / "run"
  shutil.copytree(src, wd)
  step10 = wd / "checkpoints" / "10"
  {"overwrite": lambda: _overwrite(_largest_file(step10)),
   "truncate": lambda: _truncate(_largest_file(step10)),
   "metadata": lambda: _garble_metadata(step10),
   "iterator_json": lambda: _half_json(step10)}[damage]()
  with pytest.raises(checkpoints.DamagedCheckpoint):
    checkpoints.verify(wd / "checkpoints", 10)
  assert checkpoints.last_good_step(wd / "checkpoints") == 5
  out = loop.train_and_evaluate(c, wd, ToyTask())
  err = capsys.readouterr().err
  assert "checkpoint step 10" in err and "is damaged" in err and "resumed from step 5" in err
  assert str(step10) in err or "10.damaged-0" in err
  # The damaged step is kept aside, and the run re-did steps 6-10 from step 5.
  assert (wd / "checkpoints" / "10.damaged-0").is_dir()
  assert out["step"] == 10 and _steps(wd) == [5, 10]
  assert checkpoints.verify(wd / "checkpoints", 10) is True


def test_every_checkpoint_damaged_is_a_clear_error(toy_run, tmp_path):
  src, c = toy_run
  wd = tmp_path / "run"
  shutil.copytree(src, wd)
  for step in (5, 10):
    _overwrite(_largest_file(wd / "checkpoints" / str(step)))
  with pytest.raises(checkpoints.CheckpointError, match="no readable checkpoint in .*checkpoints"
                     ".*Nothing was deleted.*remove or rename"):
    loop.train_and_evaluate(c, wd, ToyTask())
  assert sorted(p.name for p in (wd / "checkpoints").iterdir() if p.is_dir()) == [
      "10.damaged-0", "5.damaged-0"]


def test_unverifiable_checkpoint_that_fails_to_read_falls_back(toy_run, tmp_path, capsys):
  src, c = toy_run
  wd = tmp_path / "run"
  shutil.copytree(src, wd)
  checkpoints.digest_path(wd / "checkpoints", 10).unlink()   # e.g. an older jaxset's step
  _garble_metadata(wd / "checkpoints" / "10")
  loop.train_and_evaluate(c, wd, ToyTask())
  err = capsys.readouterr().err
  assert "no digest manifest" in err and "could not be read" in err
  assert "resumed from step 5" in err


def test_intact_checkpoint_of_other_shapes_is_an_error_not_damage(toy_run, tmp_path):
  src, c = toy_run
  wd = tmp_path / "run"
  shutil.copytree(src, wd)

  class Wider(ToyTask):
    def create_state(self, config, rng):
      s = super().create_state(config, rng)
      return s.replace(params={"w": jnp.zeros((5,)), "b": jnp.zeros(())},
                       opt_state=s.tx.init({"w": jnp.zeros((5,)), "b": jnp.zeros(())}))

  with pytest.raises(checkpoints.CheckpointError, match="is intact .* does not restore"):
    loop.train_and_evaluate(c, wd, Wider())
  assert _steps(wd) == [5, 10]                                # nothing moved


class _DamageThenNaN(ToyTask):
  """Damages checkpoint 6 at step 7; the loss is NaN at step 8."""

  def __init__(self, workdir):
    super().__init__(poison_step=8)
    self.workdir = workdir

  def on_step(self, state, config, step):
    if step == 7:
      _overwrite(_largest_file(self.workdir / "checkpoints" / "6"))
    return state


def test_nan_stop_never_calls_a_damaged_checkpoint_last_good(tmp_path):
  c = toy_config(10, devices=1)
  c.eval.at_start = False
  c.train.ckpt_every = 2
  c.train.log_every = 2
  with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint is step 4 "):
    loop.train_and_evaluate(c, tmp_path, _DamageThenNaN(tmp_path))


def test_workdir_of_another_config_is_refused_before_anything_is_written(toy_run, tmp_path):
  src, c = toy_run
  wd = tmp_path / "run"
  shutil.copytree(src, wd)
  before = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
  other = toy_config(10, devices=1)
  other.eval.at_start = False
  other.model.dtype = "bfloat16"
  other.optim.lr = 0.5
  with pytest.raises(checkpoints.ConfigMismatchError) as e:
    loop.train_and_evaluate(other, wd, ToyTask())
  msg = str(e.value)
  assert "model.dtype: 'float32' there, 'bfloat16' now" in msg and "optim.lr" in msg
  assert "--workdir" in msg and "allow_config_change" in msg and "Nothing in it was changed" in msg
  after = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
  assert after == before
  # Schedules may change (a longer run), and the override resumes anyway.
  longer = toy_config(15, devices=1)
  longer.eval.at_start = False
  assert loop.train_and_evaluate(longer, wd, ToyTask())["step"] == 15
  other.train.allow_config_change = True
  other.model.dtype = "float32"
  assert loop.train_and_evaluate(other, wd, ToyTask())["step"] == 15


def test_disk_full_message_names_where():
  e = OSError(27, "File too large", "/runs/x/metrics.jsonl")
  msg = checkpoints.disk_full_message(e, Path("/runs/x"))
  assert msg.startswith("error: could not write /runs/x/metrics.jsonl: File too large")
  wrapped = ValueError('Error writing "/runs/x/checkpoints/3/state/d/abc": File too large')
  try:
    try:
      raise wrapped
    except ValueError as inner:
      raise RuntimeError("save failed") from inner
  except RuntimeError as outer:
    msg = checkpoints.disk_full_message(outer, Path("/runs/x"))
  assert "could not write /runs/x/checkpoints/3/state/d/abc: File too large" in msg
  assert checkpoints.disk_full_message(ValueError("shape mismatch"), Path("/runs/x")) is None


# --------------------------------------------------------------------------
# Part 2: the entry points, as subprocesses (tiniest arcface config).


def test_missing_config_file_is_one_message():
  r = run_main([sys.executable, "-m", "train.main", "--config=configs/nothere.py"], timeout=120)
  assert r.returncode == 2
  assert "configs/nothere.py" in r.stderr and "arcface.py" in r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _limit_file_size():
  resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))


def test_full_disk_is_one_message_naming_where(tiny_data, tmp_path):
  import subprocess
  from tests.train_helpers import env
  wd = tmp_path / "run"
  args = cli_args("arcface", wd, tiny_overrides(tiny_data, 1, **{"train.devices": 1}))
  r = subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
                     preexec_fn=_limit_file_size)
  assert r.returncode == 1, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: could not write {wd}") and "File too large" in last
  assert "Traceback" not in r.stderr


def test_eval_of_a_damaged_checkpoint_falls_back_or_names_it(tiny_data, tmp_path):
  wd = tmp_path / "run"
  ov = tiny_overrides(tiny_data, 2, **{"train.devices": 1, "train.ckpt_every": 1})
  r = run_main(cli_args("arcface", wd, ov))
  assert r.returncode == 0, r.stderr[-3000:]
  _overwrite(_largest_file(wd / "checkpoints" / "2"))
  ev = [sys.executable, "-m", "train.eval", "--config=configs/arcface.py", f"--workdir={wd}"]
  ev += [f"--config.{k}={v}" for k, v in ov.items()]
  r = run_main(ev)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "checkpoint step 2" in r.stderr and "damaged" in r.stderr and "step 1" in r.stderr
  assert "step 1 (latest)" in r.stdout
  r = run_main(ev + ["--checkpoint=2"])
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert str(wd / "checkpoints" / "2") in r.stderr and "differs from the file saved" in r.stderr
  # A workdir of another config through the CLI: refused, config.json untouched.
  saved = (wd / "config.json").read_bytes()
  r = run_main(cli_args("arcface", wd, {**ov, "model.embedding_dim": 16}))
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert "model.embedding_dim" in r.stderr and "allow_config_change" in r.stderr
  assert (wd / "config.json").read_bytes() == saved
