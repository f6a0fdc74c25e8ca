"""Executes every notebooks/*.ipynb top to bottom in a fresh kernel.

A cell that raises fails the test (nbclient raises CellExecutionError, naming
the cell and the error). The notebooks are executed in memory: the committed
files, with their outputs, are not rewritten. Each notebook builds its own data
in a temporary folder, so this also checks a fresh machine's first run.
"""
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def _kernel_env():
  # conftest.py asks for 8 fake CPU devices; the notebooks are written for the
  # plain single-device setup a user gets, so the kernel does not inherit that.
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  if flags.strip():
    env["XLA_FLAGS"] = flags.strip()
  else:
    env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  # The kernel runs the same interpreter (and so the same installed jaxset) as pytest.
  env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
  return env


def test_notebooks_exist():
  assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                          resources={"metadata": {"path": str(path.parent)}})
  client.execute(env=_kernel_env())
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
