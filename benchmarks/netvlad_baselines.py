"""The main job's NetVLAD against raw pixels, the untrained network and avg / max /
GeM pooling trained the same way, all on the same split: docs/netvlad_baselines.json,
rendered into docs/data.md between generated markers (benchmarks.report).

  python -m benchmarks.netvlad_baselines [--seeds 0,1,2] [--poolings netvlad,avg,max,gem]
      [--split test] [--isa AVX2] [--workdir runs/netvlad_baselines]
      [--json docs/netvlad_baselines.json] [--out docs/data.md]

Each trained row is the README's main job (configs/netvlad.py's default) with
--config.model.pooling and --config.seed changed, run in its own process (so that
XLA_FLAGS=--xla_cpu_max_isa=... can cap the instruction set XLA compiles for);
its per-query Recall@1 hits are kept in the workdir and reused by later calls.
Reference rows: nearest neighbour on mean-centred raw pixels; the untrained
network (random init, BatchNorm statistics and NetVLAD centroids set from
training images as before_training does, no pretraining, no training); the
pretrained network before NetVLAD training (the main job's "before" row).
Statistics (jaxset.eval.stats, the claims' rule): mean and sample std over seeds;
NetVLAD minus each row as per-query paired differences per seed, with a two-level
bootstrap 95% interval (seeds, then queries within them, resampled); "held" when
the interval is above 0, "contradicted" below, "inconclusive" otherwise; and the
smallest difference this many seeds and queries detect (power 0.8).
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
from configs.base import with_overrides


def _config(pooling: str, seed: int, split: str, **extra):
  from configs.netvlad import get_config
  c = get_config()
  c.model.pooling, c.seed, c.eval.split = pooling, seed, split
  return with_overrides(c, extra)


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
    from jaxset.data.samplers.evaluation import eval_batches
    from train.tasks import common

    def pixels(part):
      src = common.source(config, f"{split}_{part}")
      rows = [b["image"][b["valid"]] for b in eval_batches(src, batch_size=256,
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


# The main job's bar (docs/data.md): Recall@1 at least MIN_RECALL and at
# least MIN_GAP above raw pixels and the untrained network; above avg / max / GeM by the
# claims' rule (interval above 0); seeds within SEED_SPREAD; ISA caps within ISA_SPREAD.
MIN_RECALL, MIN_GAP, SEED_SPREAD, ISA_SPREAD = 0.6, 0.25, 0.03, 0.02
REFERENCE_ROWS = ("raw pixels (mean-centred)", "untrained network (random init)")


def _paired_differences(main_runs: list, runs: list) -> list:
  """Per NetVLAD seed, its per-query hits minus the row's on the same queries: the
  row's run of the same seed, or its single run (raw pixels)."""
  by_seed = {r["seed"]: np.asarray(r["hits"], float) for r in runs}
  out = []
  for r in main_runs:
    other = by_seed.get(r["seed"]) if len(runs) > 1 else next(iter(by_seed.values()))
    if other is None:
      raise ValueError(f"row has no run of seed {r['seed']} to pair with NetVLAD's; "
                       f"its seeds: {sorted(by_seed)}.")
    out.append(np.asarray(r["hits"], float) - other)
  return out


