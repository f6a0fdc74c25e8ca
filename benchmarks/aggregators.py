"""NetVLAD and its successors on the embedded places, both training modes, one budget.

  python -m benchmarks.aggregators [--steps 60] [--poolings netvlad,salad]
                                   [--modes tuples,pk] [--out docs/aggregators.md]

Every aggregator of configs/netvlad.py (netvlad, gem, salad, mixvpr, boq,
convap) is trained from scratch with the same backbone (small_cnn, 64x64),
optimizer (Adam 1e-3, cosine), seed, number of steps and BatchNorm calibration
(8 batches before training),
in each mode:
"tuples" (NetVLAD's query / positives / mined negatives and ranking loss) and
"pk" (P places x K views, multi-similarity loss and miner). Both modes see 60
images a step. Reported: Recall@1/5/10 (25 m) on the test split after
training, the descriptor size, and the step time of the loop (wall time per
step between log lines, after the first: data loading and, in tuples mode,
the feature-cache refreshes included; compile and evaluation excluded). The
table is printed and written to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.common import format_rows  # noqa: E402

POOLINGS = ("netvlad", "gem", "salad", "mixvpr", "boq", "convap")
MODES = ("tuples", "pk")
# Fewer BatchNorm calibration passes than the config's 32 (the same for every
# run): they cost as much as ~40 training steps on two shared cores.
BN_CALIBRATION_BATCHES = 8
COLUMNS = ("pooling", "mode", "dims", "recall@1", "recall@5", "recall@10", "step_ms", "run_s")


def run_one(pooling: str, mode: str, steps: int, workdir: str) -> dict:
  import importlib

  from train import loop, tasks
  config = importlib.import_module("configs.netvlad").get_config()
  config.model.pooling = pooling
  config.train.mode = mode
  config.train.steps = steps
  config.train.log_every = 10
  config.train.ckpt_every = steps
  config.train.progress_bar = False
  config.eval.at_start = False
  config.kmeans.bn_calibration_batches = BN_CALIBRATION_BATCHES
  task = tasks.get("netvlad")
  t = time.perf_counter()
  summary = loop.train_and_evaluate(config, workdir, task=task)
  run_s = time.perf_counter() - t
  rows = [json.loads(r) for r in open(os.path.join(workdir, "metrics.jsonl"))]
  rates = [r["examples_per_s"] for r in rows if r["split"] == "train"][1:]
  # The loop's examples_per_s counts the leading dim of a batch's first leaf:
  # images in pk mode, tuples (queries) in tuples mode.
  examples = config.pk.places * config.pk.views if mode == "pk" else config.train.batch_size
  after = summary["after"]
  return {"pooling": pooling, "mode": mode, "dims": task._dim(config),
          **{f"recall@{n}": f"{after[f'recall@{n}']:.3f}" for n in (1, 5, 10)},
          "step_ms": f"{1e3 * examples / float(np.median(rates)):.0f}" if rates else "",
          "run_s": f"{run_s:.0f}"}


def markdown(rows, steps: int, command: str, total_s: float) -> str:
  head = "| " + " | ".join(COLUMNS) + " |"
  sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
  body = ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
  return "\n".join([
      "# Aggregators on the embedded places",
      "",
      "NetVLAD (Arandjelovic et al., CVPR 2016), GeM, SALAD (Izquierdo & Civera, CVPR 2024, "
      "arXiv 2311.15937), MixVPR (Ali-bey et al., WACV 2023, arXiv 2303.02190), BoQ "
      "(Ali-bey et al., CVPR 2024, arXiv 2405.07364) and ConvAP (Ali-bey et al., "
      "GSV-Cities, arXiv 2210.10239), each trained from scratch on the embedded "
      "`synthetic_places` with the same backbone (small_cnn, 64x64 images, an 8x8x128 "
      f"map), optimizer (Adam 1e-3, cosine), seed 0 and budget ({steps} steps of 60 images; "
      f"{BN_CALIBRATION_BATCHES} BatchNorm calibration batches before training), "
      "in both training modes of `configs/netvlad.py`:",
      "",
      "- `tuples`: NetVLAD's tuples (4 queries x (1 + 4 positives + 10 mined negatives)), "
      "the weakly supervised ranking loss, hard negatives from a feature cache built before "
      f"the first step and refreshed every 400 queries ({4 * steps} queries in a run);",
      "- `pk`: 15 places x 4 views (`jaxset/data/samplers/places.py`), the multi-similarity "
      "loss and "
      "miner (Wang et al., CVPR 2019, arXiv 1904.06627) with GSV-Cities' alpha 1, beta 50, "
      "base 0, epsilon 0.1.",
      "",
      "The aggregators' sizes are shrunk for the small map (`configs/netvlad.py` lists them "
      "next to the papers'); `dims` is the descriptor size. Recall@N (25 m) is on the test "
      "split after training. `step_ms` is the loop's wall time per step (data loading and "
      "cache refreshes included, compile and evaluation excluded); `run_s` the whole run "
      "with its evaluation. A short budget on a toy city: the table compares the methods "
      "under one protocol here, not their published numbers.",
      "",
      head, sep, *body,
      "",
      f"Produced by `{command}` in {total_s / 60:.1f} min on {platform.machine()} "
      f"({os.cpu_count()} cores, shared), from a clean checkout.",
      ""])


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m benchmarks.aggregators", description=__doc__)
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--poolings", default=",".join(POOLINGS))
  p.add_argument("--modes", default=",".join(MODES))
  p.add_argument("--out", default="docs/aggregators.md")
  a = p.parse_args(argv)
  rows = []
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    for pooling in a.poolings.split(","):
      for mode in a.modes.split(","):
        rows.append(run_one(pooling, mode, a.steps, os.path.join(tmp, f"{pooling}_{mode}")))
        print(format_rows(rows[-1:], COLUMNS), flush=True)
  total = time.perf_counter() - t0
  print(format_rows(rows, COLUMNS))
  command = "python -m benchmarks.aggregators" + (f" --steps {a.steps}" if a.steps != 60 else "")
  if a.out:
    with open(a.out, "w") as f:
      f.write(markdown(rows, a.steps, command, total))
    print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
