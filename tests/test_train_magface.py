"""MagFace trains through train.main: the embedded default, and the RecordIO
fixture with Partial FC."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from tests import fixtures_real as fx
from tests.train_helpers import cli_args, make_config, run_main, tiny_overrides


def _losses(wd):
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if r.get("split") == "train"], [r for r in rows
                                                          if r.get("split") == "eval"]


def test_magface_trains_on_the_embedded_default(tiny_data, tmp_path):
  wd = tmp_path / "run"
  r = run_main(cli_args("magface", wd, tiny_overrides(tiny_data, 3)), timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  train, evals = _losses(wd)
  assert len(train) == 3 and all(np.isfinite(row["loss"]) for row in train)
  # The magnitude is MagFace's quality: it is evaluated as a proxy.
  assert evals and "norm_spearman" in evals[-1] and "pair_acc" in evals[-1]


def test_magface_trains_on_recordio_with_partial_fc(tmp_path):
  fx.write_recordio(tmp_path / "rec", images_per_id=(4,) * 10, first_label=0)
  # The preset validates on the folder's .bin sets every eval.every steps.
  from jaxset.data.export import write_bin
  faces = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
  write_bin(tmp_path / "rec" / "lfw.bin", faces[0::2], faces[1::2], [i % 2 for i in range(20)])
  wd = tmp_path / "run"
  args = ["python", "-m", "train.main", "--config=configs/magface.py:ms1m", f"--workdir={wd}",
          f"--config.data.dir={tmp_path / 'rec'}", f"--config.data.cache_dir={tmp_path / 'c'}",
          "--config.data.image_size=(16,16)", "--config.model.backbone=small_cnn",
          "--config.model.embedding_dim=16", "--config.model.dtype=float32",
          "--config.train.steps=2", "--config.train.batch_size=16",
          "--config.train.progress_bar=False", "--config.eval.at_start=False",
          "--config.train.log_every=1", "--config.eval.sets=lfw", "--config.eval.every=2"]
  r = run_main(args, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  train, evals = _losses(wd)
  assert len(train) == 2 and all(np.isfinite(row["loss"]) for row in train)
  # Validated with the sharded head on the .bin set.
  assert [row["step"] for row in evals] == [2] and 0 <= evals[0]["lfw_acc"] <= 1


def test_magface_step_adds_the_regulariser(tiny_data):
  """The loss is cross-entropy + lambda_g g(a): raising lambda_g from 0 raises
  the same step's loss by exactly the regulariser's mean."""
  from train import tasks
  from train.tasks import common
  losses, reg = {}, None
  for lam in (0.0, 35.0):
    c = make_config("magface", tiny_overrides(tiny_data, 1, **{"model.lambda_g": lam}))
    task = tasks.get("magface")
    state = task.create_state(c, jax.random.key(0))
    h, w = c.data.image_size
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (16, h, w, 3)), jnp.uint8)
    batch = {"image": images, "label": jnp.arange(16) % 4}
    _, metrics = task.stages(c)[0].train_step(state, batch)
    losses[lam] = float(metrics["loss"])
    if lam:
      out, _ = common.apply(task.model(c), state, images, batch["label"], train=True)
      reg = float(jnp.mean(out["row_loss"]))
  assert reg > 0
  np.testing.assert_allclose(losses[35.0] - losses[0.0], reg, rtol=1e-4)
