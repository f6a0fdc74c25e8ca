"""The main job's NetVLAD against raw pixels, the untrained network and avg / max /
GeM pooling trained the same way, all on the same split; written into docs/data.md.

  python -m benchmarks.netvlad_baselines [--seeds 0,1,2] [--poolings netvlad,avg,max,gem]
      [--split test] [--isa AVX2] [--workdir runs/netvlad_baselines] [--out docs/data.md]

Each trained row is the README's main job (configs/netvlad.py's default) with
--config.model.pooling and --config.seed changed, run in its own process (so that
XLA_FLAGS=--xla_cpu_max_isa=... can cap the instruction set XLA compiles for);
its per-query Recall@1 hits are kept in the workdir and reused by later calls.
Reference rows: nearest neighbour on mean-centred raw pixels; the untrained
network (random init, BatchNorm statistics and NetVLAD centroids set from
training images as before_training does, no pretraining, no training); the
pretrained network before NetVLAD training (the main job's "before" row).
Statistics: mean and sample std over seeds, and a paired bootstrap 95% interval
of NetVLAD minus each row (queries resampled, hits averaged over seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import measures, report

BEGIN = "<!-- BEGIN netvlad_baselines (python -m benchmarks.netvlad_baselines) -->"
END = "<!-- END netvlad_baselines -->"


def _config(pooling: str, seed: int, split: str, **extra):
  from configs.netvlad import get_config
  c = get_config()
  c.model.pooling, c.seed, c.eval.split = pooling, seed, split
  for k, v in extra.items():
    node = c
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return c


def run_one(kind: str, pooling: str, seed: int, split: str, workdir: Path) -> dict:
  """One row (in this process): kind = train | untrained | pretrained | pixels."""
  import jax

  from train import loop, tasks
  t0 = time.perf_counter()
  # The untrained network: no pretraining, every block's BatchNorm set from data.
  untrained = {"pretrain.steps": 0, "model.frozen_blocks": 0,
               "kmeans.bn_calibration_batches": 32}
  config = _config(pooling, seed, split, **(untrained if kind == "untrained" else {}))
  q_utm, db_utm = measures.place_utm(config)
  radius = config.eval.pos_radius
  if kind == "pixels":
    from jaxset.data import pipeline
    from train.tasks import common

    def pixels(part):
      src = common.source(config, f"{split}_{part}")
      rows = [b["image"][b["valid"]] for b in pipeline.eval_batches(src, batch_size=256,
                                                                    keys=["image"])]
      x = np.concatenate(rows).reshape(len(src), -1).astype(np.float32) / 255.0
      return x - x.mean(axis=1, keepdims=True)
    fq, fdb = pixels("queries"), pixels("database")
  else:
    task = tasks.get("netvlad")
    if kind == "train":
      flags = os.environ.get("XLA_FLAGS", "")
      isa = flags.split("--xla_cpu_max_isa=")[1].split()[0] if "max_isa=" in flags else "host"
      summary = loop.train_and_evaluate(config, workdir / f"{pooling}_s{seed}_{isa}_run",
                                        task=task)
      state = summary["state"]
    else:  # untrained (random init) or pretrained (before NetVLAD training)
      state = task.create_state(config, jax.random.key(config.seed))
      task.stages(config)
      state = task.before_training(state, config)
    fq, fdb = measures.place_features(task, state, config)
  hits = measures.place_hits_at_1(fq, fdb, q_utm, db_utm, radius)
  return {"kind": kind, "pooling": pooling, "seed": seed, "split": split,
          "recall@1": float(hits.mean()), "hits": hits.astype(int).tolist(),
          "wall_s": time.perf_counter() - t0,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def cached_run(kind, pooling, seed, split, workdir: Path, isa: str = "") -> dict:
  """run_one in a subprocess (XLA_FLAGS set there), cached as JSON in `workdir`."""
  tag = f"{kind}_{pooling}_s{seed}_{split}" + (f"_{isa}" if isa else "")
  path = workdir / f"{tag}.json"
  if not path.exists():
    env = dict(os.environ)
    if isa:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_cpu_max_isa={isa}").strip()
    cmd = [sys.executable, "-m", "benchmarks.netvlad_baselines", "--one",
           f"{kind},{pooling},{seed},{split}", "--workdir", str(workdir)]
    print(f"running {tag} ...", flush=True)
    res = subprocess.run(cmd, env=env)
    if res.returncode != 0:
      raise RuntimeError(f"{tag} failed (exit {res.returncode})")
  return json.loads(path.read_text())


def bootstrap_diff(a: np.ndarray, b: np.ndarray, reps: int = 10000, seed: int = 0):
  """Paired bootstrap 95% interval of mean(a) - mean(b) over queries (a, b: [Q] per-query
  scores, e.g. hits averaged over seeds)."""
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(a), size=(reps, len(a)))
  d = a[idx].mean(axis=1) - b[idx].mean(axis=1)
  return float(np.mean(a) - np.mean(b)), float(np.percentile(d, 2.5)), \
      float(np.percentile(d, 97.5))


def render(rows: dict, seeds, split: str, isa_rows: list, command: str) -> str:
  main = np.mean([r["hits"] for r in rows["netvlad"]], axis=0)
  lines = [BEGIN, "", f"Test split: `{split}` ({len(main)} queries); command: `{command}`.", "",
           "| row | Recall@1 (mean ± std over seeds) | per seed | NetVLAD minus row, "
           "paired bootstrap 95% CI |", "|---|---|---|---|"]
  for name, runs in rows.items():
    vals = [r["recall@1"] for r in runs]
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    per = ", ".join(f"{v:.3f}" for v in vals)
    if name == "netvlad":
      diff = "—"
    else:
      d, lo, hi = bootstrap_diff(main, np.mean([r["hits"] for r in runs], axis=0))
      diff = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    mean = (f"{np.mean(vals):.3f} ± {std:.3f} ({len(vals)} seeds)" if len(vals) > 1
            else f"{vals[0]:.3f} (one run)")
    lines.append(f"| {name} | {mean} | {per} | {diff} |")
  if isa_rows:
    lines += ["", "The trained NetVLAD with XLA's CPU code capped at another instruction "
              "set (`XLA_FLAGS=--xla_cpu_max_isa=...`):", "",
              "| seed | ISA cap | Recall@1 | default ISA | difference |", "|---|---|---|---|---|"]
    for r, base in isa_rows:
      lines.append(f"| {r['seed']} | {r['xla_flags']} | {r['recall@1']:.3f} | "
                   f"{base['recall@1']:.3f} | {r['recall@1'] - base['recall@1']:+.3f} |")
  walls = [r["wall_s"] for r in rows["netvlad"]]
  lines += ["", f"Trained NetVLAD runs took {min(walls):.0f}-{max(walls):.0f} s each in this "
            "benchmark (the backbone pretraining cached), wall clock on a shared machine.",
            "", END]
  return "\n".join(lines)


def write_between_markers(path: Path, text: str) -> None:
  doc = path.read_text()
  if BEGIN in doc and END in doc:
    doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
  else:
    doc = doc.rstrip("\n") + "\n\n" + text + "\n"
  path.write_text(doc)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--poolings", default="netvlad,avg,max,gem")
  ap.add_argument("--baseline_seeds", default="",
                  help="seeds of the untrained / pretrained / avg / max / GeM rows "
                  "(default: --seeds)")
  ap.add_argument("--split", default="test")
  ap.add_argument("--isa", default="AVX2", help="XLA ISA cap for the second run of each "
                  "NetVLAD seed in --isa_seeds ('' skips)")
  ap.add_argument("--isa_seeds", default="0")
  ap.add_argument("--workdir", default="runs/netvlad_baselines")
  ap.add_argument("--out", default="docs/data.md")
  ap.add_argument("--one", default="", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if args.one:
    kind, pooling, seed, split = args.one.split(",")
    res = run_one(kind, pooling, int(seed), split, workdir)
    isa = ""
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_cpu_max_isa=" in flags:
      isa = flags.split("--xla_cpu_max_isa=")[1].split()[0]
    tag = f"{kind}_{pooling}_s{seed}_{split}" + (f"_{isa}" if isa else "")
    (workdir / f"{tag}.json").write_text(json.dumps(res))
    print(f"{tag}: Recall@1 {res['recall@1']:.3f} ({res['wall_s']:.0f} s)", flush=True)
    return
  seeds = [int(s) for s in args.seeds.split(",")]
  others = [int(s) for s in (args.baseline_seeds or args.seeds).split(",")]
  rows = {"netvlad": [cached_run("train", "netvlad", s, args.split, workdir) for s in seeds]}
  rows["raw pixels (mean-centred)"] = [cached_run("pixels", "netvlad", 0, args.split, workdir)]
  rows["untrained network (random init)"] = [
      cached_run("untrained", "netvlad", s, args.split, workdir) for s in others]
  rows["pretrained network, NetVLAD not trained"] = [
      cached_run("pretrained", "netvlad", s, args.split, workdir) for s in others]
  for p in args.poolings.split(","):
    if p != "netvlad":
      rows[f"{p} pooling, trained the same way"] = [
          cached_run("train", p, s, args.split, workdir) for s in others]
  isa_rows = []
  if args.isa:
    for s in (int(x) for x in args.isa_seeds.split(",")):
      base = next(r for r in rows["netvlad"] if r["seed"] == s)
      isa_rows.append((cached_run("train", "netvlad", s, args.split, workdir, args.isa), base))
  command = report.report_command("benchmarks.netvlad_baselines", argv or sys.argv[1:])
  text = render(rows, seeds, args.split, isa_rows, command.strip())
  print(text)
  write_between_markers(Path(args.out), text)


if __name__ == "__main__":
  main()
