"""The benchmarks `python -m train.eval` runs, by name: a registry others add to.

A benchmark is chosen by config (`--config.eval.benchmark=face_bin
--config.eval.dir=/data/faces_emore`) and scored with any weights: a run's
checkpoint (--workdir) or converted torch weights (--weights, see
configs/pretrained.py). The command builds an `Embedder` from the weights,
calls the benchmark's evaluator and prints and writes what it returns.

Plug-in interface (a new benchmark is one function and one line in BENCHMARKS,
or a call to `register`):

  def my_benchmark(embed: Embedder, config) -> Result

  - `embed(images)` maps uint8 images [N, H, W, 3] (RGB, the model's input
    size config.data.image_size) to a dict of numpy arrays: "embedding"
    [N, D] float32 (unnormalised: a model that returns it normalised beside
    its "norm" gets it multiplied back), "norm" [N] (its L2 norm) and, where the
    model has a quality output, "quality" [N] (EQFace's s_i).
    `embed.source(records, key="image", flip=False)` does the same over a
    whole random-access source (a list of dicts, a tfds/grain data source),
    data parallel over every device with a progress bar; flip=True also
    returns the mirrored images' outputs under "flip_<name>"; image_fn
    (e.g. a resize) is applied to each image first. `embed.out` is the
    report folder (--out), where a benchmark may write files.
  - The benchmark's data lives in config.eval.dir; its options are keys of
    config.eval (declared in configs/base.py so that they can be set from the
    command line).
  - It returns a `Result`: `metrics` (flat {name: float}, the keys the
    training loop's best-checkpoint choice and report.json use), `rows` (the
    printed table, a list of {column: value} dicts; `text`, when set, is
    printed instead, e.g. insightface's own layout), and `curves` ({name:
    {"x", "y", "xlabel", "ylabel"[, "series", "logx", "kind"]}}, one PNG each,
    as train/eval.py's plot_curves draws them).

Errors in the benchmark's files are raised as ValueError / FileNotFoundError
naming the file and the fix; the command prints them as one line. A
benchmark may also register a check of its files in CHECKS (config -> None,
raising the same errors): a training run that validates with it
(config.eval.benchmark, every eval.every steps) runs the check before step 1.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Sequence

import numpy as np

# name -> "module:function" (imported on first use) or the function itself.
BENCHMARKS: dict[str, str | Callable] = {
    "face_bin": "train.eval_faces:face_bin",
    "ijb": "train.eval_faces:ijb",
    "embed": "train.eval_embed:embed_split",
    "reid": "train.eval_reid:reid",
    "video_reid": "train.eval_reid:video_reid",
    "places": "train.eval_reid:places",
}


# name -> "module:function(config)" that checks the benchmark's files and
# raises naming the file and the fix: run before training starts, so that a
# run validating every N steps does not stop at its first validation.
CHECKS: dict[str, str | Callable] = {
    "face_bin": "train.eval_faces:check_bins",
    "ijb": "train.eval_faces:check_ijb",
    "reid": "train.eval_reid:check_options",
    "video_reid": "train.eval_reid:check_options",
}


def preflight(config) -> None:
  """Runs config.eval.benchmark's check (CHECKS), if it has one."""
  name = config.eval.get("benchmark", "")
  if not name:
    return
  get(name)  # an unknown name is an error now too
  entry = CHECKS.get(name)
  if isinstance(entry, str):
    module, fn = entry.split(":")
    entry = getattr(importlib.import_module(module), fn)
  if entry is not None:
    entry(config)


# config.method -> "module:function" (config, weights path) -> Embedder: how
# `--weights` builds a model for a method's configs; methods not listed use
# train/eval.py's face embedder (configs/pretrained.py).
WEIGHTS_EMBEDDERS: dict[str, str] = {
    "casn": "train.eval_reid:backbone_embedder",
    "qan": "train.eval_reid:backbone_embedder",
    "netvlad": "train.eval_reid:backbone_embedder",
}


def weights_embedder(method: str) -> Callable | None:
  """The WEIGHTS_EMBEDDERS entry of `method`, imported; None when it has none."""
  entry = WEIGHTS_EMBEDDERS.get(method)
  if entry is None:
    return None
  module, fn = entry.split(":")
  return getattr(importlib.import_module(module), fn)


@dataclasses.dataclass
class Result:
  """What a benchmark returns (see the module docstring)."""
  metrics: dict[str, float]
  rows: list[dict] = dataclasses.field(default_factory=list)
  curves: dict[str, dict] = dataclasses.field(default_factory=dict)
  text: str = ""

  def table(self) -> str:
    """`text`, or `rows` as an aligned table."""
    return self.text or format_rows(self.rows)


def format_rows(rows: Sequence[dict]) -> str:
  """Rows of {column: value} as an aligned text table (floats with 4 decimals)."""
  if not rows:
    return ""
  cols = list(dict.fromkeys(k for r in rows for k in r))

  def cell(v):
    if isinstance(v, (float, np.floating)):
      return f"{v:.4f}"
    return "" if v is None else str(v)

  cells = [[cell(r.get(c)) for c in cols] for r in rows]
  width = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
  line = lambda xs: "  ".join(x.rjust(w) if i else x.ljust(w)  # noqa: E731
                              for i, (x, w) in enumerate(zip(xs, width)))
  return "\n".join([line(cols), "-" * (sum(width) + 2 * len(width) - 2)]
                   + [line(x) for x in cells])


def register(name: str, fn: str | Callable) -> None:
  """Makes --config.eval.benchmark=`name` run `fn` (a function or "module:function")."""
  if name in BENCHMARKS and BENCHMARKS[name] != fn:
    raise ValueError(f"benchmark {name!r} is already registered as {BENCHMARKS[name]}; "
                     "pick another name.")
  BENCHMARKS[name] = fn


