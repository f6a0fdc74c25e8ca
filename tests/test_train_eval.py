"""python -m train.eval: report and plots from a run's checkpoint; clear errors otherwise."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import arcface as arcface_config
from train import eval as train_eval
from train import loop


def _config(cache_dir):
  c = arcface_config.get_config()
  c.data.builder_config = "tiny"
  c.data.cache_dir = str(cache_dir)
  c.model.embedding_dim = 16
  c.train.steps = 4
  c.train.batch_size = 16
  c.train.log_every = 2
  c.train.ckpt_every = 2
  c.train.progress_bar = False
  c.eval.at_start = False
  c.eval.batch_size = 32
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_data):
  root = tmp_path_factory.mktemp("eval")
  config = _config(tiny_data)
  loop.train_and_evaluate(config, root / "run")
  return config, root / "run"


def test_report_and_plots_from_latest_checkpoint(run, tmp_path):
  config, workdir = run
  report = train_eval.evaluate_run(config, workdir, "latest", tmp_path / "out")
  assert report["step"] == 4
  assert {"pair_acc", "rank1", "mAP", "norm_spearman"} <= set(report["metrics"])
  names = sorted(Path(p).name for p in report["plots"])
  assert names == ["cmc.png", "erc.png", "norm_vs_degradation.png", "roc.png"]
  saved = json.loads((tmp_path / "out" / "report.json").read_text())
  assert saved["metrics"] == pytest.approx(report["metrics"])
  # The ERC / EDC: the norm, random discarding and the oracle of the stored levels.
  series = saved["curves"]["erc"]["series"]
  assert [k.split(" (AUC")[0] for k in series] == [
      "lowest norm first", "random", "oracle: most degraded first"]
  for curve in series.values():
    assert curve["x"][0] == 0.0 and len(curve["x"]) == len(curve["y"]) > 10
  # One threshold for every proxy: nothing discarded, one FNMR.
  assert np.ptp([curve["y"][0] for curve in series.values()]) < 1e-12
  # The same numbers as the training run's own final evaluation.
  last = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()
          if '"eval"' in l][-1]
  assert report["metrics"]["rank1"] == pytest.approx(last["rank1"])


def test_missing_checkpoint_says_where_it_looked(run, tmp_path):
  config, _ = run
  missing = r"no checkpoint folder at .*checkpoints.*does not exist"
  with pytest.raises(train_eval.CheckpointError, match=missing):
    train_eval.evaluate_run(config, tmp_path / "nothing_here")
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  with pytest.raises(train_eval.CheckpointError, match=r"no finished checkpoint .*it is empty"):
    train_eval.evaluate_run(config, tmp_path / "empty")


def test_corrupt_checkpoint_says_what_it_found(run, tmp_path, capsys):
  config, workdir = run
  broken = tmp_path / "broken"
  shutil.copytree(workdir, broken)
  for f in (broken / "checkpoints" / "4" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
      f.write_bytes(b"\0garbage")
  # The digest manifest catches it: latest falls back to step 2, with a warning;
  # asking for step 4 names the damaged file.
  report = train_eval.evaluate_run(config, broken, "latest", tmp_path / "out")
  assert report["step"] == 2
  assert "checkpoint step 4" in capsys.readouterr().err
  with pytest.raises(train_eval.CheckpointError, match=r"step 4 .* is damaged: .*state"):
    train_eval.evaluate_run(config, broken, "4")
  # Without manifests (an older jaxset's run) the restore itself fails clearly.
  for manifest in (broken / "checkpoints").glob("*.digest.json"):
    manifest.unlink()
  with pytest.raises(train_eval.CheckpointError, match=r"step 4 .* could not be read"):
    train_eval.evaluate_run(config, broken)


def test_cli_exit_code_and_message_on_missing_run(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "train.eval", "--config=configs/arcface.py",
       f"--workdir={tmp_path / 'none'}"], capture_output=True, text=True,
      cwd=Path(__file__).resolve().parents[1])
  assert out.returncode == 1
  assert "no checkpoint folder at" in out.stderr


def test_qan_report_has_an_erc_of_its_frame_quality(tiny_data, tmp_path):
  from configs import qan as qan_config
  c = qan_config.get_config()
  c.data.builder_config = "tiny"
  c.data.cache_dir = tiny_data
  c.model.feature_dim = c.model.embedding_dim = 16
  c.train.steps, c.train.batch_size, c.train.ckpt_every = 4, 16, 4
  c.train.progress_bar, c.eval.at_start, c.eval.batch_size = False, False, 32
  c.optim.warmup_steps = 0
  loop.train_and_evaluate(c, tmp_path / "run")
  report = train_eval.evaluate_run(c, tmp_path / "run", "latest", tmp_path / "out")
  names = sorted(Path(p).name for p in report["plots"])
  assert names == ["cmc.png", "erc.png", "mu_vs_degradation.png", "roc.png"]
  erc = report["curves"]["erc"]
  assert erc["x"][0] == 0.0 and len(erc["x"]) == len(erc["y"]) > 10
  mu = np.asarray(report["curves"]["mu_vs_degradation"]["y"])
  assert mu.size > 0 and np.all((mu > 0) & (mu < 1))   # sigmoid outputs, one per image
