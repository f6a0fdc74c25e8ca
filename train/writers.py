"""Where a run's numbers go: TensorBoard events, a JSON-lines file, the console."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def fmt(metrics: dict) -> str:
  """'recall@1=0.412  recall@5=0.700' for the console."""
  parts = []
  for k, v in metrics.items():
    parts.append(f"{k}={v:.4f}" if isinstance(v, (float, np.floating)) else f"{k}={v}")
  return "  ".join(parts)


def before_after_table(before: dict, after: dict) -> str:
  """A metric-by-metric table of the untrained and trained model."""
  keys = [k for k in after if k in before and isinstance(after[k], (int, float))]
  w = max([len(k) for k in keys] + [6])
  lines = [f"{'metric':{w}s}  {'before':>8s}  {'after':>8s}  {'change':>8s}",
           "-" * (w + 30)]
  for k in keys:
    lines.append(f"{k:{w}s}  {before[k]:8.4f}  {after[k]:8.4f}  {after[k] - before[k]:+8.4f}")
  return "\n".join(lines)


class MetricWriter:
  """TensorBoard event files (tensorboardX, no TensorFlow) plus metrics.jsonl."""

  def __init__(self, workdir: Path, enabled: bool = True):
    self.enabled = enabled
    self.workdir = Path(workdir)
    if not enabled:
      return
    from tensorboardX import SummaryWriter
    self.tb = SummaryWriter(str(self.workdir / "tensorboard"))
    self.jsonl = open(self.workdir / "metrics.jsonl", "a")

  def announce(self, config, workdir: Path) -> None:
    if not self.enabled:
      return
    (self.workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    self.info(
        f"method {config.method} on {config.data.name}\n"
        f"  checkpoints: {workdir / 'checkpoints'} (best: {workdir / 'best'})\n"
        f"  metrics:     {workdir / 'metrics.jsonl'}\n"
        f"  tensorboard: tensorboard --logdir {workdir / 'tensorboard'}\n"
        f"  config:      {workdir / 'config.json'}")

  def info(self, msg: str) -> None:
    if self.enabled:
      print(msg, file=sys.stderr, flush=True)

  def scalars(self, step: int, values: dict, prefix: str) -> None:
    if not self.enabled:
      return
    numeric = {k: float(v) for k, v in values.items()
               if isinstance(v, (int, float, np.floating, np.integer))}
    for k, v in numeric.items():
      self.tb.add_scalar(f"{prefix}/{k}", v, step)
    self.jsonl.write(json.dumps({"step": step, "split": prefix, "time": time.time(),
                                 **numeric}) + "\n")
    self.jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
      self.jsonl.close()


class _NoBar:
  def update(self, n=1): pass
  def set_postfix(self, **kw): pass
  def write(self, s): print(s, file=sys.stderr, flush=True)
  def close(self): pass


def progress(total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
  """A tqdm bar with loss, examples/s and ETA, or a silent stand-in."""
  if not enabled:
    return _NoBar()
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
              file=sys.stderr, mininterval=1.0)
