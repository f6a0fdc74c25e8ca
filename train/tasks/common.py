"""Pieces every task uses: data sources, state creation, batched feature extraction."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxset import data as jdata
from jaxset.data import holdout, transforms
from jaxset.data.records import read_metadata
from jaxset.data.samplers.evaluation import eval_batches
from train import meshes, optim
from train.task import TrainState


def compute_dtype(config):
  """The models' compute dtype under the run's precision policy,
  config.train.precision (configs/base.py; config.model.dtype is the same
  value). Parameters stay float32 whatever it is."""
  names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  precision = config.train.get("precision", config.model.get("dtype", "float32"))
  if precision not in names:
    raise ValueError(f"config.train.precision={precision!r} is not a precision policy; "
                     "use float32 or bfloat16 (--config.train.precision=bfloat16).")
  return names[precision]


def model_from_config(cls, config, **given):
  """The Flax module `cls` built from config.model: every field of `cls` that
  config.model names takes its value from there (config keys and model fields
  share their names), dtype from the precision policy (compute_dtype); `given` sets the rest
  (what the data decides, e.g. num_classes) and overrides the config."""
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  kwargs = {k: config.model[k] for k in sorted(fields) if k in config.model}
  if "dtype" in kwargs:
    kwargs["dtype"] = compute_dtype(config)
  return cls(**{**kwargs, **given})


@functools.lru_cache(maxsize=None)
def _builder(name, cache_dir, manual_dir, builder_config):
  return jdata.builder(name, data_dir=cache_dir or None, manual_dir=manual_dir or None,
                       config=builder_config or None)


# The evaluation splits of the identity datasets. config.eval.split = "val" reads each
# from its held-out twin val_<name> (other identities: for choices), "test" as named.
HELD_OUT_SPLITS = ("query", "gallery", "pairs", "set_pairs")
EVAL_SPLITS = ("test", "val")


def evaluation_split(config, split: str) -> str:
  """The split name `split` stands for under config.eval.split (test or val)."""
  which = config.eval.get("split", "test")
  if which not in EVAL_SPLITS:
    raise ValueError(f"config.eval.split={which!r}; use one of {EVAL_SPLITS}.")
  return f"val_{split}" if which == "val" and split in HELD_OUT_SPLITS else split


def source(config, split: str):
  """The random-access source of one split of config.data.name (prepared once);
  query / gallery / pairs / set_pairs follow config.eval.split (evaluation_split).

  With config.data.holdout_identities > 0, "train" lacks the held-out
  identities and, under eval.split = val, "query" / "gallery" are theirs
  (held_out_splits)."""
  if config.data.name not in jdata.EMBEDDED and not config.data.dir:
    raise ValueError(
        f"config.data.name={config.data.name!r} reads your local copy of the dataset: "
        "give its folder with --config.data.dir=/path/to/it.")
  fraction = float(config.data.get("holdout_identities", 0.0))
  if config.data.name in jdata.DIRECT:  # read in place (RecordIO, a folder of identities)
    if fraction:
      raise ValueError(f"config.data.holdout_identities={fraction} holds out re-ID identities "
                       f"as a query/gallery split; {config.data.name!r} has none. Set it to 0.")
    return _direct(config.data.name, config.data.dir, split)
  b = _builder(config.data.name, config.data.cache_dir, config.data.dir,
               config.data.builder_config)
  name = evaluation_split(config, split)
  if fraction:
    held = held_out_splits(config)
    if split == "train":
      return held["train"]
    if name != split and split in held:
      return held[split]
  if name != split and name not in b.info.splits:
    raise ValueError(
        f"config.eval.split='val' reads {name!r}, which {config.data.name!r} does not have "
        f"(its splits: {sorted(b.info.splits)}); evaluate with --config.eval.split=test, "
        "give the dataset a validation split, or (re-ID) hold out training identities "
        "with --config.data.holdout_identities=0.1.")
  return b.as_data_source(name)


def held_out_splits(config) -> dict:
  """{"train", "query", "gallery"}: config.data.holdout_identities of the training
  identities set aside (seed config.data.holdout_seed) as a validation
  query/gallery split (jaxset.data.holdout), the rest relabelled for training."""
  return _held_out(config.data.name, config.data.cache_dir, config.data.dir,
                   config.data.builder_config, float(config.data.holdout_identities),
                   int(config.data.get("holdout_seed", 0)))


@functools.lru_cache(maxsize=None)
def _held_out(name, cache_dir, manual_dir, builder_config, fraction, seed):
  b = _builder(name, cache_dir, manual_dir, builder_config)
  have = set(b.info.splits)
  if not {"train", "query", "gallery"} <= have:
    raise ValueError(
        f"config.data.holdout_identities={fraction} makes a query/gallery validation split "
        f"for re-ID data with train/query/gallery splits; {name!r} has {sorted(have)}. "
        "Set it to 0.")
  if "val_query" in have:
    raise ValueError(
        f"{name!r} has its own validation split (val_query / val_gallery); validate on it "
        "with --config.eval.split=val and set config.data.holdout_identities to 0.")
  train = b.as_data_source("train")
  meta = read_metadata(train)
  try:
    h = holdout.holdout_identities(meta["identity"], meta["camera"], meta.get("tracklet"),
                                   fraction=fraction, seed=seed)
  except ValueError as e:
    raise ValueError(f"config.data.holdout_identities on {name!r}: {e}") from None
  ident = meta["identity"]
  return {"train": holdout.Subset(train, h.train, holdout.rank_labels(ident[h.train])),
          **{k: holdout.Subset(train, rows, holdout.rank_labels(ident[rows]))
             for k, rows in (("query", h.query), ("gallery", h.gallery))}}


@functools.lru_cache(maxsize=None)
def _direct(name, root, split):
  return jdata.open_direct(name, root, split)


def splits(config) -> set:
  """The split names config.data.name has (a RecordIO training set: just "train")."""
  source(config, "train")  # the same checks and preparation as for reading
  if config.data.name in jdata.DIRECT:
    return {"train"}
  b = _builder(config.data.name, config.data.cache_dir, config.data.dir,
               config.data.builder_config)
  return set(b.info.splits)


def image_fn(config, train: bool):
  """Resizes real datasets' images to config.data.image_size; augments if asked."""
  size = tuple(config.data.image_size)
  if train and config.data.get("augment", False):
    return transforms.train_augment(size, flip=config.data.get("flip", True))
  return transforms.eval_transform(size)


