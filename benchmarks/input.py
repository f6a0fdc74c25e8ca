"""Input pipeline throughput: batches/s and images/s of every sampler.

  python -m benchmarks.input [--fake] [--threads 2] [--workers 0] [--seconds 3]

Runs each sampler of jaxset.data.pipeline at the default training batch sizes
on the embedded datasets (synthetic_identities 64x32, synthetic_places 64x64),
or, with --fake or when those builders are not available, on in-memory fake
sources of the same shapes whose records hold PNG bytes decoded on access (as
tfds does). Each row: images per batch, batches/s and images/s after a
warm-up, and `headroom` = batches/s x step_s: how many training steps of
`--step-s` seconds (default 0.2 s, a tiny CNN at batch 64 on 2 CPU cores) the
pipeline feeds per step time. The bar is headroom >= 2. `startup_s` is the
sampler's construction time (metadata read, neighbour search).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import format_rows  # noqa: E402
from jaxset.data import pipeline, transforms  # noqa: E402


def _png(image: np.ndarray) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


class FakeSource:
  """Records of the embedded schemas; images stored as PNG, decoded per read."""

  def __init__(self, columns: dict, images: list[bytes]):
    self.columns, self.images = columns, images

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    from PIL import Image
    rec = {k: v[i] for k, v in self.columns.items()}
    rec["image"] = np.asarray(Image.open(io.BytesIO(self.images[i])).convert("RGB"))
    return rec


def _textures(n, shape, rng, distinct=64):
  """n PNGs cycling through `distinct` random smooth images (cheap to build)."""
  from scipy import ndimage
  base = []
  for _ in range(distinct):
    x = rng.normal(size=shape).astype(np.float32)
    x = ndimage.gaussian_filter(x, (2, 2, 0))
    x = (x - x.min()) / (np.ptp(x) + 1e-6) * 255
    base.append(_png(x.astype(np.uint8)))
  return [base[i % distinct] for i in range(n)]


def fake_identities(identities=200, cameras=3, tracklets=2, frames=8, seed=0):
  rng = np.random.default_rng(seed)
  rows = [(p, c, (p * cameras + c) * tracklets + t, f)
          for p in range(identities) for c in range(cameras)
          for t in range(tracklets) for f in range(frames)]
  a = np.array(rows, np.int64)
  n = len(a)
  cols = {"label": a[:, 0], "identity": a[:, 0], "camera": a[:, 1], "tracklet": a[:, 2],
          "frame": a[:, 3], "degradation": rng.uniform(0, 1, n).astype(np.float32)}
  return FakeSource(cols, _textures(n, (64, 32, 3), rng))


def fake_places(num_db=2000, num_q=500, seed=0):
  rng = np.random.default_rng(seed)
  db = rng.uniform(0, 1500, (num_db, 2))
  q = db[rng.choice(num_db, num_q)] + rng.normal(0, 4, (num_q, 2))
  return (FakeSource({"utm": db}, _textures(num_db, (64, 64, 3), rng)),
          FakeSource({"utm": q}, _textures(num_q, (64, 64, 3), rng)))


def sources(fake: bool):
  """(identities_train, places_db, places_q, note); each dataset falls back to
  its fake when its embedded builder is missing or fails."""
  ids = db = q = None
  used = []
  if not fake:
    from jaxset.data import load
    try:
      ids = load("synthetic_identities", "train")
      used.append("synthetic_identities (tfds)")
    except Exception as e:  # builder not there yet: same shapes, in memory
      print(f"synthetic_identities unavailable ({type(e).__name__}: {e})")
    try:
      db = load("synthetic_places", "train_database")
      q = load("synthetic_places", "train_queries")
      used.append("synthetic_places (tfds)")
    except Exception as e:
      print(f"synthetic_places unavailable ({type(e).__name__}: {e})")
  if ids is None:
    ids = fake_identities()
    used.append("FAKE identities (in memory, PNG decoded per read)")
  if db is None:
    db, q = fake_places()
    used.append("FAKE places (in memory, PNG decoded per read)")
  return ids, db, q, ", ".join(used)


def measure(make, images_per_batch, seconds, warmup=3):
  t0 = time.perf_counter()
  ds = make()
  startup = time.perf_counter() - t0
  it = iter(ds)
  for _ in range(warmup):
    next(it)
  n, t = 0, time.perf_counter()
  while time.perf_counter() - t < seconds or n < 5:
    try:
      next(it)
    except StopIteration:  # a finite (evaluation) iterator ran out
      break
    n += 1
  rate = n / (time.perf_counter() - t)
  if hasattr(it, "close"):
    it.close()
  return startup, rate, rate * images_per_batch


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--fake", action="store_true", help="in-memory fake sources")
  ap.add_argument("--threads", type=int, default=2, help="grain reader threads")
  ap.add_argument("--workers", type=int, default=0, help="grain worker processes")
  ap.add_argument("--seconds", type=float, default=3.0, help="timing per sampler")
  ap.add_argument("--step-s", type=float, default=0.2, help="training step time")
  ap.add_argument("--only", default="", help="substring of a sampler name")
  a = ap.parse_args()

  ids, db, q, note = sources(a.fake)
  print(f"# input pipeline on {note}; {os.cpu_count()} CPUs, threads={a.threads}, "
        f"workers={a.workers}\n")
  opts = dict(shard=(0, 1), num_threads=a.threads, prefetch=max(2, 2 * a.threads),
              worker_count=a.workers)
  aug = transforms.train_augment()
  cases = [
      ("pk_batches", "P16 x K4, 64x32, augment", 64,
       lambda: pipeline.pk_batches(ids, p=16, k=4, image_fn=aug, **opts)),
      ("pair_batches", "32 pairs, 64x32, augment", 64,
       lambda: pipeline.pair_batches(ids, batch_size=32, image_fn=aug, **opts)),
      ("set_batches", "16 sets x 8 frames, 64x32, augment", 128,
       lambda: pipeline.set_batches(ids, batch_size=16, set_size=8, image_fn=aug, **opts)),
      ("set_batches", "16 sets x [4, 8] frames, 64x32", 16 * 6,
       lambda: pipeline.set_batches(ids, batch_size=16, set_size=(4, 8), **opts)),
      ("set_triplet_batches", "8 x 3 sets x 8 frames, 64x32", 192,
       lambda: pipeline.set_triplet_batches(ids, batch_size=8, set_size=8, **opts)),
      ("netvlad_tuples", "B4: 1 + 4 pos + 10 neg, 64x64", 60,
       lambda: pipeline.netvlad_tuples(db, q, batch_size=4, num_positives=4,
                                       num_negatives=10, **opts)),
      ("eval_batches", "256 images, 64x32", 256,
       lambda: pipeline.eval_batches(ids, batch_size=256, shard=(0, 1),
                                     num_threads=a.threads, prefetch=opts["prefetch"])),
  ]
  rows = []
  for name, config, images, make in cases:
    if a.only not in name:
      continue
    startup, bps, ips = measure(make, images, a.seconds)
    rows.append({"sampler": name, "config": config, "images/batch": images,
                 "startup_s": f"{startup:.2f}", "batches/s": f"{bps:.1f}",
                 "images/s": f"{ips:.0f}", "ms/batch": f"{1e3 / bps:.1f}",
                 "headroom": f"{bps * a.step_s:.1f}x"})
    print(format_rows(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
  print()
  print(format_rows(rows, list(rows[0])))
  print(f"\nheadroom = batches/s x {a.step_s} s per training step; the bar is >= 2x. "
        "Sets with a [min, max] size count their mean size.")


if __name__ == "__main__":
  main()
