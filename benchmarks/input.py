"""Does each config's input pipeline feed its real training step? (issue 3)

  python -m benchmarks.input [--methods qan,netvlad] [--seconds 3] [--warmup_s 4] [--steps 5]
                             [--loop_steps 6] [--fake]

For each method's configs/<method>.py default and each stage of its schedule,
the iterator the task itself builds (stage.make_iterator() of
train/tasks/<method>.py: its sampler, batch composition, image_fn and
augmentation, thread prefetch, and for NetVLAD the hard-negative miner over
the step-0 feature cache) on the embedded datasets at their default size:

  cold_b/s   the rate of the 20 batches after the first one, in a process that
             has decoded no image yet (the start of a training run);
  batches/s  the rate after a --warmup_s warm-up, pulled as fast as possible:
             the samplers keep a split's decoded images in memory, so from
             the second epoch on a batch skips the decode;
  step_s     the median time of the stage's real jitted train step on 1 device
             (benchmarks.common.time_train_step, shared with benchmarks/train.py);
  headroom   step_s x batches/s: batches the pipeline makes per training step.
             The bar is headroom >= 2 (cold_headroom: the same with cold_b/s).

Both are measured alone, one after the other, on the same cores. `loop_s` is
the time per step when the step is fed from the live iterator as
train/loop.py feeds it (next, shard_batch, step; the pipeline's threads run
meanwhile): close to step_s when the pipeline keeps up. `images/batch` counts
the real images of a batch (set and tuple padding left out), averaged over
the measured batches. Stages whose iterator gives the same batches share one
pipeline measurement. With --fake the tasks read in-memory fake sources of
the embedded schemas and sizes (PNG/JPEG bytes decoded on every read, as tfds
does) instead of the tfds builders.

  python -m benchmarks.input --accelerator [--seconds 3] [--device_rates adaface=2500,...]

--accelerator asks instead whether one CPU core feeds an accelerator: each
large preset's per-sample host work at its real stored image size (JPEG
bytes of MS1M's 112x112 faces, Pittsburgh's 480x640 views, Market-1501's
128x64 crops), decoded with PIL and passed through the preset's own
image_fn, one thread, timed in CPU seconds (so the rate is per core whatever
else runs on the machine); for NetVLAD a tuple is 21 images plus the
hard-negative miner's distances over the float16 feature cache. A step's
samples/s on the accelerator is taken from --device_rates or, by default,
estimated as 40% of an H100's dense bfloat16 peak (989 TFLOP/s) over XLA's
FLOPs per sample of the config's train step (benchmarks/device.py's shapes);
cores = that rate / samples/s per core.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import format_rows, method_setup, time_train_step  # noqa: E402
from train.tasks import METHODS  # noqa: E402

# Image leaves of a batch and the mask marking their real slots.
_MASKS = {"images": "mask", "positives": "pos_mask", "negatives": "neg_mask"}


# --------------------------------------------------------------------------
# Fake sources (--fake): the embedded schemas and sizes, in memory

def _encode(image: np.ndarray, fmt: str) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format=fmt)
  return buf.getvalue()


class FakeSource:
  """Records of an embedded schema; images stored encoded, decoded per read."""

  def __init__(self, columns: dict, images: list[bytes]):
    self.columns, self.images = columns, images

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    from PIL import Image
    rec = {k: v[i] for k, v in self.columns.items()}
    rec["image"] = np.asarray(Image.open(io.BytesIO(self.images[i])).convert("RGB"))
    return rec


def _textures(n, shape, rng, fmt, distinct=64):
  """n encoded images cycling through `distinct` random smooth ones."""
  from scipy import ndimage
  base = []
  for _ in range(distinct):
    x = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), (2, 2, 0))
    x = (x - x.min()) / (np.ptp(x) + 1e-6) * 255
    base.append(_encode(x.astype(np.uint8), fmt))
  return [base[i % distinct] for i in range(n)]


def fake_identities(identities=160, cameras=3, tracklets=2, frames=8, seed=0):
  """synthetic_identities' train split: 64x32 PNG, 7680 records by default."""
  rng = np.random.default_rng(seed)
  rows = [(p, c, (p * cameras + c) * tracklets + t, f)
          for p in range(identities) for c in range(cameras)
          for t in range(tracklets) for f in range(frames)]
  a = np.array(rows, np.int64)
  n = len(a)
  cols = {"label": a[:, 0], "identity": a[:, 0], "camera": a[:, 1], "tracklet": a[:, 2],
          "frame": a[:, 3], "degradation": rng.uniform(0, 1, n).astype(np.float32)}
  return FakeSource(cols, _textures(n, (64, 32, 3), rng, "PNG"))


