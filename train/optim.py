"""Optimisers and schedules from config.optim, as the papers train."""
from __future__ import annotations

import optax


def schedule(cfg, total_steps: int):
  """config.optim.schedule: constant | cosine | step (lr x gamma at milestones)."""
  warmup = int(cfg.get("warmup_steps", 0))
  if cfg.schedule == "constant":
    main = optax.constant_schedule(cfg.lr)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1))
  elif cfg.schedule == "step":
    # Milestones are fractions of the run (papers give epochs; fractions survive
    # changing the run length).
    bounds = {int(f * total_steps) - warmup: cfg.gamma for f in cfg.milestones}
    main = optax.piecewise_constant_schedule(cfg.lr, bounds)
  else:
    raise ValueError(f"config.optim.schedule={cfg.schedule!r}; use constant, cosine or step.")
  if warmup:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])
  return main


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """config.optim.name: sgd (momentum, nesterov) | adam | adamw, with clipping."""
  lr = schedule(cfg, total_steps)
  if cfg.name == "sgd":
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay
                      else optax.identity(),
                      optax.sgd(lr, momentum=cfg.momentum or None,
                                nesterov=cfg.get("nesterov", False)))
  elif cfg.name == "adam":
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay
                      else optax.identity(), optax.adam(lr))
  elif cfg.name == "adamw":
    opt = optax.adamw(lr, weight_decay=cfg.weight_decay)
  else:
    raise ValueError(f"config.optim.name={cfg.name!r}; use sgd, adam or adamw.")
  if cfg.get("clip_norm"):
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
  return opt
