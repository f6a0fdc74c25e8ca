"""Why CASN's full objective trails its IDE baseline: each loss term, by mechanism.

  python -m benchmarks.casn_diagnosis [--budget 1.0] [--seed 0]
      [--set casn.warmup_verification=none ...] [--out runs/casn_diagnosis/report.md]
      [--quick]

CASN (Zheng et al., CVPR 2019) sums identification (softmax), identification
attention (attention mining through Grad-CAM), Siamese verification (BCE) and
Siamese attention consistency. This script trains configs/casn.py at the
claims budget (benchmarks/claims.py, times --budget; --set overrides any
config key, for every run below) with its own loop over the task's stages,
and every few steps measures, on 4 fixed training batches (drawn with another
seed than the training batches):

- each weighted term's gradient on the shared trunk (the backbone and the
  embedding, which every term reaches) alone: its norm, and its cosine with
  the identification term's gradient (negative: the term pulls the trunk
  against identification), and its cosine with the gradient of the batch's
  pair separation log(mean d_pos / mean d_neg) (d = the squared Euclidean
  distance of the features that re-ID ranks by; positive: a step against the
  term's gradient brings same-identity pairs closer relative to the others).
  The full objective's terms at every point, the warmup included: what each
  term would do to the trunk if it were on;
- the full objective's terms on those batches, whatever the stage: the loss
  values, the share of the image that attention mining erases, the
  predicted identity's probability with no mask and with the mining mask
  moved elsewhere (same area: has the model learnt to keep the identity's
  evidence where its Grad-CAM points, or to answer "not c" to any erased
  image?), and the fraction of all-zero Grad-CAM maps of each attention term;
- the verifier: the share of its weights that are positive (on a squared
  difference, w_j > 0 says "a larger difference means the same person": the
  wrong sign for a Euclidean ranking; none with model.verifier_sign=
  "nonpositive"), their norm, and the share of pairs its logit classifies
  right;
- why Siamese maps go blank: Grad-CAM's map is ReLU(sum_c alpha_c A_c); its
  signed version's spatial mean m says on which side of 0 the map sits. The
  share of images with m < 0, and |mean m| / std m over the images (above 1:
  the sign is one constant of the model, the same for nearly every image,
  not a property of the image); and whether the BatchNorm offset decides it:
  the linear part of the score, sum_j ind_j (gamma_j / sigma_j) u_j, is
  BatchNorm's subtracted offset plus the image's own centred part.

It then trains the ablations at the same budget and seed (IDE; + attention
mining; + verification; + verification and consistency; the full objective;
the first and last are benchmarks/claims.py's own runs, reused from its
cache when no --set is given) and reports the task's rank-1 and mAP of each,
so that the term which costs accuracy is named by measurement. --quick: the
tiny dataset and a few steps (checks the script end to end; its numbers mean
nothing).
"""
from __future__ import annotations

import argparse
import ast
import datetime
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import report, runs  # noqa: E402
from configs.base import with_overrides  # noqa: E402

TERMS = ("id", "ia", "verification", "sa")
WEIGHT_OF = {"id": "id_weight", "ia": "ia_weight", "verification": "verification_weight",
             "sa": "sa_weight"}
SHARED = ("trunk", "embed", "embed_norm")   # the parameters every term reaches
NUM_PROBE_BATCHES = 4
PROBE_SEED_OFFSET = 1000                    # probe batches: config.seed + this
MEASUREMENTS = 8                            # measurements over the run
# The full objective's state on the probes (key, column title).
STATE_COLUMNS = (("id", "L_id"), ("ia", "L_ia"), ("ia_clean", "p(c) unmasked"),
                 ("ia_rolled", "p(c) mask moved"),
                 ("verification", "L_ver"), ("sa", "L_sa"), ("ia_mask_area", "IA mask area"),
                 ("ia_zero_maps", "IA blank"),
                 ("sa_zero_maps", "SA blank"), ("verification_acc", "verifier acc"),
                 ("verifier_positive", "w_j > 0"), ("verifier_norm", "\\|w\\|"),
                 ("sa_negative_mean", "SA m < 0"), ("sa_offset_ratio", "\\|mean m\\| / std m"),
                 ("sa_sign_agrees", "sign(m) = sign(linear part)"),
                 ("sa_offset_dominates", "BN offset dominates"))