def create_state(model, config, rng, sample, total_steps: int, tx=None, **apply_kwargs):
  """Initialises `model` on `sample` and wraps it in a TrainState."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init({"params": init_rng, "dropout": init_rng}, sample, **apply_kwargs)
  variables = dict(variables)
  params = variables.pop("params")
  tx = tx or optim.make_optimizer(config.optim, total_steps)
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                            model_state=variables, rng=state_rng)
  if config.model.get("pretrained"):
    state = load_pretrained(state, config.model.pretrained)
    # The optimiser state was built for the random init; rebuild it for the new params.
    state = state.replace(opt_state=tx.init(state.params))
  return state


def step_rng(state, name: str = "dropout"):
  """The step's rng: the base key folded with the step (identical on resume)."""
  return {name: jax.random.fold_in(state.rng, state.step)}


def variables(state, params=None) -> dict:
  """The Flax variables of the state's model: its params (or `params`, the ones
  being differentiated) and every collection of state.model_state."""
  return {"params": state.params if params is None else params, **state.model_state}


def apply(model, state, *args, params=None, train: bool = False, **kwargs):
  """model.apply on the state's variables: the one boundary between a task and its model.

  train=False: returns the model's output (inference mode, nothing updated).
  train=True: runs the model with train=True, the step's rng and every
  model_state collection mutable; returns (output, new model_state).
  """
  v = variables(state, params)
  if not train:
    return model.apply(v, *args, **kwargs)
  return model.apply(v, *args, train=True, mutable=list(state.model_state),
                     rngs=step_rng(state), **kwargs)


