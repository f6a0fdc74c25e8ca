"""`python tests/hold_after_checkpoint.py STEP <python -m train.main flags>`.

Runs train.main, held (asleep) once the checkpoint of STEP is on disk, so that
a test can kill the process between two known steps
(tests/test_train_resume.py). The hold is a loop.train_and_evaluate
after_checkpoint callback: the loop itself knows nothing of tests.
"""
import functools
import sys
import time

from absl import app

from train import loop, main


def hold_at(step: int):
  def hold(saved: int) -> None:
    if saved == step:
      time.sleep(3600)
  return hold


if __name__ == "__main__":
  step = int(sys.argv.pop(1))
  loop.train_and_evaluate = functools.partial(loop.train_and_evaluate,
                                              after_checkpoint=hold_at(step))
  app.run(main.main, flags_parser=main._parse_flags)
