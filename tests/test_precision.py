"""The precision policy (config.train.precision): a bfloat16 run trains like a float32 one.

bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 %), so a
bfloat16 step differs from the float32 one by rounding of that order in every
convolution, and the difference grows over the steps. The policy keeps what
rounding would bias (parameters, optimiser moments, BatchNorm and EMA
statistics, norms, softmax, margins, losses) in float32; these tests check
that it does, and that a short run of every method tracks its float32 run.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train_helpers import make_config, tiny_overrides, train_losses
from train import loop, tasks
from train.tasks import common

STEPS = 6
# Step 1 starts from the same parameters: its loss differs by compute rounding
# alone. NetVLAD's before_training (BatchNorm calibration, k-means) and first
# feature cache run in the run's precision too, so its step 1 starts from
# slightly other centroids and mines from another cache.
FIRST_RTOL = {"netvlad": 0.03}
FIRST_RTOL_DEFAULT = 0.01
# Later steps also carry the rounding of every earlier update, which Adam's
# first steps (about lr x sign(gradient) per parameter) amplify where a
# gradient is near zero, and which can flip discrete choices (NetVLAD's mined
# negatives and hinge, CASN's predicted class whose Grad-CAM is mined): per
# method, relative and absolute tolerance of every step's loss.
# CASN's full objective starts at step 4 (casn.warmup_steps=3 below) from the
# warm-up's already different parameters, and its loss jumps there (4.4 from
# 3.1) with the attention terms.
LOSS_TOL = {"netvlad": (0.05, 0.06), "casn": (0.12, 0.05)}
LOSS_TOL_DEFAULT = (0.05, 0.02)
# The run's mean loss (batch-to-batch swings average out): relative, plus the
# method's absolute floor above.
MEAN_RTOL = 0.05
# The final evaluation metric, absolute: after 6 steps on the tiny data a
# rank-1 or pair accuracy moves by 1/160 per query or 1/60 per pair.
METRIC_ATOL = 0.1
# Norm statistics and quality means (train metrics), relative.
STAT_RTOL = 0.05

# Per method: the short run's overrides and the metric judged at its end.
METHODS = {
    "adaface": ({}, "pair_acc"),
    "arcface": ({}, "pair_acc"),
    "eqface": ({}, "pair_acc"),
    "qan": ({"qan.pretrain_fraction": 0.5}, "set_rank1"),
    "casn": ({"casn.warmup_steps": 3}, "rank1"),
    "netvlad": ({"train.batch_size": 8, "kmeans.bn_calibration_batches": 2,
                 "kmeans.num_images": 64}, "recall@1"),
}


def _run(method, precision, tiny_data, workdir):
  extra, metric = METHODS[method]
  config = make_config(method, tiny_overrides(tiny_data, STEPS, **{
      **extra, "train.precision": precision, "train.devices": 1}))
  assert config.model.dtype == precision  # one value, two names
  summary = loop.train_and_evaluate(config, workdir)
  rows = [r for r in _rows(workdir) if r["split"] == "train"]
  return summary, rows, metric


def _rows(workdir):
  import json
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", list(METHODS))
def test_bfloat16_run_tracks_the_float32_run(method, tiny_data, tmp_path):
  runs = {p: _run(method, p, tiny_data, tmp_path / p) for p in ("float32", "bfloat16")}
  (s32, rows32, metric), (s16, rows16, _) = runs["float32"], runs["bfloat16"]
  l32, l16 = train_losses(tmp_path / "float32"), train_losses(tmp_path / "bfloat16")
  assert sorted(l32) == sorted(l16) == list(range(1, STEPS + 1))
  a32 = np.array([l32[s] for s in sorted(l32)])
  a16 = np.array([l16[s] for s in sorted(l16)])
  assert np.all(np.isfinite(a16))
  # Not bit for bit: the bfloat16 run did compute in bfloat16.
  assert not np.array_equal(a16, a32)
  np.testing.assert_allclose(a16[0], a32[0], rtol=FIRST_RTOL.get(method, FIRST_RTOL_DEFAULT))
  rtol, atol = LOSS_TOL.get(method, LOSS_TOL_DEFAULT)
  np.testing.assert_allclose(a16, a32, rtol=rtol, atol=atol)
  np.testing.assert_allclose(a16.mean(), a32.mean(), rtol=MEAN_RTOL, atol=atol)
  m32, m16 = s32["after"][metric], s16["after"][metric]
  assert np.isfinite(m16) and abs(m16 - m32) <= METRIC_ATOL, (metric, m32, m16)
  # The state stays float32 whatever the compute dtype.
  for leaf in jax.tree.leaves((s16["state"].params, s16["state"].opt_state,
                               s16["state"].model_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  # AdaFace's EMA norm statistics, EQFace's quality, QAN's mu: finite and close.
  for key in ("norm_mean", "ema_norm_mean", "quality_mean", "mu_clean", "mu_degraded"):
    pairs = [(r32[key], r16[key]) for r32, r16 in zip(rows32, rows16) if key in r32]
    if pairs:
      x32, x16 = np.array(pairs).T
      assert np.all(np.isfinite(x16)), key
      np.testing.assert_allclose(x16, x32, rtol=STAT_RTOL, err_msg=key)


@pytest.mark.parametrize("method", list(METHODS))
def test_bfloat16_policy_computes_in_bfloat16_and_keeps_state_and_outputs_float32(
    method, tiny_data):
  """Abstract (no step runs): the state and the model's outputs are float32,
  the convolutions inside bfloat16."""
  extra, _ = METHODS[method]
  config = make_config(method, tiny_overrides(tiny_data, STEPS, **{
      **extra, "train.precision": "bfloat16"}))
  task = tasks.get(method)
  assert common.compute_dtype(config) == jnp.bfloat16
  model = task.model(config)
  assert model.dtype == jnp.bfloat16
  state = jax.eval_shape(lambda k: task.create_state(config, k), jax.random.key(0))
  floats = [x for x in jax.tree.leaves((state.params, state.opt_state, state.model_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  stage = task.stages(config)[-1]
  task.restore_extra(task.checkpoint_extra())
  batch = next(stage.make_iterator())
  jaxpr = str(jax.make_jaxpr(stage.train_step)(state, batch))
  assert "conv_general_dilated" in jaxpr and "bf16" in jaxpr
  _, metrics = jax.eval_shape(stage.train_step, state, batch)
  assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(metrics)), metrics


def test_precision_names_are_checked():
  config = make_config("arcface", {"train.precision": "float16"})
  with pytest.raises(ValueError, match="train.precision='float16'.*float32 or bfloat16"):
    common.compute_dtype(config)


@pytest.mark.parametrize("method,preset", [
    ("adaface", "ms1m"), ("arcface", "webface"), ("eqface", "ms1m"),
    ("netvlad", "pitts30k"), ("casn", "market1501"), ("qan", "mars")])
def test_large_presets_train_in_bfloat16(method, preset):
  config = make_config(method, {}, preset)
  assert config.train.precision == config.model.dtype == "bfloat16"
  assert make_config(method, {}).train.precision == "float32"
