"""`python -m train.main`: flag errors, presets, the default workdir, start-up lines."""
import pytest

from tests.train_helpers import cli_args, run_main, tiny_overrides
from train import main as train_main


def _bad_run(*extra):
  return run_main(["python", "-m", "train.main", "--config=configs/arcface.py", *extra],
                  timeout=120)


def test_unknown_key_names_the_key():
  r = _bad_run("--config.optim.lrr=0.1")
  assert r.returncode != 0
  assert "optim.lrr" in r.stderr and "Traceback" not in r.stderr


def test_wrong_type_names_the_key_and_value():
  r = _bad_run("--config.optim.lr=abc")
  assert r.returncode != 0
  assert "optim.lr" in r.stderr and "abc" in r.stderr and "Traceback" not in r.stderr


def test_bad_preset_is_one_clear_line():
  r = run_main(["python", "-m", "train.main", "--config=configs/qan.py:nope"], timeout=120)
  assert r.returncode != 0
  assert "unknown preset 'nope'" in r.stderr and "mars" in r.stderr
  assert "Traceback" not in r.stderr


@pytest.mark.parametrize("method,preset,field,value", [
    ("qan", "mars", "data.name", "mars"),
    ("qan", "prid2011", "model.backbone", "resnet50"),
    ("eqface", "ms1m", "model.quality_hidden", 512),
    ("arcface", "ms1m", "model.embedding_dim", 512),
    ("adaface", "ms1m", "data.name", "recordio"),
    ("arcface", "folder", "data.name", "face_folder"),
])
def test_presets_parse(method, preset, field, value):
  import importlib
  c = importlib.import_module(f"configs.{method}").get_config(preset)
  node = c
  for p in field.split("."):
    node = node[p]
  assert node == value


def test_default_workdir():
  assert train_main.default_workdir("configs/qan.py") == "runs/qan"
  assert train_main.default_workdir("configs/qan.py:mars") == "runs/qan_mars"


def test_start_prints_where_things_go(tiny_data, tmp_path):
  wd = tmp_path / "run"
  r = run_main(cli_args("arcface", wd, tiny_overrides(tiny_data, 1, **{"train.devices": 1})))
  assert r.returncode == 0, r.stderr[-3000:]
  for what in ("checkpoints", "metrics.jsonl", "tensorboard", "config.json"):
    assert str(wd / what) in r.stderr
  assert (wd / "checkpoints" / "1").is_dir()
