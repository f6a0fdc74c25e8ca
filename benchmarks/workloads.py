"""Workloads the benchmark scripts share: the device's peak, XLA's FLOP count, each
config's train step at device shapes, the margin heads' losses and the Partial FC
classifier steps. Library code: the scripts (device, input, train, ops_margins,
partial_fc) import it, never each other."""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxset.ops import margin_ce, margins
from jaxset.ops import partial_fc as pfc
from jaxset.ops._norms import l2_normalize

# The reference every margin head is timed against: the bare s * cos logits.
BASELINE = ("baseline", "s*cos (bare matmul)")

# Peak dense bfloat16 FLOP/s by jax's device_kind (substring match, first wins).
# NVIDIA's datasheets (without sparsity) and Google's Cloud TPU pages.
PEAK_BF16 = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
    ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12),
    ("TPU v6 lite", 918e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v4", 275e12),
)


# Full and --quick sizes of every row.
FULL = dict(
    adaface=dict(backbone="iresnet50", image=(112, 112), batch=512, classes=85_742),
    netvlad=dict(backbone="vgg16", image=(480, 640), batch=4, positives=10, negatives=10),
    casn=dict(backbone="resnet50", image=(256, 128), batch=64, k=4, classes=751),
    partial_fc=dict(classes=(1_000_000, 10_000_000), sampled=(10_000_000,), batch=512,
                    dim=512),
    margins=dict(batch=1024, dim=512, classes=1_000_000),
    search=dict(queries=10_000, database=1_000_000, dim=512, k=100),
)


QUICK = dict(
    adaface=dict(backbone="small_cnn", image=(64, 32), batch=16, classes=100),
    netvlad=dict(backbone="small_cnn", image=(64, 64), batch=2, positives=2, negatives=2),
    casn=dict(backbone="small_cnn", image=(64, 32), batch=16, k=4, classes=20),
    partial_fc=dict(classes=(10_000,), sampled=(10_000,), batch=32, dim=64),
    margins=dict(batch=64, dim=64, classes=10_000),
    search=dict(queries=256, database=4096, dim=64, k=10),
)


def device_peak(device) -> tuple[float, str]:
  """(peak FLOP/s, where it comes from) for `device`."""
  if device.platform == "cpu":
    return cpu_matmul_peak(), "measured float32 matmul on this CPU"
  for name, flops in PEAK_BF16:
    if name.lower() in device.device_kind.lower():
      return flops, f"datasheet dense bf16 ({name})"
  return float("nan"), f"unknown device kind {device.device_kind!r}: add it to PEAK_BF16"


def cpu_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """This CPU's float32 matmul FLOP/s: the best of `repeats` n x n x n products."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(a, a))
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def step_flops(compiled) -> float:
  """XLA's cost analysis of a compiled step: its floating-point operations (nan if none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def compiled_bytes(compiled) -> float:
  """Arguments + temporaries + outputs (minus donated aliases) of a compiled step."""
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  return float(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
               - m.alias_size_in_bytes)


class SyntheticRecords:
  """A stand-in data source: `n` records with place coordinates (NetVLAD's
  stages read the metadata of its training splits), tiny images."""

  def __init__(self, n: int, seed: int):
    self.utm = np.random.default_rng(seed).uniform(0, 300, (n, 2))

  def __len__(self):
    return len(self.utm)

  def __getitem__(self, i):
    return {"utm": self.utm[i], "image": np.zeros((8, 8, 3), np.uint8)}


def no_data(classes: int):
  """The tasks build their steps without reading any dataset: the class count
  is given, and NetVLAD's training splits are stand-ins (this process only)."""
  from train.tasks import common, identities
  sources = {"train_database": SyntheticRecords(400, 0), "train_queries": SyntheticRecords(100, 1)}
  identities.num_classes = lambda config: classes
  common.source = lambda config, split: sources[split]