def fake_places(num_db=1388, num_q=1000, seed=0):
  """synthetic_places' train database and queries: 64x64 JPEG, utm in metres."""
  rng = np.random.default_rng(seed)
  db = rng.uniform(0, 1, (num_db, 2)) * [360.0, 240.0]
  q = db[rng.choice(num_db, num_q)] + rng.normal(0, 4, (num_q, 2))
  return (FakeSource({"utm": db}, _textures(num_db, (64, 64, 3), rng, "JPEG")),
          FakeSource({"utm": q}, _textures(num_q, (64, 64, 3), rng, "JPEG")))


def use_fake_sources():
  """Makes train.tasks.common.source return the fakes (this process only)."""
  from train.tasks import common
  made = {}

  def source(config, split):
    if config.data.name == "synthetic_identities" and split == "train":
      key = "ids"
      if key not in made:
        made[key] = fake_identities()
    elif config.data.name == "synthetic_places" and split in ("train_database",
                                                               "train_queries"):
      key = split
      if key not in made:
        made["train_database"], made["train_queries"] = fake_places()
    else:
      raise ValueError(f"--fake has no fake for {config.data.name}/{split}.")
    return made[key]

  common.source = source


# --------------------------------------------------------------------------
# Measurements

def sampler_of(batch: dict) -> str:
  """The jaxset.data.samplers function that makes batches of this structure."""
  if "anchor" in batch:
    return "set_triplet_batches"
  if "query" in batch:
    return "netvlad_tuples"
  if "images" in batch:
    return "set_batches"
  if "image_a" in batch:
    return "pair_batches"
  return "pk_batches"


def real_images(batch: dict) -> int:
  """Images in a batch, masked (padding) slots left out."""
  n = 0
  for key, value in batch.items():
    if isinstance(value, dict):
      n += real_images(value)
    elif isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim >= 4:
      mask = batch.get(_MASKS.get(key, ""))
      n += int(np.sum(mask)) if mask is not None else int(np.prod(value.shape[:-3]))
  return n


def fingerprint(batch) -> str:
  h = hashlib.sha1()
  for leaf in jax.tree.leaves(batch):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def pipeline_rate(iterator, seconds: float, warmup_s: float, cold_batches: int = 20,
                  min_batches: int = 10):
  """(cold batches/s, batches/s, mean real images per batch) of an iterator
  whose first batch was taken: the rate of the next `cold_batches` (decoded-
  image cache empty at first, as in a fresh training process), then the rate
  over `seconds` after pulling batches for `warmup_s` more."""
  t = time.perf_counter()
  for _ in range(cold_batches):
    next(iterator)
  cold = cold_batches / (time.perf_counter() - t)
  t = time.perf_counter()
  while time.perf_counter() - t < warmup_s:
    next(iterator)
  n, images, t = 0, 0, time.perf_counter()
  while time.perf_counter() - t < seconds or n < min_batches:
    images += real_images(next(iterator))
    n += 1
  return cold, n / (time.perf_counter() - t), images / n


