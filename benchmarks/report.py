"""Report rendering shared by the benchmark scripts: numbers, the machine, kept notes,
the command line, and one source for every number.

One source: a script that measures writes its report as JSON (write_json) and
renders its tables into a markdown file between two markers (render_block):

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

import contextlib
import importlib
import json
import os
import platform
import re
import shlex
from pathlib import Path


def fmt(x, digits=3):
  """x with `digits` decimals, or "n/a" for None."""
  return "n/a" if x is None else f"{x:.{digits}f}"


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  with contextlib.suppress(OSError):   # no /proc (macOS): platform's name stays
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


NOTES_MARK = "<!-- Below this line: written by hand, kept when the script rewrites the file. -->"


def kept_notes(out: Path) -> str:
  """The hand-written part of an earlier `out` (from NOTES_MARK on), or ''."""
  if not out.exists():
    return ""
  text = out.read_text()
  at = text.find(NOTES_MARK)
  return "" if at < 0 else "\n" + text[at:]


# Flags that name a folder or file of the machine that ran a report: they do not change
# its numbers, and a reader has none of those paths.
PATH_FLAGS = ("--workdir", "--out", "--doc", "--json", "--claims_workdir")


def report_command(module: str, argv: list[str]) -> str:
  """The command line a report prints: `python -m <module>` with argv, less PATH_FLAGS.

  >>> report_command("benchmarks.claims", ["--workdir=/tmp/w", "--seeds", "3", "--out", "x.md"])
  'python -m benchmarks.claims --seeds 3'
  """
  kept, skip = [], False
  for arg in argv:
    if skip:
      skip = False
      continue
    name = arg.split("=", 1)[0]
    if name in PATH_FLAGS:
      skip = "=" not in arg
      continue
    kept.append(arg)
  # Quoted as a shell needs them (an argument with a space stays one argument).
  return " ".join([f"python -m {module}", *map(shlex.quote, kept)])


# block name -> (JSON report, "module:function" that renders the report as markdown).
# Strings, not imports: the scripts import this module, never the other way round.
GENERATED = {
    "baselines": ("docs/baselines.json", "benchmarks.baselines:render_report"),
    "claims": ("docs/claims.json", "benchmarks.claims:render_report"),
    "netvlad_baselines": ("docs/netvlad_baselines.json",
                          "benchmarks.netvlad_baselines:render_report"),
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
    raise KeyError(f"generated block {name!r} is not in benchmarks.report.GENERATED "
                   f"({sorted(GENERATED)}): register its report and renderer there.")
  path, target = GENERATED[name]
  module, function = target.split(":")
  render = getattr(importlib.import_module(module), function)
  return render(json.loads((root / path).read_text())).rstrip()
