"""One source for every number: reports as JSON, docs' tables rendered from them.

A script that measures writes its report as JSON (write_json) and renders its
tables into a markdown file between two markers (render_block):

  <!-- begin generated: NAME -->
  ...
  <!-- end generated: NAME -->

Text outside the markers is written by hand and kept. GENERATED names, for
each block, the JSON report and the function that renders it, so
tests/test_reports.py re-renders every block of docs/ from the committed JSON
and fails on any difference: a table edited by hand, or a report regenerated
without its doc, is caught.
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

# block name -> (JSON report, "module:function" that renders the report as markdown).
# Strings, not imports: the scripts import this module, never the other way round.
GENERATED = {
    "baselines": ("docs/baselines.json", "benchmarks.baselines:render_report"),
}


def _markers(name: str) -> tuple[str, str]:
  return f"<!-- begin generated: {name} -->", f"<!-- end generated: {name} -->"


def write_json(path: Path, report: dict) -> None:
  """Writes `report` (sorted keys, one space indents, newline at the end) atomically."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
  tmp.replace(path)


def render_block(doc: Path, name: str, markdown: str) -> None:
  """Replaces block `name` of `doc` with `markdown`; appends the block if `doc` lacks it."""
  begin, end = _markers(name)
  block = f"{begin}\n{markdown.rstrip()}\n{end}"
  text = doc.read_text() if doc.exists() else ""
  pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
  if pattern.search(text):
    text = pattern.sub(lambda _: block, text, count=1)
  else:
    text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
  doc.write_text(text)


def blocks(text: str) -> dict[str, str]:
  """{name: the markdown between its markers} of every generated block in `text`."""
  found = re.findall(r"<!-- begin generated: (\S+) -->\n(.*?)\n<!-- end generated: \1 -->",
                     text, re.S)
  return dict(found)


def rendered(name: str, root: Path = Path(".")) -> str:
  """Block `name` as its renderer makes it from the committed JSON report."""
  if name not in GENERATED:
    raise KeyError(f"generated block {name!r} is not in benchmarks.reports.GENERATED "
                   f"({sorted(GENERATED)}): register its report and renderer there.")
  path, target = GENERATED[name]
  module, function = target.split(":")
  render = getattr(importlib.import_module(module), function)
  return render(json.loads((root / path).read_text())).rstrip()
