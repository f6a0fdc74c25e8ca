"""MSMT17's list-file layout and MSLS val's csv layout, on tiny fixtures in those formats."""
from __future__ import annotations

from pathlib import Path

import fixtures_real as fx
import numpy as np
import pytest

from jaxset import data as jdata
from jaxset.data import formats


def build(name, manual, tmp_path):
  return jdata.builder(name, data_dir=tmp_path / f"data_{name}", manual_dir=manual)


def rows(b, split):
  src = b.as_data_source(split)
  return [src[i] for i in range(len(src))]


def text(x):
  return x.decode() if isinstance(x, bytes) else str(x)


MSMT_LISTS = {
    "list_train.txt": ("train", [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                                 ("0000/0000_001_05_0303morning_0036_1.jpg", 0),
                                 ("0001/0001_000_15_0303noon_0001_0.jpg", 1)]),
    "list_val.txt": ("train", [("0002/0002_000_03_0303noon_0002_0.jpg", 2)]),
    "list_query.txt": ("test", [("0000/0000_000_01_0303morning_0008_0.jpg", 0)]),
    "list_gallery.txt": ("test", [("0000/0000_003_07_0303afternoon_0009_1.jpg", 0),
                                  ("0005/0005_000_02_0303morning_0010_0.jpg", 5)]),
}


def write_msmt17(root: Path, folders=("train", "test")):
  i = 0
  for name, (folder, lines) in MSMT_LISTS.items():
    folder = dict(zip(("train", "test"), folders))[folder]
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("".join(f"{p} {pid}\n" for p, pid in lines))
    for p, _ in lines:
      fx.write_image(root / folder / p, i)
      i += 1


def test_msmt17_lists_cameras_and_splits(tmp_path):
  write_msmt17(tmp_path / "m" / "MSMT17_V1")
  b = build("msmt17", tmp_path / "m", tmp_path)
  assert set(b.info.splits.keys()) == {"train", "val", "query", "gallery"}
  train = rows(b, "train")
  assert [(int(r["identity"]), int(r["label"]), int(r["camera"])) for r in train] == [
      (0, 0, 0), (0, 0, 4), (1, 1, 14)]
  assert text(train[2]["filename"]) == "train/0001/0001_000_15_0303noon_0001_0.jpg"
  assert [fx.index(r["image"]) for r in train] == [0, 1, 2]
  assert [int(r["camera"]) for r in rows(b, "gallery")] == [6, 1]
  assert [int(r["identity"]) for r in rows(b, "val")] == [2]


def test_msmt17_v2_folders(tmp_path):
  write_msmt17(tmp_path / "m", folders=("mask_train_v2", "mask_test_v2"))
  b = build("msmt17", tmp_path / "m", tmp_path)
  assert text(rows(b, "query")[0]["filename"]).startswith("mask_test_v2/0000/")


def test_msmt17_errors(tmp_path):
  root = tmp_path / "m"
  write_msmt17(root)
  (root / "list_query.txt").write_text("0000/0000_000_01_0303morning_0008_0.jpg\n")
  with pytest.raises(formats.DatasetFormatError, match=r"list_query\.txt:1: expected lines "
                     r"'<pid folder>/<pid>_<index>_<camera>_"):
    build("msmt17", root, tmp_path / "a")
  (root / "list_query.txt").write_text("0000/0000_000_16_x_1_0.jpg 0\n")
  with pytest.raises(formats.DatasetFormatError, match=r"camera number in 1\.\.15"):
    build("msmt17", root, tmp_path / "b")
  (root / "list_query.txt").write_text("0000/0000_000_01_gone_1_0.jpg 0\n")
  with pytest.raises(FileNotFoundError, match=r"0000_000_01_gone_1_0\.jpg: expected the image "
                     r"listed on line 1 of .*list_query\.txt"):
    build("msmt17", root, tmp_path / "c")
  (root / "list_val.txt").unlink()
  with pytest.raises(FileNotFoundError, match=r"list_val\.txt: expected the file list_val\.txt"):
    build("msmt17", root, tmp_path / "d")


