"""Each paper's claim, measured on the embedded datasets: writes docs/claims.md.

  python -m benchmarks.claims [--seeds 5] [--claims qan,eqface,adaface,netvlad,casn]
                              [--out docs/claims.md] [--workdir runs/claims]
                              [--compile_cache DIR] [--budget N] [--jobs 2] [--quick]

Every claim trains its method (and, where the claim compares, its baseline at
the same budget) once per seed with train.loop.train_and_evaluate, takes the
task's own evaluation, and adds the numbers the task does not report (EDC pAUC
of each quality and its baselines, accuracy on the most degraded tier,
identification-attention consistency) from the trained state with jaxset.eval.
A claim is judged by jaxset.eval.stats: the 95% bootstrap interval of the
judged series minus its threshold (fixed in build_rows), seeds and test units
resampled; "held" / "contradicted" when it excludes 0 on the claimed / other
side, otherwise "inconclusive". The table also says how many seeds satisfy the
threshold alone, and the smallest effect the seeds could detect.

The budgets (BUDGETS) are smaller than the configs' defaults so that the whole
script (5 seeds) aims at about an hour on 2 CPU cores, two runs at a time (--jobs:
one JAX process on the CPU leaves part of two cores idle); a method and its
baseline always share one budget. The configs themselves are read when the script runs
(configs/<method>.py), and the budget is applied on top as overrides.
--budget N multiplies every step count of the budgets (3, 10: the budget curve;
it takes about N times as long, and CI does not run it).

Resumable: each (setup, seed) writes <workdir>/results/<setup>_seed<k>_<hash>.json,
where <hash> is that of the run's full config; a result whose config is
unchanged is reused, an interrupted run resumes from its checkpoint in
<workdir>/runs/. XLA compilations that take over 0.5 s are kept in
<workdir>/jax_cache (JAX's persistent compilation cache, which works on CPU),
so later seeds and later invocations skip them.

--quick: the tiny datasets and a few steps, to check the script end to end
(its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.measures import (  # noqa: E402,F401
  EDC_BASELINES,
  EDC_DISCARD_LIMIT,
  EDC_RESAMPLES,
  EDC_START_FNMR,
  ERC_START_FNMR,
  PROXIES,
  REJECT_FRACTION,
  SEVERE_TIER,
  data_facts,
)
from benchmarks.report import (  # noqa: E402,F401
  NOTES_MARK,
  fmt,
  kept_notes,
  machine,
  render_block,
  report_command,
  write_json,
)
from benchmarks.runs import (  # noqa: E402,F401  (claims.X: the tests' names)
  BUDGETS,
  CLAIM_NAMES,
  CLAIM_SETUPS,
  COMMON,
  SETUPS,
  config_hash,
  enable_compilation_cache,
  make_config,
  run_setup,
  scaled_budget,
)

ANTI_CORRELATION = -0.5   # "anti-correlates": Spearman rho <= this, for every method

# -- what runs -------------------------------------------------------------------


# -- numbers the tasks do not report ---------------------------------------------


# -- running ---------------------------------------------------------------------


# -- judging and the table -------------------------------------------------------

OPS = {"<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b,
       ">": lambda a, b: a > b}


@dataclasses.dataclass
class Row:
  """One judged statement: per-seed series, the judged one against a threshold.

  units: per seed, the per-unit paired differences (queries, pairs) whose mean is
  the judged series (a metric of the method minus the baseline's on the same
  units), where both runs saved them; None judges the per-seed values alone.
  replicates: per seed, the judged statistic on bootstrap resamples of its test
  units (for statistics that are not means over units: EDC pAUC).
  """
  claim: str
  statement: str
  series: dict            # label -> [per-seed value or None]
  judged: str             # the label of the judged series
  op: str                 # "<=", "<", ">=", ">"
  threshold: float
  units: list | None = None
  replicates: list | None = None
  digits: int = 3         # decimals shown (EDC pAUC values are ~0.005: 4)


def summarize(values: Sequence) -> dict:
  """Mean, sample std (ddof 1; 0 for one value) and the finite values of a series."""
  v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
  if not v:
    return {"n": 0, "mean": None, "std": None, "values": v}
  std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
  return {"n": len(v), "mean": float(np.mean(v)), "std": std, "values": v}


def judge(values: Sequence, op: str, threshold: float) -> dict:
  """Held when the MEAN over seeds satisfies `mean op threshold`; also counts
  the seeds that satisfy it alone. No finite value: not measured (held None)."""
  if op not in OPS:
    raise ValueError(f"op must be one of {sorted(OPS)}; got {op!r}.")
  s = summarize(values)
  if s["n"] == 0:
    return {**s, "held": None, "seeds_held": 0}
  return {**s, "held": bool(OPS[op](s["mean"], threshold)),
          "seeds_held": int(sum(OPS[op](x, threshold) for x in s["values"]))}


def fmt_series(values, digits: int = 3) -> str:
  s = summarize(values)
  if s["n"] == 0:
    return "n/a"
  return f"{fmt(s['mean'], digits)} ± {fmt(s['std'], digits)}"


def interval(row: Row) -> dict | None:
  """The judged series minus its threshold, with a 95% bootstrap interval
  (jaxset.eval.stats.paired_bootstrap) and its verdict for the row's direction.

  With per-unit differences (row.units): seeds, then units within them, are
  resampled; with replicates (EDC pAUC), seeds and then one replicate of each.
  Without either: the per-seed values are resampled (seeds only). One seed is
  "inconclusive" whatever its interval: it says nothing about training noise.
  ">=" (at least as good) is judged as ">": the interval must exclude 0.
  None when nothing was measured.
  """
  from jaxset.eval import stats
  direction = ">" if row.op in (">", ">=") else "<"
  if row.units:
    res = stats.paired_bootstrap([np.asarray(u, float) - row.threshold for u in row.units],
                                 resample_seeds=len(row.units) > 1)
    word = stats.verdict(res, direction) if len(row.units) > 1 else "inconclusive"
    return {**res, "verdict": word, "level": "seeds and units"}
  if row.replicates:
    est = [v - row.threshold for v in row.series[row.judged]]
    res = stats.replicate_bootstrap([np.asarray(r, float) - row.threshold
                                     for r in row.replicates], est,
                                    resample_seeds=len(row.replicates) > 1)
    word = stats.verdict(res, direction) if len(row.replicates) > 1 else "inconclusive"
    return {**res, "verdict": word, "level": "seeds and comparisons"}
  s = summarize(row.series[row.judged])
  if s["n"] == 0:
    return None
  res = stats.paired_bootstrap([np.asarray(s["values"]) - row.threshold],
                               resample_seeds=False)
  word = stats.verdict(res, direction) if s["n"] > 1 else "inconclusive"
  return {**res, "verdict": word, "level": "seeds"}


def verdict(row: Row) -> str:
  """'**held**' / '**contradicted**' / '**inconclusive**' (jaxset.eval.stats' rule), the
  interval of (judged - threshold), and how many seeds satisfy the threshold alone."""
  res = interval(row)
  if res is None:
    return "not measured"
  j = judge(row.series[row.judged], row.op, row.threshold)
  d = row.digits
  return (f"**{res['verdict']}**: [{res['low']:+.{d}f}, {res['high']:+.{d}f}] "
          f"({res['level']} resampled; detectable {res['mde']:.{d}f}; "
          f"{j['seeds_held']}/{j['n']} seeds)")


def _metric(results, setup, key):
  return [r["metrics"].get(key) if r else None for r in results.get(setup, [])]


def _unit_differences(results, a_setup, b_setup, key, b_key=None) -> list | None:
  """Per seed, a's per-unit values of `key` minus b's (of `b_key`, default `key`) on
  the same units, where every seed of both saved them (runs.run_setup:
  result["units"]); otherwise None."""
  pairs = list(zip(results.get(a_setup, []), results.get(b_setup, [])))
  out = []
  for a, b in pairs:
    ua = (a or {}).get("units", {}).get(key)
    ub = (b or {}).get("units", {}).get(b_key or key)
    if ua is None or ub is None or len(ua) != len(ub):
      return None
    out.append(np.asarray(ua, float) - np.asarray(ub, float))
  return out or None


def _replicates(results, setup, key) -> list | None:
  """Per seed, the bootstrap replicates `key` the run saved (runs.run_setup:
  result["replicates"]), where every seed saved them; otherwise None."""
  out = [((r or {}).get("replicates") or {}).get(key) for r in results.get(setup, [])]
  return out if out and all(o for o in out) else None


def _diff(a, b):
  return [None if x is None or y is None else x - y for x, y in zip(a, b)]


def _versus(a_label, a, b_label, b) -> dict:
  """Two series and their difference, labelled "A - B"."""
  return {a_label: a, b_label: b, f"{a_label} - {b_label}": _diff(a, b)}


CLAIM_OF = {"qan": "1 QAN", "eqface": "2 EQFace", "adaface": "3 AdaFace"}
# The quality claim: the proxy beats random discard and the image statistics.
EDC_JUDGED = ("random", "sharpness", "contrast", "brightness")


def edc_rows(results: dict, setup: str) -> list[Row]:
  """The quality claim of one method, judged by EDC pAUC (lower is better)."""
  proxy = PROXIES[setup]
  mine = _metric(results, setup, "edc_pauc_proxy")
  rows = []
  for base in EDC_JUDGED:
    other = _metric(results, setup, f"edc_pauc_{base}")
    rows.append(Row(
        CLAIM_OF[setup], f"discarding the comparisons of lowest {proxy} lowers FNMR faster than "
        f"discarding by {base} (EDC pAUC up to {EDC_DISCARD_LIMIT:.0%} discarded, FNMR "
        f"{EDC_START_FNMR} at the start; lower is better)",
        _versus(f"pAUC {proxy}", mine, f"pAUC {base}", other),
        f"pAUC {proxy} - pAUC {base}", "<", 0.0,
        replicates=_replicates(results, setup, f"edc_pauc_proxy_minus_{base}"), digits=4))
  return rows


def build_rows(results: dict) -> list[Row]:
  """The judged rows of every claim whose setups ran (results: setup -> [per seed])."""
  rows = []
  has = lambda *s: all(any(r is not None for r in results.get(x, [])) for x in s)
  for setup in ("qan", "eqface", "adaface"):
    if has(setup):
      rows += edc_rows(results, setup)
  if has("qan"):
    qp = _metric(results, "qan", "set_pair_acc")
    mp = _metric(results, "qan", "set_pair_acc_meanpool")
    rows.append(Row("1 QAN", "quality pooling beats mean pooling at set verification "
                    "(10-fold set-pair accuracy; the sets hold degraded frames)",
                    _versus("quality pooling", qp, "mean pooling", mp),
                    "quality pooling - mean pooling", ">", 0.0,
                    _unit_differences(results, "qan", "qan", "set_pair_acc",
                                      "set_pair_acc_meanpool")))
  if has("adaface", "arcface"):
    a = _metric(results, "adaface", "tier_severe_rank1")
    b = _metric(results, "arcface", "tier_severe_rank1")
    rows.append(Row("3 AdaFace", f"on the most degraded tier (level >= {SEVERE_TIER}), AdaFace "
                    "is at least as accurate as ArcFace with the same budget (rank-1)",
                    _versus("AdaFace", a, "ArcFace", b), "AdaFace - ArcFace", ">=", 0.0,
                    _unit_differences(results, "adaface", "arcface", "tier_severe_rank1")))
  if has("netvlad"):
    nv = _metric(results, "netvlad", "recall@1")
    for base in ("netvlad_avg", "netvlad_max", "netvlad_gem"):
      if has(base):
        r1 = _metric(results, base, "recall@1")
        label = SETUPS[base].label
        rows.append(Row("4 NetVLAD", f"beats {label} on Recall@1 (same backbone and budget)",
                        _versus("NetVLAD", nv, label, r1), f"NetVLAD - {label}", ">", 0.0,
                        _unit_differences(results, "netvlad", base, "recall@1")))
  if has("casn", "ide"):
    for key, name in (("rank1", "rank-1"), ("mAP", "mAP")):
      a, b = _metric(results, "casn", key), _metric(results, "ide", key)
      rows.append(Row("5 CASN", f"IA + SA beats the IDE baseline on {name}",
                      _versus(f"CASN {name}", a, f"IDE {name}", b),
                      f"CASN {name} - IDE {name}", ">", 0.0,
                      _unit_differences(results, "casn", "ide", key)))
    a = _metric(results, "casn", "id_attention_inconsistency")
    b = _metric(results, "ide", "id_attention_inconsistency")
    rows.append(Row("5 CASN", "makes the attention of positive pairs more consistent "
                    "(identification Grad-CAM, ||M1 - M2||^2 of the profiles; lower = "
                    "more consistent)",
                    _versus("CASN inconsistency", a, "IDE inconsistency", b),
                    "CASN inconsistency - IDE inconsistency", "<", 0.0))
  return rows


def render_rows(rows: Sequence[Row]) -> str:
  out = ["| claim | statement | measured (mean ± std over seeds) | threshold | result |",
         "|---|---|---|---|---|"]
  for r in rows:
    measured = "<br>".join(f"{k}: {fmt_series(v, r.digits)}" for k, v in r.series.items())
    out.append(f"| {r.claim} | {r.statement} | {measured} | {r.judged} {r.op} "
               f"{r.threshold:g} | {verdict(r)} |")
  return "\n".join(out)


def render_per_seed(rows: Sequence[Row], seeds: Sequence[int]) -> str:
  out = ["| claim | series | " + " | ".join(f"seed {s}" for s in seeds) + " |",
         "|---|---|" + "---|" * len(seeds)]
  shown = set()
  for r in rows:
    for k, v in r.series.items():
      if (r.claim, k) in shown:  # e.g. NetVLAD's own series, once for three baselines
        continue
      shown.add((r.claim, k))
      cells = [fmt(x, r.digits) for x in v] + ["n/a"] * (len(seeds) - len(v))
      out.append(f"| {r.claim} | {k} | " + " | ".join(cells) + " |")
  return "\n".join(out)


# Extra numbers shown per setup (not judged), where they exist.
CONTEXT = ("mu_spearman", "quality_spearman", "norm_spearman", "erc_fnmr_before",
           "erc_fnmr_quality", "erc_fnmr_random", "edc_comparisons", "set_rank1", "set_mAP",
           "pair_acc", "rank1", "mAP", "recall@5",
           "tier_clean_rank1", "tier_mild_rank1", "tier_severe_queries",
           "attention_inconsistency", "attention_inconsistency_neg", "attention_zero_maps",
           "id_attention_inconsistency_neg", "id_attention_zero_maps")


def render_context(results: dict) -> str:
  out = ["| setup | metric | mean ± std (counts: per seed) |", "|---|---|---|"]
  for setup, runs in results.items():
    for key in CONTEXT:
      vals = _metric(results, setup, key)
      if not any(v is not None for v in vals):
        continue
      if key.endswith("_queries"):  # a count, the same for every seed
        text = " / ".join(str(v) for v in vals)
      else:
        text = fmt_series(vals)
      out.append(f"| {SETUPS[setup].label} | {key} | {text} |")
  return "\n".join(out)


DOCS = Path(__file__).resolve().parents[1] / "docs"
# setup -> (the metrics shown against the baselines, the report that holds them)
BASELINE_METRICS = {"qan": ("set_pair_acc", "set_rank1"), "eqface": ("pair_acc", "rank1"),
                    "adaface": ("pair_acc", "rank1"), "arcface": ("pair_acc", "rank1"),
                    "casn": ("rank1", "mAP"), "netvlad": ("recall@1",)}


def baseline_values(docs: Path = DOCS) -> dict:
  """(setup, metric) -> {"raw pixels": x, "untrained": x} from the generated
  reports docs/baselines.json (benchmarks.baselines) and docs/netvlad_baselines.json
  (benchmarks.netvlad_baselines): the same test splits and protocols."""
  out = {}
  path = docs / "baselines.json"
  if path.exists():
    for row in json.loads(path.read_text())["rows"]:
      for metric in BASELINE_METRICS.get(row["method"], ()):
        if f"raw_pixels:{metric}" in row:
          out[(row["method"], metric)] = {"raw pixels": row[f"raw_pixels:{metric}"],
                                          "untrained": row[f"untrained:{metric}"]}
  path = docs / "netvlad_baselines.json"
  if path.exists():
    rows = {r["row"]: r for r in json.loads(path.read_text())["rows"]}
    raw = next((r for k, r in rows.items() if k.startswith("raw pixels")), None)
    untrained = next((r for k, r in rows.items() if k.startswith("untrained")), None)
    if raw and untrained:
      out[("netvlad", "recall@1")] = {"raw pixels": raw["mean"], "untrained": untrained["mean"]}
  return out


def render_baselines(results: dict, docs: Path = DOCS, base: dict | None = None) -> str:
  """Each method at the claims budget next to raw pixels and its untrained network
  (base: baseline_values' result, read from `docs` when None)."""
  base = baseline_values(docs) if base is None else base
  out = ["| setup | metric | raw pixels | untrained network | this run (mean ± std) |",
         "|---|---|---|---|---|"]
  for setup, metrics in BASELINE_METRICS.items():
    for metric in metrics:
      vals = _metric(results, setup, metric)
      if not any(v is not None for v in vals) or (setup, metric) not in base:
        continue
      b = base[(setup, metric)]
      out.append(f"| {SETUPS[setup].label} | {metric} | {fmt(b['raw pixels'])} | "
                 f"{fmt(b['untrained'])} | {fmt_series(vals)} |")
  return "\n".join(out)


def render_edc(results: dict) -> str:
  """Every quality source's EDC pAUC per proxy setup, and proxy minus it with
  its interval (the judged rows and the context ones: feature norm, oracle)."""
  from jaxset.eval import stats
  out = ["| setup | quality | pAUC (mean ± std) | proxy - this, 95% interval | verdict |",
         "|---|---|---|---|---|"]
  for setup in PROXIES:
    if not any(r for r in results.get(setup, [])):
      continue
    label = PROXIES[setup]
    out.append(f"| {SETUPS[setup].label} | {label} (the proxy) | "
               f"{fmt_series(_metric(results, setup, 'edc_pauc_proxy'), 4)} | | |")
    for base in EDC_BASELINES:
      vals = _metric(results, setup, f"edc_pauc_{base}")
      reps = _replicates(results, setup, f"edc_pauc_proxy_minus_{base}")
      diff = _diff(_metric(results, setup, "edc_pauc_proxy"), vals)
      cell, word = "n/a", ""
      if reps and all(d is not None for d in diff):
        res = stats.replicate_bootstrap(reps, diff, resample_seeds=len(reps) > 1)
        cell = f"{res['estimate']:+.4f} [{res['low']:+.4f}, {res['high']:+.4f}]"
        word = stats.verdict(res, "<") if len(reps) > 1 else "inconclusive"
      out.append(f"| {SETUPS[setup].label} | {base} | {fmt_series(vals, 4)} | {cell} | "
                 f"{word} |")
  return "\n".join(out)


def render_budgets(results: dict) -> str:
  out = ["| setup | config | overrides (the claims budget) | steps (config default) | "
         "batch | seconds per run (mean) | CPU seconds per run (mean) |",
         "|---|---|---|---|---|---|---|"]
  for setup, runs in results.items():
    done = [r for r in runs if r]
    if not done:
      continue
    skip = set(COMMON) | {"seed", "train.ckpt_every", "train.log_every"}
    over = {k: v for k, v in done[0]["overrides"].items() if k not in skip}
    text = ", ".join(f"{k}={v}" for k, v in over.items())
    secs = np.mean([r["seconds"] for r in done])
    cpus = [r["cpu_seconds"] for r in done if "cpu_seconds" in r]
    cpu = f"{np.mean(cpus):.0f}" if cpus else "n/a"
    default = done[0].get("default_steps") or importlib.import_module(
        f"configs.{done[0]['method']}").get_config().train.steps
    out.append(f"| {SETUPS[setup].label} | configs/{done[0]['method']}.py | {text} | "
               f"{done[0]['steps']} ({default}) | {done[0]['batch_size']} | {secs:.0f} | "
               f"{cpu} |")
  return "\n".join(out)


def render_tiers(results: dict) -> str:
  """Each proxy's mean per degradation type and level, averaged over seeds."""
  runs = {k: [r for r in results.get(k, []) if r and r.get("proxy_tiers")] for k in PROXIES}
  runs = {k: v for k, v in runs.items() if v}
  if not runs:
    return "(no quality proxy ran)"
  keys = []
  for v in runs.values():
    for row in v[0]["proxy_tiers"]:
      key = (row["type"], row["lo"], row["hi"])
      if key not in keys:
        keys.append(key)
  head = "| type | level | images | " + " | ".join(PROXIES[k] for k in runs) + " |"
  out = [head, "|---|---|---|" + "---|" * len(runs)]

  def cell(k, key, field="mean"):
    vals = [row[field] for r in runs[k] for row in r["proxy_tiers"]
            if (row["type"], row["lo"], row["hi"]) == key]
    return fmt(float(np.mean(vals))) if vals else ""

  for key in keys:
    name, lo, hi = key
    level = f"{lo:g}" if lo == hi else f"[{lo:g}, {hi:g}{']' if hi == 1 else ')'}"
    n = next((row["n"] for v in runs.values() for row in v[0]["proxy_tiers"]
              if (row["type"], row["lo"], row["hi"]) == key), "")
    out.append(f"| {name} | {level} | {n} | " + " | ".join(cell(k, key) for k in runs) + " |")
  clean = next(k for k in keys if k[0] == "clean")
  out.append("| clean: std within the tier | | | "
             + " | ".join(cell(k, clean, "std") for k in runs) + " |")
  return "\n".join(out)


def render_budget_curve(by_budget: dict) -> str:
  """The judged series of every claim at each budget run in the workdir."""
  budgets = sorted(by_budget)
  table = {}
  for b in budgets:
    for row in build_rows(by_budget[b]):
      s = summarize(row.series[row.judged])
      if s["n"]:
        table.setdefault((row.claim, row.judged, row.op, row.threshold), {})[b] = s
  out = ["| claim | series | threshold | " + " | ".join(f"{b:g}x" for b in budgets) + " |",
         "|---|---|---|" + "---|" * len(budgets)]
  for (claim, judged, op, thr), cols in table.items():
    cells = []
    for b in budgets:
      s = cols.get(b)
      cells.append("" if s is None else f"{fmt(s['mean'])} ({s['n']} seed"
                   f"{'s' if s['n'] > 1 else ''})")
    out.append(f"| {claim} | {judged} | {op} {thr:g} | " + " | ".join(cells) + " |")
  return "\n".join(out)


def header_facts() -> dict:
  """When and where a report was made (stored in the JSON, so it re-renders the same)."""
  import flax
  import jax
  return {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
          "machine": f"{machine()}; jax {jax.__version__} ({jax.default_backend()}, "
                     f"{jax.device_count()} device(s)), flax {flax.__version__}, python "
                     f"{platform.python_version()}"}


def render(results: dict, seeds: Sequence[int], *, command: str, wall_seconds: float,
           facts: dict | None = None, quick: bool = False, failures: Sequence[str] = (),
           load: tuple = (), curve: dict | None = None, header: dict | None = None,
           baselines: dict | None = None) -> str:
  header = header_facts() if header is None else header
  rows = build_rows(results)
  run_seconds = sum(r["seconds"] for runs in results.values() for r in runs if r)
  lines = ["# The papers' claims on the embedded data", ""]
  if quick:
    lines += ["**--quick run: tiny datasets and a few steps. These numbers mean nothing.**", ""]
  lines += [
      f"Produced by `{command}` (benchmarks/claims.py).",
      "",
      f"- date: {header['date']}",
      f"- machine: {header['machine']}",
      f"- wall time of this invocation: {wall_seconds / 60:.1f} min; the runs' own times "
      f"add up to {run_seconds / 60:.1f} min (results from an earlier invocation are read "
      "from the run cache)"
      + (f"; 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end "
         "(other work on the machine slows every run)" if load else ""),
      f"- seeds: {', '.join(map(str, seeds))} (config.seed: the initialisation and the "
      "sampling; the embedded datasets are the same for every seed)",
      "- mean ± std: the mean and the sample standard deviation over the seeds.",
      "- result (jaxset.eval.stats): the judged series minus its threshold, with a 95% "
      "bootstrap interval; where the runs saved per-unit values (queries, pairs) the "
      "differences are paired unit by unit and both the seeds and the units within them "
      "are resampled, otherwise the per-seed values are. **held**: the interval excludes 0 "
      "on the claimed side; **contradicted**: on the other side; **inconclusive**: it "
      "contains 0 (or one seed ran). detectable: the smallest true effect these seeds and "
      "units detect (power 0.8). (k/n seeds) counts the seeds that satisfy the threshold "
      "alone. The thresholds were fixed before the runs and are the same for every method "
      f"(\"anti-correlates\" is Spearman rho <= {ANTI_CORRELATION}, \"beats\" a positive "
      "difference, \"at least as accurate\" is judged as \"beats\").",
      "",
      "## Claims",
      "",
      render_rows(rows) if rows else "(no claim ran)",
      "",
  ]
  if failures:
    lines += ["Runs that failed (their seeds are missing above):", ""]
    lines += [f"- {f}" for f in failures] + [""]
  lines += [
      "## Baselines",
      "",
      "Every recognition claim's method at the claims budget, next to raw pixels (each image "
      "its mean-centred, L2-normalised pixels; a set the mean of its frames) and the "
      "untrained network (the same config, its initialisation), scored with the same "
      "protocol on the same test split. The baselines come from docs/baselines.json "
      "(`python -m benchmarks.baselines`, seed 0) and docs/netvlad_baselines.json "
      "(`python -m benchmarks.netvlad_baselines`; untrained: the mean of its seeds).",
      "",
      render_baselines(results, base=baselines),
      "",
      "## How each number is measured",
      "",
      "- Quality (QAN mu, EQFace s_i, AdaFace feature norm): EDC (ISO/IEC 29794-1:2024; "
      "jaxset.eval.edc_pauc) on every mated cross-camera comparison of the test query and "
      "gallery images (cosine of the embeddings; background frames included), pair quality "
      f"min(q_a, q_b), the threshold fixed at FNMR {EDC_START_FNMR} before anything is "
      "discarded, comparisons of equal quality discarded together; pAUC up to "
      f"{EDC_DISCARD_LIMIT:.0%} discarded. Interval: each seed's pAUC difference on "
      f"{EDC_RESAMPLES} bootstrap resamples of the comparisons (the same resamples for both "
      "qualities), then seeds resampled (jaxset.eval.stats.replicate_bootstrap). Spearman "
      "rho and the ERC are in the context table.",
      "- QAN: the task's evaluation (train/tasks/qan.py). rho: Spearman of the learned "
      "per-frame mu against the true degradation level over every test frame. Set "
      "verification: 10-fold accuracy on the `set_pairs` split, each tracklet pooled "
      "with mu (eq. 2) or with the plain mean of the same frame features through the same "
      "set FC."
      + (f" {facts['tracklets_degraded']} of the {facts['tracklets']} test tracklets and "
         f"{facts['set_pairs_degraded']} of the {facts['set_pairs']} set pairs hold at least "
         "one degraded frame." if facts else ""),
      "- EQFace: rho from the task's evaluation (s_i of every query and gallery image against "
      "its degradation). ERC: jaxset.eval.error_vs_reject on the `pairs` split, cosine "
      f"scores, the threshold fixed once on all pairs at FNMR {ERC_START_FNMR}; pair quality "
      f"min(s_a, s_b); FNMR after dropping the {REJECT_FRACTION:.0%} lowest-quality pairs "
      "versus after dropping a random 20 % (mean of 10 draws).",
      "- AdaFace / ArcFace: rho from the task's evaluation (the feature norm). Tier rank-1: "
      "the query images of a tier against the whole gallery, cross-camera, torchreid rules "
      f"(jaxset.eval.cmc_map). Tiers by the true degradation level: clean 0, mild "
      f"(0, {SEVERE_TIER}), severe [{SEVERE_TIER}, 1] (the most degraded); background "
      "frames (identity absent) are in no tier.",
      "- NetVLAD: Recall@1 on the test queries (25 m), the task's evaluation; the baselines "
      "are the same config with config.model.pooling = avg | max | gem.",
      "- CASN: rank-1 and mAP from the task's evaluation (query vs gallery, cross-camera). "
      "IDE is configs/casn.py with ia_weight = verification_weight = sa_weight = 0. "
      "Attention: the identification Grad-CAM of each image's predicted identity "
      "(jaxset.models.casn.identification_attention), a map both models have; per test "
      "pair jaxset.ops.losses.attention_consistency_loss (horizontal max-pool, relative "
      "threshold config.casn.consistency_threshold), averaged over the positive pairs "
      "whose two maps are not all zero. The task's own Siamese-attention numbers are in "
      "the context table (IDE's verifier is untrained, so they are CASN's only).",
      "",
      "## Per seed",
      "",
      render_per_seed(rows, seeds) if rows else "",
      "",
      "## Context (not judged)",
      "",
      render_context(results),
      "",
      "## EDC of every quality source",
      "",
      f"EDC pAUC (FNMR, threshold at FNMR {EDC_START_FNMR} before discarding, pAUC up to "
      f"{EDC_DISCARD_LIMIT:.0%} discarded; lower is better) of each setup's proxy and of the "
      "baselines on the same comparisons: random discard, the image statistics "
      "(jaxset.eval.image_statistics: sharpness = variance of the Laplacian, contrast, "
      "brightness), the setup's own plain feature norm (for AdaFace and ArcFace the norm is "
      "the proxy) and the oracle (1 - the true degradation level). The verdict reads "
      "\"held\" when the proxy's pAUC is below this source's.",
      "",
      render_edc(results),
      "",
      "## Quality proxies by tier",
      "",
      "The mean of each learned proxy over the test images (query and gallery) of each "
      "stored degradation type and level, averaged over the seeds (jaxset.eval."
      "proxy_by_tier). A proxy that tracks quality falls down the rows of every type; "
      "the norms' scale is each model's own. The last row is the spread among clean "
      "images, the yardstick for every gap above it.",
      "",
      render_tiers(results),
      "",
      "## Budgets",
      "",
      "Every run starts from configs/<method>.py as it is when the script runs, with "
      "these overrides (plus eval.at_start=False, eval.every=0, train.progress_bar=False, "
      "a checkpoint at the end). A method and its baseline share one budget.",
      "",
      render_budgets(results),
      "",
  ]
  if curve and len(curve) > 1:
    lines += [
        "## Budget curve",
        "",
        "The judged series at N times the claims budget (every step count times N; "
        "`--budget N`), from every result in the run cache of this workdir: the mean over "
        "the seeds that ran. A claim that appears with more training is a different "
        "finding from one that never appears.",
        "",
        render_budget_curve(curve),
        "",
    ]
  return "\n".join(lines)


# -- the JSON report ---------------------------------------------------------------

# What a run's result keeps in docs/claims.json: enough to re-render every table.
KEPT = ("setup", "seed", "method", "budget", "overrides", "steps", "batch_size", "seconds",
        "cpu_seconds", "metrics", "proxy_tiers", "units", "replicates", "default_steps")


def _rounded(x):
  if isinstance(x, float):
    return float(f"{x:.6g}")
  if isinstance(x, dict):
    return {k: _rounded(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_rounded(v) for v in x]
  return x


def _trim(results: dict) -> dict:
  out = {}
  for setup, runs in results.items():
    out[setup] = []
    for r in runs:
      if r is None:
        out[setup].append(None)
        continue
      r = dict(r)
      if "default_steps" not in r and "method" in r:
        r["default_steps"] = importlib.import_module(f"configs.{r['method']}").get_config(
        ).train.steps
      out[setup].append(_rounded({k: r[k] for k in KEPT if k in r}))
  return out


def build_report(results: dict, seeds: Sequence[int], *, command: str, wall_seconds: float,
                 facts: dict | None = None, quick: bool = False,
                 failures: Sequence[str] = (), load: tuple = (),
                 curve: dict | None = None) -> dict:
  """docs/claims.json: the runs' numbers (rounded to 6 digits) and the facts of the
  invocation; render_report(report) is docs/claims.md."""
  base = baseline_values()
  return {"command": command, "seeds": list(seeds), "wall_seconds": wall_seconds,
          "facts": facts, "quick": quick, "failures": list(failures), "load": list(load),
          "header": header_facts(), "results": _trim(results),
          "curve": {repr(float(b)): _trim(r) for b, r in (curve or {}).items()},
          "baselines": [[k[0], k[1], v["raw pixels"], v["untrained"]] for k, v in base.items()]}


def render_report(report: dict) -> str:
  """docs/claims.md's generated block from docs/claims.json (benchmarks.report)."""
  curve = {float(b): r for b, r in report["curve"].items()}
  base = {(s, m): {"raw pixels": raw, "untrained": un} for s, m, raw, un in report["baselines"]}
  return render(report["results"], report["seeds"], command=report["command"],
                wall_seconds=report["wall_seconds"], facts=report["facts"],
                quick=report["quick"], failures=report["failures"],
                load=tuple(report["load"]), curve=curve, header=report["header"],
                baselines=base)


# -- main ------------------------------------------------------------------------


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seeds", type=int, default=5, help="seeds 0 .. n-1 per setup")
  ap.add_argument("--claims", default=",".join(CLAIM_NAMES),
                  help=f"comma-separated subset of {','.join(CLAIM_NAMES)}")
  ap.add_argument("--out", default="docs/claims.md")
  ap.add_argument("--workdir", default="runs/claims",
                  help="run checkpoints, the per-run result cache and the compilation cache")
  ap.add_argument("--compile_cache", default="<workdir>/jax_cache",
                  help="JAX's persistent compilation cache folder; '' turns it off")
  ap.add_argument("--budget", type=float, default=1.0,
                  help="N times the claims budget (every step count); the default aims "
                       "at about an hour on 2 cores with 5 seeds (docs/claims.md gives the "
                       "runs' times); larger budgets take proportionally longer")
  ap.add_argument("--jobs", type=int, default=2,
                  help="runs trained side by side, each in its own process (1: one after "
                       "the other in this process)")
  ap.add_argument("--quick", action="store_true",
                  help="tiny datasets, a few steps: checks the script, numbers mean nothing")
  args = ap.parse_args(argv)
  claims = [c.strip() for c in args.claims.split(",") if c.strip()]
  unknown = sorted(set(claims) - set(CLAIM_NAMES))
  if unknown:
    ap.error(f"unknown claim(s) {unknown}; choose from {', '.join(CLAIM_NAMES)}.")
  if args.seeds < 1:
    ap.error("--seeds must be >= 1.")
  if args.budget <= 0:
    ap.error("--budget must be > 0.")
  if args.jobs < 1:
    ap.error("--jobs must be >= 1.")
  args.claims = claims
  return args


def other_budgets(workdir: Path, setups: Sequence[str], seeds: Sequence[int],
                  quick: bool) -> dict:
  """{budget: {setup: [result per seed]}} of the cached results of other budgets
  (those whose config equals what this code builds at that budget)."""
  found = {}
  quick_data = str((workdir / "quick_data").absolute()) if quick else ""
  for path in sorted((workdir / "results").glob("*.json")):
    r = json.loads(path.read_text())
    b = r.get("budget")
    if b is None or r.get("setup") not in setups or r.get("seed") not in seeds:
      continue
    config = make_config(r["setup"], r["seed"], quick, quick_data, b)
    if path.stem != f"{r['setup']}_seed{r['seed']}_{config_hash(config)}":
      continue  # stale: another config or dataset version
    found.setdefault(b, {}).setdefault(r["setup"], {})[r["seed"]] = r
  # Per seed, aligned across setups (a claim's difference pairs equal seeds).
  return {b: {k: [v.get(seed) for seed in seeds] for k, v in by.items()}
          for b, by in found.items()}


def _run_or_fail(setup, seed, workdir, quick, budget, compile_cache) -> tuple:
  """(result, None) or (None, "setup seed k: error"): one failing run must not
  hide the others' numbers. Also the entry point of a --jobs worker process."""
  if compile_cache:
    enable_compilation_cache(Path(compile_cache))
  say = lambda msg: print(msg, flush=True)
  try:
    return run_setup(setup, seed, workdir, quick, say, budget), None
  except Exception as e:
    say(f"  {setup} seed {seed}: FAILED {type(e).__name__}: {e}")
    return None, f"{setup} seed {seed}: {type(e).__name__}: {e}"


def run_all(setups, seeds, workdir: Path, args, say) -> tuple[dict, list]:
  """Every (setup, seed): in this process, or with --jobs N in N worker
  processes (each run is single-process JAX on the CPU and leaves part of the
  cores idle, so two runs side by side finish sooner than one after the other)."""
  cache = args.compile_cache.replace("<workdir>", str(workdir)) if args.compile_cache else ""
  todo = [(setup, seed) for setup in setups for seed in seeds]
  say(f"{len(todo)} runs, {args.jobs} at a time")
  if args.jobs == 1:
    done = {k: _run_or_fail(*k, workdir, args.quick, args.budget, cache) for k in todo}
  else:
    import concurrent.futures
    import multiprocessing
    pool = concurrent.futures.ProcessPoolExecutor(
        args.jobs, mp_context=multiprocessing.get_context("spawn"))
    with pool:
      futures = {k: pool.submit(_run_or_fail, *k, workdir, args.quick, args.budget, cache)
                 for k in todo}
      done = {k: f.result() for k, f in futures.items()}
  results = {setup: [done[(setup, seed)][0] for seed in seeds] for setup in setups}
  return results, [done[k][1] for k in todo if done[k][1]]


def main(argv=None) -> dict:
  args = parse_args(argv)
  t0 = time.perf_counter()
  load_start = os.getloadavg()[0]
  workdir = Path(args.workdir)
  seeds = list(range(args.seeds))
  say = lambda msg: print(msg, flush=True)
  setups = [s for c in args.claims for s in CLAIM_SETUPS[c]]
  say(f"claims: {', '.join(args.claims)}; {len(setups)} setups x {len(seeds)} seeds "
      f"= {len(setups) * len(seeds)} runs; workdir {workdir}")
  results, failures = run_all(setups, seeds, workdir, args, say)
  facts = None
  if "qan" in args.claims:
    quick_data = str((workdir / "quick_data").absolute()) if args.quick else ""
    facts = data_facts(make_config("qan", 0, args.quick, quick_data))
  curve = other_budgets(workdir, setups, seeds, args.quick)
  curve[args.budget] = results
  command = report_command("benchmarks.claims", argv if argv is not None else sys.argv[1:])
  rep = build_report(results, seeds, command=command.strip(),
                     wall_seconds=time.perf_counter() - t0, facts=facts, quick=args.quick,
                     failures=failures, load=(load_start, os.getloadavg()[0]), curve=curve)
  out = Path(args.out)
  write_json(out.with_suffix(".json"), rep)
  notes = kept_notes(out)
  out.write_text("")
  render_block(out, "claims", render_report(rep))
  if notes:
    out.write_text(out.read_text() + notes)
  say(f"wrote {out} ({(time.perf_counter() - t0) / 60:.1f} min)")
  for row in build_rows(results):
    say(f"  {row.claim}: {row.statement[:60]} -> {verdict(row)}")
  return {"results": results, "failures": failures, "out": str(out)}


if __name__ == "__main__":
  main()
