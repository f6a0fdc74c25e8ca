"""The layers hold (docs/design.md): no import runs back up a floor, and every
file a docstring or comment cites is in the repository."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> module prefixes it must not import (at module level or inside a function).
FORBIDDEN = {
    "jaxset/ops": ("flax", "jaxset.data", "jaxset.models", "jaxset.eval", "train"),
    "jaxset/models": ("train",),
    "jaxset/data": ("train",),
    "jaxset/eval": ("train",),
}


def imported_modules(source: str, package: str) -> set[str]:
  """Every module a source file imports; relative imports resolved in `package`."""
  names = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      names.add(base)
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


def violations(source: str, package: str, forbidden) -> list[str]:
  return sorted(m for m in imported_modules(source, package)
                if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_the_scanner_sees_every_kind_of_import():
  src = ("import flax.linen as nn\nfrom train import loop\n"
         "def f():\n  from jaxset.data import pipeline\n  from ..data import records\n")
  got = violations(src, "jaxset.ops", FORBIDDEN["jaxset/ops"])
  assert "flax.linen" in got and "train" in got and "jaxset.data" in got
  assert "jaxset.data.records" in got  # the relative import, resolved
  assert violations("import jax\nfrom jaxset.ops import _checks\n", "jaxset.ops",
                    FORBIDDEN["jaxset/ops"]) == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_import_runs_back_up_a_floor(layer):
  files = sorted((ROOT / layer).rglob("*.py"))
  assert files, f"no files under {layer}"
  bad = {}
  for path in files:
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = violations(path.read_text(), package, FORBIDDEN[layer])
    if found:
      bad[str(path.relative_to(ROOT))] = found
  assert not bad, f"{layer} must not import {FORBIDDEN[layer]}: {bad}"


def test_cited_files_are_in_the_repository():
  cited, missing = 0, []
  for folder in ("jaxset", "train", "configs", "benchmarks", "tests"):
    for path in (ROOT / folder).rglob("*.py"):
      text = path.read_text()
      if path.name != "test_layering.py":
        for name in ("REFERENCE.md", "DESIGN.md"):
          if name in text:
            missing.append(f"{path.relative_to(ROOT)} cites {name} (not in the repository)")
      for doc in re.findall(r"\bdocs/[\w.-]+\.md\b", text):
        cited += 1
        if not (ROOT / doc).is_file():
          missing.append(f"{path.relative_to(ROOT)} cites {doc}")
  assert not missing, missing
  assert cited >= 10  # the docstrings do point into docs/
