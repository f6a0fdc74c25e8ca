"""Gradient checks: each custom_vjp against autodiff, finite differences and the paper.

A `GradCase` bundles one op with a plain-jnp reference forward (for autodiff)
and the paper's gradient equations written out by hand. `check_case` first
judges the op's forward against the reference forward (a wrong forward fails
its "forward" row, whatever its gradient does), then compares the op's
backward with all three and returns one `Row` per comparison. The
command `python -m jaxset.gradcheck` prints the table for every case in
`all_cases()` and exits non-zero on a mismatch; tests call the same functions.

Each paper has its own module here (qan, netvlad, margins, casn, vpr) holding its
equations and cases.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import jax.test_util  # noqa: F401  (check_grads lives here)
import numpy as np

# Per-comparison tolerances on norm-relative error, in float64.
TOLERANCES = {"forward": 1e-9, "autodiff": 1e-6, "finite_diff": 1e-5, "paper": 1e-6}

CASE_MODULES = ("qan", "netvlad", "margins", "casn", "vpr")


@dataclasses.dataclass(frozen=True)
class GradCase:
  """One op to check.

  Attributes:
    name: shown in the table, e.g. "quality_pool".
    fn: the jaxset op, `fn(*args, **fixed)`; its output may be a pytree.
    reference: a plain-jnp forward with the same signature, differentiated by
      jax autodiff (no custom_vjp anywhere inside).
    paper_grad: `paper_grad(args, fixed, cotangent) -> tuple of grads`, one per
      entry of `args`, written from the paper's equations. None if the paper
      gives no gradient for this op.
    make: `make(rng: np.random.Generator) -> (args, fixed)`; args are the
      float64 arrays to differentiate, fixed the rest (labels, masks, options).
    order: the order for jax.test_util.check_grads.
    fd_eps: central-difference step.
    paper_eq: the equation the paper_grad writes out, for the table.
  """
  name: str
  fn: Callable[..., Any]
  reference: Callable[..., Any]
  paper_grad: Callable[..., Sequence[Any]] | None
  make: Callable[[np.random.Generator], tuple[tuple[Any, ...], dict[str, Any]]]
  order: int = 1
  fd_eps: float = 1e-6
  paper_eq: str = ""


@dataclasses.dataclass(frozen=True)
class Row:
  case: str
  against: str
  max_abs: float
  max_rel: float
  ok: bool
  note: str = ""


def _vjp(f, args, fixed, cotangent):
  out, pullback = jax.vjp(lambda *a: f(*a, **fixed), *args)
  return out, pullback(cotangent)


def _rel(a, b) -> tuple[float, float]:
  a = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
  b = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
  err = float(np.max(np.abs(a - b))) if a.size else 0.0
  scale = float(np.max(np.abs(b))) if b.size else 0.0
  return err, err / max(scale, 1e-12)


def finite_difference_grads(f, args, fixed, cotangent, eps):
  """Central differences of <cotangent, f(args)> with respect to every entry."""
  def scalar(*a):
    out = f(*a, **fixed)
    return sum(jnp.vdot(c, o) for c, o in zip(jax.tree.leaves(cotangent), jax.tree.leaves(out)))

  grads = []
  for i, x in enumerate(args):
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      xp, xm = x.copy(), x.copy()
      xp[idx] += eps
      xm[idx] -= eps
      ap, am = list(args), list(args)
      ap[i], am[i] = jnp.asarray(xp), jnp.asarray(xm)
      g[idx] = (float(scalar(*ap)) - float(scalar(*am))) / (2 * eps)
    grads.append(g)
  return tuple(grads)


def check_case(case: GradCase, seed: int = 0) -> list[Row]:
  """Compares `case.fn`'s backward with autodiff, finite differences and the paper."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(seed)
    args, fixed = case.make(rng)
    args = tuple(jnp.asarray(a, jnp.float64) for a in args)
    out = case.fn(*args, **fixed)
    cot = jax.tree.map(lambda o: jnp.asarray(rng.standard_normal(np.shape(o)), o.dtype), out)
    _, got = _vjp(case.fn, args, fixed, cot)

    rows = []
    ref_out, want = _vjp(case.reference, args, fixed, cot)
    shapes = lambda t: [np.shape(x) for x in jax.tree.leaves(t)]
    if (jax.tree.structure(out) != jax.tree.structure(ref_out)
        or shapes(out) != shapes(ref_out)):
      rows.append(Row(case.name, "forward", float("nan"), float("nan"), False,
                      "op and reference return different pytrees or shapes"))
    else:
      err, rel = _rel(out, ref_out)
      rows.append(Row(case.name, "forward", err, rel, rel <= TOLERANCES["forward"],
                      "op output vs reference forward"))
    err, rel = _rel(got, want)
    rows.append(Row(case.name, "autodiff", err, rel, rel <= TOLERANCES["autodiff"]))

    fd = finite_difference_grads(case.fn, args, fixed, cot, case.fd_eps)
    err, rel = _rel(got, fd)
    rows.append(Row(case.name, "finite_diff", err, rel, rel <= TOLERANCES["finite_diff"]))

    if case.paper_grad is not None:
      paper = case.paper_grad(args, fixed, cot)
      err, rel = _rel(got, paper)
      rows.append(Row(case.name, "paper", err, rel, rel <= TOLERANCES["paper"], case.paper_eq))

    try:
      jax.test_util.check_grads(lambda *a: case.fn(*a, **fixed), args,
                                order=case.order, modes=("rev",))
      rows.append(Row(case.name, f"check_grads(order={case.order})", 0.0, 0.0, True))
    except AssertionError as e:
      rows.append(Row(case.name, f"check_grads(order={case.order})", float("nan"),
                      float("nan"), False, str(e).splitlines()[0][:80]))
  return rows


def all_cases() -> list[GradCase]:
  """Every registered case, from each paper's module."""
  cases = []
  for mod in CASE_MODULES:
    cases.extend(importlib.import_module(f"jaxset.gradcheck.{mod}").cases())
  return cases


def format_table(rows: Sequence[Row]) -> str:
  head = f"{'op':34s} {'against':20s} {'max abs':>10s} {'max rel':>10s}  {'':4s} note"
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(f"{r.case:34s} {r.against:20s} {r.max_abs:10.2e} {r.max_rel:10.2e}  "
                 f"{'ok' if r.ok else 'FAIL':4s} {r.note}")
  return "\n".join(lines)
