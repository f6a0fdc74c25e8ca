"""Real-format dataset builders on tiny fixtures written in the exact on-disk formats."""
from __future__ import annotations

import pickle
from pathlib import Path

import fixtures_real as fx
import numpy as np
import pytest

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


REAL = [n for n in jdata.BUILDERS if not n.startswith("synthetic_")]


def test_every_real_builder_documents_its_layout():
  for name in REAL:
    cls = jdata.builder_class(name)
    assert issubclass(cls, formats.ManualBuilder), name
    assert "<manual_dir>" in cls.MANUAL_DOWNLOAD_INSTRUCTIONS, name
    assert cls.SPLIT_FEATURES and cls.__doc__, name


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
    assert all(int(r["panorama"]) == -1 for r in q)   # as in synthetic_places
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
  assert [int(r["panorama"]) for r in q] == [-1, -1]
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
  # Missing manual dir, or none given (tfds then looks in <data_dir>/downloads/manual).
  with pytest.raises(FileNotFoundError, match=r"expected the dataset's local copy.*does not exist"):
    build("pittsburgh30k", tmp_path / "nowhere", tmp_path)
  with pytest.raises(FileNotFoundError,
                     match=r"(?s)downloads/manual: expected the dataset's local copy"
                     r".*datasets/pitts30k_train\.mat"):
    build("pittsburgh30k", None, tmp_path / "none")
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
  with pytest.raises(formats.DatasetFormatError,
                     match=r"utmDb of shape \(2, 3\).*found shape \(3, 2\)"):
    build("pittsburgh30k", manual, tmp_path / "x3")
  # A listed image that is not on disk.
  fx.write_db_struct(manual / "datasets" / "pitts30k_val.mat", "val", ["000/missing.jpg"],
                     [[0], [0]], ["000/000110_pitch1_yaw1.jpg"], [[0], [0]])
  with pytest.raises(FileNotFoundError, match=r"000/missing\.jpg: expected the database image"):
    build("pittsburgh30k", manual, tmp_path / "x4")
  # A train dbStruct saved under the val name.
  fx.write_db_struct(manual / "datasets" / "pitts30k_val.mat", "train", ["a.jpg"], [[0], [0]],
                     ["b.jpg"], [[0], [0]])
  with pytest.raises(formats.DatasetFormatError, match=r"expected dbStruct\.whichSet = 'val'; "
                     r"found 'train'"):
    build("pittsburgh30k", manual, tmp_path / "x4b")
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


# ---------------------------------------------------------------- image re-ID

def test_market1501_junk_dropped_distractor_kept(tmp_path):
  manual = tmp_path / "market"
  fx.write_market(manual / "Market-1501-v15.09.15")   # an unpacked archive folder is found
  b = build("market1501", manual, tmp_path)
  assert set(b.info.splits.keys()) == {"train", "query", "gallery"}
  train, query, gallery = rows(b, "train"), rows(b, "query"), rows(b, "gallery")
  assert [text(r["filename"]) for r in train] == [
      f"bounding_box_train/{n}" for n in fx.MARKET_TRAIN]
  assert [int(r["identity"]) for r in train] == [2, 2, 7, 10]
  assert [int(r["label"]) for r in train] == [0, 0, 1, 2]
  assert [int(r["camera"]) for r in train] == [0, 1, 2, 5]
  assert [int(r["frame"]) for r in train] == [451, 301, 15537, 2452]
  assert [fx.index(r["image"]) for r in train] == [0, 1, 2, 3]
  # Gallery in name order: -1 (junk) dropped, 0000 (distractor) kept with label 0.
  g = [(text(r["filename"]).split("/")[1], int(r["identity"]), int(r["label"])) for r in gallery]
  assert g == [("0000_c1s1_000000_01.jpg", 0, 0), ("0001_c2s1_000301_01.jpg", 1, 1),
               ("0003_c1s1_000200_02.jpg", 3, 2), ("0003_c5s1_002452_01.jpg", 3, 2)]
  assert [int(r["label"]) for r in query] == [0, 1]
  r = train[0]
  assert (int(r["tracklet"]), float(r["degradation"]), int(r["degradation_type"])) == (-1, -1.0, -1)
  assert r["image"].shape == (8, 8, 3)


