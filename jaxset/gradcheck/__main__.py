"""`python -m jaxset.gradcheck`: every custom_vjp against autodiff, FD and the paper.

Prints one table row per comparison on random float64 inputs (the first row of
each case judges the op's forward against its reference) and exits 1 if any
comparison is outside tolerance. `--only NAME` restricts to cases whose name
contains NAME; `--seed` picks the inputs. `--seeds 0-199` runs a range of
seeds in one process and prints only the failing rows and a count per case.
"""
import argparse
import sys

from jaxset import gradcheck


def _seed_range(text: str) -> range:
  lo, _, hi = text.partition("-")
  try:
    return range(int(lo), int(hi or lo) + 1)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"--seeds takes FIRST-LAST, e.g. 0-199; got {text!r}") from None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxset.gradcheck", description=__doc__)
  p.add_argument("--only", default="", help="substring of the case names to run")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--seeds", type=_seed_range, default=None,
                 help="FIRST-LAST: every seed of the range (summary output)")
  a = p.parse_args(argv)
  cases = [case for case in gradcheck.all_cases() if a.only in case.name]
  if not cases:
    print(f"no gradcheck case matches --only={a.only!r}", file=sys.stderr)
    return 2
  if a.seeds is None:
    rows = [row for case in cases for row in gradcheck.check_case(case, seed=a.seed)]
    print(gradcheck.format_table(rows))
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0
  failed_seeds = {case.name: [] for case in cases}
  for seed in a.seeds:
    failing = 0
    for case in cases:
      bad = [r for r in gradcheck.check_case(case, seed=seed) if not r.ok]
      if bad:
        failing += 1
        failed_seeds[case.name].append(seed)
        print(f"seed {seed}:\n{gradcheck.format_table(bad)}", flush=True)
    print(f"seed {seed}: {len(cases) - failing}/{len(cases)} cases pass", flush=True)
  n = len(a.seeds)
  for name, seeds in failed_seeds.items():
    print(f"{name:34s} {n - len(seeds)}/{n} seeds pass"
          + (f"  (failed: {seeds})" if seeds else ""))
  return 1 if any(failed_seeds.values()) else 0


if __name__ == "__main__":
  sys.exit(main())
