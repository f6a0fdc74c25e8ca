"""Timing and memory helpers shared by the benchmark scripts."""
from __future__ import annotations

import time

import jax


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
