"""Test setup: eight fake CPU devices, set before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402

# The tiny_data fixture (tiny embedded datasets, built once per session).
pytest_plugins = ["tests.train_helpers"]


@pytest.fixture
def x64():
  """float64 inside the test only, so other tests keep float32 defaults."""
  with jax.enable_x64(True):
    yield