def test_duke_and_cuhk03_configs(tmp_path):
  manual = tmp_path / "duke"
  fx.write_duke(manual)
  fx.write_image(manual / "bounding_box_test" / "0019_c8_f0100000.jpg", 3, mode="L")  # grayscale
  b = build("dukemtmc_reid", manual, tmp_path)
  assert rows(b, "gallery")[1]["image"].shape == (8, 8, 3)   # stored as RGB
  train = rows(b, "train")
  assert [(int(r["identity"]), int(r["camera"]), int(r["frame"])) for r in train] == [
      (1, 1, 46182), (1, 4, 51341), (3, 7, 67)]
  assert [int(r["label"]) for r in train] == [0, 0, 1]
  assert int(rows(b, "gallery")[1]["camera"]) == 7   # c8: the 8th camera
  manual = tmp_path / "cuhk"
  fx.write_cuhk03(manual)
  det = build("cuhk03_np", manual, tmp_path / "d")
  lab = build("cuhk03_np", manual, tmp_path / "l", config="labeled")
  assert len(det.as_data_source("train")) == 4 and len(lab.as_data_source("train")) == 2
  assert len(lab.as_data_source("gallery")) == 4


def test_reid_errors(tmp_path):
  manual = tmp_path / "m"
  fx.write_market(manual)
  fx.write_image(manual / "query" / "0005_cam1_x.jpg")
  with pytest.raises(formats.DatasetFormatError,
                     match=r"query/0005_cam1_x\.jpg: expected a file name like "
                     r"PPPP_cCsS_FFFFFF_BB"):
    build("market1501", manual, tmp_path / "a")
  (manual / "query" / "0005_cam1_x.jpg").unlink()
  fx.write_image(manual / "query" / "0005_c9s1_000001_00.jpg")
  with pytest.raises(formats.DatasetFormatError, match=r"camera number in 1\.\.6; found camera 9"):
    build("market1501", manual, tmp_path / "b")
  (manual / "query" / "0005_c9s1_000001_00.jpg").unlink()
  for p in (manual / "query").iterdir():
    p.unlink()
  with pytest.raises(formats.DatasetFormatError, match=r"split 'query'.*empty"):
    build("market1501", manual, tmp_path / "c")
  assert no_prepared_version(tmp_path / "c" / "data_market1501")
  (manual / "query").rmdir()
  with pytest.raises(FileNotFoundError, match=r"query: expected the folder query/.*holds "
                     r"bounding_box_test/, bounding_box_train/"):
    build("market1501", manual, tmp_path / "d")
  # A listed image that PIL cannot read names the file.
  manual = tmp_path / "m2"
  fx.write_market(manual)
  (manual / "query" / "0001_c1s1_001051_00.jpg").write_bytes(b"\xff\xd8 truncated")
  with pytest.raises(formats.DatasetFormatError, match=r"0001_c1s1_001051_00\.jpg: expected an "
                     r"encoded JPEG/PNG image"):
    build("market1501", manual, tmp_path / "e")
  assert no_prepared_version(tmp_path / "e" / "data_market1501")
  # Once fixed, the same data_dir builds completely: the failed run left nothing behind.
  fx.write_image(manual / "query" / "0001_c1s1_001051_00.jpg", 10)
  fixed = build("market1501", manual, tmp_path / "e")
  assert [len(fixed.as_data_source(s)) for s in ("train", "query", "gallery")] == [4, 2, 4]


# ---------------------------------------------------------------- video re-ID