def loop_time(compiled_step, state, iterator, mesh, steps: int, skip: int = 4):
  """Seconds per step of the loop's own feeding (train/loop.py); the first
  `skip` steps (the batches already prefetched: the samplers' default
  prefetch is 4) are not timed."""
  from train import meshes
  t = None
  for i in range(skip + steps):
    if i == skip:
      jax.block_until_ready(state)
      t = time.perf_counter()
    state, metrics = compiled_step(state, meshes.shard_batch(next(iterator), mesh))
  jax.block_until_ready(metrics)
  return state, (time.perf_counter() - t) / steps


def bench_method(method: str, seconds: float, warmup_s: float, steps: int,
                 loop_steps: int) -> list[dict]:
  from jaxset.data.images import clear_decoded_images
  clear_decoded_images()  # each config as in its own training process
  task, config, mesh, state = method_setup(method, devices=1)
  rates = {}  # iterator fingerprint -> (cold batches/s, batches/s, images/batch)
  rows = []
  for stage in task.stages(config):
    iterator = stage.make_iterator()
    first = next(iterator)
    key = fingerprint(first)
    if key not in rates:
      rates[key] = pipeline_rate(iterator, seconds, warmup_s)
    cold, bps, images = rates[key]
    batches = [first] + [next(iterator) for _ in range(steps)]
    state, compiled, compile_s, step_s = time_train_step(stage.train_step, state, batches, mesh)
    row = {"config": method, "stage": stage.name, "sampler": sampler_of(first),
           "images/batch": f"{images:.0f}", "cold_b/s": f"{cold:.1f}",
           "batches/s": f"{bps:.1f}",
           "step_s": f"{step_s:.3f}", "headroom": f"{step_s * bps:.1f}",
           ">=2": "yes" if step_s * bps >= 2 else "NO",
           "cold_headroom": f"{step_s * cold:.1f}", "compile_s": f"{compile_s:.1f}"}
    if loop_steps:
      state, loop_s = loop_time(compiled, state, iterator, mesh, loop_steps)
      row["loop_s"] = f"{loop_s:.3f}"
    if hasattr(iterator, "close"):
      iterator.close()
    rows.append(row)
    print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr, flush=True)
  return rows


# --------------------------------------------------------------------------
# Feeding an accelerator (--accelerator)

# Per preset: (configs file, preset, stored image size, images per sample).
FEED = {
    "adaface": ("adaface", "ms1m", (112, 112), 1),
    "casn": ("casn", "market1501", (128, 64), 1),
    "netvlad": ("netvlad", "pitts30k", (480, 640), 21),
}
H100_BF16, GOAL_MFU = 989e12, 0.40


def host_seconds_per_sample(method: str, seconds: float) -> tuple[float, str]:
  """CPU seconds of one sample's host work (decode + the preset's image_fn
  [+ NetVLAD's mining]) on one thread, and what it includes."""
  import importlib

  from PIL import Image

  from train.tasks import common
  module, preset, stored, per_sample = FEED[method]
  config = importlib.import_module(f"configs.{module}").get_config(preset)
  image_fn = common.image_fn(config, train=True)
  rng = np.random.default_rng(0)
  blobs = _textures(16, stored + (3,), rng, "JPEG", distinct=16)
  n, t = 0, time.process_time()
  while time.process_time() - t < seconds or n < 32:
    img = np.asarray(Image.open(io.BytesIO(blobs[n % len(blobs)])).convert("RGB"))
    if image_fn is not None:
      img = image_fn(img, np.random.default_rng(n))
    n += 1
  per_image = (time.process_time() - t) / n
  what = f"decode {stored[0]}x{stored[1]} JPEG" + (
      f" + image_fn to {tuple(config.data.image_size)}" if image_fn is not None else "")
  mining = 0.0
  if method == "netvlad":
    mining = mining_seconds_per_query(config, seconds)
    what += f" x {per_sample} + mining"
  return per_image * per_sample + mining, what


