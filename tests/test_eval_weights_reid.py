"""`python -m train.eval --weights=...` for the re-ID configs: converted backbone
weights with a global pooling, scored on a Market-1501 miniature, with no run."""
import jax
import jax.numpy as jnp
import pytest

from jaxset import data as jdata
from jaxset.convert import save_variables
from jaxset.data import export_formats
from jaxset.models import SmallCNN
from tests.train_helpers import make_config
from train import eval as train_eval


def test_converted_backbone_scores_market1501(tiny_data, tmp_path):
  embedded = jdata.builder("synthetic_identities", data_dir=tiny_data, config="tiny")
  root = export_formats.write_market1501(tmp_path / "market", embedded.as_data_source)
  trunk = SmallCNN().init(jax.random.key(3), jnp.zeros((1, 64, 32, 3), jnp.uint8))
  path = tmp_path / "trunk.msgpack"
  save_variables(jax.device_get(trunk), str(path))
  over = {"model.backbone": "small_cnn", "model.dtype": "float32", "data.image_size": (64, 32),
          "eval.batch_size": 32, "eval.benchmark": "reid", "eval.dir": str(root),
          "data.cache_dir": str(tmp_path / "prep")}
  config = make_config("casn", over, "market1501")
  avg = train_eval.evaluate_benchmark(config, weights=path, out=tmp_path / "avg")
  assert avg["rows"][0]["protocol"] == "market1501" and avg["rows"][0]["queries"] == 160
  config.eval.weights_pooling = "max"
  mx = train_eval.evaluate_benchmark(config, weights=path, out=tmp_path / "max")
  assert mx["metrics"]["mAP"] != avg["metrics"]["mAP"]  # the pooling is applied
  # A file for another backbone names the difference.
  config.model.backbone = "resnet18"
  with pytest.raises(ValueError, match="matches no part of the model"):
    train_eval.evaluate_benchmark(config, weights=path, out=tmp_path / "bad")
