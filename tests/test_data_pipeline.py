"""Samplers, evaluation iterators, checkpoints and transforms of jaxset.data."""
import functools
import os

import numpy as np
import pytest

from jaxset.data import images, records, transforms
from jaxset.data.records import fetch, read_metadata
from jaxset.data.samplers.evaluation import eval_batches
from jaxset.data.samplers.pairs import pair_batches
from jaxset.data.samplers.pk import pk_batches, pk_pairs
from jaxset.data.samplers.sets import set_batches, set_triplet_batches
from jaxset.data.samplers.tuples import netvlad_tuples
from jaxset.data.sampling import restore_args, save_args

H, W = 8, 6


def _image(i):
  """An image that encodes its record index (checked against 'index')."""
  img = np.zeros((H, W, 3), np.uint8)
  img[..., 0] = i % 256
  img[..., 1] = i // 256
  img[..., 2] = 7
  return img


def _decode(images):
  return images[..., 0, 0, 0].astype(np.int64) + 256 * images[..., 0, 0, 1].astype(np.int64)


class IdentitySource:
  """identities x 2 tracklets (cameras 0 and 1) x frames; shuffled order."""

  def __init__(self, identities=10, frames=(3, 6), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(identities):
      for cam in range(2):
        for f in range(int(rng.integers(frames[0], frames[1] + 1))):
          rows.append((pid, cam, 2 * pid + cam, f))
    rows = [rows[i] for i in rng.permutation(len(rows))]
    self.records = [
        {"image": _image(i), "label": np.int64(pid), "identity": np.int64(pid),
         "camera": np.int64(cam), "tracklet": np.int64(tr), "frame": np.int64(f),
         "degradation": np.float32(i / 100), "filename": f"{i}.png".encode()}
        for i, (pid, cam, tr, f) in enumerate(rows)]

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]


class PlaceSource:

  def __init__(self, utm, offset=0):
    self.utm = np.asarray(utm, np.float64)
    self.offset = offset

  def __len__(self):
    return len(self.utm)

  def __getitem__(self, i):
    return {"image": _image(i + self.offset), "utm": self.utm[i], "filename": b"x"}


def _places(num_db=120, num_q=12, seed=0):
  rng = np.random.default_rng(seed)
  db = np.stack([np.arange(num_db) * 4.0, np.zeros(num_db)], 1) + rng.normal(0, 0.5, (num_db, 2))
  q = db[rng.choice(num_db, num_q, replace=False)] + rng.normal(0, 3, (num_q, 2))
  return PlaceSource(db), PlaceSource(q, offset=1000)


def _take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def _equal(a, b):
  if isinstance(a, dict):
    return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
  return np.array_equal(a, b)


SOURCE = IdentitySource()
FAST = dict(num_threads=0, prefetch=0)


def test_read_metadata_columns():
  meta = read_metadata(SOURCE)
  assert "image" not in meta
  assert meta["label"].shape == (len(SOURCE),)
  assert meta["filename"].dtype.kind == "U"
  assert meta["filename"][3] == "3.png"
  np.testing.assert_array_equal(meta["tracklet"], [r["tracklet"] for r in SOURCE.records])
  with pytest.raises(ValueError, match="not columns"):
    read_metadata(SOURCE, ["utm"])


