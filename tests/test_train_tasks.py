"""The tasks' stage plans and per-stage objectives (no training)."""
import importlib

from train import tasks


def _casn(**over):
  c = importlib.import_module("configs.casn").get_config()
  for k, v in over.items():
    c.casn[k] = v
  return c


def test_casn_warmup_trains_identification_alone_by_default():
  task = tasks.get("casn")
  c = _casn()
  assert [(n, s, w) for n, s, w in task.schedule(c)] == [
      ("warmup", c.casn.warmup_steps, True), ("casn", c.train.steps - c.casn.warmup_steps, False)]
  warm, full = task.loss_config(c, warmup=True), task.loss_config(c)
  assert (warm.ia_weight, warm.verification_weight, warm.sa_weight) == (0.0, 0.0, 0.0)
  assert (full.ia_weight, full.verification_weight, full.sa_weight) == (
      c.casn.ia_weight, c.casn.verification_weight, c.casn.sa_weight)
  assert task.loss_config(_casn(warmup_verification=True), warmup=True).verification_weight == (
      c.casn.verification_weight)


def test_casn_ide_baseline_has_no_warmup_and_verification_alone_has_one():
  task = tasks.get("casn")
  ide = _casn(ia_weight=0.0, sa_weight=0.0, verification_weight=0.0)
  assert [n for n, _, _ in task.schedule(ide)] == ["casn"]
  ver = _casn(ia_weight=0.0, sa_weight=0.0)
  assert [n for n, _, _ in task.schedule(ver)] == ["warmup", "casn"]
  assert [n for n, _, _ in task.schedule(_casn(ia_weight=0.0, sa_weight=0.0,
                                               warmup_verification=True))] == ["casn"]