def write_msls(root: Path, drop=None):
  """train_val/{cph,sf}/{query,database}/ with images/, postprocessed.csv and raw.csv.

  Database: 3 images a city on a line, 40 m apart, the middle one a panorama;
  queries: 2 a city, near the first and the last database image."""
  i = 0
  for c, city in enumerate(("cph", "sf")):
    east0 = 700000.0 if city == "cph" else 550000.0
    for kind, pts, panos in (("database", [0, 40, 80], [False, True, False]),
                             ("query", [3, 78], [False, False])):
      d = root / "train_val" / city / kind
      keys = [f"{city}{kind[0]}{k}" for k in range(len(pts))]
      post = [",key,easting,northing,zone_number,night"]
      raw = [",key,lon,lat,ca,captured_at,pano"]
      for n, (key, x, pano) in enumerate(zip(keys, pts, panos)):
        post.append(f"{n},{key},{east0 + x},{6e6 + c},33,False")
        raw.append(f"{n},{key},12.5,55.6,0.0,1500000000000,{pano}")
        fx.write_image(d / "images" / f"{key}.jpg", i)
        i += 1
      d.mkdir(parents=True, exist_ok=True)
      if drop != (city, kind, "postprocessed.csv"):
        (d / "postprocessed.csv").write_text("\n".join(post) + "\n")
      if drop != (city, kind, "raw.csv"):
        (d / "raw.csv").write_text("\n".join(raw) + "\n")


def test_msls_val_cities_panoramas_dropped(tmp_path):
  write_msls(tmp_path / "msls")
  b = build("msls", tmp_path / "msls", tmp_path)
  db, q = rows(b, "val_database"), rows(b, "val_queries")
  assert [text(r["filename"]) for r in db] == [
      "cph/database/images/cphd0.jpg", "cph/database/images/cphd2.jpg",
      "sf/database/images/sfd0.jpg", "sf/database/images/sfd2.jpg"]
  np.testing.assert_allclose(db[1]["utm"], [700080.0, 6e6])
  assert len(q) == 4 and text(q[2]["filename"]).startswith("sf/query/")


@pytest.mark.parametrize("missing", ["postprocessed.csv", "raw.csv"])
def test_msls_city_without_its_csv_names_file_and_fix(tmp_path, missing):
  write_msls(tmp_path / "msls", drop=("sf", "query", missing))
  with pytest.raises(FileNotFoundError, match=rf"train_val/sf/query/{missing}: expected the "
                     rf"file {missing} \(MSLS's metadata; unpack metadata\.zip"):
    build("msls", tmp_path / "msls", tmp_path)


def test_msls_csv_without_a_column(tmp_path):
  write_msls(tmp_path / "msls")
  p = tmp_path / "msls" / "train_val" / "cph" / "database" / "postprocessed.csv"
  p.write_text(p.read_text().replace("northing", "north"))
  with pytest.raises(formats.DatasetFormatError, match=r"postprocessed\.csv: expected a csv "
                     r"header with the columns \['key', 'easting', 'northing'\]"):
    build("msls", tmp_path / "msls", tmp_path)


def test_market_name_that_does_not_parse_names_file_and_fix(tmp_path):
  fx.write_market(tmp_path / "m")
  fx.write_image(tmp_path / "m" / "bounding_box_test" / "IMG_0001.jpg")
  with pytest.raises(formats.DatasetFormatError, match=r"bounding_box_test/IMG_0001\.jpg: "
                     r"expected a file name like PPPP_cCsS.*Rename the file to that pattern or "
                     r"move it out of the folder"):
    build("market1501", tmp_path / "m", tmp_path)


def test_mat_without_a_field_names_file_and_fix(tmp_path):
  root = tmp_path / "p"
  fx.write_pittsburgh(root)
  fx.write_db_struct(root / "datasets" / "pitts30k_val.mat", "val", ["a.jpg"], [[0], [0]],
                     ["q.jpg"], [[0], [0]], drop=("utmQ",))
  with pytest.raises(formats.DatasetFormatError, match=r"pitts30k_val\.mat: expected dbStruct "
                     r"field 'utmQ'.*save dbStruct with every field docs/data\.md lists"):
    build("pittsburgh30k", root, tmp_path)
