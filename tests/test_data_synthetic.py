"""The embedded datasets (tiny configs): schema, determinism, splits, protocol ids, inspect."""
import hashlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import jaxset.data
from jaxset.data import overview as inspect_lib
from jaxset.data import synthetic_identities as si
from jaxset.data import synthetic_places as sp
from jaxset.data.records import read_metadata

ID_SPLITS = ("train", "query", "gallery", "pairs", "set_pairs", "val_query", "val_gallery",
             "val_pairs", "val_set_pairs")
TINY_ID = next(c for c in si.CONFIGS if c.name == "tiny")
TINY_PLACES = next(c for c in sp.CONFIGS if c.name == "tiny")
PLACE_SPLITS = tuple(f"{s}_{k}" for s in ("train", "val", "test") for k in ("database", "queries"))


@pytest.fixture(scope="module")
def id_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("identities")
  jaxset.data.builder("synthetic_identities", data_dir=d, config="tiny")
  return d


@pytest.fixture(scope="module")
def place_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("places")
  jaxset.data.builder("synthetic_places", data_dir=d, config="tiny")
  return d


def _load(name, split, d):
  return jaxset.data.load(name, split, data_dir=d, config="tiny")


def _file_hashes(d: Path, name: str) -> dict:
  files = sorted((d / name / "tiny").glob("*/*.array_record*"))
  assert files, f"no array_record files under {d / name / 'tiny'}"
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# --------------------------------------------------------------------------
# synthetic_identities

def test_identities_schema_and_dtypes(id_dir):
  c = TINY_ID
  for split in ID_SPLITS:
    src = _load("synthetic_identities", split, id_dir)
    assert len(src) > 0, split
    rec = src[len(src) // 2]
    assert tuple(rec) == si.SPLIT_FEATURES[split], split
    for key, value in rec.items():
      if key.startswith("image"):
        assert value.dtype == np.uint8 and value.shape == (c.height, c.width, 3), key
      elif key == "filename":
        assert isinstance(value, bytes) and value.endswith(b".png")
      elif key.startswith("degradation") and key != "degradation_type":
        assert isinstance(value, float) and 0.0 <= value <= 1.0, key
      else:
        assert isinstance(value, int), key
  meta = read_metadata(_load("synthetic_identities", "train", id_dir))
  assert meta["degradation"].dtype == np.float32
  assert meta["label"].dtype == np.int64


def test_identities_validation_identities_are_held_out(id_dir):
  ids = {split: set(read_metadata(_load("synthetic_identities", split, id_dir))["identity"])
         for split in ("train", "query", "gallery", "val_query", "val_gallery")}
  val = ids["val_query"] | ids["val_gallery"]
  assert len(val) == TINY_ID.val_identities
  assert not val & (ids["train"] | ids["query"] | ids["gallery"])
  assert ids["val_query"] == ids["val_gallery"]
  # val_set_pairs refer to the validation tracklets, as set_pairs to the test ones.
  vt = set(read_metadata(_load("synthetic_identities", "val_query", id_dir))["tracklet"]) | set(
      read_metadata(_load("synthetic_identities", "val_gallery", id_dir))["tracklet"])
  vp = read_metadata(_load("synthetic_identities", "val_set_pairs", id_dir))
  assert set(vp["tracklet_a"]) | set(vp["tracklet_b"]) <= vt
  assert sorted(set(vp["fold"])) == list(range(si.NUM_FOLDS))


def test_eval_split_routes_the_held_out_splits(id_dir):
  import configs.qan
  from configs.base import with_overrides
  from train.tasks import common

  config = with_overrides(configs.qan.get_config(), {
      "data.builder_config": "tiny", "data.cache_dir": str(id_dir)})
  assert common.evaluation_split(config, "query") == "query"
  config.eval.split = "val"
  assert [common.evaluation_split(config, s) for s in ("query", "set_pairs", "train")] == [
      "val_query", "val_set_pairs", "train"]
  q = read_metadata(common.source(config, "query"))
  assert set(q["identity"]) == set(read_metadata(
      _load("synthetic_identities", "val_query", id_dir))["identity"])
  config.eval.split = "validation"
  with pytest.raises(ValueError, match="eval.split='validation'"):
    common.source(config, "query")


def test_identities_second_load_does_not_rebuild(id_dir, monkeypatch):
  before = _file_hashes(id_dir, "synthetic_identities")
  mtimes = {p: p.stat().st_mtime_ns for p in (id_dir / "synthetic_identities").rglob("*")}

  def fail(*args, **kwargs):
    raise AssertionError("the dataset was generated again")

  monkeypatch.setattr(si, "generate", fail)
  src = _load("synthetic_identities", "train", id_dir)
  assert len(src) > 0
  assert _file_hashes(id_dir, "synthetic_identities") == before
  assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items() if p.suffix != ".npz")


