"""`python -m jaxset.gradcheck`: every custom_vjp against autodiff, FD and the paper.

Prints one table row per comparison on random float64 inputs and exits 1 if any
comparison is outside tolerance. `--only NAME` restricts to cases whose name
contains NAME; `--seed` picks the inputs.
"""
import argparse
import sys

from jaxset import gradcheck


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxset.gradcheck", description=__doc__)
  p.add_argument("--only", default="", help="substring of the case names to run")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  rows = []
  for case in gradcheck.all_cases():
    if a.only in case.name:
      rows.extend(gradcheck.check_case(case, seed=a.seed))
  if not rows:
    print(f"no gradcheck case matches --only={a.only!r}", file=sys.stderr)
    return 2
  print(gradcheck.format_table(rows))
  bad = [r for r in rows if not r.ok]
  print(f"\n{len(rows) - len(bad)} passed, {len(bad)} failed")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