def test_mars_tracklets_and_query_split(tmp_path):
  manual = tmp_path / "mars"
  fx.write_mars(manual)
  b = build("mars", manual, tmp_path)
  train = rows(b, "train")
  assert [(int(r["identity"]), int(r["camera"]), int(r["tracklet"]), int(r["frame"]))
          for r in train] == [(2, 0, 0, 1), (2, 0, 0, 2), (2, 0, 0, 3), (2, 1, 1, 1), (2, 1, 1, 2),
                              (7, 3, 2, 1), (7, 3, 2, 2)]
  assert [int(r["label"]) for r in train] == [0] * 5 + [1] * 2
  assert [fx.index(r["image"]) for r in train] == list(range(1, 8))
  query, gallery = rows(b, "query"), rows(b, "gallery")
  # query_IDX = [1, 3] (1-based): test tracks 0 and 2.
  assert sorted({int(r["tracklet"]) for r in query}) == [0, 2]
  assert [int(r["identity"]) for r in query] == [1, 1, 5]
  # Gallery: tracks 1, 3, 4 (distractor pid 0 kept); track 5 (pid -1, junk) dropped.
  assert sorted({int(r["tracklet"]) for r in gallery}) == [1, 3, 4]
  assert sorted({int(r["identity"]) for r in gallery}) == [0, 1, 5]
  assert text(gallery[0]["filename"]) == "bbox_test/0001/0001C3T0001F001.jpg"


def test_mars_errors(tmp_path):
  import scipy.io
  manual = tmp_path / "mars"
  fx.write_mars(manual)
  scipy.io.savemat(str(manual / "info" / "tracks_test_info.mat"),
                   {"track_test_info": np.ones((3, 3))})
  with pytest.raises(formats.DatasetFormatError,
                     match=r"shape \(tracks, 4\).*found shape \(3, 3\)"):
    build("mars", manual, tmp_path / "a")
  scipy.io.savemat(str(manual / "info" / "tracks_test_info.mat"),
                   {"wrong_name": np.ones((3, 4))})
  with pytest.raises(formats.DatasetFormatError,
                     match=r"expected a variable named track_test_info; "
                     r"found variables \['wrong_name'\]"):
    build("mars", manual, tmp_path / "b")
  fx.write_mars(manual)
  scipy.io.savemat(str(manual / "info" / "tracks_train_info.mat"),
                   {"track_train_info": np.asarray([[1, 99, 2, 1]], np.float64)})
  with pytest.raises(formats.DatasetFormatError, match=r"row 1: 1 <= start <= end <= 7"):
    build("mars", manual, tmp_path / "c")


def test_prid2011_all_and_seeded_half_split(tmp_path):
  manual = tmp_path / "prid"
  fx.write_prid(manual)
  b = build("prid2011", manual, tmp_path)
  every = rows(b, "full")
  assert len(every) == (5 + 6) * 2
  assert len({int(r["tracklet"]) for r in every}) == 11
  assert {int(r["camera"]) for r in every} == {0, 1}
  assert [int(r["frame"]) for r in every[:2]] == [1, 2]
  train, test = rows(b, "train"), rows(b, "test")
  tr, te = {int(r["identity"]) for r in train}, {int(r["identity"]) for r in test}
  # Persons in both cameras (1..5) are split 2 / 3; person 6 (cam_b only) is in neither.
  assert len(tr) == 2 and len(te) == 3 and tr | te == {1, 2, 3, 4, 5} and not tr & te
  assert sorted({int(r["label"]) for r in train}) == [0, 1]
  assert b.info.metadata["train_identities"] == sorted(tr)
  # Every split seed is deterministic; different seeds give different splits.
  again = build("prid2011", manual, tmp_path / "again")
  assert {int(r["identity"]) for r in rows(again, "train")} == tr
  splits = {tuple(build("prid2011", manual, tmp_path / f"s{k}", config=f"split_{k}")
                  .info.metadata["train_identities"]) for k in range(4)}
  assert len(splits) > 1


def test_ilids_vid_and_errors(tmp_path):
  manual = tmp_path / "ilids"
  fx.write_ilids(manual)
  b = build("ilids_vid", manual, tmp_path)
  every = rows(b, "full")
  assert [int(r["frame"]) for r in every[:2]] == [1, 2]
  assert text(every[0]["filename"]) == "sequences/cam1/person001/cam1_person001_00001.png"
  assert len(rows(b, "train")) + len(rows(b, "test")) == len(every)
  (manual / "sequences" / "cam2" / "p7").mkdir()
  with pytest.raises(formats.DatasetFormatError,
                     match=r"p7: expected person folders named personNNN"):
    build("ilids_vid", manual, tmp_path / "a")
  (manual / "sequences" / "cam2" / "p7").rmdir()
  (manual / "sequences" / "cam2" / "person009").mkdir()
  with pytest.raises(formats.DatasetFormatError,
                     match=r"person009: expected the frames .*no images"):
    build("ilids_vid", manual, tmp_path / "b")
  with pytest.raises(FileNotFoundError, match=r"expected multi_shot in"):
    build("prid2011", manual, tmp_path / "c")