def test_pk_shapes_composition_and_images():
  p, k = 4, 3
  meta = read_metadata(SOURCE)
  for batch in _take(pk_batches(SOURCE, p=p, k=k, shard=(0, 1), **FAST), 3):
    assert batch["image"].shape == (p * k, H, W, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    labels = batch["label"].reshape(p, k)
    assert len(set(labels[:, 0])) == p  # P distinct identities
    assert (labels == labels[:, :1]).all()  # K images each
    assert len(set(batch["index"].tolist())) == p * k  # >= K images: no repeats
    np.testing.assert_array_equal(_decode(batch["image"]), batch["index"])
    np.testing.assert_array_equal(meta["label"][batch["index"]], batch["label"])
    np.testing.assert_array_equal(meta["camera"][batch["index"]], batch["camera"])


def test_pk_epoch_covers_every_identity_once():
  p = 5  # 10 identities: 2 steps per epoch
  batches = _take(pk_batches(SOURCE, p=p, k=2, shard=(0, 1), **FAST), 4)
  for epoch in (batches[:2], batches[2:]):
    ids = np.concatenate([b["label"][::2] for b in epoch])
    assert sorted(ids.tolist()) == list(range(10))
  assert not _equal(batches[0], batches[2])  # reshuffled per epoch


def test_determinism_and_seeds():
  aug = transforms.train_augment(pad=2)
  make = lambda seed: pk_batches(SOURCE, p=2, k=2, seed=seed, image_fn=aug,
                                 shard=(0, 1), num_threads=2, prefetch=3)
  a, b, c = _take(make(1), 3), _take(make(1), 3), _take(make(2), 3)
  assert all(_equal(x, y) for x, y in zip(a, b))
  assert not all(_equal(x, y) for x, y in zip(a, c))


def test_pk_pairs_balanced():
  a, b, same = pk_pairs(3, 4)
  assert len(a) == 2 * 3 * 6 and same.sum() == 3 * 6
  label = np.repeat(np.arange(3), 4)
  np.testing.assert_array_equal(label[a] == label[b], same)
  assert (a != b).all()
  with pytest.raises(ValueError, match="k >= 2"):
    pk_pairs(3, 1)


@pytest.mark.parametrize("set_size", [4, (2, 5)])
def test_set_batches_masks(set_size):
  meta = read_metadata(SOURCE)
  smax = set_size if isinstance(set_size, int) else set_size[1]
  smin = set_size if isinstance(set_size, int) else set_size[0]
  sizes = []
  for batch in _take(set_batches(SOURCE, batch_size=6, set_size=set_size,
                                 shard=(0, 1), **FAST), 4):
    assert batch["images"].shape == (6, smax, H, W, 3)
    assert batch["mask"].dtype == bool and batch["mask"].shape == (6, smax)
    assert batch["degradation"].dtype == np.float32
    for i in range(6):
      m = batch["mask"][i]
      n = int(m.sum())
      sizes.append(n)
      assert m[:n].all() and not m[n:].any()  # valid slots first
      track = int(batch["tracklet"][i])
      length = int((meta["tracklet"] == track).sum())
      assert min(smin, length) <= n <= min(smax, length)
      idx = batch["index"][i, :n]
      assert (meta["tracklet"][idx] == track).all()
      assert (np.diff(meta["frame"][idx]) > 0).all()  # distinct, in frame order
      assert (meta["label"][idx] == batch["label"][i]).all()
      np.testing.assert_array_equal(_decode(batch["images"][i, :n]), idx)
      np.testing.assert_allclose(batch["degradation"][i, :n], meta["degradation"][idx])
      assert (batch["images"][i, n:] == 0).all()
      assert (batch["degradation"][i, n:] == -1).all() and (batch["index"][i, n:] == -1).all()
  if not isinstance(set_size, int):
    assert len(set(sizes)) > 1  # sizes really vary


def test_set_triplets():
  meta = read_metadata(SOURCE)
  batch = _take(set_triplet_batches(SOURCE, batch_size=4, set_size=3,
                                    shard=(0, 1), **FAST), 1)[0]
  a, p, n = batch["anchor"], batch["positive"], batch["negative"]
  assert a["images"].shape == p["images"].shape == n["images"].shape == (4, 3, H, W, 3)
  np.testing.assert_array_equal(a["label"], p["label"])
  assert (a["tracklet"] != p["tracklet"]).all() and (a["camera"] != p["camera"]).all()
  assert (a["label"] != n["label"]).all()
  for s in (a, p, n):
    for i in range(4):
      idx = s["index"][i][s["mask"][i]]
      assert (meta["tracklet"][idx] == s["tracklet"][i]).all()


def test_netvlad_tuples_radii_and_masks():
  db, q = _places()
  ds = netvlad_tuples(db, q, batch_size=4, num_positives=3, num_negatives=5,
                      negative_pool=50, shard=(0, 1), **FAST)
  for batch in _take(ds, 3):
    assert batch["query"].shape == (4, H, W, 3)
    assert batch["positives"].shape == (4, 3, H, W, 3)
    assert batch["negatives"].shape == (4, 5, H, W, 3)
    assert batch["pos_mask"].any(axis=1).all() and batch["neg_mask"].all()
    for i, qi in enumerate(batch["query_index"]):
      pos = batch["positive_index"][i][batch["pos_mask"][i]]
      neg = batch["negative_index"][i]
      d_pos = np.linalg.norm(db.utm[pos] - q.utm[qi], axis=1)
      d_neg = np.linalg.norm(db.utm[neg] - q.utm[qi], axis=1)
      assert (d_pos <= 10).all() and (d_neg > 25).all()
      assert (batch["positive_index"][i][~batch["pos_mask"][i]] == -1).all()
      np.testing.assert_array_equal(_decode(batch["positives"][i][batch["pos_mask"][i]]), pos)
      np.testing.assert_array_equal(_decode(batch["negatives"][i]), neg)
    np.testing.assert_array_equal(_decode(batch["query"]), batch["query_index"] + 1000)


def test_netvlad_miner_hook():
  db, q = _places()
  calls = []

  def miner(query_index, candidates):
    calls.append((query_index, candidates.copy()))
    return np.sort(candidates)[:2]  # "hardest" = lowest index, and fewer than M

  ds = netvlad_tuples(db, q, batch_size=2, num_negatives=4, negative_pool=30,
                      negative_miner=miner, shard=(0, 1), **FAST)
  batch = _take(ds, 1)[0]
  assert len(calls) == 2
  for i, (qi, cands) in enumerate(calls):
    assert qi == batch["query_index"][i] and len(cands) == 30
    np.testing.assert_array_equal(batch["negative_index"][i, :2], np.sort(cands)[:2])
    np.testing.assert_array_equal(batch["neg_mask"][i], [True, True, False, False])
    assert (batch["negatives"][i, 2:] == 0).all()
  near = lambda qi, c: np.flatnonzero(np.linalg.norm(db.utm - q.utm[qi], axis=1) < 5)[:1]
  bad = netvlad_tuples(db, q, batch_size=2, negative_miner=near, shard=(0, 1), **FAST)
  with pytest.raises(ValueError, match="within neg_radius"):
    _take(bad, 1)


def test_netvlad_positive_miner_hook():
  db, q = _places()
  calls = []

  def miner(query_index, potential):
    calls.append((query_index, potential.copy()))
    return potential[::-1][:1]  # one positive, chosen by the miner

  ds = netvlad_tuples(db, q, batch_size=2, num_positives=3, positive_miner=miner,
                      shard=(0, 1), **FAST)
  batch = _take(ds, 1)[0]
  assert len(calls) == 2
  for i, (qi, potential) in enumerate(calls):
    assert qi == batch["query_index"][i]
    assert (np.linalg.norm(db.utm[potential] - q.utm[qi], axis=1) <= 10.0).all()
    assert batch["positive_index"][i, 0] == potential[-1]
    np.testing.assert_array_equal(batch["pos_mask"][i], [True, False, False])
  far_one = lambda qi, p: np.setdiff1d(np.arange(len(db)), p)[:1]
  outside = netvlad_tuples(db, q, batch_size=2, shard=(0, 1), **FAST,
                           positive_miner=far_one)
  with pytest.raises(ValueError, match="potential positives"):
    _take(outside, 1)


def test_pair_batches_balanced():
  meta = read_metadata(SOURCE)
  batch = _take(pair_batches(SOURCE, batch_size=8, shard=(0, 1), **FAST), 1)[0]
  assert batch["image_a"].shape == (8, H, W, 3) and batch["same"].sum() == 4
  la, lb = meta["label"][batch["index_a"]], meta["label"][batch["index_b"]]
  np.testing.assert_array_equal(la == lb, batch["same"])
  assert (batch["index_a"] != batch["index_b"]).all()
  np.testing.assert_array_equal(_decode(batch["image_b"]), batch["index_b"])


@pytest.mark.parametrize("kind", ["pk", "sets", "netvlad", "pairs"])
def test_process_shards_disjoint_and_covering(kind):
  db, q = _places()
  make = {
      "pk": lambda s: pk_batches(SOURCE, p=4, k=2, shard=s, **FAST),
      "sets": lambda s: set_batches(SOURCE, batch_size=4, set_size=(2, 4), shard=s,
                                    image_fn=transforms.train_augment(), **FAST),
      "netvlad": lambda s: netvlad_tuples(db, q, batch_size=4, shard=s, **FAST),
      "pairs": lambda s: pair_batches(SOURCE, batch_size=8, shard=s, **FAST),
  }[kind]
  whole = _take(make((0, 1)), 2)
  parts = [_take(make((i, 2)), 2) for i in range(2)]
  for step in range(2):
    local = [parts[i][step] for i in range(2)]
    joined = {k: np.concatenate([l[k] for l in local]) for k in whole[step]}
    assert _equal(joined, whole[step])  # each process: its own half, nothing shared
  with pytest.raises(ValueError, match="divisible by the process count"):
    make((0, 3))


def test_eval_batches_padding_and_shards():
  n, b = len(SOURCE), 8
  batches = list(eval_batches(SOURCE, batch_size=b, shard=(0, 1), **FAST))
  assert len(batches) == -(-n // b)
  for batch in batches:
    assert batch["image"].shape == (b, H, W, 3) and batch["valid"].shape == (b,)
    assert "filename" not in batch
  last = batches[-1]
  r = n % b or b
  np.testing.assert_array_equal(last["valid"], np.arange(b) < r)
  assert (last["index"][r:] == -1).all()
  idx = np.concatenate([x["index"] for x in batches])
  np.testing.assert_array_equal(idx[idx >= 0], np.arange(n))
  np.testing.assert_array_equal(_decode(np.concatenate([x["image"] for x in batches]))[idx >= 0],
                                np.arange(n))
  shards = [list(eval_batches(SOURCE, batch_size=b, shard=(i, 2), **FAST))
            for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(batches)
  seen = np.concatenate([x["index"] for s in shards for x in s])
  seen = seen[seen >= 0]
  assert len(seen) == n and set(seen.tolist()) == set(range(n))


def test_checkpoint_restore_with_orbax(tmp_path):
  import orbax.checkpoint as ocp

  make = lambda: iter(pk_batches(
      SOURCE, p=2, k=2, seed=3, image_fn=transforms.train_augment(), shard=(0, 1),
      num_threads=2, prefetch=2))
  it = make()
  for _ in range(5):  # crosses an epoch boundary (5 steps per epoch)
    next(it)
  state = {"w": np.arange(4.0)}
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         data=save_args(it)))
    mngr.wait_until_finished()
  expected = [next(it) for _ in range(4)]
  fresh = make()
  next(fresh)  # a different position, overwritten by the restore
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), data=restore_args(fresh)))
  np.testing.assert_array_equal(restored["state"]["w"], state["w"])
  got = [next(fresh) for _ in range(4)]
  assert all(_equal(a, b) for a, b in zip(expected, got))


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="p=20 identities"):
    pk_batches(SOURCE, p=20, k=2, shard=(0, 1))
  with pytest.raises(ValueError, match="set_size"):
    set_batches(SOURCE, batch_size=2, set_size=(3, 2), shard=(0, 1))
  with pytest.raises(ValueError, match="shard"):
    pk_batches(SOURCE, p=2, k=2, shard=(2, 2))
  sizes = [np.zeros((H, W, 3), np.uint8), np.zeros((H + 1, W, 3), np.uint8)]
  odd = [{"image": im, "label": np.int64(0)} for im in sizes]
  with pytest.raises(ValueError, match="resize"):
    next(iter(eval_batches(odd, batch_size=2, shard=(0, 1), **FAST)))
  batch = next(iter(eval_batches(
      odd, batch_size=2, shard=(0, 1), image_fn=transforms.eval_transform((5, 4)), **FAST)))
  assert batch["image"].shape == (2, 5, 4, 3)


