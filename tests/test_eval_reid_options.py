"""train.eval's re-ID options (re-ranking, query expansion) and the MSLS val query counts.

The benchmarks run on real-format miniatures with a stand-in embedder (a fixed
function of the pixels), so what is checked is the protocol, not a model.
"""
from __future__ import annotations

from pathlib import Path

import fixtures_real as fx
import numpy as np
import pytest

from jaxset import data as jdata
from jaxset.data import export_formats
from tests.train_helpers import make_config
from train import eval_reid, evaluators


class PixelEmbedder:
  """An Embedder stand-in: the embedding is a fixed function of each image."""

  def __init__(self, image_size, fn):
    self.image_size, self.fn, self.out = tuple(image_size), fn, None

  def source(self, records, key="image", description=None, **_):
    rows = [np.asarray(records[i][key]) for i in range(len(records))]
    out = {"embedding": np.stack([self.fn(x) for x in rows]).astype(np.float32)}
    out["norm"] = np.linalg.norm(out["embedding"], axis=1)
    out["quality"] = np.array([x.mean() / 255.0 for x in rows], np.float32)
    return out


def _coarse(image):
  return np.asarray(image, np.float32)[::8, ::8].reshape(-1)


def _options(**over):
  return {"metric": "euclidean", "rerank": "none", "k1": 20, "k2": 6, "lambda": 0.3, "qe": 0,
          "qe_alpha": 0.0, **over}


# --------------------------------------------------------------------------
# Re-ranking and query expansion.


def test_k_reciprocal_rerank_lifts_the_mutual_neighbours_above_a_closer_stranger():
  # The query's nearest gallery image d is of another person, but d's own
  # nearest neighbours are its four companions, so the query is not in d's
  # k1-reciprocal set; the four true matches a_i are slightly farther and have
  # the query among their k1 + 1 nearest. k2 = 1 (no local expansion): the
  # change comes from the reciprocal sets alone.
  q = np.array([[0.0, 0.0]])
  a = np.array([[1.0, .1], [1.0, -.1], [1.1, .1], [1.1, -.1]])
  d = np.array([[-0.9, 0.0]])
  b = np.array([[-1.3, .1], [-1.3, -.1], [-1.4, .1], [-1.4, -.1]])
  g = np.concatenate([d, b, a])
  g_ids, g_cams = np.array([2] * 5 + [1] * 4), np.ones(9, int)
  out = eval_reid.reid_variants(q, g, [1], g_ids, [0], g_cams,
                                _options(rerank="k_reciprocal", k1=4, k2=1))
  assert [(label, suffix) for label, suffix, _ in out] == [
      ("", ""), ("k-reciprocal k1=4 k2=1 lambda=0.3", "_rerank")]
  plain, reranked = out[0][2], out[1][2]
  assert plain["rank1"] == 0.0 and plain["mINP"] == pytest.approx(4 / 5)
  assert reranked["rank1"] == 1.0 and reranked["mAP"] == 1.0 and reranked["mINP"] == 1.0


def test_query_expansion_rows_use_the_expanded_queries():
  rng = np.random.default_rng(0)
  qf, gf = rng.normal(size=(6, 8)), rng.normal(size=(20, 8))
  qf /= np.linalg.norm(qf, axis=1, keepdims=True)
  gf /= np.linalg.norm(gf, axis=1, keepdims=True)
  ids = (np.arange(6) % 3, np.arange(20) % 3, np.zeros(6, int), np.ones(20, int))
  out = eval_reid.reid_variants(qf, gf, *ids, _options(qe=2, qe_alpha=3.0,
                                                       rerank="k_reciprocal", k1=5, k2=2))
  assert [s for _, s, _ in out] == ["", "_qe", "_rerank", "_qe_rerank"]
  assert out[3][0] == "alpha-QE k=2 alpha=3 + k-reciprocal k1=5 k2=2 lambda=0.3"
  from jaxset.eval import alpha_query_expansion, cmc_map
  want = cmc_map(alpha_query_expansion(qf, gf, 2, 3.0), gf, *ids)
  assert out[1][2]["mAP"] == pytest.approx(want["mAP"], abs=1e-12)


@pytest.mark.parametrize("key,value,match", [
    ("rerank", "kreciprocal", r"config\.eval\.rerank='kreciprocal'; use one of"),
    ("rerank_k1", 0, r"config\.eval\.rerank_k1=0; use an integer >= 1"),
    ("rerank_k2", 0, r"config\.eval\.rerank_k2=0; use an integer >= 1"),
    ("rerank_lambda", 1.5, r"config\.eval\.rerank_lambda=1\.5; use a number in \[0\.0, 1\.0\]"),
    ("query_expansion", -1, r"config\.eval\.query_expansion=-1; use an integer >= 0"),
    ("qe_alpha", -2.0, r"config\.eval\.qe_alpha=-2\.0; use a number >= 0\.0"),
])
def test_bad_option_values_are_named_before_training(key, value, match):
  config = make_config("casn", {"eval.benchmark": "reid"}, "market1501")
  evaluators.preflight(config)  # the defaults pass
  config.eval[key] = value
  with pytest.raises(ValueError, match=match):
    evaluators.preflight(config)  # what a training run validating with reid runs first
  with pytest.raises(ValueError, match=match):
    eval_reid.reid(None, config)  # and the benchmark itself, before any embedding


