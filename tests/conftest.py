"""Test setup: eight fake CPU devices, set before jax is imported anywhere, and
one disk cache of compiled programs for the whole run."""
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The suite compiles the same small programs in many processes: both xdist
# workers, and every `python -m train.main` or notebook kernel a test starts
# (they inherit this environment). Compiling dominates these tiny runs, so the
# run shares one persistent compilation cache: a program compiled once is
# loaded, not compiled again, in every other process. It is a fresh folder per
# run (made by the first process, the xdist controller, whose environment the
# workers inherit), so no run reads another's programs; a cached program is the
# same executable a fresh compile gives. JAX_COMPILATION_CACHE_DIR set by hand
# is used instead (and kept).
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxset-tests-xla-")
# Every program, however small or quick to compile (each eager op is one).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402

# The tiny_data fixture (tiny embedded datasets, built once per session).
pytest_plugins = ["tests.train_helpers"]


def pytest_unconfigure(config):
  # The process that made the cache folder removes it (an xdist worker has workerinput).
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def x64():
  """float64 inside the test only, so other tests keep float32 defaults."""
  with jax.enable_x64(True):
    yield