ALL_TRANSFORMS = [
    transforms.random_crop, transforms.random_flip, transforms.color_jitter,
    transforms.gaussian_blur, transforms.gaussian_noise, transforms.downscale_upscale,
    transforms.occlusion, functools.partial(transforms.random_degradation, p=1.0),
    transforms.train_augment(size=(24, 16), degrade_p=1.0),
]


@pytest.mark.parametrize("fn", ALL_TRANSFORMS)
def test_transforms_deterministic_uint8(fn):
  image = np.random.default_rng(0).integers(0, 256, (24, 16, 3), dtype=np.uint8)
  out = [fn(image, np.random.default_rng(s)) for s in (5, 5, 6, 7, 8)]
  assert all(o.dtype == np.uint8 and o.shape == image.shape for o in out)
  np.testing.assert_array_equal(out[0], out[1])
  assert any(not np.array_equal(out[0], o) for o in out[2:])


def test_resize_and_bad_input():
  image = np.zeros((10, 20, 3), np.uint8)
  assert transforms.resize(image, size=(7, 5)).shape == (7, 5, 3)
  with pytest.raises(ValueError, match="uint8"):
    transforms.random_flip(image.astype(np.float32), np.random.default_rng(0))
  with pytest.raises(ValueError, match="kinds"):
    transforms.random_degradation(image, np.random.default_rng(0), kinds=("rain",))


