"""Re-ID, video re-ID and place presets end to end on real-format miniatures.

The tiny embedded datasets are written once in every real layout
(jaxset.data.export_formats) and read back by the real builders. One preset of
each task trains a few steps through `python -m train.main` with validation,
then `python -m train.eval` scores it on its benchmark and the printed table
is checked; the other presets train in-process through the same loop
(loop.train_and_evaluate, what train.main calls) and their benchmarks run
through train.eval.evaluate_benchmark. Backbones are shrunk to small_cnn so
that CI stays fast; the presets' own keys (data, splits, losses, evaluation)
are the ones under test.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from jaxset import data as jdata
from jaxset.data import export_formats
from tests.train_helpers import ROOT, make_config, run_main

SMALL = {"model.backbone": "small_cnn", "model.dtype": "float32", "train.steps": 4,
         "train.batch_size": 16, "train.log_every": 1, "train.ckpt_every": 2,
         "train.progress_bar": False, "eval.every": 2, "eval.batch_size": 32,
         "eval.at_start": False, "optim.warmup_steps": 0}
REID = {**SMALL, "data.image_size": (64, 32), "casn.warmup_steps": 2}
VIDEO = {**SMALL, "data.image_size": (64, 32),
         "qan.set_size": 4, "qan.set_size_range": ()}
PLACES = {**SMALL, "data.image_size": (64, 64), "train.batch_size": 8,
          "tuples.num_positives": 1, "tuples.num_negatives": 2, "tuples.negative_pool": 20,
          "mining.enabled": False, "kmeans.num_images": 20,
          "kmeans.bn_calibration_batches": 0}


@pytest.fixture(scope="module")
def miniatures(tiny_data, tmp_path_factory) -> dict[str, str]:
  """{builder name: manual_dir} of every real layout, written from the tiny data."""
  out = tmp_path_factory.mktemp("real_formats")
  roots = {}
  for name, write in export_formats.WRITERS.items():
    embedded = jdata.builder(export_formats.SOURCES[name], data_dir=tiny_data, config="tiny")
    roots[name] = str(write(out / name, embedded.as_data_source))
  return roots


def _overrides(base, data_dir, cache, **extra):
  return {**base, "data.dir": data_dir, "data.cache_dir": str(cache), **extra}


def _cli(module, method, preset, workdir, over):
  args = ["python", "-m", module, f"--config=configs/{method}.py:{preset}",
          f"--workdir={workdir}"]
  return args + [f"--config.{k}={v}" for k, v in over.items()]


def _eval_lines(workdir: Path) -> list[dict]:
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [x for x in lines if x.get("split") == "eval"]


def _table(stdout: str) -> list[list[str]]:
  """The rows of the printed benchmark table (header first), split on 2+ spaces."""
  lines = stdout.splitlines()
  rule = next(i for i, x in enumerate(lines) if x.startswith("----"))
  rows = [lines[rule - 1]] + [x for x in lines[rule + 1:] if x and not x.startswith("report:")]
  return [re.split(r"\s{2,}", x.strip()) for x in rows]


def _train_then_eval(tmp_path, method, preset, over, eval_over, best_metric_key):
  import sys
  workdir = tmp_path / "run"
  train = _cli("train.main", method, preset, workdir, over)
  train[0] = sys.executable
  r = run_main(train, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  evals = _eval_lines(workdir)
  assert [x["step"] for x in evals] == [2, 4]  # validation while training
  assert all(np.isfinite(x[best_metric_key]) for x in evals)
  assert (workdir / "best").is_dir()  # the best validation checkpoint is kept
  ev = _cli("train.eval", method, preset, workdir, {**over, **eval_over})
  ev[0] = sys.executable
  r = run_main(ev, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir, _table(r.stdout)


def test_casn_market1501_trains_validates_and_scores(miniatures, tmp_path):
  over = _overrides(REID, miniatures["market1501"], tmp_path / "prep")
  workdir, table = _train_then_eval(tmp_path, "casn", "market1501", over,
                                    {"eval.benchmark": "reid"}, "mINP")
  assert table[0] == ["protocol", "rank-1", "rank-5", "rank-10", "mAP", "mINP", "queries"]
  name, *values, queries = table[1]
  assert name == "market1501" and int(queries) == 160
  r1, r5, r10, m_ap, m_inp = map(float, values)
  assert 0 <= r1 <= r5 <= r10 <= 1 and 0 < m_inp <= 1 and 0 < m_ap <= 1
  report = json.loads(next(workdir.glob("eval_reid_latest_4/report.json")).read_text())
  assert report["metrics"]["mINP"] == pytest.approx(m_inp, abs=5e-5)


@pytest.mark.parametrize("preset", ["dukemtmc_reid", "cuhk03_np", "msmt17"])
def test_casn_presets_train_and_score_in_process(miniatures, tmp_path, preset):
  from train import eval as train_eval
  from train import loop
  config = make_config("casn", _overrides(REID, miniatures[preset], tmp_path / "prep",
                                          **{"train.steps": 2}), preset)
  summary = loop.train_and_evaluate(config, tmp_path / "run")
  assert summary["best"] is not None and "mINP" in summary["best"]
  config.eval.benchmark = "reid"
  report = train_eval.evaluate_benchmark(config, tmp_path / "run")
  assert report["rows"][0]["protocol"] == preset
  assert 0 < report["metrics"]["mINP"] <= 1 and 0 < report["metrics"]["mAP"] <= 1


def test_qan_mars_trains_validates_and_scores_both_poolings(miniatures, tmp_path):
  over = _overrides(VIDEO, miniatures["mars"], tmp_path / "prep")
  _, table = _train_then_eval(tmp_path, "qan", "mars", over,
                              {"eval.benchmark": "video_reid"}, "set_rank1_meanpool")
  assert [row[0] for row in table[1:]] == ["mars mean pooling", "mars quality pooling"]
  assert all(int(row[-1]) == 40 for row in table[1:])  # 40 query tracklets
  for row in table[1:]:
    r1, r5, r10, m_ap, m_inp = map(float, row[1:6])
    assert 0 <= r1 <= r5 <= r10 <= 1 and 0 < m_inp <= 1 and 0 < m_ap <= 1


@pytest.mark.parametrize("preset", ["prid2011", "ilids_vid"])
def test_qan_sequence_presets_validate_on_test_cameras(miniatures, tmp_path, preset):
  from train import eval as train_eval
  from train import loop
  config = make_config("qan", _overrides(VIDEO, miniatures[preset], tmp_path / "prep",
                                         **{"train.steps": 2}), preset)
  summary = loop.train_and_evaluate(config, tmp_path / "run")
  assert {"set_rank1", "set_rank1_meanpool", "set_mINP"} <= set(summary["after"])
  config.eval.benchmark = "video_reid"
  report = train_eval.evaluate_benchmark(config, tmp_path / "run")
  # Camera 0 tracklets of the test identities query camera 1's: one query each.
  b = jdata.builder(preset, data_dir=tmp_path / "prep", manual_dir=miniatures[preset])
  n_test = len(b.info.metadata["test_identities"])
  assert n_test > 0 and [r["queries"] for r in report["rows"]] == [n_test, n_test]
  assert {"rank1_mean", "rank1_quality", "mINP_quality"} <= set(report["metrics"])


def test_netvlad_pitts30k_then_tokyo247_and_msls(miniatures, tmp_path):
  over = _overrides(PLACES, miniatures["pittsburgh30k"], tmp_path / "prep")
  workdir, table = _train_then_eval(
      tmp_path, "netvlad", "pitts30k", over,
      {"eval.benchmark": "places", "eval.dir": miniatures["pittsburgh30k"]}, "recall@1")
  assert table[0][:6] == ["dataset", "split", "R@1", "R@5", "R@10", "R@20"]
  assert table[1][:2] == ["pittsburgh30k", "test"] and table[1][6] == "20/20"
  recalls = np.array(table[1][2:6], float)
  assert np.all(np.diff(recalls) >= 0) and recalls[-1] <= 1

  from train import eval as train_eval
  mk = make_config
  tokyo = mk("netvlad", _overrides(PLACES, miniatures["pittsburgh30k"], tmp_path / "prep",
                                   **{"eval.dir": miniatures["tokyo247"]}), "tokyo247")
  rep = train_eval.evaluate_benchmark(tokyo, workdir)
  assert rep["rows"][0]["panorama NMS"] == "yes" and rep["rows"][0]["queries"] == "20/20"
  msls = mk("netvlad", _overrides(PLACES, miniatures["pittsburgh30k"], tmp_path / "prep",
                                  **{"eval.dir": miniatures["msls"]}), "msls")
  every = train_eval.evaluate_benchmark(msls, workdir, out=tmp_path / "all")
  msls.eval.msls_queries = "with_positives"
  positives = train_eval.evaluate_benchmark(msls, workdir, out=tmp_path / "pos")
  n_all = int(every["rows"][0]["queries"].split("/")[0])
  n_pos = int(positives["rows"][0]["queries"].split("/")[0])
  assert n_all == 20 and 0 < n_pos <= n_all
  assert positives["rows"][0]["queries counted"] == "with_positives"
  # Dropping queries that cannot be hit never lowers recall.
  assert positives["metrics"]["recall@20"] >= every["metrics"]["recall@20"] - 1e-12
  p250 = mk("netvlad", _overrides(PLACES, miniatures["pittsburgh30k"], tmp_path / "prep",
                                  **{"eval.dir": miniatures["pittsburgh250k"],
                                     "eval.dataset": "pittsburgh250k",
                                     "eval.benchmark": "places"}), "pitts30k")
  rep = train_eval.evaluate_benchmark(p250, workdir, out=tmp_path / "p250")
  assert rep["rows"][0]["dataset"] == "pittsburgh250k"


def test_real_presets_are_all_covered():
  """Every re-ID / video / place builder has a writer, and each written layout is
  exercised by a test above (train or evaluation)."""
  assert set(export_formats.WRITERS) == {
      "market1501", "dukemtmc_reid", "cuhk03_np", "msmt17", "mars", "prid2011", "ilids_vid",
      "pittsburgh30k", "pittsburgh250k", "tokyo247", "msls"}
  assert (ROOT / "jaxset" / "data" / "export_formats.py").is_file()


@pytest.mark.parametrize("fmt", ["dukemtmc_reid", "tokyo247"])
def test_export_command_writes_the_layouts(tiny_data, tmp_path, fmt):
  """`python -m jaxset.data.export --format=<layout>` (export.export) writes the
  layout from the embedded dataset it comes from, at the asked image size."""
  from jaxset.data import export
  paths = export.export(fmt, tmp_path / "out", data_dir=tiny_data, image_size=(32, 16))
  assert paths == [tmp_path / "out"]
  b = jdata.builder(fmt, data_dir=tmp_path / "prep", manual_dir=tmp_path / "out")
  split = "gallery" if fmt == "dukemtmc_reid" else "test_database"
  embedded = jdata.builder(export_formats.SOURCES[fmt], data_dir=tiny_data, config="tiny")
  src = b.as_data_source(split)
  assert len(src) == len(embedded.as_data_source(split))
  assert src[0]["image"].shape == (32, 16, 3)
