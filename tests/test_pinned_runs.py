"""Pinned short runs of the README's main job: a refactor cannot silently change what it trains.

`python -m train.main --config=configs/netvlad.py` is deterministic on one machine
(two runs log the same losses bit for bit). A later commit can still move its
result without anyone noticing, so a short run of the same command (the default
config and embedded dataset, fewer steps, one feature-cache refresh inside them)
is pinned here: every logged loss and the recall before and after training.

After a change that is MEANT to alter training, regenerate the pins and say why in
the commit:

  JAXSET_UPDATE_PINS=1 python -m pytest tests/test_pinned_runs.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.train_helpers import cli_args, run_main

PINS = Path(__file__).with_name("pins.json")
# The default config, shortened: 16 steps, the hard-negative cache refreshed at
# steps 0 and 8 (every 32 queries of 4), so both mining paths are covered.
NETVLAD_SHORT = {"train.steps": 16, "train.log_every": 1, "train.ckpt_every": 16,
                 "train.progress_bar": False, "mining.refresh_every": 32}
# Float noise between two CPUs of the machine kind stays far below these; a
# changed trajectory moves the losses by percents within a few steps.
LOSS_RTOL = 2e-4
RECALL_ATOL = 0.0041  # one test query of 250


def _run(method: str, overrides: dict, workdir: Path, data_dir: Path) -> dict:
  over = {**overrides, "data.cache_dir": str(data_dir)}
  # One device, as the README's command on a plain machine (the tests' 8 fake
  # devices would change the batch placement, not the math, but pin what users run).
  res = run_main(cli_args(method, workdir, over), timeout=900, XLA_FLAGS="",
                 JAXSET_DATA_DIR=str(data_dir))
  assert res.returncode == 0, res.stderr[-3000:]
  losses, evals = {}, []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    rec = json.loads(line)
    if rec["split"] == "train":
      losses[str(rec["step"])] = rec["loss"]
    elif rec["split"] == "eval":
      evals.append({k: v for k, v in rec.items() if k.startswith("recall@")})
  return {"losses": losses, "recall_before": evals[0], "recall_after": evals[-1]}


def test_netvlad_default_short_run_is_pinned(tmp_path_factory):
  data_dir = Path(os.environ.get("JAXSET_PIN_DATA_DIR") or tmp_path_factory.mktemp("pin_data"))
  got = _run("netvlad", NETVLAD_SHORT, tmp_path_factory.mktemp("pin_run"), data_dir)
  pins = json.loads(PINS.read_text()) if PINS.exists() else {}
  if os.environ.get("JAXSET_UPDATE_PINS"):
    pins["netvlad_default_short"] = {"overrides": NETVLAD_SHORT, **got}
    PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
  want = pins["netvlad_default_short"]
  assert want["overrides"] == NETVLAD_SHORT, "the pinned overrides changed: regenerate the pins"
  assert sorted(got["losses"], key=int) == sorted(want["losses"], key=int)
  for step, loss in want["losses"].items():
    assert got["losses"][step] == pytest.approx(loss, rel=LOSS_RTOL), (
        f"step {step}: loss {got['losses'][step]} != pinned {loss}: the default NetVLAD run "
        "trains differently; find the change or regenerate the pins (see the module docstring)")
  for which in ("recall_before", "recall_after"):
    for k, v in want[which].items():
      assert got[which][k] == pytest.approx(v, abs=RECALL_ATOL), (which, k, got[which], v)
