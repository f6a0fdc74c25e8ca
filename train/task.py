"""What a method provides to the training loop: its state, stages and hooks.

A method is a subclass of `Task` (one per file in train/tasks/, registered in
train/tasks/__init__.py). The loop (train/loop.py) and train/eval.py call
every hook below; the ones a method does not override do nothing. How a
method plugs in, step by step: docs/adding_a_method.md.

Placement: the loop hands every hook a state that is already where the hook's
work runs. The train steps of `stages()` get the state on the training mesh
(config.train.devices of them); every other hook that takes a state gets it
replicated over every device, where train/tasks/common.extract shards its
batches. A hook never places a state itself; the loop puts what a hook
returns back on the training mesh.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from flax.training import train_state


class TrainState(train_state.TrainState):
  """Flax TrainState plus non-parameter collections and the run's base key.

  model_state holds every mutable Flax collection other than params
  (batch_stats, adaface_stats, ...). rng is folded with the step inside the
  jitted step, so a resumed run draws the same numbers as an uninterrupted one.
  """
  model_state: Any = None
  rng: Any = None


@dataclasses.dataclass
class Stage:
  """A contiguous block of steps with one input pipeline and one step function.

  Attributes:
    name: shown in logs ("pretrain", "quality", ...).
    steps: how many steps the stage runs.
    make_iterator: () -> a grain iterator (get_state/set_state) of numpy batches
      holding this process's share of the global batch.
    train_step: pure (state, batch) -> (state, metrics); the loop jits it.
      It folds state.rng with state.step for its randomness.
  """
  name: str
  steps: int
  make_iterator: Callable[[], Any]
  train_step: Callable[[TrainState, Any], tuple[TrainState, dict]]


class Task:
  """A method, as the loop sees it.

  A subclass must define build_model, create_state, stages and evaluate; the
  other hooks have no-op defaults. `config` is the run's ml_collections config
  (configs/<method>.py).
  """

  # Where a class-sharded classifier weight [D, C] sits in params (Partial FC,
  # e.g. ("head", "classifier", "kernel")): the loop splits it and its optimiser
  # moments by column over the mesh's 'model' axis. None: every leaf replicated.
  class_kernel_path: tuple | None = None

  # -- required ---------------------------------------------------------------
  def build_model(self, config):
    """The method's Flax module, built from config (called once per config:
    use `model(config)`)."""
    raise NotImplementedError(f"{type(self).__name__} must define build_model(config).")

  def create_state(self, config, rng) -> TrainState:
    """The initial TrainState (train/tasks/common.create_state does the usual)."""
    raise NotImplementedError(f"{type(self).__name__} must define create_state(config, rng).")

  def stages(self, config) -> Sequence[Stage]:
    """The run's stages, in order; their steps add up to the run's length."""
    raise NotImplementedError(f"{type(self).__name__} must define stages(config).")

  def evaluate(self, state: TrainState, config) -> dict[str, float]:
    """The method's evaluation metrics for `state` (placed on every device)."""
    raise NotImplementedError(f"{type(self).__name__} must define evaluate(state, config).")

  # -- provided -----------------------------------------------------------------
  def model(self, config):
    """build_model(config), built once per distinct config and then reused."""
    key = config.to_json_best_effort(sort_keys=True)
    cache = self.__dict__.setdefault("_models", {})
    if key not in cache:
      cache[key] = self.build_model(config)
    return cache[key]

  # -- hooks with no-op defaults --------------------------------------------------
  def before_training(self, state: TrainState, config) -> TrainState:
    """Runs once before step 0 of a fresh run (not on resume) and returns the
    state to train from, e.g. NetVLAD's k-means initialised centroids.
    Default: the state unchanged."""
    return state

  def refresh_due(self, config, step: int) -> bool:
    """Whether data the task keeps between steps (NetVLAD's hard-negative
    cache) must be recomputed before `step`. Default: never."""
    return False

  def refresh(self, state: TrainState, config) -> None:
    """Recomputes that data from `state`. The loop then rebuilds the stage's
    iterator at the same position, so no prefetched batch made with the old
    data is used. Default: nothing."""

  def checkpoint_extra(self) -> dict:
    """A tree of arrays saved with every checkpoint, next to the state; its
    structure is also the template the loop restores into, so it must be
    known before the first refresh. Default: {} (nothing saved)."""
    return {}

  def restore_extra(self, extra: dict) -> None:
    """Takes back what checkpoint_extra saved, on resume. Default: nothing."""

  def curves(self, state: TrainState, config) -> dict:
    """Curves for train/eval.py's plots: {name: {"x", "y", "xlabel", "ylabel",
    ...}}. Default: {} (no plots)."""
    return {}
