"""`python -m train.eval --config=configs/<method>.py --workdir=runs/<run>`.

Evaluates a run's checkpoint (the latest by default; --checkpoint=best or a
step number) with the method's own protocol on any split the config can name
(override the data with --config.data.name / --config.data.dir as for
training), and writes <out>/report.json plus PNG plots of the curves the task
reports (Recall@N, ROC, CMC, error-versus-reject, quality against
degradation). A missing or unreadable checkpoint is an error that says where
it looked and what it found there.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags


def _define_flags():
  """Flags exist only when this module is the program: train.main defines the
  same names, and tests import both."""
  config_flags.DEFINE_config_file("config", None, "configs/<method>.py[:preset]",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "the training run's directory")
  flags.DEFINE_string("checkpoint", "latest", "latest | best | a step number")
  flags.DEFINE_string("out", None, "report folder (default <workdir>/eval_<step>)")


class CheckpointError(RuntimeError):
  """No usable checkpoint where the run should have one."""


def _listing(d: Path) -> str:
  if not d.exists():
    return "the folder does not exist"
  entries = sorted(p.name for p in d.iterdir())
  return f"it holds {entries[:12]}" if entries else "it is empty"


def _intact_step(directory: Path, steps, which: str) -> int:
  """The step to evaluate, checked against its digest (train/checkpoints.py).

  latest/best: the newest step whose files match their digests, with a
  warning for each damaged one skipped (evaluation moves nothing). A given
  step: that one, or an error naming the damaged file.
  """
  from train import checkpoints
  if which not in ("latest", "best"):
    if not str(which).isdigit():
      raise CheckpointError(f"--checkpoint={which!r}: give latest, best or a step number "
                            f"(steps in {directory}: {steps}).")
    step = int(which)
    if step not in steps:
      raise CheckpointError(f"no checkpoint for step {step} in {directory}; steps there: {steps}.")
    candidates = [step]
  else:
    candidates = sorted(steps, reverse=True)
  for i, step in enumerate(candidates):
    try:
      checkpoints.verify(directory, step)
      return step
    except checkpoints.DamagedCheckpoint as e:
      if len(candidates) == 1 or step == candidates[-1]:
        raise CheckpointError(
            f"checkpoint step {step} in {directory} is damaged: {e}. Evaluate another "
            f"step (--checkpoint=N; steps there: {steps}) or restore the folder from a "
            "copy.") from None
      print(f"warning: checkpoint step {step} in {directory} is damaged: {e}; "
            f"trying step {candidates[i + 1]}.", file=sys.stderr, flush=True)
  raise AssertionError("unreachable")


def restore_state(task, config, workdir: Path, which: str = "latest"):
  """(state, step) from <workdir>/checkpoints (latest or a step) or <workdir>/best."""
  import jax
  import orbax.checkpoint as ocp

  from train import loop

  directory = workdir / ("best" if which == "best" else "checkpoints")
  if not directory.is_dir():
    raise CheckpointError(
        f"no checkpoint folder at {directory}: {_listing(workdir)}. Train first "
        f"(python -m train.main --config=... --workdir={workdir}) or give the run's --workdir.")
  manager = ocp.CheckpointManager(directory.absolute())
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(
        f"no finished checkpoint in {directory}: {_listing(directory)} (a "
        "*.orbax-checkpoint-tmp folder is a save that was interrupted).")
  step = _intact_step(directory, steps, which)
  state = task.create_state(config, jax.random.key(config.seed))
  state = loop.replicate(state, loop.make_mesh())
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
  except Exception as e:  # orbax raises many types for truncated or foreign files
    raise CheckpointError(
        f"the checkpoint of step {step} in {directory / str(step)} could not be read "
        f"({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
        f"{_listing(directory / str(step))}. It may be corrupt, or from another config "
        "(a different model or dataset changes the state's shapes).") from None
  finally:
    manager.close()
  return restored["state"], step


def plot_curves(curves: dict, out: Path) -> list[str]:
  """One PNG per curve: {"name": {"x", "y", "xlabel", "ylabel"[, "series"]}}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  written = []
  for name, c in curves.items():
    fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=120)
    series = c.get("series") or {name: (c["x"], c["y"])}
    for label, (x, y) in series.items():
      if c.get("kind") == "scatter":
        ax.scatter(x, y, s=4, alpha=0.4, label=label)
      else:
        ax.plot(x, y, label=label)
    ax.set_xlabel(c.get("xlabel", "")), ax.set_ylabel(c.get("ylabel", ""))
    if c.get("logx"):
      ax.set_xscale("log")
    ax.set_title(c.get("title", name), fontsize=9)
    ax.grid(alpha=0.3)
    if len(series) > 1:
      ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(str(path))
  return written


def evaluate_run(config, workdir, which: str = "latest", out=None) -> dict:
  """Restores, evaluates and writes the report; returns it."""
  import numpy as np

  from train import tasks

  workdir = Path(workdir)
  task = tasks.get(config.method)
  state, step = restore_state(task, config, workdir, which)
  metrics = task.evaluate(state, config)
  curves = task.curves(state, config)
  out = Path(out) if out else workdir / f"eval_{which}_{step}"
  out.mkdir(parents=True, exist_ok=True)
  plots = plot_curves(curves, out)
  def points(c):
    out = {k: np.asarray(c[k]).tolist() for k in ("x", "y")}
    if c.get("series"):  # e.g. the ERC's one curve per quality proxy
      out["series"] = {label: {"x": np.asarray(x).tolist(), "y": np.asarray(y).tolist()}
                       for label, (x, y) in c["series"].items()}
    return out

  report = {"method": config.method, "dataset": config.data.name, "checkpoint": which,
            "step": step, "metrics": metrics, "plots": plots,
            "curves": {k: points(v) for k, v in curves.items()}}
  (out / "report.json").write_text(json.dumps(report, indent=2))
  return report


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.config is None or f.workdir is None:
    raise app.UsageError("--config and --workdir are required.")
  try:
    report = evaluate_run(f.config, f.workdir, f.checkpoint, f.out)
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  from train import writers
  print(f"step {report['step']} ({report['checkpoint']}): " + writers.fmt(report["metrics"]))
  print(f"report: {Path(report['plots'][0]).parent if report['plots'] else f.out}"
        f" ({len(report['plots'])} plots)")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
