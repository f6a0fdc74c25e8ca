"""The device mesh of a run (config.train.mesh) and the placement of state and batches on it.

config.train.mesh = {"data": -1, "model": 1} (the default) is the 1-D mesh
('data',) over every device: pure data parallelism, the whole state
replicated. With model = n > 1 (or -1: every device) the mesh is 2-D
('data', 'model'), devices laid out data-major; the batch is split over
both axes (every device its own rows, as before) and a class-sharded
classifier (Partial FC, jaxset.ops.partial_fc) holds C/n classes of its
weight, and of that weight's optimiser state, on each device of a model
group (replicated over 'data').
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh with a 'data' axis over every device (all hosts)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), ("data",))


def shard_batch(batch, mesh: Mesh):
  """Places this process's share of a batch as a global array sharded on 'data'.

  Works the same on one host (the local share is the whole batch) and on many
  (jax.make_array_from_process_local_data stitches the shares together).
  """
  # Split over every mesh axis: ('data',), or ('data', 'model') for Partial FC.
  sharding = NamedSharding(mesh, P(tuple(mesh.axis_names)))

  def put(x):
    x = np.asarray(x)
    n = mesh.devices.size // jax.process_count()
    if x.ndim == 0 or x.shape[0] % n:
      raise ValueError(
          f"a batch leaf of shape {x.shape} cannot be split over the {n} local "
          "devices of the 'data' axis: make the per-process batch size a "
          "multiple of the local device count.")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)


def replicate(tree, mesh: Mesh):
  """Copies a tree to every device of `mesh` (every process gives the same tree)."""
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  # device_put refuses devices of other processes: build the global arrays
  # from each process's identical copy (key arrays through their key data).
  def put(x):
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
      impl = jax.random.key_impl(x)
      data = jax.make_array_from_process_local_data(
          sharding, np.asarray(jax.random.key_data(x)))
      return jax.random.wrap_key_data(data, impl=impl)
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))
  return jax.tree.map(put, tree)


def on_all_devices(state, mesh: Mesh):
  """`state`, placed on the training `mesh`, on every device instead: where
  every hook but the train step runs (train/task.py), since feature extraction
  (train/tasks/common.extract) shards its batches over every device. The
  training mesh may hold fewer (config.train.devices)."""
  everywhere = make_mesh()
  return state if mesh.devices.size == everywhere.devices.size else replicate(state, everywhere)


def _axis_sizes(n: int, data: int, model: int) -> tuple[int, int]:
  if model == -1:
    model = n // data if data > 0 else n
  if data == -1:
    data = n // model if model > 0 and n % model == 0 else 0
  if data < 1 or model < 1 or data * model != n:
    raise ValueError(
        f"config.train.mesh data={data}, model={model} does not fit {n} devices: "
        "give sizes whose product is the device count, or -1 for one of them "
        "(e.g. --config.train.mesh.model=-1 shards the classifier over every device).")
  return data, model


def build(config, devices=None) -> Mesh:
  """The run's mesh: ('data',) or ('data', 'model') from config.train.mesh.

  devices: default the first config.train.devices devices (0 = all).
  """
  if devices is None:
    n_dev = config.train.get("devices", 0)
    devices = jax.devices()[:n_dev] if n_dev else jax.devices()
  devices = np.asarray(devices).reshape(-1)
  spec = config.train.get("mesh", None) or {"data": -1, "model": 1}
  data, model = _axis_sizes(devices.size, int(spec.get("data", -1)), int(spec.get("model", 1)))
  if model == 1:
    return Mesh(devices, ("data",))
  return Mesh(devices.reshape(data, model), ("data", "model"))


def with_model_axis(mesh: Mesh) -> Mesh:
  """`mesh` itself if it has a 'model' axis, else the same devices as ('data', 'model'=1)."""
  if "model" in mesh.axis_names:
    return mesh
  return Mesh(mesh.devices.reshape(-1, 1), ("data", "model"))


def _path_names(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)


def is_class_sharded(path, kernel_path) -> bool:
  """True for the leaves at `kernel_path` in params and in the optimiser state
  (optax keeps its moments under the same names: .../mu/head/classifier/kernel)."""
  names = _path_names(path)
  return bool(kernel_path) and names[-len(kernel_path):] == tuple(kernel_path)


def place_state(state, mesh: Mesh, kernel_path=None):
  """Puts `state` on `mesh`: the class-sharded weight (leaves at `kernel_path`,
  [D, C]) split by column over 'model', every other leaf replicated.

  Each device receives only its own block (make_array_from_callback), so a
  multi-host run never assembles the weight in one place.
  """
  if "model" not in mesh.axis_names or not kernel_path:
    return replicate(state, mesh)
  sharded = NamedSharding(mesh, P(None, "model"))

  def put(path, x):
    if (is_class_sharded(path, kernel_path) and np.ndim(x) == 2
        and np.shape(x)[1] % mesh.shape["model"] == 0):
      host = np.asarray(jax.device_get(x))
      return jax.make_array_from_callback(host.shape, sharded, lambda idx: host[idx])
    return replicate(x, mesh)

  return jax.tree_util.tree_map_with_path(put, state)
