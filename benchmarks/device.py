"""One-shot accelerator benchmark: every config's train step at the papers' shapes, one table.

  python -m benchmarks.device            # one GPU or TPU: at most ~9 minutes
  python -m benchmarks.device --quick    # tiny shapes, any machine (CPU: about a minute)

Rows (each a jitted step, compiled once, timed over --steps runs after one
warm-up run):

  adaface   IResNet-50, 112x112, batch 512, the MS1MV2 classifier (85,742 classes)
  netvlad   VGG16 + NetVLAD (K = 64), 480x640, 4 tuples of 1 + 10 + 10 images
  casn      ResNet-50 re-ID, 256x128, batch 64 (16 x 4), the Market-1501 classes (751)
  partial_fc  the class-sharded ArcFace head alone (benchmarks/partial_fc.py's step),
            1M and 10M classes on one device, batch 512, D = 512; 10M also at 10%
  margins   margin heads' forward + backward on the cosines (benchmarks/ops_margins.py),
            B = 1024, D = 512, C = 1M
  search    jaxset.eval.retrieval.nearest_neighbors, 10k queries x 1M database,
            D = 512, k = 100 (what evaluation runs)

The three configs are the tasks' own steps (train/tasks/*.py stages, jitted as
train/loop.py jits them) in config.train.precision = "bfloat16", on synthetic
uint8 batches of the real shapes (no dataset is read). Columns:

  compile_s  lower + compile of the step;
  step_ms    median wall time of a step (inputs on the device);
  samples_s  images (netvlad: tuples) per second;
  peak_gb    XLA's buffer assignment of the compiled step (arguments + temporaries
             + outputs, minus donated); the last line gives the allocator's peak
             over the whole run on GPU/TPU;
  tflops     XLA's cost analysis of the compiled step: its floating-point
             operations (backward and recomputation included) per step time;
  mfu        tflops / the device's peak dense bfloat16 FLOP/s (workloads.PEAK_BF16 below;
             on CPU: this machine's measured float32 matmul rate, so the
             column is utilisation of what this CPU does on a large matmul).

Rows that would start after --budget_s seconds are skipped (and say so), so the
whole run fits one accelerator session; order is the table's.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# jax takes 75% of a GPU's memory by default; the 10M-class Partial FC row needs more.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import workloads  # noqa: E402
from benchmarks.common import format_rows  # noqa: E402

COLUMNS = ("row", "shape", "compile_s", "step_ms", "samples_s", "peak_gb", "tflops", "mfu")


# --------------------------------------------------------------------------
# The device and its peak


def allocator_peak(device) -> float:
  """The device allocator's peak bytes in use so far (nan where not reported, e.g. CPU)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return float((stats or {}).get("peak_bytes_in_use", float("nan")))


def run_timed(compiled, args, steps: int, carry: int = 0):
  """(median seconds, last output) of `steps` runs after one warm-up run; the
  first `carry` outputs are the next run's first arguments (what the step
  donates: a train state, Partial FC's weight and momentum)."""
  out = compiled(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(steps):
    args = tuple(out[:carry]) + tuple(args[carry:])
    t = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t)
  return float(np.median(times)), out


def measure(name, shape, fn, args, samples, steps, peak, device, carry=0, flops=None):
  """One row: compile `fn` (jitted) at `args`, time it, and derive the columns."""
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t
  step_s, _ = run_timed(compiled, args, steps, carry)
  flops = workloads.step_flops(compiled) if flops is None else flops
  mem = workloads.compiled_bytes(compiled)
  return {"row": name, "shape": shape, "compile_s": f"{compile_s:.1f}",
          "step_ms": f"{1e3 * step_s:.2f}", "samples_s": f"{samples / step_s:,.0f}",
          "peak_gb": f"{mem / 2**30:.2f}", "tflops": f"{flops / step_s / 1e12:.3f}",
          "mfu": f"{flops / step_s / peak:.1%}"}


# --------------------------------------------------------------------------
# The configs' own train steps on synthetic batches


def config_row(method: str, size: dict, steps: int, peak: float, device) -> dict:
  step, state, batch, samples = workloads.config_step(method, size, device)
  h, w = size["image"]
  if method == "netvlad":
    what = (f"{size['backbone']} {h}x{w} {size['batch']}x(1+{size['positives']}"
            f"+{size['negatives']})")
  else:
    what = f"{size['backbone']} {h}x{w} b{size['batch']}"
    what += f" C{size['classes']:,}" if method == "adaface" else ""
  return measure(method, what + " bf16", step, (state, batch), samples, steps, peak, device,
                 carry=1)


# --------------------------------------------------------------------------
# Partial FC, the margin heads and the search at accelerator sizes

def partial_fc_rows(size: dict, steps: int, peak: float, device) -> list[dict]:
  from jax.sharding import Mesh

  mesh = Mesh(np.asarray([device]).reshape(1, 1), ("data", "model"))
  b, d = size["batch"], size["dim"]
  rows = []
  variants = [(c, 1.0) for c in size["classes"]] + [(c, 0.1) for c in size["sampled"]]
  for c, rate in variants:
    step, in_sh, out_sh = workloads.sharded_classifier_step(mesh, rate)
    fn = jax.jit(step, in_shardings=in_sh, out_shardings=out_sh, donate_argnums=(0, 1))
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    # Drawn on the device: 10M x 512 floats are 20 GB.
    w = jax.jit(lambda k: 0.01 * jax.random.normal(k, (d, c), jnp.float32),
                out_shardings=in_sh[0])(k1)
    mom = jax.jit(lambda: jnp.zeros((d, c), jnp.float32), out_shardings=in_sh[1])()
    args = [w, mom] + [jax.device_put(x, s) for x, s in zip(
        (jax.random.normal(k2, (b, d), jnp.float32), jax.random.randint(k3, (b,), 0, c),
         jax.random.key(0)), in_sh[2:])]
    name = "partial_fc" + (f" sampled {rate:g}" if rate < 1 else "")
    rows.append(measure(name, f"C{c:,} D{d} b{b} f32", fn, args, b, steps, peak, device,
                        carry=2))
    del args, w, mom
  return rows


