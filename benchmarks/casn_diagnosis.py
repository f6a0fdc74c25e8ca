"""Why CASN's full objective trails its IDE baseline: each loss term, by mechanism.

  python -m benchmarks.casn_diagnosis [--budget 1.0] [--seed 0]
      [--out runs/casn_diagnosis/report.md] [--quick]

CASN (Zheng et al., CVPR 2019) sums identification (softmax), identification
attention (attention mining through Grad-CAM), Siamese verification (BCE) and
Siamese attention consistency (eq. 7 of the paper). This script trains
configs/casn.py at the claims budget (benchmarks/claims.py, times --budget)
with its own loop over the task's stages, and every few steps measures, on 4
fixed training batches:

- each weighted term's gradient on the shared trunk (the backbone and the
  embedding, which every term reaches) alone: its norm, and its cosine with
  the identification term's gradient (negative: the term pulls the trunk
  against identification);
- the fraction of all-zero Grad-CAM maps of each attention term.

It then trains the ablations at the same budget and seed (IDE; + attention
mining; + verification; + verification and consistency; the full objective,
the first and last being benchmarks/claims.py's own runs, reused from its
cache) and reports the task's rank-1 and mAP of each, so that the term which
costs accuracy is named by measurement. --quick: the tiny dataset and a few steps
(checks the script end to end; its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import claims  # noqa: E402
from configs.base import with_overrides  # noqa: E402

TERMS = ("id", "ia", "verification", "sa")
WEIGHT_OF = {"id": "id_weight", "ia": "ia_weight", "verification": "verification_weight",
             "sa": "sa_weight"}
SHARED = ("trunk", "embed", "embed_norm")   # the parameters every term reaches
NUM_PROBE_BATCHES = 4
MEASUREMENTS = 8                            # gradient measurements over the run
# (name, the claims setup that IS this objective or None, overrides of configs/casn.py)
ABLATIONS = (
    ("IDE (identification only)", "ide", dict(claims._NO_ATTENTION)),
    ("+ attention mining (IA)", None, {"casn.verification_weight": 0.0, "casn.sa_weight": 0.0}),
    ("+ verification", None, {"casn.ia_weight": 0.0, "casn.sa_weight": 0.0}),
    ("+ verification + consistency (SA)", None, {"casn.ia_weight": 0.0}),
    ("full (IA + verification + SA)", "casn", {}),
)


def make_config(seed: int, budget: float, quick: bool, quick_data: str, over=None):
  config = claims.make_config("casn", seed, quick, quick_data, budget)
  return with_overrides(config, dict(over or {}))


def _flat(tree, keys):
  import jax
  import jax.numpy as jnp
  return jnp.concatenate([x.ravel() for k in keys if k in tree
                          for x in jax.tree.leaves(tree[k])])


def term_gradients(task, config):
  """jit (state, batch) -> {term: (norm of its weighted gradient on SHARED,
  cosine with identification's)} for the terms with a non-zero weight."""
  import jax
  import jax.numpy as jnp

  from jaxset.data import pipeline
  from jaxset.models import casn_loss

  model = task.model(config)
  full = task.loss_config(config)
  pairs = pipeline.pk_pairs(config.train.batch_size // config.data.k, config.data.k)
  live = [t for t in TERMS if getattr(full, WEIGHT_OF[t])]
  alone = {t: full._replace(**{WEIGHT_OF[u]: (getattr(full, WEIGHT_OF[u])
                                                          if u == t else 0.0)
                                           for u in TERMS}) for t in live}

  def fn(state, batch):
    data = {"images": batch["image"], "labels": batch["label"]}
    grads = {}
    for t, lcfg in alone.items():
      g = jax.grad(lambda p, lcfg=lcfg: casn_loss(model, p, state.model_state["batch_stats"],
                                                  data, pairs, config=lcfg, train=True)[0])(
                                                      state.params)
      grads[t] = _flat(g, SHARED)
    ref = grads["id"]
    out = {}
    for t, g in grads.items():
      n = jnp.linalg.norm(g)
      out[t] = (n, jnp.dot(g, ref) / jnp.maximum(n * jnp.linalg.norm(ref), 1e-30))
    return out
  return jax.jit(fn)


def trace(config, log=print) -> dict:
  """Trains config through the task's stages; the per-term gradients every few steps."""
  import jax

  from train import tasks
  from train.tasks import identities

  task = tasks.get("casn")
  state = task.create_state(config, jax.random.key(config.seed))
  probe_it = identities.pk_iterator(with_overrides(config, {"seed": config.seed + 1000}))
  probes = [next(probe_it) for _ in range(NUM_PROBE_BATCHES)]
  total = config.train.steps
  every = max(1, total // MEASUREMENTS)
  # The full objective's terms at every point, the warmup included: what each
  # term would do to the trunk, whether or not the stage trains it yet.
  grad_fn = term_gradients(task, config)
  rows, step = [], 0
  for stage in task.stages(config):
    train_step = jax.jit(stage.train_step)
    it = stage.make_iterator()
    for i in range(stage.steps):
      if step % every == 0 or step == total - 1 or i == 0:
        g = [jax.device_get(grad_fn(state, b)) for b in probes]
        row = {"step": step, "stage": stage.name}
        for t in g[0]:
          row[f"{t}_norm"] = float(np.mean([x[t][0] for x in g]))
          row[f"{t}_cos"] = float(np.mean([x[t][1] for x in g]))
        rows.append(row)
      state, metrics = train_step(state, next(it))
      step += 1
      if rows[-1]["step"] == step - 1:
        m = jax.device_get(metrics)
        rows[-1].update({k: float(v) for k, v in m.items()
                         if k.endswith("zero_maps") or k in TERMS})
    log(f"  stage {stage.name}: {stage.steps} steps done")
  return {"rows": rows, "state": state, "task": task}


def ablations(seed: int, budget: float, quick: bool, quick_data: str, workdir: Path,
              claims_workdir: Path, log=print) -> list[dict]:
  """Rank-1 and mAP of each term combination, same budget and seed. The IDE and
  full runs are benchmarks/claims.py's own (read from its result cache in
  claims_workdir when it holds them, else trained and cached there)."""
  from train import loop, tasks
  out = []
  for name, setup, over in ABLATIONS:
    t0 = time.perf_counter()
    if setup is not None:
      r = claims.run_setup(setup, seed, claims_workdir, quick, log, budget)
      after, seconds = r["metrics"], r["seconds"]
    else:
      config = make_config(seed, budget, quick, quick_data, over)
      summary = loop.train_and_evaluate(config, workdir / claims.config_hash(config),
                                        tasks.get("casn"))
      after = {k: float(v) for k, v in summary["after"].items()}
      seconds = time.perf_counter() - t0
    out.append({"name": name, **after, "seconds": seconds})
    log(f"  {name}: rank1 {after['rank1']:.3f} mAP {after['mAP']:.3f} ({seconds:.0f} s)")
  return out


def render(tr: dict, abl: list[dict], *, command: str, seconds: float, config) -> str:
  import jax
  rows = tr["rows"]
  terms = [t for t in TERMS if any(f"{t}_norm" in r for r in rows)]
  lines = ["# CASN: each loss term, by mechanism", "",
           f"Produced by `{command}` (benchmarks/casn_diagnosis.py), "
           f"{datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; "
           f"{claims.machine()}; jax {jax.__version__}; {seconds / 60:.1f} min. "
           f"configs/casn.py at {config.train.steps} steps "
           f"({config.casn.warmup_steps} of them identification only), seed {config.seed}.",
           "",
           "## Each term's gradient on the shared trunk",
           "",
           "Mean over 4 fixed training batches of the gradient that each WEIGHTED term "
           "alone gives the parameters every term reaches (backbone and embedding): "
           "its norm, and its cosine with identification's gradient. Zero-map columns: "
           "the fraction of all-zero Grad-CAM maps in the next training step.",
           ""]
  head = ["step", "stage"] + [f"|g_{t}|" for t in terms] + [f"cos(g_{t}, g_id)"
                                                            for t in terms if t != "id"]
  head += ["ia_zero_maps", "sa_zero_maps"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [str(r["step"]), r["stage"]]
    cells += [claims._fmt(r.get(f"{t}_norm"), 4) for t in terms]
    cells += [claims._fmt(r.get(f"{t}_cos")) for t in terms if t != "id"]
    cells += [claims._fmt(r.get("ia_zero_maps")), claims._fmt(r.get("sa_zero_maps"))]
    lines.append("| " + " | ".join(c.replace("n/a", "") for c in cells) + " |")
  lines += ["", "## Ablations (same budget and seed)", "",
            "| objective | rank-1 | mAP | attention_zero_maps | seconds |",
            "|---|---|---|---|---|"]
  for a in abl:
    lines.append(f"| {a['name']} | {a['rank1']:.3f} | {a['mAP']:.3f} | "
                 f"{claims._fmt(a.get('attention_zero_maps'))} | {a['seconds']:.0f} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--budget", type=float, default=1.0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default="runs/casn_diagnosis/report.md")
  ap.add_argument("--workdir", default="runs/casn_diagnosis")
  ap.add_argument("--claims_workdir", default="runs/claims",
                  help="benchmarks/claims.py's workdir: its CASN and IDE runs are reused")
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  workdir = Path(args.workdir)
  quick_data = str((workdir / "quick_data").absolute()) if args.quick else ""
  config = make_config(args.seed, args.budget, args.quick, quick_data)
  print(f"trace: {config.train.steps} steps")
  tr = trace(config)
  print("ablations")
  abl = ablations(args.seed, args.budget, args.quick, quick_data, workdir / "runs",
                  Path(args.claims_workdir))
  command = "python -m benchmarks.casn_diagnosis " + " ".join(
      argv if argv is not None else sys.argv[1:])
  text = render(tr, abl, command=command.strip(), seconds=time.perf_counter() - t0,
                config=config)
  if args.quick:
    text = "**--quick run: tiny data, a few steps. These numbers mean nothing.**\n\n" + text
  out = Path(args.out)
  notes = claims.kept_notes(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(text + notes)
  print(f"wrote {out}")
  return {"trace": tr["rows"], "ablations": abl}


if __name__ == "__main__":
  main()
