"""The methods: the one registry of names the loop, train/eval.py and benchmarks know.

Each method is a train.task.Task subclass, named here as "module:Class" and
imported on first use (so that `import train.tasks` loads no model). A new
method adds one line below, or calls `register` (docs/adding_a_method.md).
"""
from __future__ import annotations

import importlib

METHODS: dict[str, str | type] = {
    "netvlad": "train.tasks.netvlad:Task",
    "qan": "train.tasks.qan:Task",
    "eqface": "train.tasks.eqface:Task",
    "adaface": "train.tasks.adaface:Task",
    # ArcFace / CosFace and MagFace: configs of the margin-head face task.
    "arcface": "train.tasks.adaface:Task",
    "magface": "train.tasks.adaface:Task",
    "casn": "train.tasks.casn:Task",
}


def register(name: str, task: str | type) -> None:
  """Makes config.method = `name` train with `task` (a Task subclass or "module:Class")."""
  if name in METHODS and METHODS[name] != task:
    raise ValueError(f"method {name!r} is already registered as {METHODS[name]}; "
                     "pick another name.")
  METHODS[name] = task


def get(name: str):
  """A fresh Task of the method registered as `name`."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; one of {', '.join(METHODS)} "
                     "(a new one is added with train.tasks.register).")
  entry = METHODS[name]
  if isinstance(entry, str):
    module, cls = entry.split(":")
    entry = getattr(importlib.import_module(module), cls)
  return entry()
