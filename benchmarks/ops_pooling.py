"""Forward+backward timings of QAN pooling and the set/pair losses.

`rows()` returns one dict per measurement (op, variant, shape, ms, peak_mb);
benchmarks/ops.py assembles the table from every ops module. Run
`python -m benchmarks.ops_pooling` to print this module's part.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import format_rows, peak_bytes, time_fn
from jaxset.gradcheck import casn as casn_ref
from jaxset.gradcheck import qan as qan_ref
from jaxset.ops import losses, pooling

COLUMNS = ("op", "variant", "shape", "ms", "peak_mb")


def _row(op, variant, shape, fn, *args):
  return {"op": op, "variant": variant, "shape": shape,
          "ms": round(time_fn(fn, *args), 3),
          "peak_mb": round(peak_bytes(fn, *args) / 2 ** 20, 2)}


def _grad_of_sum(f, argnums):
  return jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=argnums)


def rows(sets: int = 64, frames: int = 16, dim: int = 512) -> list[dict]:
  rng = np.random.default_rng(0)
  out = []
  shape = f"{sets}x{frames}x{dim}"
  x = jnp.asarray(rng.standard_normal((sets, frames, dim)), jnp.float32)
  q = jnp.asarray(rng.uniform(0.1, 1, (sets, frames)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=(sets, frames)) < 0.8)
  for dtype in (jnp.float32, jnp.bfloat16):
    xd, qd = x.astype(dtype), q.astype(dtype)
    name = jnp.dtype(dtype).name
    out.append(_row("quality_pool", f"custom_vjp {name}", shape,
                    _grad_of_sum(pooling.quality_pool, (0, 1)), xd, qd, mask))
    out.append(_row("quality_pool", f"plain autodiff {name}", shape,
                    _grad_of_sum(qan_ref.reference_quality_pool, (0, 1)), xd, qd, mask))
  ids = jnp.repeat(jnp.arange(sets), frames)
  out.append(_row("segment_quality_pool", "custom_vjp float32", f"{sets * frames}x{dim}",
                  _grad_of_sum(lambda x, q: pooling.segment_quality_pool(x, q, ids, sets),
                               (0, 1)),
                  x.reshape(-1, dim), q.reshape(-1)))
  for name, fn in (("mean_pool", pooling.mean_pool), ("max_pool", pooling.max_pool),
                   ("gem_pool", pooling.gem_pool)):
    out.append(_row(name, "autodiff float32", shape, _grad_of_sum(fn, 0), jnp.abs(x), mask))

  a, p, n = (jnp.asarray(rng.standard_normal((sets, dim)), jnp.float32) for _ in range(3))
  out.append(_row("set_triplet_loss", "custom_vjp", f"{sets}x{dim}",
                  _grad_of_sum(losses.set_triplet_loss, (0, 1, 2)), a, p, n))
  out.append(_row("set_triplet_loss", "plain autodiff", f"{sets}x{dim}",
                  _grad_of_sum(qan_ref.reference_set_triplet, (0, 1, 2)), a, p, n))

  b, npos, nneg, d = 16, 10, 10, 4096  # NetVLAD: 10 positives, 10 hard negatives, 4096-D
  qv = jnp.asarray(rng.standard_normal((b, d)), jnp.float32)
  pv = jnp.asarray(rng.standard_normal((b, npos, d)), jnp.float32)
  nv = jnp.asarray(rng.standard_normal((b, nneg, d)), jnp.float32)
  pm, nm = jnp.ones((b, npos), bool), jnp.ones((b, nneg), bool)
  rshape = f"{b}x({npos}+{nneg})x{d}"
  out.append(_row("weakly_supervised_ranking_loss", "custom_vjp", rshape,
                  _grad_of_sum(lambda *a: losses.weakly_supervised_ranking_loss(
                      *a, pm, nm, margin=1e4), (0, 1, 2)), qv, pv, nv))
  out.append(_row("weakly_supervised_ranking_loss", "plain autodiff", rshape,
                  _grad_of_sum(lambda *a: qan_ref.reference_ranking(
                      *a, pm, nm, margin=1e4), (0, 1, 2)), qv, pv, nv))

  z = jnp.asarray(rng.standard_normal(4096), jnp.float32)
  y = jnp.asarray(rng.uniform(size=4096) < 0.5)
  out.append(_row("verification_bce", "custom_vjp", "4096",
                  _grad_of_sum(losses.verification_bce, 0), z, y))
  maps = [jnp.abs(jnp.asarray(rng.standard_normal((sets, 24, 8)), jnp.float32))
          for _ in range(2)]
  same = jnp.ones(sets)
  for variant, fn in (("custom_vjp", losses.attention_consistency_loss),
                      ("plain autodiff", casn_ref.reference_attention_consistency)):
    out.append(_row("attention_consistency_loss", variant, f"{sets}x24x8->96",
                    _grad_of_sum(lambda a, b: fn(a, b, same, threshold=0.5, size=96), (0, 1)),
                    *maps))
  return out


if __name__ == "__main__":
  print(f"{jax.devices()[0].platform}: forward+backward, jit, median of 10")
  print(format_rows(rows(), COLUMNS))