def margins_rows(size: dict, steps: int, peak: float, device) -> list[dict]:
  b, d, c = size["batch"], size["dim"], size["classes"]
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  emb = jax.device_put(jax.random.normal(k1, (b, d), jnp.float32), device)
  weights = jax.device_put(jax.random.normal(k2, (d, c), jnp.float32), device)
  labels = jax.device_put(jax.random.randint(k3, (b,), 0, c), device)
  quality = jax.device_put(jax.random.uniform(k4, (b,), jnp.float32, 0.2, 1.0), device)
  losses = workloads.margin_losses(labels, quality, jnp.linalg.norm(emb, axis=1))
  keep = {("margin_logits", "exact arcface"), ("margin_cross_entropy", "exact arcface, fused"),
          ("eqface_logits", "paper"), ("adaface_logits", "official")}
  rows = []
  for (op, variant), loss in losses.items():
    if (op, variant) not in keep:
      continue
    fn = jax.jit(jax.grad(lambda e, w, f=loss: f(workloads.cosines(e, w)), argnums=(0, 1)))
    rows.append(measure(f"{op} ({variant})", f"B{b} D{d} C{c:,} f32", fn, (emb, weights), b,
                        steps, peak, device))
  return rows


def search_row(size: dict, steps: int, peak: float, device) -> dict:
  """nearest_neighbors as evaluation calls it (host arrays in, host arrays out)."""
  from jaxset.eval.retrieval import nearest_neighbors
  q_n, n, d, k = size["queries"], size["database"], size["dim"], size["k"]
  rng = np.random.default_rng(0)
  q = rng.standard_normal((q_n, d), dtype=np.float32)
  db = rng.standard_normal((n, d), dtype=np.float32)
  t = time.perf_counter()
  nearest_neighbors(q, db, k, chunk_size=1024)
  first_s = time.perf_counter() - t
  times = []
  for _ in range(max(1, steps // 3)):
    t = time.perf_counter()
    nearest_neighbors(q, db, k, chunk_size=1024)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  flops = 2.0 * q_n * n * d  # the distance matmul; top-k is comparisons
  return {"row": "search (nearest_neighbors)", "shape": f"Q{q_n:,} N{n:,} D{d} k{k} f32",
          "compile_s": f"{max(first_s - step_s, 0):.1f}", "step_ms": f"{1e3 * step_s:.1f}",
          "samples_s": f"{q_n / step_s:,.0f}", "peak_gb": "",
          "tflops": f"{flops / step_s / 1e12:.3f}", "mfu": f"{flops / step_s / peak:.1%}"}


# --------------------------------------------------------------------------

def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run)")
  ap.add_argument("--steps", type=int, default=0, help="timed runs per row (0: 10, quick 3)")
  ap.add_argument("--budget_s", type=float, default=480.0,
                  help="skip the rows that would start after this many seconds")
  ap.add_argument("--rows", default="adaface,netvlad,casn,partial_fc,margins,search")
  args = ap.parse_args(argv)
  sizes = workloads.QUICK if args.quick else workloads.FULL
  steps = args.steps or (3 if args.quick else 10)
  start = time.perf_counter()
  device = jax.devices()[0]
  peak, peak_src = workloads.device_peak(device)
  print(f"{datetime.date.today()}  device: {device.device_kind} ({device.platform}), "
        f"{jax.device_count()} device(s); jax {jax.__version__}, python "
        f"{platform.python_version()}; peak {peak / 1e12:.4g} TFLOP/s ({peak_src}); "
        f"load average {os.getloadavg()[0]:.1f}"
        + ("; --quick (tiny shapes)" if args.quick else ""), flush=True)
  table = []
  for row in args.rows.split(","):
    elapsed = time.perf_counter() - start
    if elapsed > args.budget_s:
      table.append({"row": row, "shape": f"skipped: {elapsed:.0f} s > --budget_s"})
      continue
    try:
      if row in ("adaface", "netvlad", "casn"):
        table.append(config_row(row, sizes[row], steps, peak, device))
      elif row == "partial_fc":
        table += partial_fc_rows(sizes[row], steps, peak, device)
      elif row == "margins":
        table += margins_rows(sizes[row], steps, peak, device)
      elif row == "search":
        table.append(search_row(sizes[row], steps, peak, device))
      else:
        raise ValueError(f"unknown row {row!r}")
    except Exception as e:  # one failing row (e.g. out of memory) must not hide the others
      table.append({"row": row, "shape": f"ERROR {type(e).__name__}: {e}"[:120]})
    print(f"  done {row} at {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
  print(format_rows(table, COLUMNS))
  print(f"total {time.perf_counter() - start:.0f} s; allocator peak over the run "
        f"{allocator_peak(device) / 2**30:.2f} GB (nan: not reported on this platform)")
  return table


if __name__ == "__main__":
  main()
