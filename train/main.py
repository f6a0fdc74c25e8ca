"""Entry point: `python -m train.main --config=configs/netvlad.py`.

Flags:
  --config: a configs/<method>.py file, optionally with a preset
    (`configs/netvlad.py:pitts30k`), and overrides such as
    `--config.optim.lr=0.01`.
  --workdir: where checkpoints, TensorBoard events and metrics.jsonl go;
    defaults to runs/<config name>[_<preset>]. A run resumes from the latest
    checkpoint found there.
  --coordinator_address, --num_processes, --process_id: with
    --config.distributed=True, passed to jax.distributed.initialize (also read
    from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); left
    empty, jax detects the cluster (SLURM, TPU, ...). On CPU the processes
    all-reduce through gloo, e.g. two processes on one machine:
    --coordinator_address=127.0.0.1:12345 --num_processes=2 --process_id=0|1.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/<method>.py[:preset]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<config>).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (with config.distributed).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (with config.distributed).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (with config.distributed).")


def default_workdir(config_arg: str) -> str:
  path, _, preset = config_arg.partition(":")
  name = Path(path).stem + (f"_{preset}" if preset else "")
  return str(Path("runs") / name)


def _parse_flags(argv):
  """absl parsing, with config mistakes turned into one clear line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    msg = str(e)
    if "Traceback (most recent call last)" in msg:
      # ml_collections embeds the config file's traceback: keep its last line.
      lines = [l for l in msg.splitlines() if l.strip()]
      msg = f"{lines[0]} {lines[-1]}"
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these from inside flag parsing for a key that does
    # not exist, a value of the wrong type or (get_config) an unknown preset.
    detail = str(e.args[0]) if e.args else str(e)
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    msg = (f"bad config override {' '.join(bad)}: {detail}. Every key must exist "
           "in the config file; run with --helpfull or look at the file's "
           "get_config()." if bad else f"bad --config: {detail}")
  # One line, no traceback: these are the user's typos, not bugs.
  print(f"FATAL Flags parsing error: {msg}", file=sys.stderr)
  sys.exit(2)


def _int_or_none(text):
  return int(text) if text else None


def main(argv):
  # orbax and grain log every checkpoint step at INFO through absl.
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/netvlad.py")
  config_arg = flags.FLAGS["config"].config_filename
  workdir = _WORKDIR.value or default_workdir(config_arg)
  from train import loop
  if _CONFIG.value.get("distributed", False):
    import jax
    env = os.environ.get
    num, pid = _NUM_PROCESSES.value, _PROCESS_ID.value
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value or env("JAX_COORDINATOR_ADDRESS"),
        num_processes=num if num is not None else _int_or_none(env("JAX_NUM_PROCESSES")),
        process_id=pid if pid is not None else _int_or_none(env("JAX_PROCESS_ID")))
  loop.train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
