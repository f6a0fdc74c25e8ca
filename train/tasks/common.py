"""Pieces every task uses: data sources, state creation, batched feature extraction."""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxset import data as jdata
from jaxset.data import pipeline, transforms
from train import loop, optim

EMBEDDED = ("synthetic_places", "synthetic_identities")


def compute_dtype(config):
  names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if config.model.dtype not in names:
    raise ValueError(f"config.model.dtype={config.model.dtype!r}; use float32 or bfloat16.")
  return names[config.model.dtype]


@functools.lru_cache(maxsize=None)
def _builder(name, cache_dir, manual_dir, builder_config):
  return jdata.builder(name, data_dir=cache_dir or None, manual_dir=manual_dir or None,
                       config=builder_config or None)


def source(config, split: str):
  """The random-access source of one split of config.data.name (prepared once)."""
  if config.data.name not in EMBEDDED and not config.data.dir:
    raise ValueError(
        f"config.data.name={config.data.name!r} reads your local copy of the dataset: "
        "give its folder with --config.data.dir=/path/to/it.")
  b = _builder(config.data.name, config.data.cache_dir, config.data.dir,
               config.data.builder_config)
  return b.as_data_source(split)


def image_fn(config, train: bool):
  """Resizes real datasets' images to config.data.image_size; augments if asked."""
  size = tuple(config.data.image_size)
  if train and config.data.get("augment", False):
    return transforms.train_augment(size, flip=config.data.get("flip", True))
  return transforms.eval_transform(size)


def create_state(model, config, rng, sample, total_steps: int, tx=None, **apply_kwargs):
  """Initialises `model` on `sample` and wraps it in a loop.TrainState."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init({"params": init_rng, "dropout": init_rng}, sample, **apply_kwargs)
  variables = dict(variables)
  params = variables.pop("params")
  tx = tx or optim.make_optimizer(config.optim, total_steps)
  return loop.TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                                model_state=variables, rng=state_rng)


def step_rng(state, name: str = "dropout"):
  """The step's rng: the base key folded with the step (identical on resume)."""
  return {name: jax.random.fold_in(state.rng, state.step)}


def extract(fn: Callable[[Any, dict], dict], state, src, config, *, keys=None):
  """Runs jitted `fn(state, batch) -> dict of arrays` over a whole split.

  Batches are sharded over every device; padding rows are dropped. Returns a
  dict of numpy arrays with one row per record, in record order.
  """
  mesh = loop.make_mesh()
  bs = config.eval.batch_size
  bs = max(mesh.devices.size, bs - bs % mesh.devices.size)
  jfn = _jit_cache(fn)
  outs, valid = {}, []
  for batch in pipeline.eval_batches(src, batch_size=bs, image_fn=image_fn(config, False),
                                     keys=keys):
    v = batch.pop("valid")
    batch.pop("index", None)
    res = jax.device_get(jfn(state, loop.shard_batch(batch, mesh)))
    for k, x in res.items():
      outs.setdefault(k, []).append(np.asarray(x))
    valid.append(v)
  valid = np.concatenate(valid) if valid else np.zeros(0, bool)
  return {k: np.concatenate(v)[valid] for k, v in outs.items()}


_JITTED = {}


def _jit_cache(fn):
  # Keyed by the function object so that repeated evaluations reuse compilations.
  if fn not in _JITTED:
    _JITTED[fn] = jax.jit(fn)
  return _JITTED[fn]