def config_step(method: str, size: dict, device, abstract: bool = False):
  """(jitted train step, state, batch, samples per step) of configs/<method>.py
  at `size`, in bfloat16, on `device`, with a synthetic batch; `abstract`:
  state and batch as shapes only (nothing initialised or placed)."""
  import importlib

  from train import loop, tasks
  no_data(size.get("classes", 1))
  config = importlib.import_module(f"configs.{method}").get_config()
  config.train.precision = "bfloat16"
  config.model.backbone = size["backbone"]
  config.data.image_size = tuple(size["image"])
  config.train.batch_size = size["batch"]
  rng = np.random.default_rng(0)
  h, w = size["image"]
  b = size["batch"]
  images = lambda *shape: rng.integers(0, 256, shape + (h, w, 3), dtype=np.uint8)
  if method == "adaface":
    config.model.embedding_dim = 512 if size["backbone"] != "small_cnn" else 128
    batch = {"image": images(b), "label": rng.integers(0, size["classes"], b).astype(np.int32)}
  elif method == "casn":
    config.data.k = size["k"]
    config.model.num_parts = 1
    config.model.feature_dim = 512 if size["backbone"] != "small_cnn" else 128
    labels = np.repeat(np.arange(b // size["k"]), size["k"]) % size["classes"]
    batch = {"image": images(b), "label": labels.astype(np.int32)}
  elif method == "netvlad":
    p, m = size["positives"], size["negatives"]
    config.tuples.num_positives, config.tuples.num_negatives = p, m
    config.model.assignment = "official"
    batch = {"query": images(b), "positives": images(b, p), "negatives": images(b, m),
             "pos_mask": np.ones((b, p), bool), "neg_mask": np.ones((b, m), bool)}
  else:
    raise ValueError(f"no device benchmark for {method!r}")
  task = tasks.get(method)
  stage = list(task.stages(config))[-1]  # CASN: the full objective, not its warmup
  if abstract:
    state = jax.eval_shape(lambda k: task.create_state(config, k), jax.random.key(0))
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  else:
    state = jax.device_put(task.create_state(config, jax.random.key(0)), device)
    batch = jax.device_put(jax.tree.map(jnp.asarray, batch), device)
  return loop.jit_train_step(stage), state, batch, b


def flops_per_sample(method: str, size: dict | None = None) -> float:
  """XLA's floating-point operations of one sample of a config's train step at
  the device benchmark's shapes (FULL), from the lowered step (no compile, no
  device): the throughput a device of known peak reaches at a utilisation."""
  step, state, batch, samples = config_step(method, size or FULL[method], None, abstract=True)
  cost = step.lower(state, batch).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan"))) / samples



def normalise(x, axis):
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + 1e-12)


def cosines(emb, weights):
  return normalise(emb, 1) @ normalise(weights, 0)


def plain_arcface(cos, labels, m2=0.5):
  """The usual autodiff ArcFace: phi over the whole matrix, one-hot select."""
  sin = jnp.sqrt(jnp.clip(1.0 - cos * cos, 0.0, 1.0))
  phi = cos * math.cos(m2) - sin * math.sin(m2)
  phi = jnp.where(cos > math.cos(math.pi - m2), phi, cos - m2 * math.sin(m2))
  one_hot = jax.nn.one_hot(labels, cos.shape[1], dtype=bool)
  return SCALE * jnp.where(one_hot, phi, cos)


def fused_heads(labels, quality, norms):
  """Per-row losses of the fused heads (cross-entropy included)."""
  stats = margins.adaface_init_stats()
  return {
      ("margin_cross_entropy", "exact arcface, fused"):
          lambda c: margin_ce.margin_cross_entropy(c, labels, scale=SCALE, m2=0.5),
      ("margin_cross_entropy", "straight_through, fused"):
          lambda c: margin_ce.margin_cross_entropy(c, labels, scale=SCALE, m2=0.5,
                                                   grad="straight_through"),
      ("eqface_cross_entropy", "paper, fused"):
          lambda c: margin_ce.eqface_cross_entropy(c, labels, quality, scale=SCALE),
      ("adaface_cross_entropy", "official, fused"):
          lambda c: margin_ce.adaface_cross_entropy(c, norms, labels, stats)[0],
  }


def unfused_heads(labels, quality, norms):
  """Logits of the reference and of margins.py's heads (optax adds the loss)."""
  stats = margins.adaface_init_stats()
  return {
      BASELINE: lambda c: SCALE * c,
      ("margin_logits", "exact arcface"):
          lambda c: margins.margin_logits(c, labels, scale=SCALE, m2=0.5),
      ("margin_logits", "straight_through"):
          lambda c: margins.margin_logits(c, labels, scale=SCALE, m2=0.5,
                                          grad="straight_through"),
      ("margin_logits", "plain autodiff"): lambda c: plain_arcface(c, labels),
      ("eqface_logits", "paper"):
          lambda c: margins.eqface_logits(c, labels, quality, scale=SCALE),
      ("adaface_logits", "official"):
          lambda c: margins.adaface_logits(c, norms, labels, stats)[0],
  }


def margin_losses(labels, quality, norms):
  """{(op, variant): mean loss of the cosines}, cross-entropy included."""
  losses = {}
  for key, head in unfused_heads(labels, quality, norms).items():
    def loss(cos, head=head):
      return optax.softmax_cross_entropy_with_integer_labels(head(cos), labels).mean()
    losses[key] = loss
  for key, head in fused_heads(labels, quality, norms).items():
    losses[key] = lambda cos, head=head: head(cos).mean()
  return losses



SCALE, M2, LR, MOMENTUM = 64.0, 0.5, 0.1, 0.9


MARGIN = {"scale": SCALE, "m2": M2}


def data_parallel_classifier_step(mesh):
  n = mesh.devices.size

  def local(w, mom, e, labels):
    # Each device: its rows against the whole W; the W gradient is summed
    # over 'data' (shard_map's transpose of the replicated W), as DDP does.
    def loss(e, w):
      cos = jnp.dot(l2_normalize(e), l2_normalize(w, 0))
      logits = margins.margin_logits(cos, labels, **MARGIN)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return jax.lax.psum(ce.sum(), "data") / (n * e.shape[0])
    lval, (ge, gw) = jax.value_and_grad(loss, (0, 1))(e, w)
    mom = MOMENTUM * mom + gw
    return w - LR * mom, mom, ge, lval

  body = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
                       out_specs=(P(), P(), P("data"), P()))

  def step(w, mom, e, labels, key):
    del key
    return body(w, mom, e, labels)

  rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  return step, (rep, rep, rows, rows, rep), (rep, rep, rows, rep)


def sharded_classifier_step(mesh, sample_rate):
  def step(w, mom, e, labels, key):
    def loss(e, w):
      out = pfc.partial_fc_cross_entropy(e, labels, w, mesh=mesh, head_kwargs=MARGIN,
                                         sample_rate=sample_rate, rng=key)
      return out.ce.mean(), out.class_mask
    (lval, mask), (ge, gw) = jax.value_and_grad(loss, (0, 1), has_aux=True)(e, w)
    new_mom = MOMENTUM * mom + gw
    new_w = w - LR * new_mom
    if sample_rate < 1.0:
      # Unsampled classes keep their weight and momentum (train/partial_fc.py).
      new_mom = jnp.where(mask[None, :], new_mom, mom)
      new_w = jnp.where(mask[None, :], new_w, w)
    return new_w, new_mom, ge, lval

  cols = NamedSharding(mesh, P(None, "model"))
  rows, rep = NamedSharding(mesh, P(("data", "model"))), NamedSharding(mesh, P())
  return step, (cols, cols, rows, rows, rep), (cols, cols, rows, rep)
