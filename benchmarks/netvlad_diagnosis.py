"""Why the NetVLAD main job learns what it learns: validation learning curves and
ablations, and how float16 / near-ties change the mined hard negatives.

  python -m benchmarks.netvlad_diagnosis [--seeds 0,1,2] [--ablations default,...]
      [--ablation_seeds 0] [--every 250] [--workdir runs/netvlad_diagnosis]
      [--out docs/netvlad_diagnosis.md]

1. Learning curves: the main job (configs/netvlad.py) with eval.split=val and
   eval.every=--every, per seed; and per ablation (--ablation_seeds), one
   override set each (ABLATIONS). Runs are kept in the workdir; a finished run is only read.
2. Mining precision: for the pretrained network before NetVLAD training, the
   hard negatives of every training query (the 10 nearest of its far database
   images) from float32 features, from the same features cast to float16, and
   from float32 features perturbed by 1e-7 relative noise (what another
   instruction set's XLA kernels change), with and without the tie tolerance
   of train/tasks/netvlad.py: the share of queries whose hard-negative list changes.
3. Per time of day: raw pixels and the pretrained network before NetVLAD
   training, per query condition, on the default city and on day_night.
Only the validation split is used.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks import measures, report

ABLATIONS = {
    "default": {},
    "no pretraining (from scratch, all blocks trained)": {
        "pretrain.steps": 0, "model.frozen_blocks": 0, "kmeans.bn_calibration_batches": 32},
    "all blocks fine-tuned": {"model.frozen_blocks": 0},
    "two blocks fine-tuned and lr 1e-4": {"model.frozen_blocks": 2, "optim.lr": 1e-4},
    "lr 1e-4": {"optim.lr": 1e-4},
    "1000 steps": {"train.steps": 1000},
    "one cache refresh (at step 0 only)": {"mining.refresh_every": 10 ** 9},
    "no hard-negative mining (random negatives)": {"mining.enabled": False},
}


def run_curve(name: str, overrides: dict, seed: int, every: int, workdir: Path) -> list:
  """[(step, val recall@1)] of one run (train.main in a subprocess; reused if done)."""
  tag = "".join(ch if ch.isalnum() else "_" for ch in name)[:40] + f"_s{seed}"
  run = workdir / tag
  metrics = run / "metrics.jsonl"
  done = run / "done"
  if not done.exists():
    over = {"eval.split": "val", "eval.every": every, "seed": seed,
            "train.progress_bar": False, **overrides}
    cmd = [sys.executable, "-m", "train.main", "--config=configs/netvlad.py",
           f"--workdir={run}"] + [f"--config.{k}={v}" for k, v in over.items()]
    print(f"running {tag} ...", flush=True)
    subprocess.run(cmd, check=True)
    done.write_text("")
  curve = []
  for line in metrics.read_text().splitlines():
    rec = json.loads(line)
    if rec["split"] == "eval":
      curve.append((rec["step"], rec["recall@1"]))
  return curve


def mining_precision(seed: int = 0) -> dict:
  """Share of training queries whose 10 hardest negatives change under float16
  features and under 1e-7 relative feature noise (with / without tie tolerance)."""
  import jax

  from configs.netvlad import get_config
  from train import tasks
  from train.tasks import common
  from train.tasks import netvlad as tn

  c = get_config()
  c.seed = seed
  task = tasks.get("netvlad")
  state = task.create_state(c, jax.random.key(seed))
  task.stages(c)
  state = task.before_training(state, c)
  model = task.model(c)

  def describe(state, batch):
    return {"f": model.apply({"params": state.params, **state.model_state},
                             batch["image"])["descriptor"]}

  db, queries = task._sources(c)
  fdb = common.extract(describe, state, db, c, keys=["image"])["f"]
  fq = common.extract(describe, state, queries, c, keys=["image"])["f"]
  far = task._far(c)
  rng = np.random.default_rng(seed)
  noise = lambda x: x * (1 + 1e-7 * rng.standard_normal(x.shape)).astype(np.float32)  # noqa

  def lists(fq, fdb, tolerance):
    dist = tn._distance_matrix(fq, fdb)
    out = []
    for q, cand in enumerate(far):
      d = dist[q, cand]
      order = (np.lexsort((cand, np.round(d.astype(np.float64) / tolerance))) if tolerance
               else np.argsort(d, kind="stable"))
      out.append(tuple(cand[order[:10]]))
    return out

  def changed(a, b):
    return float(np.mean([x != y for x, y in zip(a, b)]))

  ref = lists(fq, fdb, 0)
  ref_tol = lists(fq, fdb, tn.TIE_TOLERANCE)
  half = lists(fq.astype(np.float16), fdb.astype(np.float16), 0)
  pq, pdb = noise(fq), noise(fdb)
  return {"float16 vs float32": changed(ref, half),
          "1e-7 noise, exact ranking": changed(ref, lists(pq, pdb, 0)),
          f"1e-7 noise, tie tolerance {tn.TIE_TOLERANCE:g}": changed(
              ref_tol, lists(pq, pdb, tn.TIE_TOLERANCE))}


def per_time_of_day(builder_config: str) -> dict:
  """Validation Recall@1 per query time of day: raw pixels (mean-centred) and the
  pretrained network before NetVLAD training, on synthetic_places `builder_config`."""
  import jax

  from configs.netvlad import get_config
  from jaxset.data.samplers.evaluation import eval_batches
  from train import tasks
  from train.tasks import common

  c = get_config()
  c.eval.split = "val"
  c.data.builder_config = builder_config
  task = tasks.get("netvlad")
  state = task.create_state(c, jax.random.key(0))
  task.stages(c)
  state = task.before_training(state, c)
  fq, fdb = measures.place_features(task, state, c)
  q_utm, db_utm = measures.place_utm(c)
  net = measures.place_hits_at_1(fq, fdb, q_utm, db_utm, c.eval.pos_radius)

  def pixels(part):
    src = common.source(c, f"val_{part}")
    x = np.concatenate([b["image"][b["valid"]] for b in eval_batches(
        src, batch_size=256, keys=["image"])]).reshape(len(src), -1).astype(np.float32)
    return x - x.mean(axis=1, keepdims=True)
  raw = measures.place_hits_at_1(pixels("queries"), pixels("database"), q_utm, db_utm,
                                 c.eval.pos_radius)
  src = common.source(c, "val_queries")
  times = np.asarray([src[i]["filename"].decode().split("@")[-2] for i in range(len(src))])
  return {t: (int(np.sum(times == t)), float(raw[times == t].mean()),
              float(net[times == t].mean())) for t in dict.fromkeys(times)}


def render(curves: dict, precision: dict, command: str, by_time: dict | None = None) -> str:
  steps = sorted({s for c in curves.values() for s, _ in c})
  lines = ["# NetVLAD main job: diagnosis", "",
           f"Generated by `{command}` (validation split only).", "",
           "## Validation Recall@1 over training steps", "",
           "| run | " + " | ".join(str(s) for s in steps) + " |",
           "|---|" + "---|" * len(steps)]
  for name, curve in curves.items():
    at = dict(curve)
    lines.append(f"| {name} | " + " | ".join(f"{at[s]:.3f}" if s in at else "" for s in steps)
                 + " |")
  if precision:
    lines += ["", "## Hard negatives: precision and near-ties", "",
              "Share of the 1,000 training queries whose 10 hardest negatives (from the "
              "pretrained network before NetVLAD training) change:", "",
              "| change | queries whose list changes |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in precision.items()]
  for config, rows in (by_time or {}).items():
    lines += ["", f"## Validation Recall@1 per time of day (synthetic_places/{config})", "",
              "| time of day | queries | raw pixels | pretrained network, NetVLAD not trained |",
              "|---|---|---|---|"]
    lines += [f"| {t} | {n} | {r:.3f} | {p:.3f} |" for t, (n, r, p) in rows.items()]
  return "\n".join(lines) + "\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--ablations", default=",".join(k for k in ABLATIONS if k != "default"),
                  help="comma-separated names of ABLATIONS ('' for none)")
  ap.add_argument("--ablation_seeds", default="0",
                  help="seeds of each ablation's run (comma-separated)")
  ap.add_argument("--every", type=int, default=250)
  ap.add_argument("--no_precision", action="store_true")
  ap.add_argument("--times", default="day_night,default",
                  help="synthetic_places configs to break down by time of day ('' for none)")
  ap.add_argument("--workdir", default="runs/netvlad_diagnosis")
  ap.add_argument("--out", default="docs/netvlad_diagnosis.md")
  args = ap.parse_args(argv)
  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  curves = {}
  for s in (int(x) for x in args.seeds.split(",")):
    curves[f"default, seed {s}"] = run_curve("default", {}, s, args.every, workdir)
  for name in filter(None, args.ablations.split(",")):
    for s in (int(x) for x in args.ablation_seeds.split(",")):
      curves[f"{name}, seed {s}"] = run_curve(name, ABLATIONS[name], s, args.every, workdir)
  precision = {} if args.no_precision else mining_precision()
  by_time = {b: per_time_of_day(b) for b in filter(None, args.times.split(","))}
  command = report.report_command("benchmarks.netvlad_diagnosis", argv or sys.argv[1:])
  text = render(curves, precision, command.strip(), by_time)
  print(text)
  Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
