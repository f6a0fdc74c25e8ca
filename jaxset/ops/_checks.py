"""Input validation shared by every op.

Shape errors are static and always raised, naming the argument. Value errors
(NaN, labels out of range, empty sets) can only be seen when the values are
concrete: called eagerly, an op raises; under jit/vmap/pmap the op returns the
documented finite result instead, and the training loop's NaN guard catches
anything that still slips through.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def compute_dtype(*xs):
  """The dtype an op computes in: float32, or wider when an input is (None skipped).

  Each input counts with its own dtype (a weakly typed one too), so float64
  inputs (under jax_enable_x64) compute in float64, bfloat16 ones in float32.
  """
  return jnp.result_type(jnp.float32, *(jnp.result_type(x) for x in xs if x is not None))


def is_concrete(*xs) -> bool:
  """True when every x holds values we can read (not a tracer)."""
  return not any(isinstance(x, jax.core.Tracer) for x in xs)


def check_rank(name: str, x, min_rank: int, what: str) -> None:
  """Raises if `x` has fewer than `min_rank` dims; `what` describes the layout."""
  if jnp.ndim(x) < min_rank:
    raise ValueError(
        f"{name} must have at least {min_rank} dims ({what}); got shape "
        f"{tuple(jnp.shape(x))}.")


def check_same(names: Sequence[str], sizes: Sequence[int], what: str) -> None:
  """Raises if the given sizes differ; the message names every argument."""
  if len(set(int(s) for s in sizes)) > 1:
    pairs = ", ".join(f"{n}={s}" for n, s in zip(names, sizes))
    raise ValueError(f"{what} must agree: {pairs}.")


def check_shape(name: str, x, expected: Sequence[int | None], what: str) -> None:
  """Raises unless x.shape matches `expected` (None matches any size)."""
  shape = tuple(jnp.shape(x))
  ok = len(shape) == len(expected) and all(
      e is None or e == s for e, s in zip(expected, shape))
  if not ok:
    exp = tuple("*" if e is None else e for e in expected)
    raise ValueError(f"{name} must have shape {exp} ({what}); got {shape}.")


def check_finite(name: str, x) -> None:
  """Eagerly raises if x holds NaN or Inf; a no-op under tracing."""
  if x is None or not is_concrete(x):
    return
  a = np.asarray(jax.device_get(x))
  if not np.issubdtype(a.dtype, np.floating) and a.dtype.kind != "V":
    # bfloat16 shows up as a void-like ml_dtypes type on some numpy versions.
    try:
      a = a.astype(np.float32)
    except (TypeError, ValueError):
      return
  bad = ~np.isfinite(a.astype(np.float32))
  if bad.any():
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"{name} holds {int(bad.sum())} NaN/Inf value(s) (first at index {idx}). "
        "Check the upstream model or data (for images: decoding, normalisation); "
        "jaxset does not silently replace them.")


def check_labels(name: str, labels, num_classes: int) -> None:
  """Eagerly raises if a label is >= num_classes (negative labels mean ignore)."""
  if not is_concrete(labels):
    return
  a = np.asarray(jax.device_get(labels))
  if not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"{name} must be integers; got dtype {a.dtype}.")
  bad = a >= num_classes
  if bad.any():
    raise ValueError(
        f"{name} has {int(bad.sum())} value(s) >= num_classes={num_classes} "
        f"(max {int(a.max())}). Labels index the class axis of the logits; use "
        "-1 to ignore a row, or give the head as many classes as the dataset has.")


def check_float(name: str, x) -> None:
  """Raises unless x is a real floating-point array (float16/32/64, bfloat16).

  Integer, bool or complex inputs would be pooled, scaled or compared and then
  cast back to their own dtype (a truncated mean, integer logits): say so.
  """
  if x is None:
    return
  dtype = jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"{name} must be a floating-point array; got dtype {dtype}. Cast it first, "
        f"e.g. {name}.astype(jnp.float32)"
        + (" (complex values have no order or norm here)." if jnp.issubdtype(
            dtype, jnp.complexfloating) else "."))


def check_binary(name: str, x) -> None:
  """Eagerly raises unless x holds only 0/1 (or bool) values."""
  if x is None or not is_concrete(x):
    return
  a = np.asarray(jax.device_get(x))
  if a.dtype == bool:
    return
  bad = ~np.isin(a.astype(np.float64), (0.0, 1.0))
  if bad.any():
    raise ValueError(
        f"{name} must hold 0/1 (or bool) values; got {int(bad.sum())} other value(s), "
        f"e.g. {a.reshape(-1)[np.argmax(bad.reshape(-1))]!r}. Pass a boolean mask or labels "
        "in {0, 1}.")


def check_scalar_range(name: str, value, low: float, high: float, what: str,
                       low_open: bool = False) -> None:
  """Eagerly raises unless low (<) <= value <= high for a concrete scalar."""
  if not is_concrete(value):
    return
  v = float(np.asarray(jax.device_get(value)))
  below = v <= low if low_open else v < low
  if not np.isfinite(v) or below or v > high:
    left = "(" if low_open else "["
    raise ValueError(f"{name} must be in {left}{low:g}, {high:g}] ({what}); got {v!r}.")


def dtype_tag(x):
  """A zero-size array of x's dtype: custom_vjp residuals must be arrays, dtypes
  are not, and the backward casts its cotangent back to this dtype."""
  return jnp.zeros((0,), x.dtype)


def check_class_labels(name: str, labels, batch: int, num_classes: int) -> None:
  """labels [batch] integer class ids in (-inf, num_classes); < 0 ignores a row.

  Shape and dtype are checked always, the range eagerly (check_labels)."""
  check_shape(name, labels, (batch,), "[batch] int class ids, -1 = ignore the row")
  dtype = jnp.asarray(labels).dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"{name} must be integers; got dtype {dtype}. Pass class ids, e.g. "
                     f"{name}.astype(jnp.int32).")
  check_labels(name, labels, num_classes)
