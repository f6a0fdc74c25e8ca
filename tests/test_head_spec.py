"""One description per margin head (jaxset.ops.margins.HEADS), consumed by every entry point.

The logits functions, the fused cross-entropy, Partial FC and the Flax heads
all run a head through its spec: the same loss, the same checks, and
AdaFace's statistics from one EMA, kept on an empty batch whichever entry
point runs it.
"""
import inspect
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from jaxset.models import adaface as adaface_models
from jaxset.models import heads as head_models
from jaxset.models.partial_fc import ShardedMarginHead
from jaxset.ops import margin_ce, margins
from jaxset.ops import partial_fc as pfc

ROOT = Path(__file__).resolve().parents[1]
B, C = 6, 5
KW = {"margin": {"scale": 8.0, "m2": 0.5}, "eqface": {"scale": 8.0},
      "adaface": {"scale": 8.0}, "magface": {"scale": 8.0}}


def _inputs():
  r = np.random.default_rng(0)
  cos = jnp.asarray(r.uniform(-0.8, 0.8, (B, C)), jnp.float32)
  labels = jnp.asarray(r.integers(0, C, B)).at[1].set(-1)
  row = {"quality": jnp.asarray(r.uniform(0.2, 1.0, B), jnp.float32),
         "norms": jnp.asarray(r.uniform(5.0, 60.0, B), jnp.float32)}
  return cos, labels, row


def test_every_registered_head_has_every_entry_point():
  assert set(margins.HEADS) == set(KW)
  for name, spec in margins.HEADS.items():
    assert spec.name == name and set(KW[name]) <= set(spec.defaults)


@pytest.mark.parametrize("head", sorted(KW))
def test_named_functions_state_the_spec_defaults(head):
  # The named functions pass their keywords on by the spec's names
  # (HeadSpec.keywords): their signatures must hold exactly those, with the
  # spec's defaults (a required one has none).
  spec = margins.HEADS[head]
  for fn in (getattr(margins, f"{head}_logits"), getattr(margin_ce, f"{head}_cross_entropy")):
    params = inspect.signature(fn).parameters
    keyword = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY
               and k != "axis_name"}
    want = {k: (inspect.Parameter.empty if v is margins._REQUIRED else v)
            for k, v in spec.defaults.items()}
    assert keyword == want, fn.__name__


@pytest.mark.parametrize("head", sorted(KW))
def test_logits_and_fused_entry_points_agree(head):
  cos, labels, rows = _inputs()
  spec = margins.head_spec(head)
  row = rows.get(spec.row_input)
  stats = margins.adaface_init_stats() if spec.keeps_stats else None
  logits, new, row_loss = margins.head_logits(head, cos, labels, row=row, stats=stats,
                                              **KW[head])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  if row_loss is not None:
    ce = ce + row_loss
  ce = jnp.where(labels >= 0, ce, 0.0)
  fused, new_fused = margin_ce.head_cross_entropy(head, cos, labels, row=row, stats=stats,
                                                  **KW[head])
  np.testing.assert_allclose(fused, ce, rtol=2e-5, atol=1e-6)
  assert (new is None) == (new_fused is None) == (not spec.keeps_stats)
  if new is not None:
    for k in new:
      np.testing.assert_allclose(new[k], new_fused[k], rtol=1e-6)


def _empty(n_cols=C):
  return (jnp.zeros((0, n_cols), jnp.float32), jnp.zeros((0,), jnp.int32),
          jnp.zeros((0,), jnp.float32))


def _same_stats(new, old):
  assert {k: float(v) for k, v in new.items()} == {k: float(v) for k, v in old.items()}


def test_adaface_empty_batch_keeps_the_ema_through_every_entry_point():
  old = {"mean": jnp.float32(20.0), "std": jnp.float32(100.0)}
  cos, labels, norms = _empty()
  _same_stats(margins.adaface_logits(cos, norms, labels, old)[1], old)
  _same_stats(margins.adaface_update_stats(norms, old)[1], old)
  _same_stats(margin_ce.adaface_cross_entropy(cos, norms, labels, old)[1], old)
  _same_stats(margins.head_logits("adaface", cos, labels, row=norms, stats=old)[1], old)
  _same_stats(jax.jit(lambda c, n, y: margin_ce.adaface_cross_entropy(c, n, y, old))(
      cos, norms, labels)[1], old)
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
  out = pfc.partial_fc_cross_entropy(jnp.zeros((0, 3)), labels, jnp.ones((3, 128)), mesh=mesh,
                                     num_classes=C, head="adaface", head_kwargs={}, norms=norms,
                                     stats=old)
  _same_stats(out.stats, old)
  # The Flax heads, training on an empty batch.
  for module, args in ((adaface_models.AdaFaceHead(C), (jnp.zeros((0, 3)), norms, labels)),
                       (head_models.SpecHead(C, "adaface"), (jnp.zeros((0, 3)), labels,
                                                             norms))):
    variables = module.init(jax.random.key(0), *args)
    _, upd = module.apply(variables, *args, train=True, mutable=[head_models.STATS_COLLECTION])
    _same_stats(upd[head_models.STATS_COLLECTION], old)
  sharded = ShardedMarginHead(C, mesh, "adaface")
  variables = sharded.init(jax.random.key(0), jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32),
                           jnp.ones(2))
  _, upd = sharded.apply(variables, jnp.zeros((0, 3)), labels, norms, train=True,
                         mutable=[head_models.STATS_COLLECTION])
  _same_stats(upd[head_models.STATS_COLLECTION], old)


def test_the_adaface_ema_is_written_once():
  """The update `t_alpha * batch + (1 - t_alpha) * old` appears in one library
  function (margins._ema); gradcheck's reference is the independent copy."""
  pattern = re.compile(r"t_alpha\s*\*\s*\w+\s*\+\s*\(1(\.0)?\s*-\s*t_alpha\)")
  hits = []
  for folder in ("jaxset", "train", "benchmarks"):
    for path in (ROOT / folder).rglob("*.py"):
      if path.parts[-2:] == ("gradcheck", "margins.py"):
        continue
      for i, line in enumerate(path.read_text().splitlines()):
        if pattern.search(line) and not line.lstrip().startswith(("#", "mean <-")):
          hits.append(f"{path.relative_to(ROOT)}:{i + 1}")
  assert len(hits) == 2 and all("jaxset/ops/margins.py" in h for h in hits), hits


def test_no_head_is_dispatched_by_name_outside_the_registry():
  pattern = re.compile(r"""head\s*(==|!=|in)\s*[("']""")
  bad = []
  for folder in ("jaxset", "train"):
    for path in (ROOT / folder).rglob("*.py"):
      for i, line in enumerate(path.read_text().splitlines()):
        if pattern.search(line):
          bad.append(f"{path.relative_to(ROOT)}:{i + 1}: {line.strip()}")
  assert not bad, bad
