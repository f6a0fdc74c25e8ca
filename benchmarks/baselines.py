"""Every default config against raw pixels and its untrained network: docs/baselines.json.

  python -m benchmarks.baselines [--methods qan,eqface,adaface,arcface,casn,netvlad]
                                 [--seeds 0] [--workdir runs/baselines] [--quick]

For each method the README's default run (configs/<method>.py, its full budget)
is trained with train.loop.train_and_evaluate; its evaluation before training
is the untrained network (same init, same protocol) and after training the
trained one. Raw pixels are scored with the same protocol and split: each image
is its flattened pixels in [0, 1], centred by the mean image of the split's
evaluation images and L2-normalised; a set (QAN) is the mean of its frames'
vectors. The JSON report holds every number; docs/data.md's "Baselines" table
is rendered from it between generated markers (benchmarks.report).

Runs are cached by config hash in <workdir>/results, so a second invocation
only re-renders. --quick: the tiny datasets and a few steps (numbers mean
nothing; for the test).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import report  # noqa: E402
from configs.base import with_overrides  # noqa: E402

METHODS = ("qan", "eqface", "adaface", "arcface", "casn", "netvlad")
# The metric each config's docstring and README table name as its own: higher is better.
OWN_METRIC = {"qan": "set_rank1", "eqface": "pair_acc", "adaface": "pair_acc",
              "arcface": "pair_acc", "casn": "rank1", "netvlad": "recall@1"}
# Second metric shown beside it (same protocol family).
ALSO = {"qan": "set_pair_acc", "eqface": "rank1", "adaface": "rank1", "arcface": "rank1",
        "casn": "mAP", "netvlad": "recall@5"}
# The margin by which a trained default must beat both baselines to count as "clearly".
CLEAR_MARGIN = 0.05
QUICK = {"data.builder_config": "tiny", "train.steps": 4, "train.batch_size": 16,
         "eval.batch_size": 32, "optim.warmup_steps": 0, "train.progress_bar": False}
QUICK_METHOD = {"netvlad": {"train.batch_size": 8, "kmeans.num_images": 20,
                            "kmeans.bn_calibration_batches": 1, "model.num_clusters": 8},
                "casn": {"casn.warmup_steps": 2}}


def make_config(method: str, seed: int, quick: bool, quick_data: str = ""):
  config = importlib.import_module(f"configs.{method}").get_config()
  over = {"seed": seed, "train.progress_bar": False}
  if quick:
    over.update(QUICK)
    over.update(QUICK_METHOD.get(method, {}))
    over["data.cache_dir"] = quick_data
  return with_overrides(config, over)


# -- raw pixels, scored with each task's own protocol ---------------------------------

def _pixels(src) -> np.ndarray:
  """[N, H*W*3] float32 in [0, 1] of every image of a split, in record order."""
  from jaxset.data.records import fetch
  rows = fetch(src, np.arange(len(src)))
  return np.stack([np.asarray(r["image"], np.float32).reshape(-1) / 255.0 for r in rows])


def _centre_normalise(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
  x = x - mean
  return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def raw_pixels_identities(config) -> dict:
  """rank-1/mAP (query vs gallery, cross-camera), 10-fold pair accuracy, and the
  same at set level (tracklets mean-pooled), as train/tasks/identities.py and
  train/tasks/qan.py score them."""
  from jaxset.data.records import fetch, read_metadata
  from jaxset.eval import cmc_map, kfold_verification_accuracy
  from train.tasks import common

  q_src, g_src = common.source(config, "query"), common.source(config, "gallery")
  q, g = _pixels(q_src), _pixels(g_src)
  mean = np.concatenate([q, g]).mean(axis=0)
  qm, gm = read_metadata(q_src), read_metadata(g_src)
  qn, gn = _centre_normalise(q, mean), _centre_normalise(g, mean)
  r = cmc_map(qn, gn, qm["identity"], gm["identity"], qm["camera"], gm["camera"])
  out = {"rank1": float(r["rank1"]), "mAP": float(r["mAP"])}

  p_src = common.source(config, "pairs")
  rows = fetch(p_src, np.arange(len(p_src)))
  a = np.stack([np.asarray(x["image_a"], np.float32).reshape(-1) / 255.0 for x in rows])
  b = np.stack([np.asarray(x["image_b"], np.float32).reshape(-1) / 255.0 for x in rows])
  pm = read_metadata(p_src, ["same", "fold"])
  acc = kfold_verification_accuracy(_centre_normalise(a, mean), _centre_normalise(b, mean),
                                    pm["same"].astype(bool), fold_ids=pm["fold"])
  out["pair_acc"] = float(acc["accuracy_mean"])

  # Sets: one vector per tracklet, the mean of its frames' (centred, normalised) vectors.
  sets = {}
  for x, m in ((qn, qm), (gn, gm)):
    tids = np.unique(m["tracklet"])
    f = np.stack([x[m["tracklet"] == t].mean(axis=0) for t in tids])
    first = np.array([np.nonzero(m["tracklet"] == t)[0][0] for t in tids])
    sets[id(m)] = (tids, f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12),
                   m["identity"][first], m["camera"][first])
  (qt, qf, qi, qc), (gt, gf, gi, gc) = sets[id(qm)], sets[id(gm)]
  r = cmc_map(qf, gf, qi, gi, qc, gc)
  out.update({"set_rank1": float(r["rank1"]), "set_mAP": float(r["mAP"])})
  row = {int(t): f for t, f in zip(np.r_[qt, gt], np.concatenate([qf, gf]))}
  sp = read_metadata(common.source(config, "set_pairs"))
  fa = np.stack([row[int(t)] for t in sp["tracklet_a"]])
  fb = np.stack([row[int(t)] for t in sp["tracklet_b"]])
  acc = kfold_verification_accuracy(fa, fb, sp["same"].astype(bool), fold_ids=sp["fold"])
  out["set_pair_acc"] = float(acc["accuracy_mean"])
  return out


def raw_pixels_places(config) -> dict:
  """Recall@N of raw pixels on config.eval.split, as train/tasks/netvlad.py scores it."""
  from jaxset.data.records import read_metadata
  from jaxset.eval import recall_at_n
  from train.tasks import common

  split = config.eval.split
  db, queries = common.source(config, f"{split}_database"), common.source(config,
                                                                           f"{split}_queries")
  fdb, fq = _pixels(db), _pixels(queries)
  mean = fdb.mean(axis=0)
  recalls = recall_at_n(_centre_normalise(fq, mean), _centre_normalise(fdb, mean),
                        read_metadata(queries, ["utm"])["utm"],
                        read_metadata(db, ["utm"])["utm"],
                        ns=tuple(config.eval.recall_ns), pos_radius=config.eval.pos_radius)
  return {f"recall@{n}": float(r) for n, r in recalls.items()}


def raw_pixels(method: str, config) -> dict:
  return raw_pixels_places(config) if method == "netvlad" else raw_pixels_identities(config)


# -- runs ---------------------------------------------------------------------------

def run_default(method: str, seed: int, workdir: Path, quick: bool, log=print) -> dict:
  """Trains configs/<method>.py's default (cached by config hash): before/after metrics."""
  from benchmarks.runs import config_hash
  from train import loop, tasks

  config = make_config(method, seed, quick, str((workdir / "quick_data").absolute()))
  name = f"{method}_seed{seed}_{config_hash(config)}"
  cached = workdir / "results" / f"{name}.json"
  if cached.exists():
    log(f"  {method} seed {seed}: cached ({cached.name})")
    return json.loads(cached.read_text())
  log(f"  {method} seed {seed}: training {config.train.steps} steps")
  t0 = time.perf_counter()
  summary = loop.train_and_evaluate(config, workdir / "runs" / name, tasks.get(method))
  result = {"method": method, "seed": seed, "steps": int(summary["step"]),
            "seconds": time.perf_counter() - t0,
            "untrained": {k: float(v) for k, v in summary["before"].items()},
            "trained": {k: float(v) for k, v in summary["after"].items()},
            "raw_pixels": raw_pixels(method, config),
            "data": {"name": config.data.name,
                     "builder_config": config.data.builder_config or "default"}}
  cached.parent.mkdir(parents=True, exist_ok=True)
  cached.write_text(json.dumps(result, indent=1, sort_keys=True))
  log(f"  {method} seed {seed}: {result['seconds']:.0f} s")
  return result