def test_identities_deterministic(id_dir, tmp_path):
  jaxset.data.builder("synthetic_identities", data_dir=tmp_path, config="tiny")
  assert _file_hashes(tmp_path, "synthetic_identities") == _file_hashes(
      id_dir, "synthetic_identities")
  a, b = _load("synthetic_identities", "gallery", id_dir), _load(
      "synthetic_identities", "gallery", tmp_path)
  for i in (0, len(a) - 1):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    assert a[i]["filename"] == b[i]["filename"]


def test_identities_splits_and_labels(id_dir):
  c = TINY_ID
  m = {s: read_metadata(_load("synthetic_identities", s, id_dir))
       for s in ("train", "query", "gallery")}
  train_ids = set(m["train"]["identity"].tolist())
  test_ids = set(m["query"]["identity"].tolist())
  assert train_ids.isdisjoint(test_ids)
  assert set(m["gallery"]["identity"].tolist()) == test_ids
  assert min(train_ids) == 1 and len(train_ids) == c.train_identities
  assert len(test_ids) == c.test_identities
  for s in m:  # labels are contiguous 0..C-1 and follow the identities
    labels, ids = m[s]["label"], m[s]["identity"]
    assert set(labels.tolist()) == set(range(len(set(ids.tolist()))))
    assert len(set(zip(labels.tolist(), ids.tolist()))) == len(set(ids.tolist()))
  for p in test_ids:  # query: one camera per identity; gallery: only the others
    q_cams = set(m["query"]["camera"][m["query"]["identity"] == p].tolist())
    g_cams = set(m["gallery"]["camera"][m["gallery"]["identity"] == p].tolist())
    assert len(q_cams) == 1 and q_cams.isdisjoint(g_cams) and len(g_cams) == c.cameras - 1
  # Test tracklet ids: one id space over query and gallery; frames contiguous 0..F-1.
  q_t, g_t = set(m["query"]["tracklet"].tolist()), set(m["gallery"]["tracklet"].tolist())
  assert q_t.isdisjoint(g_t)
  for s in m:
    t, f = m[s]["tracklet"], m[s]["frame"]
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    assert len(starts) == len(set(t.tolist()))  # each tracklet is one contiguous run
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(t)]))
    np.testing.assert_array_equal(f, np.arange(len(t)) - run_start)
    assert np.all(np.bincount(t)[sorted(set(t.tolist()))] == c.frames)


def test_identities_every_tier_with_levels(id_dir):
  meta = read_metadata(_load("synthetic_identities", "train", id_dir))
  kind, level = meta["degradation_type"], meta["degradation"]
  assert set(kind.tolist()) == set(range(len(si.DEGRADATION_TYPES)))
  assert np.all(level[kind == si.CLEAN] == 0.0)
  assert np.all(level[kind == si.BACKGROUND] == 1.0)
  graded = level[(kind != si.CLEAN) & (kind != si.BACKGROUND)]
  assert graded.min() >= 0.2 and graded.max() <= 1.0 and graded.std() > 0.1
  for p in np.unique(meta["identity"]):  # most frames of every identity are clean
    assert np.mean(kind[meta["identity"] == p] == si.CLEAN) > 0.5


def test_identities_pairs_reference_valid_ids(id_dir):
  q = read_metadata(_load("synthetic_identities", "query", id_dir))
  g = read_metadata(_load("synthetic_identities", "gallery", id_dir))
  identity_of = dict(zip(np.r_[q["tracklet"], g["tracklet"]].tolist(),
                         np.r_[q["identity"], g["identity"]].tolist()))
  camera_of = dict(zip(np.r_[q["tracklet"], g["tracklet"]].tolist(),
                       np.r_[q["camera"], g["camera"]].tolist()))
  sets = read_metadata(_load("synthetic_identities", "set_pairs", id_dir))
  assert set(sets["fold"].tolist()) == set(range(si.NUM_FOLDS))
  assert set(sets["same"].tolist()) == {0, 1}
  for a, b, same in zip(sets["tracklet_a"], sets["tracklet_b"], sets["same"]):
    assert a in identity_of and b in identity_of
    assert (identity_of[a] == identity_of[b]) == bool(same)
    if same:
      assert camera_of[a] != camera_of[b]
  pairs = _load("synthetic_identities", "pairs", id_dir)
  pm = read_metadata(pairs)
  assert set(pm["fold"].tolist()) == set(range(si.NUM_FOLDS))
  assert np.sum(pm["same"] == 1) == np.sum(pm["same"] == 0)
  test_levels = set(np.r_[q["degradation"], g["degradation"]].tolist())
  assert set(pm["degradation_a"].tolist()) <= test_levels
  rec = pairs[0]
  assert rec["image_a"].shape == rec["image_b"].shape == (64, 32, 3)