def mining_seconds_per_query(config, seconds: float) -> float:
  """CPU seconds of the hard-negative miner for one query: distances of
  negative_pool + num_negatives cached float16 descriptors (K x D of the
  preset: 64 x 512 for VGG16) and of the potential positives, and the sort."""
  from train.tasks.netvlad import _cache_distances
  dim = config.model.num_clusters * 512
  pool = config.tuples.negative_pool + config.tuples.num_negatives
  rng = np.random.default_rng(0)
  db = rng.standard_normal((2 * pool, dim)).astype(np.float16)
  fq = rng.standard_normal(dim).astype(np.float16)
  n, t = 0, time.process_time()
  while time.process_time() - t < seconds or n < 3:
    d = _cache_distances(db, np.arange(pool), fq)
    np.argsort(d, kind="stable")
    _cache_distances(db, np.arange(pool, pool + 20), fq)
    n += 1
  return (time.process_time() - t) / n


def device_rate(method: str, given: dict) -> tuple[float, str]:
  """Samples/s of one accelerator: --device_rates, or 40% of an H100's peak."""
  if method in given:
    return given[method], "--device_rates"
  from benchmarks.workloads import flops_per_sample
  f = flops_per_sample(method)
  return GOAL_MFU * H100_BF16 / f, f"40% of H100 bf16 / {f / 1e9:,.0f} GFLOP per sample"


def accelerator_rows(seconds: float, given: dict) -> list[dict]:
  rows = []
  for method in FEED:
    cpu_s, what = host_seconds_per_sample(method, seconds)
    rate, source = device_rate(method, given)
    per_core = 1.0 / cpu_s
    rows.append({"config": f"{FEED[method][0]}:{FEED[method][1]}", "host work": what,
                 "samples/s/core": f"{per_core:,.1f}", "device samples/s": f"{rate:,.0f}",
                 "cores": f"{rate / per_core:,.1f}", "device rate from": source})
    print("  " + "  ".join(f"{k}={v}" for k, v in rows[-1].items()), file=sys.stderr,
          flush=True)
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--seconds", type=float, default=3.0, help="pipeline timing per iterator")
  ap.add_argument("--warmup_s", type=float, default=4.0,
                  help="batches pulled before the timing (the decoded-image cache fills)")
  ap.add_argument("--steps", type=int, default=5, help="timed train steps per stage")
  ap.add_argument("--loop_steps", type=int, default=6,
                  help="timed steps fed by the live iterator; 0 skips loop_s")
  ap.add_argument("--fake", action="store_true", help="in-memory fake sources")
  ap.add_argument("--accelerator", action="store_true",
                  help="cores one accelerator needs per large preset (see above)")
  ap.add_argument("--device_rates", default="",
                  help="samples/s of one accelerator, e.g. adaface=2500,casn=3000,netvlad=30")
  a = ap.parse_args()
  if a.accelerator:
    given = {k: float(v) for k, v in (kv.split("=") for kv in a.device_rates.split(",") if kv)}
    rows = accelerator_rows(a.seconds, given)
    print(format_rows(rows, list(rows[0])))
    return
  if a.fake:
    use_fake_sources()
  load = os.getloadavg()
  print(f"# {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        f"at start; jax {jax.__version__} {jax.default_backend()}, step on 1 device; "
        f"sources: {'FAKE (in memory)' if a.fake else 'embedded tfds builders'}\n")
  rows = []
  t0 = time.perf_counter()
  for method in a.methods.split(","):
    rows += bench_method(method, a.seconds, a.warmup_s, a.steps, a.loop_steps)
  cols = ["config", "stage", "sampler", "images/batch", "cold_b/s", "batches/s", "step_s",
          "headroom", ">=2", "cold_headroom", "loop_s", "compile_s"]
  print(format_rows(rows, [c for c in cols if any(c in r for r in rows)]))
  load = os.getloadavg()
  print(f"\nheadroom = step_s x batches/s (the bar: >= 2); cold_headroom = step_s x cold_b/s "
        f"(a fresh process's first batches). {time.perf_counter() - t0:.0f} s; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end.")


if __name__ == "__main__":
  main()
