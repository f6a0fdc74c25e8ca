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
  config_arg = flags.FLAGS["config"].config_filename
  if not config_arg:
    raise app.UsageError("--config is required, e.g. --config=configs/netvlad.py")
  config = _load_config(config_arg)
  workdir = _WORKDIR.value or default_workdir(config_arg)
  from jaxset.data.formats import DatasetFormatError
  from train import checkpoints, loop
  if config.get("distributed", False):
    import jax
    env = os.environ.get
    num, pid = _NUM_PROCESSES.value, _PROCESS_ID.value
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value or env("JAX_COORDINATOR_ADDRESS"),
        num_processes=num if num is not None else _int_or_none(env("JAX_NUM_PROCESSES")),
        process_id=pid if pid is not None else _int_or_none(env("JAX_PROCESS_ID")))
  checkpoints.quiet_failed_write_output()
  try:
    loop.train_and_evaluate(config, workdir)
  except (checkpoints.CheckpointError, checkpoints.ConfigMismatchError,
          loop.NonFiniteLossError) as e:
    _fatal(f"error: {e}", code=1)
  except (DatasetFormatError, FileNotFoundError) as e:  # the user's data: names file and fix
    _fatal(f"error: {e}", code=1)
  except Exception as e:
    message = checkpoints.disk_full_message(e, Path(workdir))
    if message is None:
      raise
    _fatal(message, code=1)


def _fatal(message: str, code: int):
  sys.stderr.flush()
  print(message, file=sys.__stderr__, flush=True)  # past any output filter
  # os._exit: orbax's and tensorstore's background threads may still hold
  # failed writes, whose tracebacks at interpreter exit would bury the message.
  sys.stderr.flush()
  os._exit(code)


def _load_config(config_arg: str):
  """The --config file's config, or one clear line if it cannot be loaded."""
  path = config_arg.partition(":")[0]
  if not Path(path).is_file():
    here = sorted(p.name for p in Path("configs").glob("*.py") if p.name != "__init__.py")
    _fatal(f"FATAL --config={config_arg}: no file {path!r} (relative to {os.getcwd()}). "
           f"Give a configs/<method>.py file, e.g. one of {here}.", code=2)
  try:
    return _CONFIG.value
  except OSError as e:
    cause = e.__cause__ or e
    _fatal(f"FATAL --config={config_arg}: the file could not be loaded "
           f"({type(cause).__name__}: {str(cause).splitlines()[-1] if str(cause) else ''}).",
           code=2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
