"""Partial FC: a class-sharded margin-softmax classifier over a device mesh.

A face model's classifier W [D, C] (C = 85k identities for MS1MV2, 2M for
WebFace42M) and its optimiser state outgrow one accelerator long before the
backbone does. Partial FC (An et al., "Partial FC: Training 10 Million
Identities on a Single Machine", ICCVW 2021) shards W by class: with a mesh
axis `model` of n devices, device k holds the columns [k*C/n, (k+1)*C/n).

`partial_fc_cross_entropy` computes, inside `jax.shard_map`:

1. the embeddings of the batch rows of the n devices of one model group are
   all-gathered over `model` (b rows each -> n*b rows, [n*b, D]);
2. local cosines cos = normalize(e) @ normalize(W_local), [n*b, C/n],
   never all at once (see "Chunks" below);
3. the margin of a registered head (jaxset.ops.margins.HEADS: margin,
   eqface, adaface, magface; the same spec as their logits functions) on
   the target columns this shard
   owns; every other entry is the plain scaled cosine, as the unsharded head;
4. the softmax cross-entropy with a global row max (pmax over `model`) and
   sum of exponentials (psum over `model`): log sum_j exp(l_j) - l_y, the
   target logit l_y coming from its owner by a psum. Margin and
   cross-entropy are fused (jaxset.ops.margin_ce), so no logit array exists.

Chunks: the gathered batch makes the cosines large: [n*b, C/n] per device
holds as many numbers as data parallel's [b, C], and autodiff keeps them and
their gradient, so sharding alone cut the weight n-fold but not the
temporaries (2.7 GB against data parallel's 8.8 GB per device at C = 1M on 8
devices). margin_ce.matmul_cross_entropy therefore takes the unit rows and
the raw W with its columns' inverse norms (no normalised copy of W) and
works on `chunk_classes` columns at a time: an online softmax in the
forward, and a backward that recomputes each block's cosines, writes that
block's columns of dW and adds its part of the embedding gradient. Only one
[n*b, chunk_classes] block and its gradient exist at a time, for one matmul
more per step; the default ceil(K/n) makes that block the size of [b, K].

The result equals the unsharded head (loss and every gradient; the tests
show float64 agreement to 1e-10 on 1, 2, 4 and 8 devices). Gradients need no
hand-written collectives: under shard_map's varying-axis typing the
transpose of the all-gather is a reduce-scatter (each device gets the
embedding gradient of its own rows summed over the shards) and the gradient
of W, replicated over `data`, is summed over `data`.

Sampling (sample_rate < 1, Partial FC): each shard keeps every class that is
a label somewhere in the GLOBAL batch and fills up to
k = ceil(sample_rate * C/n) classes with uniformly drawn negatives (uniform
keys, positives forced to the top, top-k, sorted: the draw of insightface's
partial_fc_v2). The draw is a function of `rng` and the shard index only, so
the step's rng (the base key folded with the step) draws the same classes on
resume, and every data replica of a shard draws the same ones. insightface
keeps exactly the positives when they outnumber k (a variable size); shapes
here are static, so k is raised to min(C/n, global batch) instead: all
positives always fit, padded with negatives. The loss is then that of the
unsharded head restricted to the sampled classes.

What happens to the classes that were not sampled: their gradient is exactly
zero. With plain SGD that leaves them unchanged, but an optimiser with state
still moves them: SGD momentum keeps applying its decaying buffer, Adam's
update m_hat / (sqrt(v_hat) + eps) is non-zero while m is, and weight decay
shrinks every row. insightface's original Partial FC updated only the
sampled rows (it gathered their momentum, stepped, and scattered it back);
its partial_fc_v2 keeps W as one parameter, so momentum and weight decay
touch every row. The returned `class_mask` [C] (True = sampled) lets the
train step choose: jaxset's default leaves unsampled rows AND their
optimiser moments untouched (train/partial_fc.py), as the original.

Padding: C need not divide by n. W may be wider than `num_classes` (padded to
a multiple of n); padded columns get logit -inf (no probability, zero
gradient) and are never sampled ahead of a real class.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxset.ops import _checks, margin_ce, margins
from jaxset.ops._norms import l2_normalize, safe_norm

__all__ = [
  "CE_CAP_PARTIAL_FC",
  "PartialFCOutput",
  "num_sampled",
  "partial_fc_cross_entropy",
]

# insightface's Partial FC clamps the target probability at 1e-30: each row's
# loss is at most -log(1e-30).
CE_CAP_PARTIAL_FC = -math.log(1e-30)


class PartialFCOutput(NamedTuple):
  """ce [B] per-row loss (0 for rows with label < 0; MagFace's lambda_g g(a)
  included); class_mask [C_pad]
  bool, True for the classes in this step's softmax; stats: AdaFace's new EMA
  {"mean", "std"} (None for the other heads)."""
  ce: Any
  class_mask: Any
  stats: Any


def num_sampled(c_local: int, sample_rate: float, global_batch: int) -> int:
  """Classes kept per shard: ceil(rate * C_local), at least the global batch
  (so every positive fits), at most C_local."""
  if not 0.0 < sample_rate <= 1.0:
    raise ValueError(f"sample_rate must be in (0, 1]; got {sample_rate}.")
  if sample_rate == 1.0:
    return c_local
  k = math.ceil(sample_rate * c_local)
  return min(c_local, max(k, global_batch))


def _sample_classes(key, positive, valid, k):
  """Sorted indices [k] of the kept classes: positives first, then uniform negatives.

  positive, valid: [C_local] bool. Random keys in [0, 1); positives get 2,
  padding columns -1, so top-k takes every positive, then random real classes.
  """
  u = jax.random.uniform(key, positive.shape)
  u = jnp.where(positive, 2.0, jnp.where(valid, u, -1.0))
  _, idx = lax.top_k(u, k)
  return jnp.sort(idx)


def partial_fc_cross_entropy(embeddings: ArrayLike, labels: ArrayLike, weight: ArrayLike, *,
                             mesh, num_classes=None,
                             head: str = "margin", head_kwargs=None, quality=None,
                             norms=None, row=None, stats=None, sample_rate: float = 1.0,
                             rng=None,
                             loss_cap: float | None = None, data_axis: str | None = "data",
                             model_axis: str = "model", dtype=None,
                             chunk_classes: int | None = None) -> PartialFCOutput:
  """Class-sharded margin softmax cross-entropy (Partial FC), per row.

  Args:
    embeddings: [B, D] (unnormalised), B the global batch, sharded over
      (data_axis, model_axis) (any sharding works; jit reshards).
    labels: [B] int in [0, num_classes); < 0 ignores the row (ce 0). Eagerly
      a label >= num_classes raises; under jit such a row is ignored.
    weight: [D, C_pad] class weights, C_pad divisible by the model axis
      size; columns >= num_classes are padding.
    mesh: a jax.sharding.Mesh with `model_axis` (and `data_axis` if not None).
    num_classes: the real classes C (default C_pad).
    head: a registered head (jaxset.ops.margins.HEADS): "margin"
      (margin_logits), "eqface" (eqface_logits, needs `quality` [B]),
      "adaface" (adaface_logits, needs `norms` [B] and `stats`) or "magface"
      (magface_logits, needs `norms` [B], differentiable); head_kwargs: that
      function's keyword arguments (scale, m1, m2, m3, grad, ...; for
      AdaFace m, h, scale, t_alpha, eps), checked as that function does.
    quality, norms: the head's per-row input by its name; or row: the same
      whatever the head (None for "margin").
    sample_rate: in (0, 1]; < 1 samples classes with `rng` (a key).
    loss_cap: None (default, the papers' plain cross-entropy) or a cap on
      each row's loss, e.g. CE_CAP_PARTIAL_FC as insightface (capped rows
      get no gradient).
    dtype: the matmul's input dtype (e.g. bfloat16; default float32 at least);
      it accumulates in float32 at least.
    chunk_classes: the classes of this shard whose cosines (against all n*b
      gathered rows) exist at once, forward and backward
      (margin_ce.matmul_cross_entropy). Default ceil(K / n), K the shard's
      softmax columns (C/n, or the sampled k): a device never holds more
      than [n*b, K/n] cosines, as many as [b, K], 1/n of data parallel's
      [b, C]. Any positive count works; larger is faster, smaller leaner.

  Returns:
    PartialFCOutput(ce [B], class_mask [C_pad], stats). The mean over
    labelled rows is the loss of the unsharded head.

  Degenerate input: rows with label < 0 add nothing (ce 0, zero gradient) but
  AdaFace still counts their norms in the batch statistics, as unsharded.
  An empty batch gives an empty ce, no sampled class and unchanged stats.
  Eagerly, NaN/Inf embeddings, quality or norms raise ValueError.
  """
  spec = margins.head_spec(head)
  if model_axis not in mesh.axis_names:
    raise ValueError(f"mesh has axes {mesh.axis_names}, not model_axis={model_axis!r}: "
                     "build it with a 'model' axis (train.meshes.build) or pass model_axis.")
  if data_axis is not None and data_axis not in mesh.axis_names:
    raise ValueError(f"mesh has axes {mesh.axis_names}, not data_axis={data_axis!r}; "
                     "pass data_axis=None for a mesh with a model axis only.")
  _checks.check_shape("embeddings", embeddings, (None, None), "[batch, dim]")
  _checks.check_float("embeddings", embeddings)
  _checks.check_finite("embeddings", embeddings)
  b, d = embeddings.shape
  _checks.check_shape("weight", weight, (d, None), "[dim, classes] class weights")
  _checks.check_float("weight", weight)
  n_model = mesh.shape[model_axis]
  n_batch = n_model * (mesh.shape[data_axis] if data_axis else 1)
  c_pad = weight.shape[1]
  num_classes = c_pad if num_classes is None else int(num_classes)
  if c_pad % n_model or num_classes > c_pad:
    raise ValueError(
        f"weight has {c_pad} columns for {num_classes} classes over {n_model} shards: "
        f"pad it to a multiple of {n_model} columns, at least num_classes.")
  if b % n_batch:
    raise ValueError(f"the batch of {b} rows does not split over the {n_batch} devices "
                     f"of {(data_axis, model_axis)}: use a multiple of {n_batch}.")
  if row is None:
    row = {"quality": quality, "norms": norms}.get(spec.row_input)
  row = spec.check_inputs(labels, b, num_classes, row, stats)
  spec.resolve(head_kwargs)
  if sample_rate < 1.0 and rng is None:
    raise ValueError("sample_rate < 1 needs rng: pass the step's key so that a resumed "
                     "run draws the same classes.")
  c_local = c_pad // n_model
  if data_axis is not None and mesh.shape[data_axis] == 1:
    # One data replica (the classifier over every device): nothing to reduce
    # over data, and no [D, C/n] all-reduce of W's gradient to allocate.
    data_axis = None
  k = num_sampled(c_local, sample_rate, b)
  chunk = -(-k // n_model) if chunk_classes is None else chunk_classes
  if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
    raise ValueError(f"chunk_classes must be a positive int (classes of cosines at a time) "
                     f"or None; got {chunk_classes!r}.")
  kw = dict(head_kwargs or {})
  if b == 0:
    return PartialFCOutput(jnp.zeros((0,), jnp.result_type(jnp.float32, embeddings.dtype)),
                           jnp.zeros((c_pad,), bool), stats if spec.keeps_stats else None)
  # Under jit a label >= num_classes (not caught eagerly) is an ignored row,
  # never a padding column or another shard's class.
  labels = jnp.where(labels < num_classes, labels, -1)
  batch_axes = (data_axis, model_axis) if data_axis else (model_axis,)
  ct = jnp.result_type(jnp.float32, embeddings.dtype)
  mm = dtype or ct
  row_extra = jnp.zeros((b,), jnp.float32) if row is None else row
  stats_in = stats if spec.keeps_stats else {"none": jnp.zeros((), jnp.float32)}
  key = rng if rng is not None else jax.random.key(0)

  def body(e, lab, extra, w, all_labels, st, key):
    e_g = lax.all_gather(e, model_axis, tiled=True)          # [n*b, D]
    lab_g = lax.all_gather(lab, model_axis, tiled=True)
    extra_g = lax.all_gather(extra, model_axis, tiled=True)
    shard = lax.axis_index(model_axis)
    offset = shard * c_local
    cols = offset + jnp.arange(c_local)
    real = cols < num_classes
    local = lab_g - offset
    owned = (lab_g >= 0) & (local >= 0) & (local < c_local)
    if k < c_local:
      # Positives of the whole global batch (all_labels is replicated), so
      # every data replica of this shard keeps the same classes.
      loc_all = all_labels - offset
      hit = (all_labels >= 0) & (loc_all >= 0) & (loc_all < c_local)
      positive = jnp.zeros((c_local,), bool).at[jnp.where(hit, loc_all, c_local)].set(
          True, mode="drop")
      idx = _sample_classes(jax.random.fold_in(key, shard), positive, real, k)
      w = jnp.take(w, idx, axis=1)
      real = jnp.take(real, idx)
      local = jnp.searchsorted(idx, jnp.clip(local, 0, c_local - 1))
      mask = jnp.zeros((c_local,), bool).at[idx].set(True)
    else:
      mask = jnp.ones((c_local,), bool)
    mask &= cols < num_classes
    target = jnp.where(owned, local, -1)
    # Unit rows; the columns' normalisation as a scale on the products (no
    # normalised copy of the [D, C/n] weight).
    x, col_scale = l2_normalize(e_g).astype(mm), 1.0 / safe_norm(w, 0)
    w = w.astype(mm)
    if data_axis is not None:
      # W is the same on every data replica, the rows are not: typed as
      # varying over data, W's gradient is summed over data (the transpose).
      w, col_scale = lax.pcast((w, col_scale), data_axis, to="varying")
    # The target cosines alone, one column of W per row (no cosine matrix;
    # the margin's value and slope there carry no gradient of their own).
    safe_t = jnp.maximum(target, 0)
    w_t = jnp.take(w, safe_t, axis=1).T.astype(ct)
    c_t = lax.stop_gradient(jnp.sum(x.astype(ct) * w_t, axis=1) * col_scale[safe_t])
    # The margin of margins.py on the owned targets, fused with the softmax
    # cross-entropy (jaxset.ops.margin_ce) one block of classes at a time:
    # no [rows, C/n] cosine or logit array, and the max, sum of exponentials
    # and target logit reduced over the shards.
    terms = margin_ce.target_terms(head, c_t, target, kw, row=extra_g,
                                   stats=st if spec.keeps_stats else None,
                                   axis_name=data_axis)
    ce = margin_ce.matmul_cross_entropy(x, w, col_scale, terms, valid=lab_g >= 0, col_ok=real,
                                        axis_name=model_axis, chunk_classes=chunk)
    new_stats = st if terms.new_stats is None else terms.new_stats
    if loss_cap is not None:
      ce = jnp.minimum(ce, loss_cap)
    if terms.row_loss is not None:
      ce = ce + jnp.where(lab_g >= 0, terms.row_loss, 0.0)
    # Back to this device's own rows: the gathered rows of the model group
    # are the b local rows of each of its n devices, in order.
    ce = lax.dynamic_slice_in_dim(ce, shard * e.shape[0], e.shape[0])
    stats_out = jax.tree.map(lambda x: jnp.reshape(x, (1,)), new_stats)
    return ce, mask, stats_out

  specs_stats = jax.tree.map(lambda _: P(), stats_in)
  fn = jax.shard_map(
      body, mesh=mesh,
      in_specs=(P(batch_axes), P(batch_axes), P(batch_axes), P(None, model_axis), P(),
                specs_stats, P()),
      out_specs=(P(batch_axes), P(model_axis), jax.tree.map(lambda _: P(model_axis),
                                                            stats_in)))
  ce, mask, st = fn(embeddings, labels, row_extra, weight, labels, stats_in, key)
  new_stats = jax.tree.map(lambda x: x[0], st) if spec.keeps_stats else None
  return PartialFCOutput(ce, mask, new_stats)
