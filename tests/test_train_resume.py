"""Kill-and-resume through `python -m train.main`: bitwise the uninterrupted run.

One run goes straight to step `total`; a second, in another workdir, is held
after the checkpoint of step `kill_at` (tests/hold_after_checkpoint.py), killed
with SIGKILL once that checkpoint is final on disk, and run again: it resumes
and must end with exactly the same state (params, optimiser, model state).
"""
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.train_helpers import (
  ROOT,
  cli_args,
  env,
  load_checkpoint_state,
  run_main,
  tiny_overrides,
  train_losses,
)


def _finished(ckpt_dir: Path, step: int) -> bool:
  # orbax renames <step>.orbax-checkpoint-tmp-* to <step> once the save is final.
  return (ckpt_dir / str(step)).is_dir()


@pytest.mark.parametrize("method,kill_at,total", [
    ("arcface", 3, 6),
    # EQFace's steps 1/2/3 last 5/1/2 of 8 steps: the kill is at a stage boundary.
    ("eqface", 5, 8),
])
def test_kill_and_resume_is_bitwise_identical(method, kill_at, total, tiny_data, tmp_path):
  overrides = tiny_overrides(tiny_data, total, **{"train.ckpt_every": kill_at,
                                                  "train.devices": 2})
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  # The uninterrupted run first: the run to kill and its resumption then load
  # its compiled programs from the run's compilation cache (tests/conftest.py)
  # instead of compiling them again.
  ref = run_main(cli_args(method, straight, overrides))
  assert ref.returncode == 0, ref.stderr[-3000:]
  held = [sys.executable, str(ROOT / "tests" / "hold_after_checkpoint.py"), str(kill_at)]
  victim = subprocess.Popen(held + cli_args(method, killed, overrides)[3:], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 240
    while not _finished(killed / "checkpoints", kill_at):
      assert victim.poll() is None, "the run to kill ended before its checkpoint"
      assert time.monotonic() < deadline, "no checkpoint in time"
      time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
  finally:
    if victim.poll() is None:
      victim.kill()
  assert victim.returncode == -signal.SIGKILL
  saved = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [kill_at]  # killed after step kill_at, before step total
  assert max(train_losses(killed)) == kill_at

  resumed = run_main(cli_args(method, killed, overrides))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from step {kill_at}" in resumed.stderr

  a = load_checkpoint_state(straight, total)
  b = load_checkpoint_state(killed, total)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  # The logged losses after the resume match the uninterrupted run's too.
  la, lb = train_losses(straight), train_losses(killed)
  assert sorted(la) == sorted(lb) == list(range(1, total + 1))
  assert [la[s] for s in sorted(la)] == [lb[s] for s in sorted(lb)]