def summarize(rows: dict) -> list[dict]:
  """One entry per row: its Recall@1 per seed and, against NetVLAD, the paired
  difference with a two-level bootstrap 95% interval (seeds and queries resampled,
  jaxset.eval.stats.paired_bootstrap), its verdict and minimum detectable effect."""
  from jaxset.eval import stats
  main_runs = rows["netvlad"]
  out = []
  for name, runs in rows.items():
    vals = [float(r["recall@1"]) for r in runs]
    entry = {"row": name, "seeds": [int(r["seed"]) for r in runs], "recall@1": vals,
             "mean": float(np.mean(vals)),
             "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
    if name != "netvlad":
      diff = stats.paired_bootstrap(_paired_differences(main_runs, runs),
                                    resample_seeds=len(main_runs) > 1)
      entry["netvlad_minus_row"] = {k: diff[k] for k in ("estimate", "low", "high", "mde")}
      entry["verdict"] = stats.verdict(diff, ">")
    out.append(entry)
  return out


def bar(summary: list[dict], isa_rows: list) -> list[dict]:
  """The main job's bar, each check with its measured value and whether it passes."""
  rows = {e["row"]: e for e in summary}
  nv = rows["netvlad"]
  checks = [{"check": f"NetVLAD Recall@1 >= {MIN_RECALL}", "value": nv["mean"],
             "passed": nv["mean"] >= MIN_RECALL}]
  for name in REFERENCE_ROWS:
    if name in rows:
      gap = rows[name]["netvlad_minus_row"]["estimate"]
      checks.append({"check": f"NetVLAD - {name} >= {MIN_GAP}", "value": gap,
                     "passed": gap >= MIN_GAP})
  for name, e in rows.items():
    if name.endswith("pooling, trained the same way"):
      checks.append({"check": f"NetVLAD above {name.split(',')[0]} (interval above 0)",
                     "value": e["netvlad_minus_row"]["low"], "passed": e["verdict"] == "held"})
  spread = max(nv["recall@1"]) - min(nv["recall@1"])
  checks.append({"check": f"NetVLAD seeds within {SEED_SPREAD}", "value": spread,
                 "passed": spread <= SEED_SPREAD})
  for r, base in isa_rows:
    d = abs(r["recall@1"] - base["recall@1"])
    checks.append({"check": f"seed {r['seed']}: {r['xla_flags']} within {ISA_SPREAD}",
                   "value": d, "passed": d <= ISA_SPREAD})
  return checks


def render_report(rep: dict) -> str:
  """docs/data.md's block, from docs/netvlad_baselines.json (benchmarks.report.GENERATED)."""
  lines = [f"Split: `{rep['split']}` ({rep['queries']} queries); command: `{rep['command']}`.",
           "", "| row | Recall@1 (mean ± std over seeds) | per seed | NetVLAD minus row, "
           "95% interval (seeds and queries resampled) | verdict | smallest detectable |",
           "|---|---|---|---|---|---|"]
  for e in rep["rows"]:
    vals = e["recall@1"]
    mean = (f"{e['mean']:.3f} ± {e['std']:.3f} ({len(vals)} seeds)" if len(vals) > 1
            else f"{vals[0]:.3f} (one run)")
    per = ", ".join(f"{v:.3f}" for v in vals)
    if "netvlad_minus_row" in e:
      d = e["netvlad_minus_row"]
      diff, verdict, mde = (f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]",
                            e["verdict"], f"{d['mde']:.3f}")
    else:
      diff = verdict = mde = "—"
    lines.append(f"| {e['row']} | {mean} | {per} | {diff} | {verdict} | {mde} |")
  if rep["isa"]:
    lines += ["", "The trained NetVLAD with XLA's CPU code capped at another instruction "
              "set (`XLA_FLAGS=--xla_cpu_max_isa=...`):", "",
              "| seed | ISA cap | Recall@1 | default ISA | difference |", "|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['xla_flags']} | {r['recall@1']:.3f} | {r['default']:.3f} | "
              f"{r['recall@1'] - r['default']:+.3f} |" for r in rep["isa"]]
  lines += ["", "The main job's bar:", "", "| check | measured | passed |", "|---|---|---|"]
  lines += [f"| {c['check']} | {c['value']:.3f} | {'yes' if c['passed'] else 'no'} |"
            for c in rep["bar"]]
  lo, hi = rep["train_wall_s"]
  lines += ["", f"Trained NetVLAD runs took {lo:.0f}-{hi:.0f} s each in this benchmark (the "
            "backbone pretraining cached; wall clock, other jobs sharing the machine)."]
  return "\n".join(lines)


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
  ap.add_argument("--json", default="docs/netvlad_baselines.json")
  ap.add_argument("--out", default="docs/data.md", help="where the table is rendered")
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
  summary = summarize(rows)
  walls = [r["wall_s"] for r in rows["netvlad"]]
  rep = {"command": command.strip(), "split": args.split,
         "queries": len(rows["netvlad"][0]["hits"]), "rows": summary,
         "isa": [{"seed": r["seed"], "xla_flags": r["xla_flags"], "recall@1": r["recall@1"],
                  "default": base["recall@1"]} for r, base in isa_rows],
         "bar": bar(summary, isa_rows), "train_wall_s": [min(walls), max(walls)]}
  report.write_json(Path(args.json), rep)
  if args.out:
    report.render_block(Path(args.out), "netvlad_baselines", render_report(rep))
  print(render_report(rep))


if __name__ == "__main__":
  main()
