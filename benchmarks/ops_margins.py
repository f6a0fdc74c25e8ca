"""Margin heads: forward + backward cost next to the bare cosine matmul.

Each row times jit(grad) of the mean softmax cross-entropy of one head,
INCLUDING the cosine matmul: embeddings [B, D] and class weights [D, C] are
L2-normalised and multiplied, the head turns the cosines into logits and
the cross-entropy into a loss, and the gradient is taken w.r.t. embeddings
and weights (as in training). The reference ("bare matmul") is the same
step with the plainest head, logits s * cos, and the same cross-entropy
(optax): ratio = the head's step time / the reference's. The logit rows
are margins.py's heads followed by optax; the fused rows
(jaxset.ops.margin_ce) compute head and cross-entropy in one op without a
[B, C] logit array. The target (issue 13): every head, cross-entropy
included, within 1.1x of the reference, and no head holding more than one
[B, C] float32 array (the cosines the matmul writes, or their gradient).

Timing on a shared machine: every head is compiled and warmed up first, then
the heads run round-robin, one call each per round, for --rounds rounds
(the order rotated each round), so that load from other processes falls on
all of them alike. ms is the fastest call of each head (wall clock, the
least disturbed), median_ms its median, ratio = ms / the reference's ms.
cpu_ms is the fewest CPU seconds of the process a call took
(time.process_time: time spent waiting for a busy core is not counted),
cpu_ratio its ratio to the reference's. Pinned to one core, XLA runs one
thread and cpu_ms is the step's single-core cost, steady even when other
jobs share the machine: `taskset -c 1 python -m benchmarks.ops_margins`.
The header prints the CPU affinity and the load average before and after.

Memory: peak_mb is XLA's compiled temp + output bytes of the whole step
(benchmarks.common.peak_bytes: the outputs are the [D, C] weight gradient
and the embedding gradient, the temporaries include W's normalised copy;
XLA reuses those buffers for [B, C] arrays that die before they are
written, so peak_mb only grows by what does not fit). head_bxc isolates the
head: temp + output bytes of the gradient of head + cross-entropy w.r.t.
given cosines, in [B, C] float32 arrays; 1.0 is the minimum, the cosine
gradient it returns. "plain autodiff" is the usual ArcFace for comparison:
the margin computed over the whole matrix, a one-hot select, autodiff.

    python -m benchmarks.ops_margins [--batch 256 --dim 512 --classes 50000 --rounds 15]
    taskset -c 1 python -m benchmarks.ops_margins   # one core: steadier times
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import workloads
from benchmarks.common import format_rows, int_flags, peak_bytes

BASELINE = workloads.BASELINE
COLUMNS = ("op", "variant", "shape", "ms", "median_ms", "cpu_ms", "ratio", "cpu_ratio",
           "peak_mb", "head_bxc")


def _steps(losses):
  """{(op, variant): jit(grad of the loss w.r.t. (embeddings, weights))}."""
  return {key: jax.jit(jax.grad(lambda e, w, f=f: f(workloads.cosines(e, w)), argnums=(0, 1)))
          for key, f in losses.items()}


def interleaved_ms(steps, args, rounds: int, warmup: int = 1):
  """({key: [wall ms of each round]}, {key: [CPU ms of each round]}): every
  step called once per round, round-robin, the starting step rotated each
  round (compile and warm-up excluded)."""
  keys = list(steps)
  for key in keys:
    for _ in range(warmup):
      jax.block_until_ready(steps[key](*args))
  wall, cpu = {key: [] for key in keys}, {key: [] for key in keys}
  for r in range(rounds):
    for key in keys[r % len(keys):] + keys[:r % len(keys)]:
      t, c = time.perf_counter(), time.process_time()
      jax.block_until_ready(steps[key](*args))
      wall[key].append(1e3 * (time.perf_counter() - t))
      cpu[key].append(1e3 * (time.process_time() - c))
  return wall, cpu


def rows(batch: int = 256, dim: int = 512, classes: int = 50_000, rounds: int = 15):
  """One dict per head (COLUMNS); see the module docstring."""
  rng = np.random.default_rng(0)
  emb = jnp.asarray(rng.standard_normal((batch, dim)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((dim, classes)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, classes, batch), jnp.int32)
  quality = jnp.asarray(rng.uniform(0.2, 1.0, batch), jnp.float32)
  norms = jnp.linalg.norm(emb, axis=1)
  losses = workloads.margin_losses(labels, quality, norms)
  steps = _steps(losses)
  peak = {key: peak_bytes(step, emb, weights) for key, step in steps.items()}
  cos = jax.ShapeDtypeStruct((batch, classes), jnp.float32)
  bxc = batch * classes * 4
  head = {key: peak_bytes(jax.grad(f), cos) / bxc for key, f in losses.items()}
  wall, cpu = interleaved_ms(steps, (emb, weights), rounds)
  best = {key: min(t) for key, t in wall.items()}
  median = {key: float(np.median(t)) for key, t in wall.items()}
  best_cpu = {key: min(t) for key, t in cpu.items()}
  out = []
  for op, variant in steps:
    key = (op, variant)
    out.append({"op": op, "variant": variant, "shape": f"B{batch} D{dim} C{classes}",
                "ms": round(best[key], 1), "median_ms": round(median[key], 1),
                "cpu_ms": round(best_cpu[key], 1),
                "ratio": round(best[key] / best[BASELINE], 3),
                "cpu_ratio": round(best_cpu[key] / best_cpu[BASELINE], 3),
                "peak_mb": round(peak[key] / 2**20, 1),
                "head_bxc": round(head[key], 2)})
  return out


def main():
  a = int_flags(__doc__, batch=256, dim=512, classes=50_000, rounds=15).parse_args()
  load = os.getloadavg()
  r = rows(a.batch, a.dim, a.classes, a.rounds)
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, "
        f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs, {a.rounds} rounds; "
        f"load average (1, 5, 15 min) before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        "after {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
  print(format_rows(r, COLUMNS))


if __name__ == "__main__":
  main()
