"""Run building and the run cache shared by the benchmark scripts.

The claims' setups (a method's config plus overrides), their budgets, the
overrides every run takes (COMMON) and the --quick ones (QUICK), the cache key
of a run (config_hash) and `run_setup`, which trains and measures one setup
or reads its cached result. benchmarks/claims.py, quality_diagnosis.py and
casn_diagnosis.py import this library; scripts never import each other.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.measures import EXTRA, PROXIES, UNITS, proxy_tiers, quality_edc
from configs.base import with_overrides


@dataclasses.dataclass(frozen=True)
class Setup:
  """One trained model: a method's config plus overrides (a baseline differs here)."""
  method: str
  claim: str
  overrides: tuple = ()
  label: str = ""


NO_ATTENTION = (("casn.ia_weight", 0.0), ("casn.verification_weight", 0.0),
                 ("casn.sa_weight", 0.0))
SETUPS = {
    "qan": Setup("qan", "qan", label="QAN"),
    "eqface": Setup("eqface", "eqface", label="EQFace"),
    "adaface": Setup("adaface", "adaface", label="AdaFace"),
    "arcface": Setup("arcface", "adaface", label="ArcFace"),
    "netvlad": Setup("netvlad", "netvlad", label="NetVLAD"),
    "netvlad_avg": Setup("netvlad", "netvlad", (("model.pooling", "avg"),), "average pooling"),
    "netvlad_max": Setup("netvlad", "netvlad", (("model.pooling", "max"),), "max pooling"),
    "netvlad_gem": Setup("netvlad", "netvlad", (("model.pooling", "gem"),), "GeM pooling"),
    "casn": Setup("casn", "casn", label="CASN (IA + SA)"),
    # configs/casn.py: the IDE baseline is CASN with every term but identification at 0.
    "ide": Setup("casn", "casn", NO_ATTENTION, "IDE"),
}
CLAIM_SETUPS = {
    "qan": ("qan",),
    "eqface": ("eqface",),
    "adaface": ("adaface", "arcface"),
    "netvlad": ("netvlad", "netvlad_avg", "netvlad_max", "netvlad_gem"),
    "casn": ("casn", "ide"),
}
CLAIM_NAMES = tuple(CLAIM_SETUPS)

# Per claim, on top of configs/<method>.py (method and baseline alike): about
# half the configs' default steps (docs/claims.md lists both), aiming at about an
# hour on 2 cores for 5 seeds of every claim.
BUDGETS = {
    "qan": {"train.steps": 150},
    "eqface": {"train.steps": 400},
    "adaface": {"train.steps": 300},
    "netvlad": {"train.steps": 150},
    "casn": {"train.steps": 240, "casn.warmup_steps": 160},
}
# Every run: no evaluation before training, one checkpoint at the end, no bar.
COMMON = {"eval.at_start": False, "eval.every": 0, "train.progress_bar": False}
# --quick: tiny datasets (built under <workdir>/quick_data) and a few steps. Batch
# sizes are multiples of 8, so it also runs with tests' 8 fake devices.
QUICK = {"data.builder_config": "tiny", "train.steps": 4, "train.batch_size": 16,
         "eval.batch_size": 32, "optim.warmup_steps": 0}
QUICK_CLAIM = {
    "qan": {},
    "eqface": {},
    "adaface": {},
    "netvlad": {"train.batch_size": 8, "kmeans.num_images": 20,
                "kmeans.bn_calibration_batches": 1, "model.num_clusters": 8},
    "casn": {"casn.warmup_steps": 2},
}


def scaled_budget(claim: str, budget: float = 1.0) -> dict:
  """BUDGETS[claim] with every step count (train.steps, casn.warmup_steps)
  times `budget`: --budget N runs N times the claims budget."""
  if budget <= 0:
    raise ValueError(f"budget must be > 0; got {budget}.")
  return {k: max(1, int(round(v * budget))) if k.endswith("steps") else v
          for k, v in BUDGETS[claim].items()}


def run_overrides(steps: dict, seed: int, quick: dict | None, quick_data: str = "",
                  extra: dict | None = None) -> dict:
  """The overrides of one benchmark run, in the order they apply: COMMON, the
  step counts `steps`, with --quick the `quick` ones and the tiny datasets'
  cache dir `quick_data` (quick None: a full run), the run's own `extra`, the
  seed, and one checkpoint at the end unless `extra` says otherwise."""
  over = {**COMMON, **steps}
  if quick is not None:
    over.update(quick)
    over["data.cache_dir"] = quick_data
  over.update(extra or {})
  over["seed"] = seed
  over.setdefault("train.ckpt_every", over["train.steps"])
  return over