# ---------------------------------------------------------------- faces

def test_lfw_images_and_pairs_folds_in_file_order(tmp_path):
  manual = tmp_path / "lfw"
  fx.write_lfw(manual, folds=2, per_fold=2)
  b = build("lfw", manual, tmp_path)
  images = rows(b, "images")
  assert len(images) == sum(fx.LFW_PEOPLE.values())
  assert [int(r["identity"]) for r in images] == [0, 0, 0, 1, 1, 2, 3, 3]
  assert [int(r["label"]) for r in images] == [0, 0, 0, 1, 1, 2, 3, 3]
  assert text(images[0]["filename"]) == "Alice_A/Alice_A_0001.jpg"
  assert set(images[0]) == set(formats.IDENTITY_KEYS)
  pairs = rows(b, "pairs")
  assert set(pairs[0]) == set(formats.PAIR_KEYS)
  assert [int(r["fold"]) for r in pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
  assert [int(r["same"]) for r in pairs] == [1, 1, 0, 0, 1, 1, 0, 0]
  # Image numbers follow the file: Alice 1 (image 0) vs Alice 2 (fold 0) / Alice 3 (fold 1).
  assert [(fx.index(r["image_a"]), fx.index(r["image_b"])) for r in pairs[::4]] == [(0, 1), (0, 2)]
  # Dan 2 (image 7) vs Bob 1 / Bob 2 (images 3 / 4).
  assert (fx.index(pairs[3]["image_a"]), fx.index(pairs[3]["image_b"])) == (7, 3)
  assert (fx.index(pairs[7]["image_a"]), fx.index(pairs[7]["image_b"])) == (7, 4)
  assert float(pairs[0]["degradation_a"]) == -1.0


def test_lfw_errors(tmp_path):
  manual = tmp_path / "lfw"
  lines = fx.write_lfw(manual, folds=1, per_fold=2)
  bad = list(lines)
  bad[3] = "Alice_A\t3\tCarol"      # line 4: a mismatched pair without the second number
  fx.write_lfw(manual, lines=bad)
  with pytest.raises(formats.DatasetFormatError, match=r"pairs\.txt:4: expected a mismatched pair "
                     r"\"name1 n1 name2 n2\" \(fold 1, pair 1\); found 'Alice_A 3 Carol'"):
    build("lfw", manual, tmp_path / "a")
  fx.write_lfw(manual, lines=lines[:-1])
  with pytest.raises(formats.DatasetFormatError, match=r"expected 4 pair lines.*found 3"):
    build("lfw", manual, tmp_path / "b")
  fx.write_lfw(manual, lines=["ten 300"] + lines[1:])
  with pytest.raises(formats.DatasetFormatError, match=r"pairs\.txt:1: expected a header"):
    build("lfw", manual, tmp_path / "c")
  bad = list(lines)
  bad[1] = "Alice_A\t1\t9"
  fx.write_lfw(manual, lines=bad)
  with pytest.raises(FileNotFoundError,
                     match=r"pairs\.txt:2: expected the image .*Alice_A_0009\.jpg"):
    build("lfw", manual, tmp_path / "d")
  assert no_prepared_version(tmp_path / "d" / "data_lfw")


def test_face_bin_pairs_and_folds(tmp_path):
  manual = tmp_path / "bins"
  manual.mkdir()
  issame = fx.write_face_bin(manual / "lfw.bin", n_pairs=20)
  fx.write_face_bin(manual / "cfp_fp.bin", n_pairs=10)
  b = build("face_bin", manual, tmp_path)
  pairs = rows(b, "pairs")
  assert [int(r["same"]) for r in pairs] == [int(s) for s in issame]
  assert [int(r["fold"]) for r in pairs] == [i * 10 // 20 for i in range(20)]
  assert [(fx.index(r["image_a"]), fx.index(r["image_b"])) for r in pairs[:3]] == [
      (0, 1), (2, 3), (4, 5)]
  assert pairs[0]["image_a"].shape == (112, 112, 3)
  cfp = build("face_bin", manual, tmp_path / "cfp", config="cfp_fp")
  assert [int(r["fold"]) for r in rows(cfp, "pairs")] == list(range(10))


def test_face_bin_errors(tmp_path):
  manual = tmp_path / "bins"
  manual.mkdir()
  fx.write_face_bin(manual / "lfw.bin", n_pairs=4)
  (manual / "lfw.bin").write_bytes((manual / "lfw.bin").read_bytes()[:200])   # truncated
  with pytest.raises(formats.DatasetFormatError, match=r"lfw\.bin: expected a pickle of .*does not "
                     r"unpickle"):
    build("face_bin", manual, tmp_path / "a")
  (manual / "lfw.bin").write_bytes(pickle.dumps(([b"x"] * 3, [True, False])))
  with pytest.raises(formats.DatasetFormatError, match=r"found 3 images for 2 flags"):
    build("face_bin", manual, tmp_path / "b")
  (manual / "lfw.bin").write_bytes(pickle.dumps(([b"not an image", b"x"], [True])))
  with pytest.raises(formats.DatasetFormatError, match=r"lfw\.bin image 0: expected an encoded"):
    build("face_bin", manual, tmp_path / "c")
  # A pickle that would run code is refused, not executed.
  (manual / "lfw.bin").write_bytes(pickle.dumps((Path("x"), [True])))
  with pytest.raises(formats.DatasetFormatError, match=r"refusing to load pathlib"):
    build("face_bin", manual, tmp_path / "d")
  with pytest.raises(FileNotFoundError, match=r"agedb_30\.bin: expected the file"):
    build("face_bin", manual, tmp_path / "e", config="agedb_30")


def test_ijb_templates_and_pairs(tmp_path):
  manual = tmp_path / "ijb"
  fx.write_ijb(manual / "IJBC")
  fx.write_ijb(manual / "IJBB", prefix="ijbb", landmarks=False)
  b = build("ijb", manual / "IJBC", tmp_path)
  images = rows(b, "images")
  assert [(text(r["filename"]), int(r["template"]), int(r["media"])) for r in images] == [
      ("1.jpg", 1, 11), ("2.jpg", 1, 11), ("3.jpg", 1, 12), ("4.jpg", 2, 21), ("5.jpg", 3, 31)]
  assert all(int(r["identity"]) == -1 and int(r["label"]) == -1 for r in images)
  assert [fx.index(r["image"]) for r in images] == list(range(5))
  np.testing.assert_array_equal(images[2]["landmarks"], [[20 + j, j] for j in range(5)])
  assert images[2]["landmarks"].dtype == np.float32
  assert [round(float(r["detector_score"]), 3) for r in images] == [0.0, 0.1, 0.2, 0.3, 0.4]
  pairs = rows(b, "template_pairs")
  assert [(int(r["template_a"]), int(r["template_b"]), int(r["same"])) for r in pairs] == [
      (1, 2, 1), (1, 3, 0), (2, 3, 0)]
  assert set(pairs[0]) == {"template_a", "template_b", "same"}
  bb = build("ijb", manual / "IJBB", tmp_path / "b", config="b")
  bb_images = rows(bb, "images")
  assert len(bb_images) == 5 and float(bb_images[0]["detector_score"]) == -1.0
  assert not bb_images[0]["landmarks"].any()


def test_ijb_errors(tmp_path):
  manual = tmp_path / "ijb"
  fx.write_ijb(manual)
  with pytest.raises(FileNotFoundError, match=r"meta/ijbb_face_tid_mid\.txt"):
    build("ijb", manual, tmp_path / "a", config="b")
  (manual / "meta" / "ijbc_name_5pts_score.txt").write_text("1.jpg 1 2 3\n")
  with pytest.raises(formats.DatasetFormatError, match=r"ijbc_name_5pts_score\.txt:1: expected "
                     r"\"image x1 y1 \.\.\. x5 y5 score\": 12 fields; found '1\.jpg 1 2 3'"):
    build("ijb", manual, tmp_path / "a2")
  (manual / "meta" / "ijbc_name_5pts_score.txt").unlink()
  (manual / "meta" / "ijbc_face_tid_mid.txt").write_text("1.jpg 1 11\n2.jpg one 11\n")
  with pytest.raises(formats.DatasetFormatError, match=r"ijbc_face_tid_mid\.txt:2: expected "
                     r"\"image template_id media_id\": 3 fields; found '2.jpg one 11'"):
    build("ijb", manual, tmp_path / "b")
  (manual / "meta" / "ijbc_face_tid_mid.txt").write_text("1.jpg 1 11\n4.jpg 2 21\n")
  (manual / "meta" / "ijbc_template_pair_label.txt").write_text("1 2 1\n1 3 0\n")
  with pytest.raises(formats.DatasetFormatError, match=r"ijbc_template_pair_label\.txt:2: expected "
                     r"two template ids of the face list"):
    build("ijb", manual, tmp_path / "c")


def test_youtube_faces_frames_and_set_pairs(tmp_path):
  manual = tmp_path / "ytf"
  fx.write_ytf(manual)
  b = build("youtube_faces", manual, tmp_path)
  frames = rows(b, "frames")
  assert len(frames) == 4 * 3
  assert [int(r["frame"]) for r in frames[:3]] == [1, 2, 3]     # frame order, not name order
  assert [int(r["tracklet"]) for r in frames[::3]] == [0, 1, 2, 3]
  assert [int(r["identity"]) for r in frames[::3]] == [0, 0, 1, 2]
  assert text(frames[3]["filename"]) == "Aaron_A/1/1.1.jpg"
  pairs = rows(b, "set_pairs")
  assert [(int(r["tracklet_a"]), int(r["tracklet_b"]), int(r["same"]), int(r["fold"]))
          for r in pairs] == [(0, 1, 1, 0), (0, 2, 0, 0), (3, 2, 0, 1)]


def test_youtube_faces_errors(tmp_path):
  manual = tmp_path / "ytf"
  fx.write_ytf(manual, splits_lines=["split number, first name, second name, is same",
                                     "1, Aaron_A/0, Aaron_A/7, 1"])
  with pytest.raises(formats.DatasetFormatError, match=r"splits\.txt:2: expected a video "
                     r"'Aaron_A/7'.*no such video folder"):
    build("youtube_faces", manual, tmp_path / "a")
  fx.write_ytf(manual, splits_lines=["1, Aaron_A/0, Aaron_A/1, yes"])
  with pytest.raises(formats.DatasetFormatError, match=r"splits\.txt:1: expected 'split number"):
    build("youtube_faces", manual, tmp_path / "b")
  fx.write_ytf(manual)
  fx.write_image(manual / "frame_images_DB" / "Beth_B" / "2" / "frame9.jpg")
  with pytest.raises(formats.DatasetFormatError, match=r"frame9\.jpg: expected a frame name "
                     r"2\.<frame>\.jpg"):
    build("youtube_faces", manual, tmp_path / "c")


# ---------------------------------------------------------------- MXNet RecordIO

def test_recordio_source_and_builder(tmp_path):
  from jaxset.data.recordio import RecordioSource
  manual = tmp_path / "rec"
  info = fx.write_recordio(manual, images_per_id=(2, 3), first_label=5)
  src = RecordioSource(manual)
  assert len(src) == 5 and src.num_classes == 2
  recs = [src[i] for i in range(len(src))]
  assert [int(r["identity"]) for r in recs] == [5, 5, 6, 6, 6]
  assert [int(r["label"]) for r in recs] == [0, 0, 1, 1, 1]
  assert [fx.index(r["image"]) for r in recs] == [1, 2, 3, 4, 5]
  assert recs[0]["image"].shape == (8, 8, 3) and recs[0]["image"].dtype == np.uint8
  assert recs[-1]["filename"] == b"train.rec#5" and src[-1]["filename"] == b"train.rec#5"
  assert set(recs[0]) == set(formats.IDENTITY_KEYS)
  again = pickle.loads(pickle.dumps(src))          # grain workers get a copy
  assert int(again[3]["label"]) == 1
  with pytest.raises(IndexError):
    src[5]
  meta = src.metadata()
  np.testing.assert_array_equal(meta["label"], [0, 0, 1, 1, 1])
  np.testing.assert_array_equal(meta["identity"], [5, 5, 6, 6, 6])
  assert meta["filename"][0] == "train.rec#1" and meta["degradation"].dtype == np.float32
  b = build("mxnet_recordio", manual, tmp_path)
  train = rows(b, "train")
  assert [int(r["label"]) for r in train] == [0, 0, 1, 1, 1]
  assert [fx.index(r["image"]) for r in train] == [1, 2, 3, 4, 5]
  assert b.info.metadata["num_classes"] == 2
  assert info["n_images"] == 5


def test_recordio_without_header_and_multipart(tmp_path):
  from jaxset.data.recordio import MAGIC, RecordioSource
  manual = tmp_path / "plain"
  fx.write_recordio(manual, images_per_id=(1, 2), with_header=False, first_label=9)
  # Without record 0 every key is a record; identity records (flag 2) would read as
  # images, so write a plain im2rec-style file instead.
  manual.joinpath("train.idx").unlink()
  recs, idx, off = b"", [], 0
  for k, lab in enumerate((9, 4, 9)):
    blob = fx.frame_record(fx.pack_record(0, lab, k, 0, fx.image_bytes(k, "PNG")))
    idx.append(f"{k}\t{off}")
    recs += blob
    off += len(blob)
  # A multi-part record: the writer splits a payload where it holds the magic number
  # (here in trailing bytes after the PNG's end, which decoders ignore).
  magic = np.uint32(MAGIC).tobytes()
  payload = fx.pack_record(0, 4, 3, 0, fx.image_bytes(3, "PNG") + magic + b"tail")
  cut = payload.index(np.uint32(MAGIC).tobytes())
  part1, part2 = payload[:cut], payload[cut + 4:]
  idx.append(f"3\t{off}")
  recs += fx.frame_record(part1, cflag=1) + fx.frame_record(part2, cflag=3)
  manual.joinpath("train.rec").write_bytes(recs)
  manual.joinpath("train.idx").write_text("\n".join(idx) + "\n")
  src = RecordioSource(manual)
  assert [int(src[i]["identity"]) for i in range(4)] == [9, 4, 9, 4]
  assert [int(src[i]["label"]) for i in range(4)] == [1, 0, 1, 0]
  assert fx.index(src[3]["image"]) == 3


def test_recordio_errors(tmp_path):
  from jaxset.data.recordio import RecordioSource
  manual = tmp_path / "rec"
  fx.write_recordio(manual)
  data = bytearray((manual / "train.rec").read_bytes())
  idx = (manual / "train.idx").read_text().splitlines()
  offset2 = int(idx[2].split("\t")[1])
  # A bad magic at record key 2.
  bad = bytearray(data)
  bad[offset2:offset2 + 4] = b"\0\0\0\0"
  (manual / "train.rec").write_bytes(bytes(bad))
  src = RecordioSource(manual)
  with pytest.raises(formats.DatasetFormatError, match=rf"record key 2 \(offset {offset2}\): "
                     r"expected magic 0xced7230a at offset \d+; found 0x00000000"):
    src[1]
  with pytest.raises(formats.DatasetFormatError, match=r"record key 2.*expected magic"):
    build("mxnet_recordio", manual, tmp_path / "a")
  assert no_prepared_version(tmp_path / "a" / "data_mxnet_recordio")
  # A truncated file: the last identity record loses its tail.
  (manual / "train.rec").write_bytes(bytes(data[:-6]))
  with pytest.raises(formats.DatasetFormatError, match=r"payload bytes at offset \d+; found \d+ "
                     r"\(truncated file\)"):
    RecordioSource(manual)
  # A bad .idx line names the line.
  (manual / "train.rec").write_bytes(bytes(data))
  (manual / "train.idx").write_text("\n".join(idx[:3] + ["7 x"] + idx[3:]) + "\n")
  with pytest.raises(formats.DatasetFormatError,
                     match=r"train\.idx:4: expected \"key<TAB>offset\""):
    RecordioSource(manual)
  (manual / "train.idx").unlink()
  with pytest.raises(FileNotFoundError, match=r"train\.idx: expected the file the RecordIO index"):
    RecordioSource(manual)
