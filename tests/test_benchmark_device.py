"""benchmarks/device.py --quick runs unchanged on CPU and prints its utilisation column."""
from __future__ import annotations

import re
import sys

from tests.train_helpers import run_main


def test_device_benchmark_quick_runs_on_cpu_and_prints_utilisation():
  r = run_main([sys.executable, "-m", "benchmarks.device", "--quick"], timeout=900,
               XLA_FLAGS="")
  assert r.returncode == 0, r.stderr[-3000:]
  out = r.stdout
  assert "measured float32 matmul on this CPU" in out, out
  header = next(line for line in out.splitlines() if line.startswith("row "))
  assert header.split() == ["row", "shape", "compile_s", "step_ms", "samples_s", "peak_gb",
                            "tflops", "mfu"]
  rows = {line.split("  ")[0].strip(): line for line in out.splitlines()
          if re.match(r"^(adaface|netvlad|casn|partial_fc|margin|eqface|adaface_logits|"
                      r"search)", line)}
  for name in ("adaface", "netvlad", "casn", "partial_fc", "partial_fc sampled 0.1",
               "search (nearest_neighbors)"):
    assert name in rows, (name, out)
    assert "ERROR" not in rows[name] and "skipped" not in rows[name], rows[name]
    # The utilisation column: a positive, finite percentage on every row.
    mfu = float(rows[name].split()[-1].rstrip("%"))
    assert 0 < mfu < float("inf"), rows[name]


def test_device_peak_by_kind():
  import math
  from types import SimpleNamespace

  from benchmarks.workloads import device_peak
  gpu = lambda kind: SimpleNamespace(platform="gpu", device_kind=kind)
  assert device_peak(gpu("NVIDIA H100 80GB HBM3"))[0] == 989e12
  assert device_peak(gpu("NVIDIA H100 PCIe"))[0] == 756e12
  assert device_peak(gpu("NVIDIA H200"))[0] == 989e12
  assert device_peak(gpu("NVIDIA A100-SXM4-80GB"))[0] == 312e12
  assert device_peak(SimpleNamespace(platform="tpu", device_kind="TPU v5 lite"))[0] == 197e12
  assert device_peak(SimpleNamespace(platform="tpu", device_kind="TPU v5"))[0] == 459e12
  peak, why = device_peak(gpu("Some Future GPU"))
  assert math.isnan(peak) and "PEAK_BF16" in why
