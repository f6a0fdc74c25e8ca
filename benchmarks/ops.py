"""Forward+backward time and working memory of every op against its naive form.

  python -m benchmarks.ops [--only netvlad]

Each row: the op, the variant (custom_vjp, plain autodiff, the naive loop of
the PyTorch ports, or the bare cosine matmul for the margin heads), the shape,
the median ms of jit(value_and_grad) over repeats, and XLA's compiled working
set (temp + output) in MB. Times are wall-clock on whatever machine runs it.
"""
import argparse
import importlib

import jax

from benchmarks.common import format_rows

MODULES = ("ops_pooling", "ops_netvlad", "ops_margins")


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--only", default="", help="substring of a module name")
  a = p.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x {jax.device_count()}")
  for name in MODULES:
    if a.only not in name:
      continue
    rows = importlib.import_module(f"benchmarks.{name}").rows()
    print(f"\n## {name}\n")
    print(format_rows(rows, [k for k in rows[0]]))


if __name__ == "__main__":
  main()