# (name, the claims setup that IS this objective or None, overrides of configs/casn.py)
ABLATIONS = (
    ("IDE (identification only)", "ide", dict(runs.NO_ATTENTION)),
    ("+ attention mining (IA)", None, {"casn.verification_weight": 0.0, "casn.sa_weight": 0.0}),
    ("+ verification", None, {"casn.ia_weight": 0.0, "casn.sa_weight": 0.0}),
    ("+ verification + consistency (SA)", None, {"casn.ia_weight": 0.0}),
    ("full (IA + verification + SA)", "casn", {}),
)


def make_config(seed: int, budget: float, quick: bool, quick_data: str, over=None):
  config = runs.make_config("casn", seed, quick, quick_data, budget)
  return with_overrides(config, dict(over or {}))


def parse_sets(items) -> dict:
  """["casn.x=1.0", "casn.y=none"] -> {"casn.x": 1.0, "casn.y": "none"} (Python
  literals where they parse, else strings)."""
  out = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--set takes key=value (e.g. casn.warmup_verification=none); "
                       f"got {item!r}.")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def _flat(tree, keys):
  import jax
  import jax.numpy as jnp
  return jnp.concatenate([x.ravel() for k in keys if k in tree
                          for x in jax.tree.leaves(tree[k])])


def probe_fn(task, config):
  """jit (state, batch) -> {name: scalar}: each live term's weighted gradient
  on SHARED (norm, cosine with identification's), the full objective's
  metrics, the verifier's weights and the Siamese maps' sign statistics."""
  import jax
  import jax.numpy as jnp

  from jaxset.data.samplers.pk import pk_pairs
  from jaxset.models import casn_loss
  from jaxset.models.casn import (
    CASN,
    masked_probability,
    mining_mask,
    siamese_indicator,
    verifier_weight,
  )
  from jaxset.ops.attention import grad_cam
  from train.tasks import common

  model = task.model(config)
  full = task.loss_config(config)
  pairs = pk_pairs(config.train.batch_size // config.data.k, config.data.k)
  live = [t for t in TERMS if getattr(full, WEIGHT_OF[t])]
  alone = {t: full._replace(**{WEIGHT_OF[u]: (getattr(full, WEIGHT_OF[u]) if u == t else 0.0)
                               for u in TERMS}) for t in live}

  def fn(state, batch):
    data = {"images": batch["image"], "labels": batch["label"]}
    stats = state.model_state["batch_stats"]
    out = {}
    grads = {}
    for t, lcfg in alone.items():
      g = jax.grad(lambda p, lcfg=lcfg: casn_loss(model, p, stats, data, pairs, config=lcfg,
                                                  train=True)[0])(state.params)
      grads[t] = _flat(g, SHARED)

    def separation(params):
      f = model.apply({"params": params, "batch_stats": stats}, data["images"], train=True,
                      mutable=["batch_stats"])[0]["features"]
      d = jnp.sum(jnp.square(f[a] - f[b]), axis=-1)
      return jnp.log(jnp.sum(d * same) / jnp.sum(same)) - jnp.log(
          jnp.sum(d * (1 - same)) / jnp.sum(1 - same))

    a, b, same = pairs
    same = jnp.asarray(same, jnp.float32)
    sep, g_sep = jax.value_and_grad(separation)(state.params)
    g_sep = _flat(g_sep, SHARED)
    out["separation"] = sep

    def cos(u, v):
      return jnp.dot(u, v) / jnp.maximum(jnp.linalg.norm(u) * jnp.linalg.norm(v), 1e-30)

    for t, g in grads.items():
      out[f"{t}_norm"] = jnp.linalg.norm(g)
      out[f"{t}_cos"] = cos(g, grads["id"])
      out[f"{t}_sep"] = cos(g, g_sep)
    _, aux = casn_loss(model, state.params, stats, data, pairs, config=full, train=True)
    out.update(aux["metrics"])
    # The predicted identity's probability on the unmasked images (training-mode
    # BatchNorm, as the masked pass): attention mining's reference.
    variables = common.variables(state)
    train_out = model.apply(variables, data["images"], train=True, mutable=["batch_stats"])[0]
    out["ia_clean"] = jnp.mean(jnp.max(jax.nn.softmax(train_out["logits"], axis=-1), axis=-1))
    # The same mask moved half the image height: as much erased, elsewhere. A
    # model that keeps identity c's evidence where its Grad-CAM points keeps
    # c there; one that learnt to answer "not c" to any erased image does not.
    classes = jnp.argmax(train_out["logits"], axis=-1)
    mask, _ = mining_mask(model, variables, data["images"], train_out["feature_map"], classes,
                          config=full)
    out["ia_rolled"] = masked_probability(model, variables, data["images"],
                                          jnp.roll(mask, mask.shape[1] // 2, axis=1), classes)
    w = verifier_weight(model, state.params)
    out["verifier_positive"] = jnp.mean((w > 0).astype(jnp.float32))
    out["verifier_norm"] = jnp.linalg.norm(w)
    # The signed Siamese map's spatial mean per image (inference-mode head, as
    # the task's maps): which side of 0 the map sits on, and whether that side
    # varies between images.
    o = model.apply(variables, batch["image"])
    ind = siamese_indicator(model, state.params, o["features"][a], o["features"][b],
                            full.indicator)
    feats = lambda fm: model.apply(variables, fm, method=CASN.features_from_map)
    score = lambda fm: jnp.sum(ind * feats(fm), axis=-1)
    m = jnp.concatenate([jnp.mean(grad_cam(score, o["feature_map"][s], relu=False),
                                  axis=(1, 2)) for s in (a, b)])
    out["sa_negative_mean"] = jnp.mean((m < 0).astype(jnp.float32))
    out["sa_offset_ratio"] = jnp.abs(jnp.mean(m)) / jnp.maximum(jnp.std(m), 1e-30)
    if "embed_norm" in state.params:
      # The score's linear part sum_j ind_j (gamma_j / sigma_j) u_j (u: the
      # embedding before BatchNorm) splits into what BatchNorm subtracts,
      # offset = sum_j ind_j gamma_j mu_j / sigma_j (the same for every image
      # but for the indicator), and the image's own part sum_j ind_j (f_j - beta_j).
      bn, st = state.params["embed_norm"], state.model_state["batch_stats"]["embed_norm"]
      gain = bn["scale"] / jnp.sqrt(st["var"] + 1e-5)
      offset = jnp.concatenate([jnp.sum(ind * gain * st["mean"], axis=-1)] * 2)
      image = jnp.concatenate([jnp.sum(ind * (o["features"][s] - bn["bias"]), axis=-1)
                               for s in (a, b)])
      out["sa_offset_dominates"] = jnp.mean((jnp.abs(offset) > jnp.abs(image)).astype(
          jnp.float32))
      out["sa_sign_agrees"] = jnp.mean((jnp.sign(offset + image) == jnp.sign(m)).astype(
          jnp.float32))
    return out
  return jax.jit(fn)


def trace(config, log=print) -> dict:
  """Trains config through the task's stages, measuring on the probes every few steps."""
  import jax

  from train import tasks
  from train.tasks import identities

  task = tasks.get("casn")
  state = task.create_state(config, jax.random.key(config.seed))
  probe_config = with_overrides(config.copy_and_resolve_references(),
                                {"seed": config.seed + PROBE_SEED_OFFSET})
  probe_it = identities.pk_iterator(probe_config)
  probes = [next(probe_it) for _ in range(NUM_PROBE_BATCHES)]
  total = config.train.steps
  every = max(1, total // MEASUREMENTS)
  measure = probe_fn(task, config)
  rows, step = [], 0
  for stage in task.stages(config):
    train_step = jax.jit(stage.train_step)
    it = stage.make_iterator()
    for i in range(stage.steps):
      if step % every == 0 or step == total - 1 or i == 0:
        g = [jax.device_get(measure(state, b)) for b in probes]
        row = {"step": step, "stage": stage.name}
        row.update({k: float(np.mean([x[k] for x in g])) for k in g[0]})
        rows.append(row)
      state, _ = train_step(state, next(it))
      step += 1
    log(f"  stage {stage.name}: {stage.steps} steps done")
  return {"rows": rows, "state": state, "task": task}


def ablations(seed: int, budget: float, quick: bool, quick_data: str, workdir: Path,
              claims_workdir: Path, sets: dict, log=print) -> list[dict]:
  """Rank-1 and mAP of each term combination, same budget and seed. Without
  --set, the IDE and full runs are benchmarks/claims.py's own (read from its
  result cache in claims_workdir when it holds them, else trained and cached
  there)."""
  from train import loop, tasks
  out = []
  for name, setup, over in ABLATIONS:
    t0 = time.perf_counter()
    if setup is not None and not sets:
      r = runs.run_setup(setup, seed, claims_workdir, quick, log, budget)
      after, seconds = r["metrics"], r["seconds"]
    else:
      config = make_config(seed, budget, quick, quick_data, {**sets, **over})
      summary = loop.train_and_evaluate(config, workdir / runs.config_hash(config),
                                        tasks.get("casn"))
      after = {k: float(v) for k, v in summary["after"].items()}
      seconds = time.perf_counter() - t0
    out.append({"name": name, **after, "seconds": seconds})
    log(f"  {name}: rank1 {after['rank1']:.3f} mAP {after['mAP']:.3f} ({seconds:.0f} s)")
  return out


def _table(head, rows):
  return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
      "| " + " | ".join(c.replace("n/a", "") for c in r) + " |" for r in rows]


def render(tr: dict, abl: list[dict], *, command: str, seconds: float, config,
           sets: dict) -> str:
  import jax
  rows = tr["rows"]
  terms = [t for t in TERMS if any(f"{t}_norm" in r for r in rows)]
  loads = os.getloadavg()
  lines = ["# CASN: each loss term, by mechanism", "",
           f"Produced by `{command}` (benchmarks/casn_diagnosis.py), "
           f"{datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; "
           f"{report.machine()}; jax {jax.__version__}; {seconds / 60:.1f} min "
           f"(1-minute load average {loads[0]:.1f} at the end). "
           f"configs/casn.py at {config.train.steps} steps "
           f"({config.casn.warmup_steps} of them warmup, "
           f"casn.warmup_verification={config.casn.warmup_verification}), "
           f"seed {config.seed}"
           + (", overrides: " + ", ".join(f"{k}={v}" for k, v in sets.items()) if sets
              else "") + ".",
           "",
           "## Each term's gradient on the shared trunk",
           "",
           "Mean over 4 fixed training batches of the gradient that each WEIGHTED term "
           "of the full objective alone gives the parameters every term reaches (backbone "
           "and embedding): its norm, its cosine with identification's gradient, and its "
           "cosine with the gradient of the pair separation s = log(mean d_pos / mean "
           "d_neg) (d: squared Euclidean distance of the retrieval features; positive: "
           "descending the term also brings same-identity pairs closer than the others; "
           "s itself is the first column). Measured at every point, the warmup included "
           "(what the term would do if it were on).",
           ""]
  head = (["step", "stage", "s"] + [f"\\|g_{t}\\|" for t in terms]
          + [f"cos(g_{t}, g_id)" for t in terms if t != "id"]
          + [f"cos(g_{t}, g_s)" for t in terms])
  lines += _table(head, [[str(r["step"]), r["stage"], report.fmt(r.get("separation"))]
                         + [report.fmt(r.get(f"{t}_norm"), 4) for t in terms]
                         + [report.fmt(r.get(f"{t}_cos")) for t in terms if t != "id"]
                         + [report.fmt(r.get(f"{t}_sep")) for t in terms]
                         for r in rows])
  lines += ["", "## The full objective on the same batches", "",
            "Whatever the stage: the loss terms (L_ia is the predicted identity's "
            "probability on the masked images; p(c) unmasked the same on the images "
            "themselves, p(c) mask moved with the mask rolled by half the image height: "
            "as much erased, elsewhere); IA mask area = mean soft mask "
            "sigmoid(w (cam - sigma)) over the pixels (the share of the image that "
            "attention mining erases); IA / SA blank = fraction of all-zero Grad-CAM maps; "
            "verifier acc = share of pairs whose Siamese logit has the right sign; "
            "w_j > 0 = share of positive verifier weights (wrong-signed on a squared "
            "difference); \\|w\\| = the norm of the verifier's weights; SA m < 0 = "
            "share of images whose signed Siamese map has a negative spatial mean (a blank "
            "ReLU map needs it); \\|mean m\\| / std m over the images (above 1: the sign "
            "is the model's, the same for most images). The score's linear part "
            "sum_j ind_j (gamma_j / sigma_j) u_j (u: the embedding before BatchNorm) is "
            "offset + image part, offset = sum_j ind_j gamma_j mu_j / sigma_j (what "
            "BatchNorm subtracts, the running mean mu) and image part = sum_j ind_j "
            "(f_j - beta_j): the share of images whose m has the sign of the linear part, "
            "and the share where the offset is the larger of the two.", ""]
  lines += _table(["step", "stage"] + [t for _, t in STATE_COLUMNS],
                  [[str(r["step"]), r["stage"]] + [report.fmt(r.get(k)) for k, _ in STATE_COLUMNS]
                   for r in rows])
  lines += ["", "## Ablations (same budget and seed)", ""]
  lines += _table(["objective", "rank-1", "mAP", "attention_zero_maps", "seconds"],
                  [[a["name"], f"{a['rank1']:.3f}", f"{a['mAP']:.3f}",
                    report.fmt(a.get("attention_zero_maps")), f"{a['seconds']:.0f}"]
                   for a in abl])
  return "\n".join(lines) + "\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--budget", type=float, default=1.0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="config override for every run (e.g. casn.warmup_verification=none)")
  ap.add_argument("--out", default="runs/casn_diagnosis/report.md")
  ap.add_argument("--workdir", default="runs/casn_diagnosis")
  ap.add_argument("--claims_workdir", default="runs/claims",
                  help="benchmarks/claims.py's workdir: its CASN and IDE runs are reused")
  ap.add_argument("--skip_ablations", action="store_true", help="the trace only")
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args(argv)
  sets = parse_sets(args.set)
  t0 = time.perf_counter()
  workdir = Path(args.workdir)
  quick_data = str((workdir / "quick_data").absolute()) if args.quick else ""
  config = make_config(args.seed, args.budget, args.quick, quick_data, sets)
  print(f"trace: {config.train.steps} steps")
  tr = trace(config)
  abl = []
  if not args.skip_ablations:
    print("ablations")
    abl = ablations(args.seed, args.budget, args.quick, quick_data, workdir / "runs",
                    Path(args.claims_workdir), sets)
  command = report.report_command("benchmarks.casn_diagnosis",
                           argv if argv is not None else sys.argv[1:])
  text = render(tr, abl, command=command.strip(), seconds=time.perf_counter() - t0,
                config=config, sets=sets)
  if args.quick:
    text = "**--quick run: tiny data, a few steps. These numbers mean nothing.**\n\n" + text
  out = Path(args.out)
  notes = report.kept_notes(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(text + notes)
  print(f"wrote {out}")
  return {"trace": tr["rows"], "ablations": abl}


if __name__ == "__main__":
  main()
