"""Partial FC in training: the 2-D mesh, sharded checkpoints, unsampled classes, the ms1m preset."""
import base64
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests import fixtures_real as fx
from tests.train_helpers import make_config, run_main, tiny_overrides
from train import loop, meshes, partial_fc
from train.task import TrainState

KERNEL = ("head", "classifier", "kernel")


def test_mesh_from_config():
  c = make_config("arcface", {})
  assert meshes.build(c).axis_names == ("data",)  # the default: 1-D data parallel
  c.model.classifier.shards = 4  # the face configs tie train.mesh.model to it
  m = meshes.build(c)
  assert m.axis_names == ("data", "model") and m.devices.shape == (2, 4)
  c.model.classifier.shards = -1
  assert meshes.build(c).devices.shape == (1, 8)
  c.model.classifier.shards = 3
  with pytest.raises(ValueError, match="does not fit 8 devices"):
    meshes.build(c)


def _state(opt):
  params = {"head": {"classifier": {"kernel": jnp.ones((2, 6))}}, "other": jnp.ones((6,))}
  return TrainState.create(apply_fn=None, params=params, tx=opt)


@pytest.mark.parametrize("update_unsampled", [False, True])
def test_unsampled_rows_and_their_moments(update_unsampled):
  c = make_config("arcface", {"model.classifier.update_unsampled": update_unsampled})
  opt = optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.5, momentum=0.9))
  state = _state(opt)
  g = jax.tree.map(jnp.ones_like, state.params)
  state = state.apply_gradients(grads=g)  # every class sampled: momentum everywhere
  mask = jnp.asarray([True, False, True, False, False, True])
  g = {"head": {"classifier": {"kernel": jnp.where(mask, 1.0, 0.0) * jnp.ones((2, 6))}},
       "other": jnp.ones((6,))}
  new = partial_fc.keep_unsampled(state.apply_gradients(grads=g), state, mask, KERNEL, c)
  k_old = state.params["head"]["classifier"]["kernel"]
  k_new = new.params["head"]["classifier"]["kernel"]
  mom_old = state.opt_state[1][0].trace["head"]["classifier"]["kernel"]
  mom_new = new.opt_state[1][0].trace["head"]["classifier"]["kernel"]
  assert not np.allclose(k_new[:, mask], k_old[:, mask])
  assert not np.allclose(new.params["other"], state.params["other"])
  if update_unsampled:
    # insightface partial_fc_v2: momentum and weight decay still move them.
    assert not np.allclose(k_new[:, ~mask], k_old[:, ~mask])
  else:
    np.testing.assert_array_equal(k_new[:, ~mask], k_old[:, ~mask])
    np.testing.assert_array_equal(mom_new[:, ~mask], mom_old[:, ~mask])
    assert not np.allclose(mom_new[:, mask], mom_old[:, mask])



def _scan_lengths(jaxpr) -> set:
  """The lengths of every scan in a closed jaxpr, sub-jaxprs included."""
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      found.add(eqn.params["length"])
    for sub in jax.core.jaxprs_in_params(eqn.params):
      found |= _scan_lengths(sub)
  return found


