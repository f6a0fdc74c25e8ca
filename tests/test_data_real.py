"""Real-format dataset builders on tiny fixtures written in the exact on-disk formats."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

import fixtures_real as fx
from jaxset import data as jdata
from jaxset.data import formats


def build(name, manual, tmp_path, **kwargs):
  """Prepares `name` from `manual` into a fresh data_dir under tmp_path."""
  data_dir = tmp_path / f"data_{name}"
  return jdata.builder(name, data_dir=data_dir, manual_dir=manual, **kwargs)


def rows(b, split):
  src = b.as_data_source(split)
  return [src[i] for i in range(len(src))]


def text(x):
  return x.decode() if isinstance(x, bytes) else str(x)


def no_prepared_version(data_dir: Path):
  """True when a failed build left nothing a later run could take as prepared."""
  return not any(p.name[:1].isdigit() for p in data_dir.glob("*/*") if p.is_dir()) and \
      not list(data_dir.glob("**/dataset_info.json"))


# ---------------------------------------------------------------- places

def test_pittsburgh30k_splits_utm_and_thresholds(tmp_path):
  manual = tmp_path / "pitts"
  names = fx.write_pittsburgh(manual)
  b = build("pittsburgh30k", manual, tmp_path)
  assert set(b.info.splits.keys()) == {
      f"{s}_{k}" for s in ("train", "val", "test") for k in ("database", "queries")}
  for k, s in enumerate(("train", "val", "test")):
    db, q = rows(b, f"{s}_database"), rows(b, f"{s}_queries")
    assert [text(r["filename"]) for r in db] == names[s]["db"]
    assert [text(r["filename"]) for r in q] == names[s]["q"]
    np.testing.assert_array_equal(np.stack([r["utm"] for r in db]), names[s]["utm_db"].T)
    np.testing.assert_array_equal(np.stack([r["utm"] for r in q]), names[s]["utm_q"].T)
    assert [fx.index(r["image"]) for r in db] == list(range(4))
    assert [fx.index(r["image"]) for r in q] == [10, 11]
    assert db[0]["image"].shape == (8, 8, 3) and db[0]["image"].dtype == np.uint8
    assert db[0]["utm"].dtype == np.float64
    # Two cutouts per panorama in the fixture: 0000P0 / 0000P1.
    assert [int(r["panorama"]) for r in db] == [10 * k, 10 * k, 10 * k + 1, 10 * k + 1]
    assert all(int(r["timestamp"]) == 0 for r in db + q)
  th = b.info.metadata["thresholds"]
  assert th["test"] == {"posDistThr": 25.0, "posDistSqThr": 625.0, "nonTrivPosDistSqThr": 100.0}
  # The metadata survives a reload from disk.
  again = jdata.builder("pittsburgh30k", data_dir=tmp_path / "data_pittsburgh30k")
  assert again.info.metadata["thresholds"]["val"]["posDistThr"] == 25.0


def test_tokyo247_png_substitution_and_timestamps(tmp_path):
  manual = tmp_path / "tokyo"
  t = fx.write_tokyo(manual)
  b = build("tokyo247", manual, tmp_path)
  assert set(b.info.splits.keys()) == {"test_database", "test_queries"}
  db, q = rows(b, "test_database"), rows(b, "test_queries")
  assert [text(r["filename"]) for r in db] == [n.replace(".jpg", ".png") for n in t["db"]]
  assert [fx.index(r["image"]) for r in db] == list(range(6))
  assert [int(r["panorama"]) for r in db] == [7, 7, 7, 8, 8, 8]
  assert [int(r["timestamp"]) for r in db] == list(range(20150101, 20150107))
  assert [int(r["timestamp"]) for r in q] == [20150301, 20150302]
  np.testing.assert_array_equal(np.stack([r["utm"] for r in q]), t["utm_q"].T)


def test_vpr_folder_parses_names(tmp_path):
  manual = tmp_path / "vpr"
  fx.write_vpr(manual)
  b = build("vpr_folder", manual, tmp_path)
  assert set(b.info.splits.keys()) == {"train_database", "train_queries", "test_database",
                                       "test_queries"}
  db = rows(b, "train_database")
  got = sorted((tuple(r["utm"]), int(r["panorama"]), int(r["timestamp"])) for r in db)
  assert got == [((100.5, 200.25), 0, 201901), ((101.0, 200.0), 0, 0), ((150.0, 250.0), 1, 0)]
  q = rows(b, "test_queries")
  assert int(q[0]["panorama"]) == -1 and int(q[0]["timestamp"]) == 2020
  assert text(q[0]["filename"]).startswith("test/queries/@5.5@6.5@")


def test_places_errors(tmp_path):
  # Missing manual dir.
  with pytest.raises(FileNotFoundError, match=r"expected the dataset's local copy.*does not exist"):
    build("pittsburgh30k", tmp_path / "nowhere", tmp_path)
  # A missing .mat names where it looked and what the folder holds.
  manual = tmp_path / "p1"
  fx.write_pittsburgh(manual, sets=("train", "val"))
  with pytest.raises(FileNotFoundError, match=r"pitts30k_test\.mat.*holds pitts30k_train\.mat"):
    build("pittsburgh30k", manual, tmp_path)
  assert no_prepared_version(tmp_path / "data_pittsburgh30k")
  # A dbStruct without a field.
  manual = tmp_path / "p2"
  fx.write_pittsburgh(manual)
  fx.write_db_struct(manual / "datasets" / "pitts30k_val.mat", "val", ["a.jpg"], [[0], [0]],
                     ["b.jpg"], [[0], [0]], drop=("utmQ",))
  with pytest.raises(formats.DatasetFormatError, match=r"pitts30k_val\.mat: expected dbStruct "
                     r"field 'utmQ'; found fields \['whichSet'"):
    build("pittsburgh30k", manual, tmp_path / "x2")
  # A UTM array stored N x 2 instead of 2 x N.
  fx.write_db_struct(manual / "datasets" / "pitts30k_val.mat", "val", ["a.jpg", "c.jpg", "d.jpg"],
                     np.zeros((2, 3)), ["b.jpg"], [[0], [0]], replace={"utmDb": np.zeros((3, 2))})
  with pytest.raises(formats.DatasetFormatError, match=r"utmDb of shape \(2, 3\).*found shape \(3, 2\)"):
    build("pittsburgh30k", manual, tmp_path / "x3")
  # A listed image that is not on disk.
  fx.write_db_struct(manual / "datasets" / "pitts30k_val.mat", "val", ["000/missing.jpg"],
                     [[0], [0]], ["000/000110_pitch1_yaw1.jpg"], [[0], [0]])
  with pytest.raises(FileNotFoundError, match=r"000/missing\.jpg: expected the database image"):
    build("pittsburgh30k", manual, tmp_path / "x4")
  # Not a .mat at all.
  (manual / "datasets" / "pitts30k_val.mat").write_bytes(b"not a mat file")
  with pytest.raises(formats.DatasetFormatError, match=r"cannot read"):
    build("pittsburgh30k", manual, tmp_path / "x5")
  # An unparsable VPR file name, and an empty VPR split.
  manual = tmp_path / "vpr"
  fx.write_vpr(manual)
  fx.write_image(manual / "images" / "train" / "queries" / "IMG_0001.jpg")
  with pytest.raises(formats.DatasetFormatError, match=r"IMG_0001\.jpg: expected a name @UTM_east"):
    build("vpr_folder", manual, tmp_path / "x6")
  (manual / "images" / "train" / "queries" / "IMG_0001.jpg").unlink()
  for p in (manual / "images" / "test" / "queries").iterdir():
    p.unlink()
  with pytest.raises(formats.DatasetFormatError, match=r"split 'test_queries'.*empty"):
    build("vpr_folder", manual, tmp_path / "x7")
  assert no_prepared_version(tmp_path / "x7" / "data_vpr_folder")
