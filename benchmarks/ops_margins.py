"""Margin heads: forward + backward cost next to the bare cosine matmul.

Each row times jit(grad) of mean softmax cross-entropy over the logits of one
head, INCLUDING the cosine matmul: embeddings [B, D] and class weights [D, C]
are L2-normalised, multiplied, turned into logits by the head, and the
gradient is taken w.r.t. both (as in training). The baseline is s * cos + CE.
The fused rows (jaxset.ops.margin_ce) compute head and cross-entropy in one
op without a [B, C] logit array. The target: each head within 1.1x of the
baseline.

    python -m benchmarks.ops_margins [--batch 256 --dim 512 --classes 50000]
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import format_rows, int_flags, peak_bytes, time_fn
from jaxset.ops import margin_ce, margins

SCALE = 64.0


def _normalise(x, axis):
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + 1e-12)


def _cosines(emb, weights):
  return _normalise(emb, 1) @ _normalise(weights, 0)


def _plain_arcface(cos, labels, m2=0.5):
  """The usual autodiff ArcFace: phi over the whole matrix, one-hot select."""
  sin = jnp.sqrt(jnp.clip(1.0 - cos * cos, 0.0, 1.0))
  phi = cos * math.cos(m2) - sin * math.sin(m2)
  phi = jnp.where(cos > math.cos(math.pi - m2), phi, cos - m2 * math.sin(m2))
  one_hot = jax.nn.one_hot(labels, cos.shape[1], dtype=bool)
  return SCALE * jnp.where(one_hot, phi, cos)


def _fused(labels, quality, norms):
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


def _heads(labels, quality, norms):
  stats = margins.adaface_init_stats()
  return {
      ("baseline", "s*cos (bare matmul)"): lambda c: SCALE * c,
      ("margin_logits", "exact arcface"):
          lambda c: margins.margin_logits(c, labels, scale=SCALE, m2=0.5),
      ("margin_logits", "straight_through"):
          lambda c: margins.margin_logits(c, labels, scale=SCALE, m2=0.5,
                                          grad="straight_through"),
      ("margin_logits", "plain autodiff"): lambda c: _plain_arcface(c, labels),
      ("eqface_logits", "paper"):
          lambda c: margins.eqface_logits(c, labels, quality, scale=SCALE),
      ("adaface_logits", "official"):
          lambda c: margins.adaface_logits(c, norms, labels, stats)[0],
  }


def rows(batch: int = 256, dim: int = 512, classes: int = 50_000, repeats: int = 3,
         rounds: int = 3):
  """One dict per head: op, variant, shape, ms, peak_mb, ratio (to baseline).

  The heads are timed in `rounds` interleaved rounds (each a median of
  `repeats` runs) and the fastest round is kept, so that load from other
  processes on a shared machine hits every head alike.
  """
  rng = np.random.default_rng(0)
  emb = jnp.asarray(rng.standard_normal((batch, dim)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((dim, classes)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, classes, batch), jnp.int32)
  quality = jnp.asarray(rng.uniform(0.2, 1.0, batch), jnp.float32)
  norms = jnp.linalg.norm(emb, axis=1)
  steps = {}
  for key, head in _heads(labels, quality, norms).items():
    def loss(e, w, head=head):
      logits = head(_cosines(e, w))
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    steps[key] = jax.jit(jax.grad(loss, argnums=(0, 1)))
  for key, head in _fused(labels, quality, norms).items():
    def loss(e, w, head=head):
      return head(_cosines(e, w)).mean()
    steps[key] = jax.jit(jax.grad(loss, argnums=(0, 1)))
  best = {key: float("inf") for key in steps}
  for _ in range(rounds):
    for key, step in steps.items():
      best[key] = min(best[key], time_fn(step, emb, weights, repeats=repeats, warmup=1))
  base_ms = best[("baseline", "s*cos (bare matmul)")]
  out = []
  for (op, variant), step in steps.items():
    out.append({"op": op, "variant": variant, "shape": f"B{batch} D{dim} C{classes}",
                "ms": round(best[(op, variant)], 1),
                "peak_mb": round(peak_bytes(step, emb, weights) / 2**20, 1),
                "ratio": round(best[(op, variant)] / base_ms, 3)})
  return out


def main():
  a = int_flags(__doc__, batch=256, dim=512, classes=50_000, repeats=3, rounds=3).parse_args()
  r = rows(a.batch, a.dim, a.classes, a.repeats, a.rounds)
  print(f"devices: {jax.devices()}")
  print(format_rows(r, ["op", "variant", "shape", "ms", "peak_mb", "ratio"]))


if __name__ == "__main__":
  main()
