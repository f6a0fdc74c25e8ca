"""The training loop every method shares.

It owns what does not differ between methods: the device mesh and batch
placement, the jit-compiled step with donated state, rng folding, orbax
checkpoints and automatic resume (state, rng and data-iterator position), the
NaN/Inf guard, metrics (TensorBoard + JSON lines), the progress bar and the
evaluation schedule. A method plugs in through a `Task` (train/tasks/*.py),
which provides only what differs: its state, its stages (each with an input
iterator and a pure train step), its evaluation and a few hooks (train/task.py).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from train import checkpoints, meshes, writers
from train.task import Stage, Task


class NonFiniteLossError(RuntimeError):
  """A metric went NaN or Inf: the run stops, the last good checkpoint stays."""


def jit_train_step(stage: Stage):
  """A stage's step as the loop runs it: jitted, the incoming state donated.
  tests/test_lowering.py exports this same function for GPU and TPU."""
  return jax.jit(stage.train_step, donate_argnums=(0,))


def stage_at(stages: Sequence[Stage], step: int) -> tuple[int, int]:
  """(stage index, first step of that stage) for a global step."""
  start = 0
  for i, s in enumerate(stages):
    if step < start + s.steps:
      return i, start
    start += s.steps
  return len(stages) - 1, start - stages[-1].steps


def _checkpoint_manager(directory: Path, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory.absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def _save(manager, step, state, iterator, meta, task):
  import grain
  items = dict(state=ocp.args.StandardSave(state),
               data=grain.checkpoint.CheckpointSave(iterator),
               meta=ocp.args.JsonSave(meta))
  extra = task.checkpoint_extra()  # e.g. NetVLAD's hard-negative cache
  if extra:
    items["extra"] = ocp.args.StandardSave(extra)
  manager.save(step, args=ocp.args.Composite(**items))
  # The digest manifest is written once the save is final (train/checkpoints.py).
  manager.wait_until_finished()
  checkpoints.write_digest(Path(str(manager.directory)), step)


def _save_best(workdir: Path, step: int, state, metrics: dict, is_chief: bool) -> None:
  """Replaces <workdir>/best by `state` (checkpoints.save_best: never in place)."""
  def save(directory: Path):
    m = _checkpoint_manager(directory, 1)
    try:
      m.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
      m.wait_until_finished()
    finally:
      m.close()

  barrier = None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    barrier = multihost_utils.sync_global_devices
  record = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.number))}
  checkpoints.save_best(workdir, step, save, record, is_chief, barrier)


def _restore(manager, step, abstract_state, iterator, task):
  import grain
  items = dict(state=ocp.args.StandardRestore(abstract_state),
               data=grain.checkpoint.CheckpointRestore(iterator),
               meta=ocp.args.JsonRestore())
  extra = task.checkpoint_extra()
  if extra:
    items["extra"] = ocp.args.StandardRestore(extra)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if "extra" in items:
    task.restore_extra(restored["extra"])
  return restored["state"], restored["meta"]


def _first_bad(history) -> tuple[int, str, float] | None:
  """The first (step, metric, value) in history that is not finite."""
  for step, metrics in history:
    for k, v in jax.device_get(metrics).items():
      if not np.all(np.isfinite(v)):
        return step, k, float(np.asarray(v).ravel()[0])
  return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       task: Task | None = None,
                       after_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Trains `config.method` in `workdir`, resuming from its latest checkpoint.

  `after_checkpoint(step)`, when given, runs once each checkpoint is on disk
  (the loop waits for the save), e.g. tests/hold_after_checkpoint.py.

  Returns a summary: {"step", "before": eval metrics at step 0 (when run),
  "after": final eval metrics, "best": best eval metrics, "state": the final
  TrainState}.
  """
  from train import tasks  # late import: tasks pull in models and data

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  task = task or tasks.get(config.method)
  is_chief = jax.process_index() == 0
  mesh = meshes.build(config)  # config.train.mesh: ('data',) or ('data', 'model')

  checkpoints.check_config(workdir, config)  # before anything in workdir is written
  if config.eval.get("benchmark"):  # its files checked now, not at the first validation
    from train import evaluators
    evaluators.preflight(config)
  log = writers.MetricWriter(workdir, enabled=is_chief)
  log.announce(config, workdir)

  stages = list(task.stages(config))
  total_steps = sum(s.steps for s in stages)
  manager = _checkpoint_manager(workdir / "checkpoints", config.train.keep_checkpoints)

  rng = jax.random.key(config.seed)
  state = task.create_state(config, rng)
  state = meshes.place_state(state, mesh, task.class_kernel_path)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)

  start = 0
  meta = {"best": None, "before": None}
  latest = manager.latest_step()
  # The saved iterator belongs to the stage of the last step run, not the next.
  stage_idx, _ = stage_at(stages, max((latest or 0) - 1, 0))
  iterator = stages[stage_idx].make_iterator()
  if latest is not None:
    def restore_step(manager, step):
      idx, _ = stage_at(stages, max(step - 1, 0))
      it = stages[idx].make_iterator()
      return idx, it, _restore(manager, step, abstract, it, task)
    manager, latest, (stage_idx, iterator, (state, meta)) = checkpoints.restore_newest_good(
        workdir / "checkpoints", lambda: _checkpoint_manager(
            workdir / "checkpoints", config.train.keep_checkpoints), restore_step, log.info)
    start = latest
    log.info(f"resumed from step {latest} ({workdir / 'checkpoints'})")
    # The best folder may hold a step newer than the one resumed from (its
    # checkpoint was damaged): keep whichever best is better (train/checkpoints.py).
    if is_chief:
      checkpoints.recover_best(workdir)
    metric = config.eval.get("best_metric", None)
    if metric:
      kept = checkpoints.better_best(meta.get("best"), checkpoints.best_record(workdir, metric),
                                     metric)
      if kept is not meta.get("best"):
        log.info(f"keeping the best checkpoint of step {kept['step']} "
                 f"({metric}={kept[metric]:.4f}) in {workdir / 'best'}")
      meta["best"] = kept
  else:
    prepared = task.before_training(meshes.on_all_devices(state, mesh), config)
    state = meshes.place_state(prepared, mesh, task.class_kernel_path)

  def evaluate(state):
    return task.evaluate(meshes.on_all_devices(state, mesh), config)

  if start == 0 and config.eval.at_start:
    before = evaluate(state)
    meta["before"] = before
    log.scalars(0, before, prefix="eval")
    log.info("before training: " + writers.fmt(before))

  steps_jitted = {}
  def jitted(i):
    if i not in steps_jitted:
      steps_jitted[i] = jit_train_step(stages[i])
    return steps_jitted[i]

  history = []
  step = start
  bar = writers.progress(total_steps, start, enabled=is_chief and config.train.progress_bar)
  t_log, ex_since = time.perf_counter(), 0
  best_metric = config.eval.get("best_metric", None)
  after = None
  try:
    while step < total_steps:
      i, _ = stage_at(stages, step)
      if i != stage_idx:  # stage boundary: new input pipeline, new step function
        stage_idx = i
        iterator = stages[i].make_iterator()
        log.info(f"stage {stages[i].name!r} from step {step}")
      if task.refresh_due(config, step):
        task.refresh(meshes.on_all_devices(state, mesh), config)
        # A fresh iterator at the same position: prefetched batches were made
        # with the data the refresh replaced (NetVLAD's hard negatives).
        position = iterator.get_state()
        iterator = stages[i].make_iterator()
        iterator.set_state(position)
      batch = next(iterator)
      ex_since += int(np.shape(jax.tree.leaves(batch)[0])[0]) * jax.process_count()
      state, metrics = jitted(i)(state, meshes.shard_batch(batch, mesh))
      step += 1
      history.append((step, metrics))
      bar.update(1)

      last = step == total_steps
      do_log = step % config.train.log_every == 0 or last
      do_ckpt = step % config.train.ckpt_every == 0 or last
      if do_log or do_ckpt:
        # Checked before any save, so a checkpoint never holds a NaN state.
        bad = _first_bad(history)
        if bad:
          raise NonFiniteLossError(
              f"step {bad[0]}: metric {bad[1]!r} is {bad[2]} (not finite). The run "
              f"stops here; the last good checkpoint is step "
              f"{checkpoints.last_good_step(workdir / 'checkpoints')} "
              f"in {workdir / 'checkpoints'}. Lower the learning rate, enable "
              "gradient clipping (config.optim.clip_norm) or check the input data.")
        history = []
      if do_log:
        now = time.perf_counter()
        values = {k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()}
        values["examples_per_s"] = ex_since / max(now - t_log, 1e-9)
        log.scalars(step, values, prefix="train")
        bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}",
                        ex_s=f"{values['examples_per_s']:.0f}", stage=stages[i].name)
        t_log, ex_since = now, 0

      if (config.eval.every and step % config.eval.every == 0) or last:
        after = evaluate(state)
        log.scalars(step, after, prefix="eval")
        bar.write(f"step {step}: " + writers.fmt(after))
        if best_metric and best_metric in after and (
            meta["best"] is None or after[best_metric] > meta["best"][best_metric]):
          meta["best"] = dict(after, step=step)
          _save_best(workdir, step, state, after, is_chief)

      if do_ckpt:
        _save(manager, step, state, iterator, meta, task)
        if after_checkpoint is not None:
          manager.wait_until_finished()
          after_checkpoint(step)
  finally:
    bar.close()
    manager.wait_until_finished()
    manager.close()
    log.close()

  if after is None:
    after = evaluate(state)
  summary = {"step": step, "before": meta["before"], "after": after,
             "best": meta["best"], "state": state}
  if is_chief and meta["before"]:
    print(writers.before_after_table(meta["before"], after), flush=True)
  return summary
