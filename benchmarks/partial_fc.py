"""Partial FC: per-device memory and step time of the classifier, three ways.

One training step of the margin classifier alone (ArcFace margin, softmax
cross-entropy, gradients w.r.t. embeddings and weights, SGD momentum 0.9 on
the weights, as insightface trains MS1M), at D = 512 and a per-device batch
of 256, on every device (8 fake CPU devices by default):

  data parallel   W [D, C] and its momentum replicated on every device, the
                  batch split: what jaxset did before Partial FC;
  sharded         jaxset.ops.partial_fc: W split by class over a 'model'
                  axis of all devices, embeddings all-gathered;
  sampled 0.1     sharded, softmax over the positives plus sampled
                  negatives, 10% of each shard's classes (at least the
                  global batch), unsampled columns and their momentum kept.

Memory is per device, from the compiled executable's memory analysis
(compile only, nothing allocated, so C = 10M works too): args (weights,
momentum, embeddings), temp (the logits and other temporaries; XLA's
buffer assignment), and weight+opt (W and momentum bytes per device, from
the shard shape). Step time is the median of --steps executed steps (after
one warm-up step) for the classes in --time-classes, for the heads whose
n x (args + temp) fits in 70% of the host's memory (the fake devices share
it; the others print what they would need).

    python -m benchmarks.partial_fc [--classes 100000,1000000,10000000 \
        --time-classes 100000 --steps 3]
"""
from __future__ import annotations

import argparse
import os
import time

if "XLA_FLAGS" not in os.environ:  # before jax is imported
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from benchmarks import workloads  # noqa: E402
from benchmarks.common import format_rows  # noqa: E402


def _variants(devices):
  n = len(devices)
  dp_mesh = Mesh(np.asarray(devices), ("data",))
  pfc_mesh = Mesh(np.asarray(devices).reshape(1, n), ("data", "model"))
  return {"data parallel": workloads.data_parallel_classifier_step(dp_mesh),
          "sharded": workloads.sharded_classifier_step(pfc_mesh, 1.0),
          "sampled 0.1": workloads.sharded_classifier_step(pfc_mesh, 0.1)}


def _abstract(shapes, shardings):
  return [jax.ShapeDtypeStruct(s, d, sharding=sh) for (s, d), sh in zip(shapes, shardings)]


def rows(classes=(100_000, 1_000_000, 10_000_000), time_classes=(100_000,), dim=512,
         per_device_batch=256, steps=3):
  devices = jax.devices()
  n = len(devices)
  b = per_device_batch * n
  out = []
  for c in classes:
    c = -(-c // n) * n
    shapes = [((dim, c), jnp.float32), ((dim, c), jnp.float32), ((b, dim), jnp.float32),
              ((b,), jnp.int32), ((), jax.random.key(0).dtype)]
    for name, (step, in_sh, out_sh) in _variants(devices).items():
      fn = jax.jit(step, in_shardings=in_sh, out_shardings=out_sh, donate_argnums=(0, 1))
      t = time.perf_counter()
      compiled = fn.lower(*_abstract(shapes, in_sh)).compile()
      compile_s = time.perf_counter() - t
      m = compiled.memory_analysis()
      per_dev_cols = c // n if name != "data parallel" else c
      row = {"C": f"{c:,}", "head": name,
             "weight+opt_mb": round(2 * dim * per_dev_cols * 4 / 2**20, 1),
             "args_mb": round(m.argument_size_in_bytes / 2**20, 1),
             "temp_mb": round(m.temp_size_in_bytes / 2**20, 1),
             "compile_s": round(compile_s, 1)}
      # The fake devices share this host's memory: time only what fits in it.
      need = n * (m.argument_size_in_bytes + m.temp_size_in_bytes)
      if c in {-(-t_c // n) * n for t_c in time_classes}:
        if need < 0.7 * _host_bytes():
          row["step_ms"] = round(_time(compiled, in_sh, shapes, b, c, steps), 1)
        else:
          row["step_ms"] = f"(needs {need / 2**30:.0f} GB)"
      out.append(row)
  return out


def _host_bytes():
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _time(compiled, shardings, shapes, b, c, steps):
  rng = np.random.default_rng(0)
  w = jax.device_put(jnp.asarray(rng.normal(0, 0.01, shapes[0][0]), jnp.float32), shardings[0])
  mom = jax.device_put(jnp.zeros(shapes[1][0], jnp.float32), shardings[1])
  e = jax.device_put(jnp.asarray(rng.normal(size=shapes[2][0]), jnp.float32), shardings[2])
  labels = jax.device_put(jnp.asarray(rng.integers(0, c, b), jnp.int32), shardings[3])
  times = []
  for i in range(steps + 1):  # the first run warms up
    key = jax.device_put(jax.random.key(i), shardings[4])
    t = time.perf_counter()
    w, mom, ge, lval = compiled(w, mom, e, labels, key)
    jax.block_until_ready((w, mom, ge, lval))
    if i:
      times.append(time.perf_counter() - t)
  del w, mom
  return 1e3 * float(np.median(times))


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--classes", default="100000,1000000,10000000")
  p.add_argument("--time-classes", default="100000")
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--batch", type=int, default=256, help="per device")
  p.add_argument("--steps", type=int, default=3)
  a = p.parse_args()
  ints = lambda s: tuple(int(x) for x in s.split(",") if x)  # noqa: E731
  r = rows(ints(a.classes), ints(a.time_classes), a.dim, a.batch, a.steps)
  print(f"devices: {len(jax.devices())} x {jax.devices()[0].platform}, D={a.dim}, "
        f"batch {a.batch} per device")
  print(format_rows(r, ["C", "head", "weight+opt_mb", "args_mb", "temp_mb", "compile_s",
                        "step_ms"]))


if __name__ == "__main__":
  main()