def get(name: str) -> Callable[["Embedder", Any], Result]:
  """The evaluator registered as `name`."""
  if name not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r} (config.eval.benchmark); one of "
                     f"{', '.join(sorted(BENCHMARKS))}.")
  entry = BENCHMARKS[name]
  if isinstance(entry, str):
    module, fn = entry.split(":")
    entry = getattr(importlib.import_module(module), fn)
  return entry


# --------------------------------------------------------------------------
# Embedding functions.


def _outputs(out: Any) -> dict:
  """A model's output dict -> {"embedding", "norm"[, "quality"]} (float32)."""
  import jax.numpy as jnp
  if not isinstance(out, dict):
    out = {"embedding": out}
  emb = out["embedding"] if "embedding" in out else out["features"]
  emb = jnp.asarray(emb, jnp.float32)
  norm = jnp.linalg.norm(emb, axis=-1)
  if "norm" in out:
    # Some models return the embedding L2-normalised beside its norm (AdaFace):
    # the unnormalised one is direction x norm (unchanged for one that is not).
    given = jnp.asarray(out["norm"], jnp.float32).reshape(norm.shape)
    emb = emb / jnp.maximum(norm, 1e-12)[:, None] * given[:, None]
    norm = given
  res = {"embedding": emb, "norm": norm}
  if "quality" in out:
    res["quality"] = jnp.asarray(out["quality"], jnp.float32).reshape(emb.shape[0])
  if "part_quality" in out:  # [N, P]: one quality per horizontal part (QAN, video_reid)
    res["part_quality"] = jnp.asarray(out["part_quality"], jnp.float32)
  return res


_JITTED: dict = {}


def _jitted(apply_fn):
  """jit(outputs of apply_fn), one per apply_fn: validating every N steps compiles once."""
  import jax
  try:
    return _JITTED.setdefault(apply_fn, jax.jit(lambda v, x: _outputs(apply_fn(v, x))))
  except TypeError:  # an unhashable callable
    return jax.jit(lambda v, x: _outputs(apply_fn(v, x)))


class Embedder:
  """images uint8 [N, H, W, 3] -> {"embedding" [N, D], "norm" [N][, "quality" [N]]}.

  apply_fn(variables, images) -> a model's output (a dict with "embedding"
  or "features", optionally "quality"; or the embedding array). The
  variables are replicated over every device and each batch split over them
  (batch_size rounded down to a multiple of the device count; the last batch
  padded). image_size: the (H, W) the model takes.
  """

  def __init__(self, apply_fn: Callable, variables, image_size, batch_size: int = 256,
               progress: bool = True, description: str = ""):
    from train import meshes
    self.mesh = meshes.make_mesh()
    self.variables = meshes.replicate(variables, self.mesh)
    self.image_size = tuple(int(s) for s in image_size)
    n = self.mesh.devices.size
    self.batch_size = max(n, int(batch_size) - int(batch_size) % n)
    self.progress = progress
    self.description = description
    self.out = None  # the report folder, set by train.eval
    self._fn = _jitted(apply_fn)

  def __call__(self, images) -> dict:
    import jax

    from train import meshes
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"images must be [N, H, W, 3] uint8; got shape {x.shape}.")
    if tuple(x.shape[1:3]) != self.image_size:
      raise ValueError(f"images are {x.shape[1]}x{x.shape[2]} but the model takes "
                       f"{self.image_size[0]}x{self.image_size[1]} (config.data.image_size).")
    n = x.shape[0]
    if n == 0:
      raise ValueError("no images to embed.")
    parts = []
    for i in range(0, n, self.batch_size):
      b = x[i:i + self.batch_size]
      pad = (-len(b)) % self.mesh.devices.size
      if pad:
        b = np.concatenate([b, np.zeros((pad,) + b.shape[1:], b.dtype)])
      procs = jax.process_count()
      if procs == 1:
        out = jax.device_get(self._fn(self.variables, meshes.shard_batch(b, self.mesh)))
      else:
        # Every process holds the whole batch: each places its contiguous
        # share, and the outputs are gathered back in row order.
        from jax.experimental import multihost_utils
        per = len(b) // procs
        local = b[jax.process_index() * per:(jax.process_index() + 1) * per]
        out = multihost_utils.process_allgather(
            self._fn(self.variables, meshes.shard_batch(local, self.mesh)), tiled=True)
      parts.append({k: np.asarray(v)[:len(b) - pad] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def source(self, records, key: str = "image", flip: bool = False,
             description: str | None = None, image_fn: Callable | None = None,
             start: int = 0, stop: int | None = None) -> dict:
    """Embeds records[i][key] for i in [start, stop), in order; flip=True adds
    "flip_<name>" (the horizontally mirrored image: insightface's flip test)."""
    from train import writers
    stop = len(records) if stop is None else min(stop, len(records))
    n = stop - start
    bar = writers.progress(n, enabled=self.progress,
                           desc=description or self.description or "embed")
    parts = []
    try:
      for i in range(start, stop, self.batch_size):
        idx = list(range(i, min(i + self.batch_size, stop)))
        rows = (records.__getitems__(idx) if hasattr(records, "__getitems__")
                else [records[j] for j in idx])
        x = np.stack([np.asarray(r[key] if image_fn is None else image_fn(np.asarray(r[key])))
                      for r in rows])
        out = self(x)
        if flip:
          out.update({f"flip_{k}": v for k, v in self(x[:, :, ::-1]).items()})
        parts.append(out)
        bar.update(len(idx))
    finally:
      bar.close()
    if not parts:
      raise ValueError("no records to embed.")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
