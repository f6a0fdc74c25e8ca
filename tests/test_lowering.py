"""Every config's train and evaluation steps lower for GPU (cuda) and TPU.

jax.export lowers a jitted function for platforms other than the host's, so
this CPU machine checks what would otherwise be found only on an accelerator:
an op without a GPU or TPU lowering, or a host callback inside a step (a
callback makes every step wait for Python; jax cannot lower one for several
platforms at once, and it shows in the module as a custom call).

Nothing heavy runs: the state is abstract (jax.eval_shape of the task's
create_state, placed on the run's mesh as shardings only); the train step is
the loop's own (loop.jit_train_step) and its batch one real batch of the
stage's pipeline on the tiny embedded data; the evaluation steps are the
functions each task's evaluate hands to train/tasks/common.extract, exported
in place of running (they return zeros of their output shapes, so evaluate
runs through on abstract state).
"""
from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from jax import export
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.train_helpers import make_config, tiny_overrides
from train import loop, meshes, tasks
from train.tasks import common

PLATFORMS = ("cuda", "tpu")
# Partial FC on a ('data', 'model') = (2, 4) mesh of the 8 test devices.
SHARDED = {"model.classifier.shards": 4}
REALISTIC_FACE = {"model.backbone": "iresnet50", "data.image_size": (112, 112),
                  "model.embedding_dim": 512, "train.precision": "bfloat16"}

# (config file, overrides): every config's default, the modes that build other
# steps (NetVLAD's P x K training, the later aggregators), the sharded heads,
# and the papers' backbones in bfloat16 at their input sizes.
CASES = {
    "adaface": ("adaface", {}),
    "arcface": ("arcface", {}),
    "eqface": ("eqface", {}),
    "qan": ("qan", {}),
    "casn": ("casn", {}),
    "netvlad": ("netvlad", {}),
    "netvlad_pk_boq": ("netvlad", {"train.mode": "pk", "pk.places": 8,
                                    "model.pooling": "boq"}),
    "netvlad_salad": ("netvlad", {"model.pooling": "salad"}),
    "netvlad_mixvpr_gem": ("netvlad", {"model.pooling": "mixvpr"}),
    "adaface_partial_fc": ("adaface", {**SHARDED, "model.classifier.sample_rate": 0.5}),
    "arcface_partial_fc": ("arcface", SHARDED),
    "eqface_partial_fc": ("eqface", SHARDED),
    "adaface_iresnet50_bf16": ("adaface", {**REALISTIC_FACE, **SHARDED}),
    "casn_resnet50_bf16": ("casn", {"model.backbone": "resnet50", "data.image_size": (64, 32),
                                    "model.num_parts": 1, "train.precision": "bfloat16"}),
    "qan_resnet50_bf16": ("qan", {"model.backbone": "resnet50", "model.num_parts": 2,
                                  "data.image_size": (256, 128),
                                  "qan.softmax_weight": 1.0, "train.precision": "bfloat16"}),
    "netvlad_vgg16_bf16": ("netvlad", {"model.backbone": "vgg16", "model.assignment": "official",
                                       "kmeans.bn_calibration_batches": 0,
                                       "train.precision": "bfloat16"}),
}

# A host callback lowers to a custom call whose target names it
# (xla_python_cpu_callback, xla_ffi_python_gpu_callback, ...).
_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call @([\w.]+)")


def host_callbacks(module_text: str) -> list[str]:
  """The custom-call targets of a lowered module that call back into Python."""
  return sorted({t for t in _CUSTOM_CALL.findall(module_text) if "callback" in t})


def lower(fn, *args) -> export.Exported:
  """`fn` (jitted) exported for PLATFORMS at the abstract `args`; fails on a callback."""
  exp = export.export(fn, platforms=PLATFORMS)(*args)
  assert exp.platforms == PLATFORMS
  found = host_callbacks(exp.mlir_module())
  assert not found, f"host callbacks inside a step: {found}"
  return exp


def _spec(x, sharding=None):
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding or x.sharding)


