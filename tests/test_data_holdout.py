"""Held-out training identities as a re-ID validation split (config.data.holdout_identities)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxset import data as jdata
from jaxset.data import export_formats, holdout
from jaxset.data.records import read_metadata
from tests.train_helpers import make_config
from train import checkpoints
from train.tasks import common, identities

REID = {"model.backbone": "small_cnn", "model.dtype": "float32", "data.image_size": (64, 32),
        "train.steps": 2, "train.batch_size": 16, "train.log_every": 1, "train.ckpt_every": 2,
        "train.progress_bar": False, "eval.every": 2, "eval.batch_size": 32,
        "eval.at_start": False, "optim.warmup_steps": 0, "casn.warmup_steps": 1}


def _table(n_ids=20, cams=3, per=2, seed=0):
  """identity, camera of `per` images per identity and camera, shuffled."""
  rng = np.random.default_rng(seed)
  ident = np.repeat(np.arange(n_ids) * 7 + 1, cams * per)
  cam = np.tile(np.repeat(np.arange(cams), per), n_ids)
  order = rng.permutation(ident.size)
  return ident[order], cam[order]


def test_holdout_is_a_fixed_draw_of_whole_identities():
  ident, cam = _table()
  h = holdout.holdout_identities(ident, cam, fraction=0.25, seed=3)
  assert h.identities.size == 5 and np.all(np.diff(h.identities) > 0)
  every = np.concatenate([h.train, h.query, h.gallery])
  assert np.array_equal(np.sort(every), np.arange(ident.size))  # a partition of the records
  assert not set(ident[h.train]) & set(h.identities)
  assert set(ident[h.query]) == set(ident[h.gallery]) == set(h.identities)
  # One query image per held-out identity and camera; the rest is the gallery.
  pairs = list(zip(ident[h.query], cam[h.query]))
  assert len(pairs) == len(set(pairs)) == 5 * 3 and h.gallery.size == 5 * 3
  again = holdout.holdout_identities(ident, cam, fraction=0.25, seed=3)
  assert all(np.array_equal(getattr(h, k), getattr(again, k))
             for k in ("train", "query", "gallery", "identities"))
  other = holdout.holdout_identities(ident, cam, fraction=0.25, seed=4)
  assert not np.array_equal(other.identities, h.identities)


def test_holdout_keeps_tracklets_whole():
  # 6 identities x 2 cameras x 2 tracklets of 3 frames.
  ident = np.repeat(np.arange(6), 12)
  cam = np.tile(np.repeat([0, 1], 6), 6)
  track = np.repeat(np.arange(24), 3)
  h = holdout.holdout_identities(ident, cam, track, fraction=0.5, seed=0)
  q, g = set(track[h.query]), set(track[h.gallery])
  assert not q & g and len(q) == 3 * 2 and len(g) == 3 * 2
  assert h.query.size == 3 * 2 * 3  # whole tracklets of three frames


@pytest.mark.parametrize("fraction,match", [(0.0, r"must be in \(0, 1\)"),
                                            (1.0, r"must be in \(0, 1\)"),
                                            (0.01, "holds out 0"), (0.99, "holds out 20")])
def test_holdout_fraction_out_of_range(fraction, match):
  ident, cam = _table()
  with pytest.raises(ValueError, match=match):
    holdout.holdout_identities(ident, cam, fraction=fraction)


def test_subset_reads_and_relabels_records():
  base = [{"image": np.zeros((2, 2, 3), np.uint8), "label": np.int64(i), "identity": 10 + i}
          for i in range(5)]
  s = holdout.Subset(base, [4, 1], [0, 1])
  assert len(s) == 2 and s[0]["identity"] == 14 and s[0]["label"] == 0 and s[-1]["label"] == 1
  assert [r["identity"] for r in s.__getitems__([1, 0])] == [11, 14]
  meta = read_metadata(s)
  assert meta["identity"].tolist() == [14, 11] and meta["label"].tolist() == [0, 1]
  with pytest.raises(IndexError):
    s[2]


@pytest.fixture(scope="module")
def market(tiny_data, tmp_path_factory):
  embedded = jdata.builder("synthetic_identities", data_dir=tiny_data, config="tiny")
  return str(export_formats.write_market1501(tmp_path_factory.mktemp("market"),
                                             embedded.as_data_source))


def test_market1501_validates_on_held_out_identities_while_training(market, tmp_path):
  from train import loop
  over = {**REID, "data.dir": market, "data.cache_dir": str(tmp_path / "prep"),
          "data.holdout_identities": 0.25, "eval.split": "val"}
  config = make_config("casn", over, "market1501")
  full = read_metadata(jdata.builder("market1501", data_dir=tmp_path / "prep",
                                              manual_dir=market).as_data_source("train"))
  train = read_metadata(common.source(config, "train"))
  query = read_metadata(common.source(config, "query"))
  gallery = read_metadata(common.source(config, "gallery"))
  held = set(query["identity"])
  n_ids = len(set(full["identity"]))
  assert len(held) == round(0.25 * n_ids) and held == set(gallery["identity"])
  assert not held & set(train["identity"])
  assert len(train["label"]) + len(query["label"]) + len(gallery["label"]) == len(full["label"])
  # The classifier covers the kept identities only, labels 0..C-1.
  assert identities.num_classes(config) == n_ids - len(held) == train["label"].max() + 1
  # eval.split = test still reads the benchmark's own query (the same training data).
  config.eval.split = "test"
  assert len(common.source(config, "query")) != len(query["label"])
  assert len(common.source(config, "train")) == len(train["label"])
  config.eval.split = "val"
  summary = loop.train_and_evaluate(config, tmp_path / "run")
  assert summary["best"] is not None and 0 < summary["best"]["mINP"] <= 1


def test_holdout_refuses_data_with_its_own_validation_split(tiny_data, tmp_path):
  config = make_config("casn", {"data.name": "synthetic_identities",
                                "data.builder_config": "tiny", "data.cache_dir": tiny_data,
                                "data.holdout_identities": 0.2})
  with pytest.raises(ValueError, match="has its own validation split"):
    common.source(config, "train")


def test_old_workdir_without_the_keys_still_resumes(tmp_path):
  config = make_config("casn", {}, "market1501")
  saved = json.loads(config.to_json_best_effort())
  del saved["data"]["holdout_identities"], saved["data"]["holdout_seed"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  (tmp_path / "checkpoints" / "2").mkdir(parents=True)
  checkpoints.check_config(tmp_path, config)  # absent means off: the same run
  config.data.holdout_identities = 0.1
  with pytest.raises(checkpoints.ConfigMismatchError, match="data.holdout_identities"):
    checkpoints.check_config(tmp_path, config)


def test_mars_validates_on_held_out_tracklets_while_training(tiny_data, tmp_path):
  from train import loop
  embedded = jdata.builder("synthetic_identities", data_dir=tiny_data, config="tiny")
  root = export_formats.write_mars(tmp_path / "mars", embedded.as_data_source)
  over = {**{k: v for k, v in REID.items() if not k.startswith("casn.")},
          "qan.set_size": 4, "qan.set_size_range": (), "data.dir": str(root),
          "data.cache_dir": str(tmp_path / "prep"), "data.holdout_identities": 0.3,
          "eval.split": "val"}
  config = make_config("qan", over, "mars")
  query = read_metadata(common.source(config, "query"))
  gallery = read_metadata(common.source(config, "gallery"))
  assert not set(query["tracklet"]) & set(gallery["tracklet"])
  assert set(query["identity"]) == set(gallery["identity"])
  summary = loop.train_and_evaluate(config, tmp_path / "run")
  assert {"set_rank1", "set_rank1_meanpool", "set_mINP"} <= set(summary["after"])