def test_identities_bad_config_raises():
  with pytest.raises(ValueError, match="test_identities"):
    si.generate(si.IdentitiesConfig(name="x", test_identities=5))


# --------------------------------------------------------------------------
# synthetic_places

def test_places_schema_and_dtypes(place_dir):
  c = TINY_PLACES
  for split in PLACE_SPLITS:
    src = _load("synthetic_places", split, place_dir)
    rec = src[0]
    assert set(rec) == {"image", "utm", "filename", "timestamp", "panorama"}
    assert rec["image"].dtype == np.uint8 and rec["image"].shape == (c.height, c.width, 3)
    assert rec["utm"].dtype == np.float64 and rec["utm"].shape == (2,)
    assert isinstance(rec["timestamp"], int) and isinstance(rec["panorama"], int)
    assert (rec["panorama"] == -1) == split.endswith("queries")
  assert sp.SyntheticPlaces.POS_DIST_THR == 25
  assert sp.SyntheticPlaces.NON_TRIV_POS_DIST_SQ_THR == 100


def test_places_positives_and_disjoint_districts(place_dir):
  utm = {s: read_metadata(_load("synthetic_places", s, place_dir), ["utm"])["utm"]
         for s in PLACE_SPLITS}
  for split in ("train", "val", "test"):
    db, q = utm[f"{split}_database"], utm[f"{split}_queries"]
    d2 = ((q[:, None] - db[None]) ** 2).sum(-1)
    assert np.all((d2 <= sp.NON_TRIV_POS_DIST_SQ_THR).sum(1) >= 1)
    assert np.all((d2 > sp.POS_DIST_SQ_THR).sum(1) >= 1)  # negatives exist too
  for a in ("train", "val", "test"):
    for b in ("train", "val", "test"):
      if a < b:
        pa = np.r_[utm[f"{a}_database"], utm[f"{a}_queries"]]
        pb = np.r_[utm[f"{b}_database"], utm[f"{b}_queries"]]
        assert np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1)).min() > 100.0


def test_places_queries_differ_in_appearance(place_dir):
  db = _load("synthetic_places", "test_database", place_dir)
  q = _load("synthetic_places", "test_queries", place_dir)
  db_mean = np.mean([db[i]["image"].mean() for i in range(len(db))])
  q_means = np.asarray([q[i]["image"].mean() for i in range(len(q))])
  assert q_means.min() < 0.5 * db_mean  # night / dusk queries are much darker


def test_places_deterministic_and_no_rebuild(place_dir, tmp_path, monkeypatch):
  jaxset.data.builder("synthetic_places", data_dir=tmp_path, config="tiny")
  assert _file_hashes(tmp_path, "synthetic_places") == _file_hashes(place_dir, "synthetic_places")

  def fail(*args, **kwargs):
    raise AssertionError("the dataset was generated again")

  monkeypatch.setattr(sp, "generate", fail)
  assert len(_load("synthetic_places", "test_queries", tmp_path)) == TINY_PLACES.queries


def test_places_bad_query_times_raise():
  with pytest.raises(ValueError, match="query_times"):
    sp.generate(sp.PlacesConfig(name="x", query_times=("noon",)))


# --------------------------------------------------------------------------
# inspect

@pytest.mark.parametrize("name", ["synthetic_identities", "synthetic_places"])
def test_inspect_writes_contact_sheet(name, id_dir, place_dir, tmp_path, capsys):
  d = id_dir if name == "synthetic_identities" else place_dir
  out = tmp_path / "sheet.png"
  stats = inspect_lib.inspect_dataset(name, data_dir=d, config="tiny", out=str(out))
  text = capsys.readouterr().out
  img = np.asarray(PIL.Image.open(out))
  assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 10
  if name == "synthetic_identities":
    c = TINY_ID
    per_identity = c.cameras * c.tracklets_per_camera * c.frames
    assert stats["train"]["count"] == c.train_identities * per_identity
    assert set(stats["train"]["degradation"]) == set(si.DEGRADATION_TYPES)
    assert "occlusion" in text
  else:
    assert stats["test_queries"]["positives_10m"]["queries_without"] == 0
    assert "positives_25m" in text


def test_inspect_command_line(id_dir, tmp_path):
  out = tmp_path / "cli.png"
  code = inspect_lib.main(["--dataset=synthetic_identities", "--config=tiny",
                           f"--data_dir={id_dir}", f"--out={out}"])
  assert code == 0
  assert out.stat().st_size > 0