def extract(fn: Callable[[Any, dict], dict], state, src, config, *, keys=None):
  """Runs jitted `fn(state, batch) -> dict of arrays` over a whole split.

  Batches are sharded over every device; padding rows are dropped. Returns a
  dict of numpy arrays with one row per record, in record order.
  """
  mesh = meshes.make_mesh()
  bs = config.eval.batch_size
  bs = max(mesh.devices.size, bs - bs % mesh.devices.size)
  jfn = _jit_cache(fn)
  outs, valid = {}, []
  for batch in eval_batches(src, batch_size=bs, image_fn=image_fn(config, False),
                            keys=keys):
    v = batch.pop("valid")
    batch.pop("index", None)
    out = jfn(state, meshes.shard_batch(batch, mesh))
    if jax.process_count() > 1:
      # Each process loaded its contiguous share of the rows: gather the
      # outputs (global arrays) and the valid masks (local) in that order.
      from jax.experimental import multihost_utils
      res = multihost_utils.process_allgather(out, tiled=True)
      v = multihost_utils.process_allgather(v, tiled=True)
    else:
      res = jax.device_get(out)
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



def _subtrees(tree, prefix=()):
  """Every dict node of a nested dict with its path, shallowest first."""
  out = [(prefix, tree)]
  for k, v in tree.items():
    if isinstance(v, dict):
      out += _subtrees(v, prefix + (k,))
  return sorted(out, key=lambda pv: len(pv[0]))


def load_pretrained(state, path: str):
  """Loads converted backbone weights (python -m jaxset.convert) into the state.

  The file holds Flax variables {"params", "batch_stats"} of one backbone
  module (VGG16 / ResNet) or of a FaceEmbedder (IResNet). They replace the
  subtree of state.params (and of state.model_state["batch_stats"]) whose
  parameter names and shapes match them exactly, wherever the model keeps its
  backbone. No match is an error naming the closest subtree's differences, so
  a checkpoint for the wrong architecture never loads silently.
  """
  from flax import traverse_util

  from jaxset.convert import load_variables

  def shapes(tree):
    return {"/".join(k): tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(tree).items()}

  loaded = load_variables(path)
  want = shapes(loaded["params"])
  params = jax.device_get(state.params)
  best = None
  for prefix, node in _subtrees(params):
    got = shapes(node)
    if got == want:
      break
    diff = len(set(got) ^ set(want))
    if best is None or diff < best[0]:
      best = (diff, prefix, got)
  else:
    _, prefix, got = best
    missing, unexpected = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    raise ValueError(
        f"{path} matches no part of the model. Closest: params/{'/'.join(prefix)}, "
        f"which also needs {missing[:6]}, does not have {unexpected[:6]}, and differs in "
        f"shape at {wrong[:6]}. Convert the checkpoint for --config.model.backbone "
        "(python -m jaxset.convert --arch=...).")

  def put(tree, sub):
    tree = jax.tree.map(lambda x: x, tree)  # fresh containers: the state is not mutated
    node = tree
    for key in prefix[:-1]:
      node = node[key]
    old = node[prefix[-1]]
    node[prefix[-1]] = jax.tree.map(lambda v, t: np.asarray(v, t.dtype), sub, old)
    return tree

  model_state = dict(state.model_state)
  if "batch_stats" in loaded:
    if "batch_stats" not in model_state:
      raise ValueError(f"{path} has BatchNorm statistics but the model keeps none.")
    model_state["batch_stats"] = put(jax.device_get(model_state["batch_stats"]),
                                     loaded["batch_stats"])
  return state.replace(params=put(params, loaded["params"]), model_state=model_state)
