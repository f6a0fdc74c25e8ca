"""Timing and memory helpers shared by the benchmark scripts."""
from __future__ import annotations

import argparse
import importlib
import time

import jax
import numpy as np


def time_fn(fn, *args, repeats: int = 10, warmup: int = 2) -> float:
  """Median wall time in ms of jit(fn)(*args), compile excluded."""
  f = jax.jit(fn)
  for _ in range(warmup):
    jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t)
  times.sort()
  return 1e3 * times[len(times) // 2]


def peak_bytes(fn, *args) -> int:
  """XLA's compiled temp + output bytes for jit(fn)(*args): the working set."""
  compiled = jax.jit(fn).lower(*args).compile()
  m = compiled.memory_analysis()
  if m is None:
    return -1
  return int(m.temp_size_in_bytes + m.output_size_in_bytes)


def format_rows(rows, columns) -> str:
  """A fixed-width table of dicts, columns in the given order."""
  widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
  line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
  out = [line, "-" * len(line)]
  for r in rows:
    out.append("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
  return "\n".join(out)


def int_flags(description: str, **defaults: int) -> argparse.ArgumentParser:
  """A parser of the integer flags --<name> (underscores as dashes) with these defaults."""
  p = argparse.ArgumentParser(description=description)
  for name, default in defaults.items():
    p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
  return p


def method_setup(method: str, devices: int = 1, *, builder_config: str = "",
                 cache_dir: str = "", batch_size: int = 0):
  """(task, config, mesh, state) of a method's configs/<method>.py default, the
  state placed on the first `devices` devices as train/loop.py places it.

  A task with data to refresh before step 0 refreshes it (NetVLAD's
  hard-negative cache, which its sampler's miner reads).
  """
  from train import meshes, tasks
  config = importlib.import_module(f"configs.{method}").get_config()
  if batch_size:
    config.train.batch_size = batch_size
  config.data.builder_config = builder_config
  config.data.cache_dir = cache_dir
  task = tasks.get(method)
  mesh = meshes.make_mesh(jax.devices()[:devices])
  state = meshes.replicate(task.create_state(config, jax.random.key(config.seed)), mesh)
  if task.refresh_due(config, 0):
    task.refresh(meshes.on_all_devices(state, mesh), config)
  return task, config, mesh, state


def time_train_step(train_step, state, batches, mesh):
  """Compile time and median step time (s) of jit(train_step) on host batches.

  The batches are placed with meshes.shard_batch beforehand, as the loop does;
  batches[0] compiles and warms up, the others are timed. The state is
  donated: use the returned one. Returns (state, compiled step, compile_s,
  step_s); the compiled step takes further batches placed the same way.
  """
  from train import meshes
  if len(batches) < 2:
    raise ValueError(f"need >= 2 batches (one warm-up, one timed); got {len(batches)}.")
  placed = [meshes.shard_batch(b, mesh) for b in batches]
  fn = jax.jit(train_step, donate_argnums=(0,))
  t = time.perf_counter()
  compiled = fn.lower(state, placed[0]).compile()
  compile_s = time.perf_counter() - t
  state, m = compiled(state, placed[0])
  jax.block_until_ready(m)
  times = []
  for b in placed[1:]:
    t = time.perf_counter()
    state, m = compiled(state, b)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  return state, compiled, compile_s, float(np.median(times))