def overrides_for(setup: str, seed: int, quick: bool, quick_data: str = "",
                  budget: float = 1.0) -> dict:
  s = SETUPS[setup]
  over = run_overrides(scaled_budget(s.claim, budget), seed,
                       {**QUICK, **QUICK_CLAIM[s.claim]} if quick else None, quick_data,
                       dict(s.overrides))
  over.setdefault("train.log_every", max(1, over["train.steps"] // 5))
  return over


def make_config(setup: str, seed: int, quick: bool = False, quick_data: str = "",
                budget: float = 1.0):
  """configs/<method>.py's default config with the claim's budget (x budget) applied."""
  s = SETUPS[setup]
  config = importlib.import_module(f"configs.{s.method}").get_config()
  over = overrides_for(setup, seed, quick, quick_data, budget)
  for key in over:
    *path, leaf = key.split(".")
    node = config
    for p in path:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"configs/{s.method}.py has no key {key!r} (claims budget override).")
  return with_overrides(config, over)


def config_hash(config) -> str:
  """The run cache key: the full config and the version of the dataset it reads
  (a regenerated embedded dataset must not reuse results of the old one)."""
  from jaxset.data import BUILDERS, builder_class
  name = config.data.name
  version = str(builder_class(name).VERSION) if name in BUILDERS else ""
  text = config.to_json_best_effort(sort_keys=True) + version
  return hashlib.sha1(text.encode()).hexdigest()[:10]


def _cpu_seconds() -> float:
  """User + system CPU time of this process (all its threads) so far."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def run_setup(setup: str, seed: int, workdir: Path, quick: bool = False,
              log: Callable[[str], None] = print, budget: float = 1.0) -> dict:
  """Trains and measures one (setup, seed), or reads its cached result."""
  from train import loop, tasks

  quick_data = str((workdir / "quick_data").absolute()) if quick else ""
  config = make_config(setup, seed, quick, quick_data, budget)
  name = f"{setup}_seed{seed}_{config_hash(config)}"
  cached = workdir / "results" / f"{name}.json"
  if cached.exists():
    result = json.loads(cached.read_text())
    log(f"  {setup} seed {seed}: cached ({cached})")
    return result
  log(f"  {setup} seed {seed}: training {config.train.steps} steps -> {workdir / 'runs' / name}")
  task = tasks.get(config.method)
  cpu0 = _cpu_seconds()
  t0 = time.perf_counter()
  summary = loop.train_and_evaluate(config, workdir / "runs" / name, task)
  t_train = time.perf_counter() - t0
  metrics = {k: float(v) for k, v in summary["after"].items()}
  units = {}
  if setup in EXTRA:
    extra = EXTRA[setup](task, summary["state"], config)
    units.update(extra.pop("units", {}))
    metrics.update(extra)
  tiers = proxy_tiers(task, summary["state"], config) if setup in PROXIES else None
  replicates = {}
  if setup in PROXIES:
    edc = quality_edc(task, summary["state"], config)
    replicates = edc.pop("replicates")
    metrics.update(edc)
  if setup in UNITS:
    units.update(UNITS[setup](task, summary["state"], config))
  units = {k: np.asarray(v, float).tolist() for k, v in units.items()}
  seconds = time.perf_counter() - t0
  cpu = _cpu_seconds() - cpu0
  result = {"setup": setup, "seed": seed, "method": config.method, "budget": budget,
            "overrides": {k: v for k, v in overrides_for(setup, seed, quick, quick_data,
                                                         budget).items()
                          if k != "data.cache_dir"},
            "steps": int(summary["step"]), "batch_size": int(config.train.batch_size),
            "seconds": seconds, "cpu_seconds": cpu, "train_and_eval_seconds": t_train,
            "metrics": metrics, "proxy_tiers": tiers, "units": units, "replicates": replicates,
            "config": json.loads(config.to_json_best_effort(sort_keys=True))}
  cached.parent.mkdir(parents=True, exist_ok=True)
  tmp = cached.with_suffix(".tmp")
  tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
  tmp.replace(cached)
  log(f"  {setup} seed {seed}: {seconds:.0f} s (CPU {cpu:.0f} s); " + ", ".join(
      f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
  return result


def enable_compilation_cache(path: Path) -> None:
  """JAX's persistent compilation cache (works on CPU): seeds 2.. reuse compilations."""
  import jax
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path.absolute()))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
