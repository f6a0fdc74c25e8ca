"""Train-step cost of every method at its embedded default config.

  python -m benchmarks.train [--methods arcface,qan] [--steps 5] [--devices 1,8]
                             [--builder_config tiny] [--cache_dir DIR]

For each method and device count: the compile time of the jitted train step
(first stage; lower + compile), the median step time over --steps steps after
one warm-up step, and examples/s. The steps are the tasks' own
create_state/stages with batches placed as the loop does (train/loop.py), so
this is the real step. The devices are fake CPU devices
(--xla_force_host_platform_device_count=8) that share this machine's cores:
1 -> 8 measures the overhead of sharding, not a speed-up. A config batch that
the largest device count does not divide (NetVLAD's paper batch of 4 tuples)
is rounded up to a multiple of it for every device count, so that each
method is compared at one global batch; the table's batch column shows it.

tflops and mfu: XLA's cost analysis of the compiled step (its floating-point
operations, all devices together) per step time, and that against this CPU's
measured float32 matmul rate (benchmarks/device.py's model FLOP utilisation,
whose accelerator rows use the datasheet peak instead).
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import format_rows, method_setup, time_train_step  # noqa: E402
from benchmarks.workloads import device_peak, step_flops  # noqa: E402
from train.tasks import METHODS  # noqa: E402


def bench(method: str, devices: int, steps: int, builder_config: str, cache_dir: str,
          batch_size: int = 0, peak: float = float("nan")) -> dict:
  task, config, mesh, state = method_setup(method, devices, builder_config=builder_config,
                                           cache_dir=cache_dir, batch_size=batch_size)
  stage = list(task.stages(config))[0]
  iterator = stage.make_iterator()
  batches = [next(iterator) for _ in range(steps + 1)]
  examples = int(np.shape(jax.tree.leaves(batches[0])[0])[0])
  _, compiled, compile_s, step_s = time_train_step(stage.train_step, state, batches, mesh)
  flops = step_flops(compiled)
  return {"method": method, "stage": stage.name, "devices": devices,
          "batch": examples, "compile_s": f"{compile_s:.2f}",
          "step_ms": f"{1e3 * step_s:.1f}", "examples_s": f"{examples / step_s:.0f}",
          "tflops": f"{flops / step_s / 1e12:.4f}", "mfu": f"{flops / step_s / peak:.1%}"}


def common_batch(method: str, devices: int) -> int:
  """The config's batch size, rounded up to a multiple of `devices`."""
  batch = importlib.import_module(f"configs.{method}").get_config().train.batch_size
  rounded = -(-batch // devices) * devices
  if rounded != batch:
    print(f"note: {method}'s batch {batch} rounded up to {rounded} so that {devices} "
          "devices divide it (the same batch on every device count).")
  return rounded


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--devices", default="1,8")
  ap.add_argument("--builder_config", default="", help="'' = default; tiny for a smoke run")
  ap.add_argument("--cache_dir", default="")
  ap.add_argument("--batch_size", type=int, default=0,
                  help="0 = the config's; tiny data needs a small one (e.g. 16)")
  args = ap.parse_args()
  print(f"machine: {platform.machine()} {platform.processor() or ''} "
        f"{os.cpu_count()} cores, python {platform.python_version()}, jax {jax.__version__}, "
        f"backend {jax.default_backend()}, {jax.device_count()} devices")
  print("note: the fake CPU devices share the same cores; 1 -> 8 devices measures "
        "sharding overhead, not speed-up.")
  peak, peak_src = device_peak(jax.devices()[0])
  print(f"peak for mfu: {peak / 1e9:.1f} GFLOP/s ({peak_src})", flush=True)
  rows = []
  device_counts = [int(d) for d in args.devices.split(",")]
  for method in args.methods.split(","):
    batch_size = args.batch_size or common_batch(method, max(device_counts))
    for n in device_counts:
      try:
        rows.append(bench(method, n, args.steps, args.builder_config, args.cache_dir,
                          batch_size, peak))
      except Exception as e:  # one broken method should not hide the others
        error = f"ERROR {type(e).__name__}: {e}"[:80]
        rows.append({"method": method, "devices": n, "stage": error})
      print(f"  done {method} on {n} device(s)", file=sys.stderr, flush=True)
  cols = ["method", "stage", "devices", "batch", "compile_s", "step_ms", "examples_s",
          "tflops", "mfu"]
  print(format_rows(rows, cols))
  by = {(r["method"], r["devices"]): r for r in rows if "step_ms" in r}
  for method in args.methods.split(","):
    if (method, 1) in by and (method, 8) in by:
      ratio = float(by[(method, 8)]["step_ms"]) / float(by[(method, 1)]["step_ms"])
      print(f"{method}: step time 8 devices / 1 device = {ratio:.2f}")


if __name__ == "__main__":
  main()
