"""Entry point: `python -m train.main --config=configs/netvlad.py`.

Flags:
  --config: a configs/<method>.py file, optionally with a preset
    (`configs/netvlad.py:pitts30k`), and overrides such as
    `--config.optim.lr=0.01`.
  --workdir: where checkpoints, TensorBoard events and metrics.jsonl go;
    defaults to runs/<config name>[_<preset>]. A run resumes from the latest
    checkpoint found there.
"""
from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/<method>.py[:preset]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<config>).")


def default_workdir(config_arg: str) -> str:
  path, _, preset = config_arg.partition(":")
  name = Path(path).stem + (f"_{preset}" if preset else "")
  return str(Path("runs") / name)


def _parse_flags(argv):
  """absl parsing, with config mistakes turned into one clear line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise app.UsageError(str(e)) from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these from inside flag parsing for a key that does
    # not exist or a value of the wrong type.
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    raise app.UsageError(
        f"bad config override {' '.join(bad)}: {str(e).strip(chr(39))}. "
        "Every key must exist in the config file; run with --helpfull or look "
        "at the file's get_config().") from None


def main(argv):
  # orbax and grain log every checkpoint step at INFO through absl.
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/netvlad.py")
  config_arg = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--config="))
  workdir = _WORKDIR.value or default_workdir(config_arg)
  from train import loop
  if _CONFIG.value.get("distributed", False):
    import jax
    jax.distributed.initialize()
  loop.train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
