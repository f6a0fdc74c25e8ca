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
         "def f():\n  from jaxset.data import images\n  from ..data import records\n")
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


# --------------------------------------------------------------------------
# No import cycle among the project's modules (late imports inside functions
# count: they are how a cycle hides).

PACKAGES = ("jaxset", "train", "benchmarks")


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
  """{dotted module name: file} of every .py under the packages."""
  out = {}
  for pkg in packages:
    for path in sorted((root / pkg).rglob("*.py")):
      parts = path.relative_to(root).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = path
  return out


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
  """module -> the project modules it imports (a `from pkg import name` counts
  as importing pkg.name when that is a module, else pkg)."""
  files = module_files(root, packages)
  graph = {}
  for mod, path in files.items():
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    edges = set()
    for name in imported_modules(path.read_text(), package):
      while name and name not in files:
        name = name.rpartition(".")[0]
      if name and name != mod:
        edges.add(name)
    # `from pkg import sub` names pkg too; the edge that matters is pkg.sub.
    graph[mod] = {e for e in edges if not any(f.startswith(e + ".") for f in edges)}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None (iterative DFS, colours)."""
  colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
  for start in sorted(graph):
    if colour[start]:
      continue
    stack = [(start, iter(sorted(graph[start])))]
    path = [start]
    colour[start] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        colour[node] = 2
        stack.pop()
        path.pop()
      elif colour.get(child) == 1:
        return path[path.index(child):] + [child]
      elif colour.get(child) == 0:
        colour[child] = 1
        path.append(child)
        stack.append((child, iter(sorted(graph[child]))))
  return None


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
  pkg = tmp_path / "benchmarks"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from benchmarks import b\n")
  (pkg / "b.py").write_text("def f():\n  from benchmarks.c import g\n")
  (pkg / "c.py").write_text("import benchmarks.a\n")
  (pkg / "d.py").write_text("from benchmarks import a\n")
  graph = import_graph(tmp_path, ("benchmarks",))
  assert graph["benchmarks.a"] == {"benchmarks.b"}
  cycle = find_cycle(graph)
  assert cycle is not None and set(cycle) == {"benchmarks.a", "benchmarks.b", "benchmarks.c"}
  (pkg / "c.py").write_text("import json\n")
  assert find_cycle(import_graph(tmp_path, ("benchmarks",))) is None


def test_no_import_cycle():
  graph = import_graph(ROOT)
  assert len(graph) > 50
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


# benchmarks/: a small library (run building and the run cache, measures,
# report rendering, timing helpers) and scripts that import it, never each other.
BENCHMARK_LIBRARY = ("benchmarks.common", "benchmarks.measures", "benchmarks.report",
                     "benchmarks.runs", "benchmarks.workloads")


def test_benchmark_scripts_import_the_library_not_each_other():
  graph = import_graph(ROOT)
  bad = {mod: sorted(e for e in edges if e.startswith("benchmarks.")
                     and e not in BENCHMARK_LIBRARY)
         for mod, edges in graph.items() if mod.startswith("benchmarks.")}
  assert not {k: v for k, v in bad.items() if v}, bad
  for lib in BENCHMARK_LIBRARY:
    assert (ROOT / (lib.replace(".", "/") + ".py")).is_file(), lib