def summarize(results: list[dict]) -> list[dict]:
  """One row per method: mean over seeds of raw pixels / untrained / trained on the
  own metric and the one beside it, and whether trained beats both by CLEAR_MARGIN
  on every seed."""
  rows = []
  for method in dict.fromkeys(r["method"] for r in results):
    rs = [r for r in results if r["method"] == method]
    row = {"method": method, "seeds": [r["seed"] for r in rs], "metric": OWN_METRIC[method],
           "also": ALSO[method], "steps": rs[0]["steps"]}
    for key in (OWN_METRIC[method], ALSO[method]):
      for kind in ("raw_pixels", "untrained", "trained"):
        row[f"{kind}:{key}"] = float(np.mean([r[kind][key] for r in rs]))
    m = OWN_METRIC[method]
    row["clearly_beats_both"] = all(
        r["trained"][m] >= max(r["raw_pixels"][m], r["untrained"][m]) + CLEAR_MARGIN
        for r in rs)
    rows.append(row)
  return rows


def render(rows: list[dict]) -> str:
  """The markdown table docs/data.md shows (generated from the JSON report)."""
  head = ("| config | metric | raw pixels | untrained | trained | trained beats both by "
          f">= {CLEAR_MARGIN} | seeds | steps |\n|---|---|---|---|---|---|---|---|")
  lines = [head]
  for r in rows:
    for key, first in ((r["metric"], True), (r["also"], False)):
      lines.append(
          f"| {'configs/' + r['method'] + '.py' if first else ''} | {key} | "
          f"{r[f'raw_pixels:{key}']:.3f} | {r[f'untrained:{key}']:.3f} | "
          f"{r[f'trained:{key}']:.3f} | "
          f"{('yes' if r['clearly_beats_both'] else '**no**') if first else ''} | "
          f"{','.join(map(str, r['seeds'])) if first else ''} | "
          f"{r['steps'] if first else ''} |")
  return "\n".join(lines)


def render_report(report: dict) -> str:
  """docs/data.md's block, from the JSON report (benchmarks.report.GENERATED)."""
  return render(report["rows"])


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--seeds", default="0", help="comma-separated training seeds")
  p.add_argument("--workdir", default="runs/baselines")
  p.add_argument("--out", default="docs/baselines.json")
  p.add_argument("--doc", default="docs/data.md", help="where the table is rendered")
  p.add_argument("--quick", action="store_true")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}.")
  seeds = [int(s) for s in args.seeds.split(",")]
  workdir = Path(args.workdir)
  results = [run_default(m, s, workdir, args.quick) for m in methods for s in seeds]
  out = {"command": report.report_command("benchmarks.baselines",
                                           argv if argv is not None else sys.argv[1:]),
         "quick": args.quick, "clear_margin": CLEAR_MARGIN,
         "rows": summarize(results), "runs": results}
  report.write_json(Path(args.out), out)
  if args.doc:
    report.render_block(Path(args.doc), "baselines", render_report(out))
  print(render(out["rows"]))
  return out


if __name__ == "__main__":
  main()