def test_tfds_source_metadata_cache_and_pk(tmp_path, monkeypatch):
  import PIL.Image
  import tensorflow_datasets as tfds

  class PipelineTestIdentities(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.Scalar(np.int64),
          "degradation": tfds.features.Scalar(np.float32),
          "filename": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(24):
        yield i, {"image": PIL.Image.fromarray(_image(i)), "label": i % 6,
                  "degradation": i / 24, "filename": f"{i}.png"}

  b = PipelineTestIdentities(data_dir=str(tmp_path))
  b.download_and_prepare(file_format="array_record")
  src = b.as_data_source("train")
  meta = read_metadata(src)
  assert set(meta) == {"label", "degradation", "filename"}
  assert meta["label"].dtype == np.int64 and meta["degradation"].dtype == np.float32
  order = np.array([int(f.split(".")[0]) for f in meta["filename"]])
  np.testing.assert_array_equal(meta["label"], order % 6)
  assert list(tmp_path.rglob("jaxset_metadata_train.npz"))
  monkeypatch.setattr(records, "fetch", None)  # a second read must come from the cache
  again = read_metadata(src)
  assert all(np.array_equal(meta[k], again[k]) for k in meta)
  monkeypatch.undo()
  batch = _take(pk_batches(src, p=3, k=2, shard=(0, 1), **FAST), 1)[0]
  np.testing.assert_array_equal(_decode(batch["image"]) % 6, batch["label"])


def test_worker_processes_give_the_same_batches():
  make = lambda workers: pk_batches(
      SOURCE, p=2, k=2, seed=4, image_fn=transforms.train_augment(), shard=(0, 1),
      num_threads=1, prefetch=2, worker_count=workers)
  it = iter(make(2))
  try:
    got = [next(it) for _ in range(4)]
  finally:
    it.close()
  assert all(_equal(a, b) for a, b in zip(_take(make(0), 4), got))


def test_embedded_synthetic_identities(tmp_path):
  from jaxset.data import load

  src = load("synthetic_identities", "train", config="tiny", data_dir=tmp_path)
  meta = read_metadata(src)
  assert {"label", "tracklet", "camera", "frame", "degradation"} <= set(meta)
  assert meta["degradation"].dtype == np.float32
  batch = _take(pk_batches(src, p=4, k=2, shard=(0, 1), **FAST), 1)[0]
  assert batch["image"].shape == (8, 64, 32, 3)
  np.testing.assert_array_equal(meta["label"][batch["index"]], batch["label"])
  sets = _take(set_batches(src, batch_size=4, set_size=(2, 4), shard=(0, 1),
                           **FAST), 1)[0]
  for i in range(4):
    idx = sets["index"][i][sets["mask"][i]]
    assert (meta["tracklet"][idx] == sets["tracklet"][i]).all()
  pairs = load("synthetic_identities", "pairs", config="tiny", data_dir=tmp_path)
  batches = list(eval_batches(pairs, batch_size=16, shard=(0, 1), **FAST))
  assert batches[0]["image_a"].shape == (16, 64, 32, 3)
  assert batches[0]["degradation_a"].dtype == np.float32
  assert sum(int(b["valid"].sum()) for b in batches) == len(pairs)


def test_embedded_synthetic_places(tmp_path):
  from jaxset.data import load

  db = load("synthetic_places", "train_database", config="tiny", data_dir=tmp_path)
  q = load("synthetic_places", "train_queries", config="tiny", data_dir=tmp_path)
  db_utm = read_metadata(db, ["utm"])["utm"]
  q_utm = read_metadata(q, ["utm"])["utm"]
  assert db_utm.shape == (len(db), 2) and db_utm.dtype == np.float64
  batch = _take(netvlad_tuples(db, q, batch_size=2, num_positives=2,
                               num_negatives=3, shard=(0, 1), **FAST), 1)[0]
  assert batch["query"].shape == (2, 64, 64, 3)
  assert batch["negatives"].shape == (2, 3, 64, 64, 3)
  for i, qi in enumerate(batch["query_index"]):
    pos = batch["positive_index"][i][batch["pos_mask"][i]]
    assert len(pos) and (np.linalg.norm(db_utm[pos] - q_utm[qi], axis=1) <= 10).all()
    neg = batch["negative_index"][i][batch["neg_mask"][i]]
    assert (np.linalg.norm(db_utm[neg] - q_utm[qi], axis=1) > 25).all()


def test_tfds_image_reader_matches_full_decode(tmp_path, monkeypatch):
  # Samplers read only the image feature of tfds records: the same pixels and
  # batches as tfds' full decode of every feature.
  from jaxset.data import load

  ids = load("synthetic_identities", "train", config="tiny", data_dir=tmp_path)
  db = load("synthetic_places", "train_database", config="tiny", data_dir=tmp_path)
  q = load("synthetic_places", "train_queries", config="tiny", data_dir=tmp_path)
  for src in (ids, db):
    read = images.image_reader(src, "image")
    assert read is not None
    idx = list(range(0, len(src), 7))
    want = [rec["image"] for rec in fetch(src, idx)]
    first = read(idx)
    assert read.cache.caching and set(idx) <= set(read.cache.images)
    first[0][:] = 0  # callers get copies: the cache keeps the decoded pixels
    for got, w in zip(read(idx), want):  # now from the cache
      assert got.dtype == w.dtype and np.array_equal(got, w)
  # Every source object over the same prepared split shares one cache.
  again = load("synthetic_identities", "train", config="tiny", data_dir=tmp_path)
  assert again is not ids
  shared = images.image_reader(ids, "image").cache
  assert images.image_reader(again, "image").cache is shared
  for path in ids.source.data_source._paths:  # prepared again in place: a new cache
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
  assert images.image_reader(ids, "image").cache is not shared
  monkeypatch.setattr(images, "IMAGE_CACHE_BYTES", 1)  # a split too big to cache
  feature = q.dataset_info.features["image"]
  small = images.TfdsImageReader(q, "image", feature, len(q), images.DecodedImages())
  got = small([0, 1, 0])
  assert small.cache.caching is False and not small.cache.images
  assert all(np.array_equal(g, q[i]["image"]) for g, i in zip(got, [0, 1, 0]))
  monkeypatch.undo()
  assert images.image_reader(IdentitySource(), "image") is None
  assert images.image_reader(ids, "image_a") is None  # not a key of this split
  aug = transforms.train_augment()
  make = [
      lambda: pk_batches(ids, p=4, k=2, image_fn=aug, shard=(0, 1), **FAST),
      lambda: set_triplet_batches(ids, batch_size=2, set_size=(2, 4), image_fn=aug,
                                  shard=(0, 1), **FAST),
      lambda: pair_batches(ids, batch_size=4, image_fn=aug, shard=(0, 1), **FAST),
      lambda: netvlad_tuples(db, q, batch_size=2, num_positives=2, num_negatives=3,
                             image_fn=aug, shard=(0, 1), **FAST)]
  fast = [_take(m(), 2) for m in make]
  monkeypatch.setattr(images, "image_reader", lambda source, key: None)
  for m, got in zip(make, fast):
    assert all(_equal(a, b) for a, b in zip(_take(m(), 2), got))
