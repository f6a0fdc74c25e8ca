"""Report rendering shared by the benchmark scripts: numbers, the machine, kept notes."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def fmt(x, digits=3):
  """x with `digits` decimals, or "n/a" for None."""
  return "n/a" if x is None else f"{x:.{digits}f}"


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


NOTES_MARK = "<!-- Below this line: written by hand, kept when the script rewrites the file. -->"


def kept_notes(out: Path) -> str:
  """The hand-written part of an earlier `out` (from NOTES_MARK on), or ''."""
  if not out.exists():
    return ""
  text = out.read_text()
  at = text.find(NOTES_MARK)
  return "" if at < 0 else "\n" + text[at:]
