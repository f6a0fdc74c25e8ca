"""One module per method; `get(name)` returns its Task."""
import importlib

METHODS = ("netvlad", "qan", "eqface", "adaface", "arcface", "casn")


def get(name: str):
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; one of {', '.join(METHODS)}.")
  return importlib.import_module(f"train.tasks.{name}").Task()
