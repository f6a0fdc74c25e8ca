"""Pinned short runs of the README's main job: a refactor cannot silently change what it trains.

`python -m train.main --config=configs/netvlad.py` is deterministic on one machine
(two runs log the same losses bit for bit). A later commit can still move its
result without anyone noticing, so a short run of the same command (the default
config and embedded dataset, a short backbone pretraining, 16 steps, the feature
cache refreshed at steps 0 and 8)
is pinned here. Judged: the losses of the first steps and the recall before
training, which hold across machines (JUDGED_STEPS says why not more); the
second refresh runs but its effect is machine-dependent, so it is not judged.

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
# The default config, shortened: the backbone pretraining cut to 256 views and
# 20 steps, 16 training steps, the hard-negative cache refreshed at steps 0 and 8
# (every 32 queries of 4), so both mining paths are covered.
NETVLAD_SHORT = {"train.steps": 16, "train.log_every": 1, "train.ckpt_every": 16,
                 "train.progress_bar": False, "mining.refresh_every": 32,
                 "pretrain.views": 256, "pretrain.steps": 20}
# Only the first steps are judged. The run is bit-for-bit deterministic on one
# machine, but two machines of this project's kind (both "AMD EPYC", 2 cores,
# the same wheels; XLA picks its CPU code by instruction set) start apart by
# float rounding: measured, the losses differ by 4e-7 (relative) at step 1,
# 2e-6 at step 2, 2e-5 at step 3, 1e-4 at step 4, 7e-4 at step 5, and the
# hard-negative argsorts turn that into percents by step 10 (-3.4 %) and the
# recall after 16 steps moves (R@10 0.376 vs 0.416). A change that is meant to
# or does alter training moves the first losses by percents, so steps 1..4 at
# rel 1e-3 (ten times the drift seen at step 4) catch it on any machine; the
# rest of the pinned trajectory is recorded in pins.json for comparison on the
# machine that wrote it, not judged.
JUDGED_STEPS = 4
LOSS_RTOL = 1e-3
RECALL_ATOL = 0.0011  # one test query of 1000


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
  for step in map(str, range(1, JUDGED_STEPS + 1)):
    loss = want["losses"][step]
    assert got["losses"][step] == pytest.approx(loss, rel=LOSS_RTOL), (
        f"step {step}: loss {got['losses'][step]} != pinned {loss}: the default NetVLAD run "
        "trains differently; find the change or regenerate the pins (see the module docstring)")
  # Before training: the initial model and the whole evaluation path (the same
  # on both machines measured). After 16 steps the recall is machine-dependent.
  for k, v in want["recall_before"].items():
    assert got["recall_before"][k] == pytest.approx(v, abs=RECALL_ATOL), (k, got, v)
