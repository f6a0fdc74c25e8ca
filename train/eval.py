"""`python -m train.eval --config=configs/<method>.py --workdir=runs/<run>`.

One command for any weights on any benchmark:

  python -m train.eval --config=configs/<method>.py --workdir=runs/<run> \
      [--config.eval.benchmark=face_bin --config.eval.dir=/data/faces_emore]
  python -m train.eval --config=configs/pretrained.py:adaface --weights=ir101.msgpack \
      --config.model.backbone=iresnet100 --config.eval.benchmark=ijb \
      --config.eval.dir=/data/IJB_release/IJBC

--weights takes converted torch weights (python -m jaxset.convert); the
architecture and input convention are keys of configs/pretrained.py (presets
insightface, adaface, mxnet). With config.eval.benchmark set, the named
benchmark of train/evaluators.py (a registry other modules add to; its
docstring is the plug-in interface) scores the weights' embeddings on the
files in config.eval.dir: the table is printed, and report.json plus one PNG
per curve are written to --out (default <workdir>/eval_<benchmark>_<step>, or
eval_<benchmark>/ beside the weights file).

Without a benchmark, it evaluates a run's checkpoint (the latest by default; --checkpoint=best or a
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
  flags.DEFINE_string("weights", None, "converted weights (python -m jaxset.convert) "
                      "instead of a workdir; see configs/pretrained.py")
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

  from train import meshes

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
  state = meshes.replicate(state, meshes.make_mesh())
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


def _load_weights(model, config, path: Path):
  """Converted variables checked against `model`'s: an error names the file and the fix."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import traverse_util

  from jaxset.convert import load_variables
  if not path.is_file():
    raise CheckpointError(f"--weights={path}: no such file. Convert a torch checkpoint first: "
                          "python -m jaxset.convert --arch=iresnet50 --checkpoint=model.pt "
                          f"--out={path}")
  try:
    loaded = load_variables(str(path))
  except Exception as e:  # msgpack raises many types for foreign files
    raise CheckpointError(f"--weights={path} is not a jaxset.convert file ({_first(e)}). "
                          "Write it with python -m jaxset.convert.") from None
  h, w = config.data.image_size
  want = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, h, w, 3), jnp.uint8))

  def shapes(tree):
    return {"/".join(k): tuple(np.shape(v)) for k, v in
            traverse_util.flatten_dict(dict(tree)).items()}
  for col in ("params", "batch_stats"):
    got, need = shapes(loaded.get(col, {})), shapes(want.get(col, {}))
    if got != need:
      missing = sorted(set(need) - set(got))
      extra = sorted(set(got) - set(need))
      wrong = sorted(k for k in set(got) & set(need) if got[k] != need[k])
      raise CheckpointError(
          f"--weights={path} does not fit config.model.backbone={config.model.backbone!r} "
          f"at {h}x{w} ({col}: {len(missing)} missing, e.g. {missing[:3]}; {len(extra)} "
          f"unexpected, e.g. {extra[:3]}; shapes differ at {wrong[:3]}). Set "
          "--config.model.backbone to the --arch the file was converted with (iresnet50 / "
          "iresnet100) and --config.data.image_size to its input size.")
  return {k: v for k, v in loaded.items() if k in want}


def _first(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def embedder_from_weights(config, path):
  """An evaluators.Embedder of converted weights (configs/pretrained.py keys; a
  method of evaluators.WEIGHTS_EMBEDDERS builds its own)."""
  from jaxset.models import backbones
  from train import evaluators
  maker = evaluators.weights_embedder(config.method)
  if maker is not None:
    return maker(config, path)
  from train.tasks import common
  kwargs = {k: config.model[k] for k in ("input_scale", "bgr", "pool_shortcut")
            if k in config.model}
  model = backbones.FaceEmbedder(config.model.backbone, config.model.embedding_dim,
                                 dtype=common.compute_dtype(config), backbone_kwargs=kwargs)
  variables = _load_weights(model, config, Path(path))
  return evaluators.Embedder(model.apply, variables, config.data.image_size,
                             config.eval.batch_size, description=Path(path).name)


def embedder_from_state(task, state, config):
  """An evaluators.Embedder of a task's trained state: the task's `embed_apply(config)`
  (apply_fn(variables, images) -> outputs) when it has one, else its model's apply."""
  from train import evaluators
  apply_fn = (task.embed_apply(config) if hasattr(task, "embed_apply")
              else task.model(config).apply)
  variables = {"params": state.params, **(state.model_state or {})}
  return evaluators.Embedder(apply_fn, variables, config.data.image_size,
                             config.eval.batch_size, description=config.method)


def run_benchmark(embedder, config, out: Path, header: dict) -> dict:
  """Runs config.eval.benchmark on `embedder`, writes report.json and the plots."""
  import numpy as np

  from train import evaluators
  out.mkdir(parents=True, exist_ok=True)
  embedder.out = out
  result = evaluators.get(config.eval.benchmark)(embedder, config)
  plots = plot_curves(result.curves, out) if result.curves else []

  def plain(x):
    if isinstance(x, dict):
      return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [plain(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic)):
      return np.asarray(x).tolist()
    return x

  report = {**header, "benchmark": config.eval.benchmark, "benchmark_dir": config.eval.dir,
            "metrics": plain(result.metrics), "rows": plain(result.rows), "plots": plots,
            "curves": plain({k: {c: v[c] for c in ("x", "y", "series") if c in v}
                             for k, v in result.curves.items()}),
            "table": result.table()}
  (out / "report.json").write_text(json.dumps(report, indent=2))
  report["out"] = str(out)
  return report


def evaluate_benchmark(config, workdir=None, weights=None, which: str = "latest",
                       out=None) -> dict:
  """config.eval.benchmark on a run's checkpoint or on converted weights."""
  if not config.eval.benchmark:
    raise CheckpointError("--weights needs a benchmark: --config.eval.benchmark=face_bin (or "
                          "ijb) and --config.eval.dir=<its files>.")
  if weights:
    embedder = embedder_from_weights(config, weights)
    header = {"weights": str(weights), "backbone": config.model.backbone,
              "convention": config.model.get("convention", "")}
    out = Path(out) if out else Path(weights).parent / f"eval_{config.eval.benchmark}"
  else:
    from train import tasks
    task = tasks.get(config.method)
    workdir = Path(workdir)
    state, step = restore_state(task, config, workdir, which)
    embedder = embedder_from_state(task, state, config)
    header = {"method": config.method, "checkpoint": which, "step": step}
    out = Path(out) if out else workdir / f"eval_{config.eval.benchmark}_{which}_{step}"
  return run_benchmark(embedder, config, out, header)


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.config is None or (f.workdir is None) == (f.weights is None):
    raise app.UsageError("--config and one of --workdir or --weights are required.")
  from jaxset.data.formats import DatasetFormatError
  try:
    if f.weights or f.config.eval.benchmark:
      report = evaluate_benchmark(f.config, f.workdir, f.weights, f.checkpoint, f.out)
      print(report["table"])
      print(f"report: {report['out']}/report.json ({len(report['plots'])} plots)")
      return
    report = evaluate_run(f.config, f.workdir, f.checkpoint, f.out)
  except (CheckpointError, DatasetFormatError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  from train import writers
  print(f"step {report['step']} ({report['checkpoint']}): " + writers.fmt(report["metrics"]))
  print(f"report: {Path(report['plots'][0]).parent if report['plots'] else f.out}"
        f" ({len(report['plots'])} plots)")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
