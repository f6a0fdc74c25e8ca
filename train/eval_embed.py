"""The embedding export of `python -m train.eval` (--config.eval.benchmark=embed).

A benchmark of train/evaluators.py whose result is files: the embeddings of a
split or of a folder of images, with their ids and labels, in resumable
chunks (docs/evaluation.md, "Embedding export").
"""
from __future__ import annotations

import numpy as np

from train.evaluators import Result


def _records_to_embed(config):
  """(records, description): eval.dir as a folder of images (identity
  subfolders, or images directly in it: label -1), else split eval.embed_split
  (default "train") of config.data."""
  from pathlib import Path

  from jaxset.data import faces, formats
  if config.eval.dir:
    root = Path(config.eval.dir)
    if any(p.is_dir() for p in root.iterdir()) if root.is_dir() else False:
      return faces.FolderSource(root), str(root)
    files = formats.image_files(root) if root.is_dir() else []
    if not files:
      raise FileNotFoundError(f"config.eval.dir={str(root)!r}: expected a folder of images "
                              f"(or of identity folders); {formats.describe_dir(root)}.")
    return _Images(files), str(root)
  from train.tasks import common
  split = config.eval.get("embed_split", "") or "train"
  return common.source(config, split), f"{config.data.name}:{split}"


class _Images:
  """Images directly in a folder: records with label -1 and the file name."""

  def __init__(self, files):
    self.files = files

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    from PIL import Image
    with Image.open(self.files[i]) as im:
      image = np.asarray(im.convert("RGB"))
    return {"image": image, "label": np.int64(-1), "filename": self.files[i].name}

  def metadata(self):
    return {"label": np.full(len(self), -1, np.int64),
            "filename": np.asarray([p.name for p in self.files], np.str_)}


def embed_split(embed, config) -> Result:
  """Writes the embeddings of a split or a folder of images to embed.out:

    embeddings.npy  float32 [N, D] (unnormalised; flip-summed with eval.flip)
    norms.npy       float32 [N]      quality.npy  float32 [N] (a quality output only)
    labels.npy      int64 [N] (-1: none)    ids.npy  str [N] (file names / record ids)
    parts/part-<start>.npz   the chunks, eval.chunk rows each: a stopped run resumes
                    from the first missing chunk.
  Rows are in record order.
  """
  import json
  from pathlib import Path

  from jaxset.data import transforms
  from jaxset.data.records import read_metadata
  out = Path(embed.out)
  records, what = _records_to_embed(config)
  n = len(records)
  meta = read_metadata(records)
  labels = np.asarray(meta.get("label", np.full(n, -1)), np.int64)
  ids = np.asarray(meta.get("filename", np.arange(n).astype(str))).astype(str)
  chunk = int(config.eval.get("chunk", 0) or 10_000)
  parts_dir = out / "parts"
  parts_dir.mkdir(parents=True, exist_ok=True)
  flip = bool(config.eval.get("flip", False))
  # The chunks resume only the same job: same records, chunking, model and flip.
  job = {"source": what, "images": n, "chunk": chunk, "flip": flip,
         "model": getattr(embed, "description", ""), "image_size": list(embed.image_size)}
  manifest = parts_dir / "job.json"
  if manifest.exists() and json.loads(manifest.read_text()) != job:
    raise ValueError(
        f"{parts_dir} holds the chunks of another job ({manifest.read_text().strip()}), not "
        f"of this one ({json.dumps(job)}). Give another --out, or remove {parts_dir} to "
        "start again.")
  manifest.write_text(json.dumps(job))
  image_fn = transforms.eval_transform(embed.image_size)
  done = 0
  for start in range(0, n, chunk):
    path = parts_dir / f"part-{start:010d}.npz"
    if path.exists():
      done += 1
      continue
    e = embed.source(records, flip=flip, image_fn=image_fn, start=start, stop=start + chunk,
                     description=f"{what} [{start}:{min(start + chunk, n)}]")
    arrays = {"embedding": e["embedding"] + (e["flip_embedding"] if flip else 0),
              "norm": e["norm"]}
    if "quality" in e:
      arrays["quality"] = e["quality"]
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)  # a chunk is complete or absent
  parts = [np.load(parts_dir / f"part-{s:010d}.npz") for s in range(0, n, chunk)]
  emb = np.concatenate([p["embedding"] for p in parts]).astype(np.float32)
  np.save(out / "embeddings.npy", emb)
  np.save(out / "norms.npy", np.concatenate([p["norm"] for p in parts]).astype(np.float32))
  if "quality" in parts[0]:
    np.save(out / "quality.npy", np.concatenate([p["quality"] for p in parts]))
  np.save(out / "labels.npy", labels)
  np.save(out / "ids.npy", ids)
  rows = [{"source": what, "images": n, "dim": emb.shape[1], "resumed_chunks": done,
           "out": str(out)}]
  return Result({"images": float(n), "dim": float(emb.shape[1])}, rows)
