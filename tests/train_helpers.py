"""Shared pieces of the training tests: tiny data, tiny configs, runs, results.

The tiny embedded datasets are built once per test session into a temporary
folder (`tiny_data`); every run reads them from there through
config.data.cache_dir, so no test touches ~/.cache.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs.base import with_overrides  # noqa: F401  (tests import it from here too)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
  """A cache_dir holding the tiny synthetic_identities and synthetic_places."""
  from jaxset import data as jdata
  cache = tmp_path_factory.mktemp("tiny_data")
  for name in jdata.EMBEDDED:
    jdata.builder(name, data_dir=cache, config="tiny")
  return str(cache)


def tiny_overrides(cache_dir: str, steps: int, **extra) -> dict:
  """Config overrides for a short run on the tiny data (keys as dotted paths)."""
  o = {
      "data.builder_config": "tiny",
      "data.cache_dir": cache_dir,
      "train.steps": steps,
      "train.batch_size": 16,
      "train.log_every": 1,
      "train.ckpt_every": steps,
      "train.progress_bar": False,
      "eval.at_start": False,
      "eval.batch_size": 32,
      "optim.warmup_steps": 0,
  }
  o.update(extra)
  return o


def make_config(method: str, overrides: dict, preset: str | None = None):
  """configs/<method>.py's get_config(preset) with dotted overrides applied."""
  return with_overrides(importlib.import_module(f"configs.{method}").get_config(preset),
                        overrides)




def cli_args(method: str, workdir, overrides: dict) -> list[str]:
  args = [sys.executable, "-m", "train.main", f"--config=configs/{method}.py",
          f"--workdir={workdir}"]
  return args + [f"--config.{k}={v}" for k, v in overrides.items()]


def env(**extra) -> dict:
  """The test process's environment (8 fake CPU devices) plus `extra`."""
  e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  e.update({k: str(v) for k, v in extra.items()})
  return e


def run_main(args, timeout=300, **env_extra) -> subprocess.CompletedProcess:
  """Runs `python -m train.main ...` in the repository root; output captured."""
  return subprocess.run(args, cwd=ROOT, env=env(**env_extra), capture_output=True,
                        text=True, timeout=timeout)


def train_losses(workdir) -> dict[int, float]:
  """{step: loss} of the train lines of <workdir>/metrics.jsonl (last wins)."""
  out = {}
  for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
    rec = json.loads(line)
    if rec["split"] == "train":
      out[rec["step"]] = rec["loss"]
  return out


def load_checkpoint_state(workdir, step: int) -> dict:
  """The saved TrainState of <workdir>/checkpoints/<step> as a tree of numpy."""
  import orbax.checkpoint as ocp
  path = (Path(workdir) / "checkpoints" / str(step) / "state").absolute()
  with ocp.StandardCheckpointer() as ckpt:
    tree = ckpt.restore(path)
  import jax

  def to_numpy(x):
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x)
  return jax.tree.map(to_numpy, tree)