def test_reid_benchmark_reports_the_extra_rows(tiny_data, tmp_path):
  embedded = jdata.builder("synthetic_identities", data_dir=tiny_data, config="tiny")
  root = export_formats.write_market1501(tmp_path / "market", embedded.as_data_source)
  over = {"data.image_size": (64, 32), "eval.dir": str(root),
          "data.cache_dir": str(tmp_path / "prep")}
  config = make_config("casn", over, "market1501")
  embed = PixelEmbedder((64, 32), _coarse)
  plain = evaluators.get("reid")(embed, config)
  assert [r["protocol"] for r in plain.rows] == ["market1501"]
  config.eval.rerank = "k_reciprocal"
  config.eval.query_expansion = 3
  res = evaluators.get("reid")(embed, config)
  tag = "k-reciprocal k1=20 k2=6 lambda=0.3"
  assert [r["protocol"] for r in res.rows] == [
      "market1501", "market1501 + AQE k=3", f"market1501 + {tag}",
      f"market1501 + AQE k=3 + {tag}"]
  assert all(r["queries"] == 160 for r in res.rows)
  assert res.rows[0] == plain.rows[0]  # the plain row is unchanged
  for suffix in ("", "_qe", "_rerank", "_qe_rerank"):
    assert {f"{k}{suffix}" for k in ("rank1", "rank5", "rank10", "mAP", "mINP")} <= set(
        res.metrics)
    assert f"cmc{suffix}" in res.curves
  assert res.metrics["mAP_rerank"] != res.metrics["mAP"]  # re-ranking was applied
  assert "market1501 + AQE k=3 + k-reciprocal" in res.table()


def test_video_reid_benchmark_reranks_each_pooling(tiny_data, tmp_path):
  embedded = jdata.builder("synthetic_identities", data_dir=tiny_data, config="tiny")
  root = export_formats.write_mars(tmp_path / "mars", embedded.as_data_source)
  over = {"data.image_size": (64, 32), "eval.dir": str(root),
          "data.cache_dir": str(tmp_path / "prep"), "eval.rerank": "k_reciprocal"}
  config = make_config("qan", over, "mars")
  res = evaluators.get("video_reid")(PixelEmbedder((64, 32), _coarse), config)
  tag = "k-reciprocal k1=20 k2=6 lambda=0.3"
  assert [r["protocol"] for r in res.rows] == [
      "mars mean pooling", f"mars mean pooling + {tag}",
      "mars quality pooling", f"mars quality pooling + {tag}"]
  assert {"rank1_mean_rerank", "mINP_quality_rerank", "mAP_mean"} <= set(res.metrics)


# --------------------------------------------------------------------------
# MSLS val: which queries count.

# Per city: database images 40 m apart along a street, the middle one a
# panorama; queries (east offset, panorama): two beside a database image, one
# whose only image within 25 m would be the panorama, one far from every
# image, and one panorama query.
MSLS_DB = [(0.0, False), (40.0, True), (80.0, False)]
MSLS_Q = [(3.0, False), (78.0, False), (41.0, False), (300.0, False), (10.0, True)]


def _write_msls(root: Path) -> dict[int, np.ndarray]:
  """train_val/{cph,sf}/ in MSLS's csv layout; returns image number -> embedding:
  every image is embedded as the one-hot of its nearest non-panorama database
  image, so a query with a positive finds it at rank 1."""
  table, i = {}, 0
  for c, city in enumerate(("cph", "sf")):
    east0 = 700000.0 if city == "cph" else 550000.0
    for kind, pts in (("database", MSLS_DB), ("query", MSLS_Q)):
      d = root / "train_val" / city / kind
      post = [",key,easting,northing,zone_number,night"]
      raw = [",key,lon,lat,ca,captured_at,pano"]
      for n, (x, pano) in enumerate(pts):
        key = f"{city}{kind[0]}{n}"
        post.append(f"{n},{key},{east0 + x},{6e6 + c},33,False")
        raw.append(f"{n},{key},12.5,55.6,0.0,1500000000000,{pano}")
        fx.write_image(d / "images" / f"{key}.jpg", i)
        nearest = min((0, 2), key=lambda j: abs(MSLS_DB[j][0] - x))
        table[i] = np.eye(4)[2 * c + nearest // 2]
        i += 1
      (d / "postprocessed.csv").write_text("\n".join(post) + "\n")
      (d / "raw.csv").write_text("\n".join(raw) + "\n")
  return table


def test_msls_val_counts_every_query_or_only_those_with_a_positive(tmp_path):
  table = _write_msls(tmp_path / "msls")
  over = {"data.image_size": (8, 8), "eval.dir": str(tmp_path / "msls"),
          "data.cache_dir": str(tmp_path / "prep"), "eval.benchmark": "places"}
  config = make_config("netvlad", over, "msls")
  embed = PixelEmbedder((8, 8), lambda x: table[fx.index(x)])
  every = evaluators.get("places")(embed, config)
  # 8 queries in the two cities once the panorama queries are out; "all" scores
  # each, a query without a database image within 25 m as a miss.
  assert every.rows[0]["queries"] == "8/8" and every.rows[0]["queries counted"] == "all"
  assert every.metrics["num_queries"] == 8.0
  assert every.metrics["recall@1"] == every.metrics["recall@20"] == 0.5
  config.eval.msls_queries = "with_positives"
  pos = evaluators.get("places")(embed, config)
  # mapillary_sls's count: the 4 queries with a non-panorama database image
  # within 25 m (the query at 41 m is 1 m from a panorama only, so it has none).
  assert pos.rows[0]["queries"] == "4/8" and pos.metrics["num_queries"] == 4.0
  assert pos.metrics["recall@1"] == 1.0
  config.eval.msls_queries = "positives"
  with pytest.raises(ValueError, match=r"msls_queries='positives'; use one of"):
    evaluators.get("places")(embed, config)
