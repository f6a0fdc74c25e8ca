"""Face presets end to end on real-format miniatures, through the commands:
jaxset.data.export writes the tiny synthetic identities as an insightface
training folder (train.rec/.idx/property + lfw.bin) and as a folder of
identities; `python -m train.main` trains the ms1m preset (RecordIO read in
place) and the folder preset a few steps, validating on lfw.bin every 2 steps
and keeping the best; `python -m train.eval` scores the best checkpoint and
prints insightface's table; a resume from an older step keeps the best.
"""
import json
import re
import shutil
import subprocess
import sys

import pytest

from jaxset.data import export
from tests.test_bad_inputs import _largest_file, _overwrite
from tests.train_helpers import ROOT, env, run_main

# The large presets shrunk to the tiny data (the keys they set stay as they are).
TINY = {"model.backbone": "small_cnn", "data.image_size": "(64, 32)",
        "model.embedding_dim": 32, "model.scale": 32.0, "model.dtype": "float32",
        "model.classifier.shards": 1, "model.dropout_rate": 0.0, "train.batch_size": 16,
        "train.steps": 4, "train.ckpt_every": 2, "eval.every": 2, "eval.batch_size": 64,
        "train.progress_bar": False}


@pytest.fixture(scope="module")
def miniatures(tiny_data, tmp_path_factory):
  out = tmp_path_factory.mktemp("face_formats")
  export.export("insightface", out / "faces_emore", data_dir=tiny_data)
  export.export("folder", out / "folder", data_dir=tiny_data)
  return out


def _args(config, workdir, overrides):
  return ([sys.executable, "-m", "train.main", f"--config={config}", f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in overrides.items()])


def test_ms1m_recordio_preset_validates_keeps_best_and_evaluates(miniatures, tmp_path):
  data = miniatures / "faces_emore"
  o = dict(TINY, **{"data.dir": data, "eval.sets": "lfw"})
  wd = tmp_path / "run"
  r = run_main(_args("configs/arcface.py:ms1m", wd, o))
  assert r.returncode == 0, r.stderr[-3000:]
  assert "method arcface on recordio" in r.stderr
  evals = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
  evals = [e for e in evals if e["split"] == "eval"]
  assert [e["step"] for e in evals] == [2, 4] and all("lfw_acc" in e for e in evals)
  best = json.loads((wd / "best" / "best.json").read_text())
  assert best["bin_acc_mean"] == max(e["bin_acc_mean"] for e in evals)

  # The evaluation command on the best checkpoint prints insightface's lines.
  cmd = [sys.executable, "-m", "train.eval", "--config=configs/arcface.py:ms1m",
         f"--workdir={wd}", "--checkpoint=best"] + [f"--config.{k}={v}" for k, v in o.items()]
  ev = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
  assert ev.returncode == 0, ev.stderr[-3000:]
  m = re.search(r"\[lfw\]Accuracy-Flip: ([\d.]+)\+-([\d.]+)", ev.stdout)
  assert m and float(m.group(1)) == pytest.approx(best["lfw_acc"], abs=1e-5), ev.stdout
  assert re.search(r"\[lfw\]XNorm: [\d.]+", ev.stdout)
  report = json.loads(next(wd.glob("eval_face_bin_best_*/report.json")).read_text())
  assert report["metrics"]["lfw_acc"] == pytest.approx(best["lfw_acc"], abs=1e-9)

  # The newest checkpoint damaged: resume from step 2 (older than a best of
  # step 4, if it is): no crash, the best kept.
  moved = tmp_path / "resumed"
  shutil.copytree(wd, moved)
  _overwrite(_largest_file(moved / "checkpoints" / "4"))
  r2 = run_main(_args("configs/arcface.py:ms1m", moved, o))
  assert r2.returncode == 0, r2.stderr[-3000:]
  assert "resumed from step 2" in r2.stderr
  assert json.loads((moved / "best" / "best.json").read_text()) == best


def test_folder_preset_trains_with_validation(miniatures, tmp_path):
  o = dict(TINY, **{"data.dir": miniatures / "folder",
                    "eval.dir": miniatures / "faces_emore", "train.steps": 2})
  wd = tmp_path / "run"
  r = run_main(_args("configs/adaface.py:folder", wd, o))
  assert r.returncode == 0, r.stderr[-3000:]
  assert "method adaface on face_folder" in r.stderr and "lfw_acc=" in r.stderr
  assert "bin_acc_mean" in json.loads((wd / "best" / "best.json").read_text())


def test_folder_without_identity_subfolders_is_one_clear_error(miniatures, tmp_path):
  flat = tmp_path / "flat"
  flat.mkdir()
  for p in list((miniatures / "folder").rglob("*.jpg"))[:3]:
    shutil.copy(p, flat / f"{p.parent.name}_{p.name}")
  r = run_main(_args("configs/arcface.py:folder", tmp_path / "run",
                     dict(TINY, **{"data.dir": flat,
                                   "eval.dir": miniatures / "faces_emore"})))
  assert r.returncode == 1
  assert f"{flat}: expected one subfolder per identity" in r.stderr
  assert "Move each identity's images into a folder of its own" in r.stderr
  assert "Traceback" not in r.stderr