@pytest.mark.parametrize("method", ["arcface", "adaface", "eqface"])
def test_chunk_classes_reaches_the_sharded_head(method, tiny_data):
  from train import tasks
  c = make_config(method, tiny_overrides(tiny_data, 1, **{
      "model.classifier.shards": -1, "model.classifier.chunk_classes": 5}))
  task = tasks.get(method)
  state = jax.eval_shape(lambda key: task.create_state(c, key), jax.random.key(0))
  h, w = c.data.image_size
  batch = {"image": jax.ShapeDtypeStruct((16, h, w, 3), jnp.uint8),
           "label": jax.ShapeDtypeStruct((16,), jnp.int32)}
  jaxpr = jax.make_jaxpr(task.stages(c)[0].train_step)(state, batch)
  # Each shard's K classes in blocks of 5, forward and backward (the
  # default, ceil(K / 8) classes a block, would scan 8 blocks).
  kernel = state.params
  for name in task.class_kernel_path:
    kernel = kernel[name]
  k = kernel.shape[1] // 8
  assert -(-k // 5) != 8 and _scan_lengths(jaxpr.jaxpr) == {-(-k // 5)}


@pytest.mark.parametrize("bad, match", [(-1, "must be an int >= 0"),
                                        (4, "class-sharded head, which is off")])
def test_chunk_classes_is_checked(bad, match):
  c = make_config("adaface", {})
  c.model.classifier.chunk_classes = bad
  with pytest.raises(ValueError, match=match):
    partial_fc.model_kwargs(c)
  c.model.classifier.shards, c.model.classifier.chunk_classes = -1, 4
  assert partial_fc.model_kwargs(c)["chunk_classes"] == 4
  c.model.classifier.chunk_classes = 0
  assert partial_fc.model_kwargs(c)["chunk_classes"] is None

def test_chunk_classes_may_change_on_resume(tmp_path):
  from train import checkpoints
  (tmp_path / "checkpoints" / "2").mkdir(parents=True)
  sharded = {"model.classifier.shards": -1}
  saved = json.loads(make_config("adaface", sharded).to_json_best_effort())
  del saved["model"]["classifier"]["chunk_classes"]  # a run from before the key
  (tmp_path / "config.json").write_text(json.dumps(saved))
  # The block size changes memory and speed only: a run resumes with another.
  checkpoints.check_config(tmp_path, make_config("adaface", {
      **sharded, "model.classifier.chunk_classes": 64}))
  with pytest.raises(checkpoints.ConfigMismatchError, match="model.classifier.sample_rate"):
    checkpoints.check_config(tmp_path, make_config("adaface", {
        **sharded, "model.classifier.sample_rate": 0.5}))


def _kernel_spec(ckpt_state_dir):
  shardings = json.loads((ckpt_state_dir / "_sharding").read_text())
  for key, value in shardings.items():
    name = base64.b64decode(key).decode()
    if name.endswith("params.head.classifier.kernel"):
      return json.loads(value)
  raise AssertionError(f"no classifier kernel in {ckpt_state_dir}")


def test_sharded_run_saves_shards_and_restores_on_another_device_count(tiny_data, tmp_path):
  wd = tmp_path / "run"
  over = tiny_overrides(tiny_data, 2, **{
      "train.devices": 4, "model.classifier.shards": -1, "model.classifier.sample_rate": 0.1,
      "optim.name": "sgd", "optim.weight_decay": 0.1, "eval.every": 0})
  c = make_config("arcface", over)
  out = loop.train_and_evaluate(c, wd)
  kernel = out["state"].params["head"]["classifier"]["kernel"]
  assert kernel.sharding.spec == P(None, "model") and len(kernel.sharding.device_set) == 4
  shard = (kernel.shape[0], kernel.shape[1] // 4)
  assert {s.data.shape for s in kernel.addressable_shards} == {shard}
  # Saved as shards: the checkpoint records the class split over 'model'.
  spec = _kernel_spec(wd / "checkpoints" / "2" / "state")
  assert spec["partition_spec"] == [None, "model"] and spec["shape"] == [1, 4]
  # Padding columns are never sampled: weight decay did not touch them.
  from train import tasks
  task = tasks.get("arcface")
  init = task.create_state(c, jax.random.key(c.seed)).params["head"]["classifier"]["kernel"]
  n_cls = task.model(c).num_classes
  assert kernel.shape[1] > n_cls
  np.testing.assert_array_equal(np.asarray(kernel)[:, n_cls:], np.asarray(init)[:, n_cls:])
  # Restore onto 2 devices: the same values, split in halves.
  c2 = make_config("arcface", dict(over, **{"train.devices": 2}))
  mesh2 = meshes.build(c2)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          meshes.place_state(task.create_state(c2, jax.random.key(0)), mesh2,
                                             task.class_kernel_path))
  mgr = ocp.CheckpointManager((wd / "checkpoints").absolute())
  restored = mgr.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  k2 = restored["state"].params["head"]["classifier"]["kernel"]
  assert k2.sharding == NamedSharding(mesh2, P(None, "model"))
  np.testing.assert_array_equal(np.asarray(k2), np.asarray(kernel))
  # The SGD momentum of the weight is sharded and restored alike.
  def moments(state):
    return [x for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
            if meshes.is_class_sharded(p, KERNEL)]
  saved, back = moments(out["state"]), moments(restored["state"])
  assert len(saved) == len(back) == 1 and back[0].sharding.spec == P(None, "model")
  np.testing.assert_array_equal(np.asarray(back[0]), np.asarray(saved[0]))
  mgr.close()


def test_ms1m_preset_trains_the_sharded_head_on_recordio(tmp_path):
  fx.write_recordio(tmp_path / "rec", images_per_id=(4,) * 10, first_label=0)
  # The preset validates on the folder's .bin sets every eval.every steps.
  from jaxset.data.export import write_bin
  rng = np.random.default_rng(0)
  faces = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
  write_bin(tmp_path / "rec" / "lfw.bin", faces[0::2], faces[1::2], [i % 2 for i in range(20)])
  wd = tmp_path / "run"
  args = ["python", "-m", "train.main", "--config=configs/adaface.py:ms1m", f"--workdir={wd}",
          f"--config.data.dir={tmp_path / 'rec'}", f"--config.data.cache_dir={tmp_path / 'c'}",
          "--config.data.image_size=(16,16)", "--config.model.backbone=small_cnn",
          "--config.model.embedding_dim=16", "--config.model.dtype=float32",
          "--config.train.steps=2", "--config.train.batch_size=16",
          "--config.train.progress_bar=False", "--config.eval.at_start=False",
          "--config.train.log_every=1", "--config.model.classifier.chunk_classes=3",
          "--config.eval.sets=lfw", "--config.eval.every=2"]
  r = run_main(args, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  losses = [row["loss"] for row in rows if row.get("split") == "train"]
  assert len(losses) == 2 and all(np.isfinite(losses))
  # Validated with the sharded head; the best kept by the .bin accuracy.
  evals = [row for row in rows if row.get("split") == "eval"]
  assert [row["step"] for row in evals] == [2] and 0 <= evals[0]["lfw_acc"] <= 1
  assert json.loads((wd / "best" / "best.json").read_text())["step"] == 2
  # The preset shards the classifier over all 8 devices.
  spec = _kernel_spec(wd / "checkpoints" / "2" / "state")
  assert spec["partition_spec"] == [None, "model"] and spec["shape"] == [1, 8]