def abstract_state(task, config, mesh):
  """The task's TrainState as shapes with the loop's placement on `mesh`
  (meshes.place_state: the class-sharded kernel split over 'model', the
  rest replicated), computed without running create_state."""
  shapes = jax.eval_shape(lambda key: task.create_state(config, key), jax.random.key(0))
  replicated = NamedSharding(mesh, P())

  def place(path, x):
    split = ("model" in mesh.axis_names and meshes.is_class_sharded(path, task.class_kernel_path)
             and len(x.shape) == 2 and x.shape[1] % mesh.shape["model"] == 0)
    return _spec(x, NamedSharding(mesh, P(None, "model")) if split else replicated)
  return jax.tree_util.tree_map_with_path(place, shapes)


@pytest.fixture
def exported_eval_steps(monkeypatch):
  """Makes common.extract export each evaluation function instead of running it."""
  done = {}

  def jit_cache(fn):
    jitted = jax.jit(fn)  # as common._jit_cache

    def run(state, batch):
      if fn not in done:
        done[fn] = lower(jitted, jax.tree.map(_spec, state), jax.tree.map(_spec, batch))
      return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                          jax.tree.unflatten(done[fn].out_tree, done[fn].out_avals))
    return run

  monkeypatch.setattr(common, "_jit_cache", jit_cache)
  return done


@pytest.mark.parametrize("case", list(CASES))
def test_every_step_lowers_for_gpu_and_tpu(case, tiny_data, exported_eval_steps):
  method, extra = CASES[case]
  config = make_config(method, tiny_overrides(tiny_data, 4, **extra))
  task = tasks.get(method)
  mesh = meshes.build(config)
  state = abstract_state(task, config, mesh)
  stages = task.stages(config)
  # What a refresh would fill in (NetVLAD's hard-negative cache), empty.
  task.restore_extra(task.checkpoint_extra())
  lowered = {}
  for stage in stages:
    batch = jax.tree.map(_spec, meshes.shard_batch(next(stage.make_iterator()), mesh))
    exp = lower(loop.jit_train_step(stage), state, batch)
    assert exp.nr_devices == mesh.devices.size
    # The step returns the state it was given, with the same placement.
    out_state = jax.tree.unflatten(exp.out_tree, exp.out_avals)[0]
    assert jax.tree.map(lambda a: (a.shape, a.dtype), out_state) == jax.tree.map(
        lambda a: (a.shape, a.dtype), state)
    lowered[stage.name] = exp
  assert len(lowered) == len(stages) >= 1
  if "model" in mesh.axis_names:
    # The class-sharded weight reaches the step split over 'model'.
    kernel = state.params
    for k in task.class_kernel_path:
      kernel = kernel[k]
    assert kernel.sharding.spec == P(None, "model") and mesh.shape["model"] == 4
    # ... and so does the lowered step (Shardy's annotation of the argument).
    text = lowered[stages[0].name].mlir_module()
    assert '"model"=4' in text and '[{}, {"model"}]' in text
  if config.train.precision == "bfloat16":
    assert "bf16" in lowered[stages[-1].name].mlir_module()
  replicated = NamedSharding(meshes.make_mesh(), P())
  everywhere = jax.tree.map(lambda x: _spec(x, replicated), state)
  assert isinstance(task.evaluate(everywhere, config), dict)
  assert len(exported_eval_steps) >= 1


def test_a_host_callback_inside_a_step_is_caught():
  """The check fails where it should: a step with a host callback does not pass."""
  def step(x):
    y = jax.pure_callback(lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    return y + 1

  x = jax.ShapeDtypeStruct((3,), np.float32)
  with pytest.raises(NotImplementedError, match="callback"):
    lower(jax.jit(step), x)
  # Lowered for the host alone (jit, not export, which refuses it), the module names it.
  assert host_callbacks(jax.jit(step).trace(x).lower().as_text())
  assert host_callbacks(jax.jit(lambda a: a + 1).trace(x).lower().as_text()) == []
