"""Every measured number in hand-written prose comes from a generated report.

Prose: README.md, notebooks/README.md and docs/*.md, less their generated blocks
(benchmarks.report), their code blocks and, in a file a script writes whole
(it holds report.NOTES_MARK), everything above the mark. A measured number is
one printed with three or more decimals, as the reports print them. It must
equal, within the rounding of its printed digits, a value of a registered JSON
report (benchmarks.report.GENERATED) or a number that a script wrote (in a
generated block, or in a script-written file above its mark).
"""
import json
import re
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w.])[+-]?\d+\.\d{3,}(?!\w|\.\d)")  # a full stop may follow
ARXIV = re.compile(r"\b\d{4}\.\d{4,5}(v\d+)?\b")
# Files a script writes whole (their hand-written part, if any, below NOTES_MARK).
SCRIPT_WRITTEN = ("docs/aggregators.md", "docs/casn_diagnosis.md", "docs/claims.md",
                  "docs/netvlad_diagnosis.md", "docs/quality_diagnosis.md")
# (file, number as printed): why it is not a measurement.
NOT_MEASURED = {
    ("docs/evaluation.md", "0.99500"): "a quantile in a worked example of the EDC threshold",
    ("docs/conventions.md", "69.0776"): "-log(1e-30): the cap of Partial FC's loss",
}
# Files whose prose is known to cite numbers no current report holds, and why. The
# test fails once such a file is clean, so the entry is removed, never forgotten.
PENDING = {
    "docs/casn_diagnosis.md": "its notes cite runs of earlier versions (hand tables, a commit "
                              "id); regenerate with python -m benchmarks.casn_diagnosis and "
                              "rewrite them from the new report",
}


def _json_numbers(x, out):
  if isinstance(x, dict):
    for v in x.values():
      _json_numbers(v, out)
  elif isinstance(x, list):
    for v in x:
      _json_numbers(v, out)
  elif isinstance(x, (int, float)) and not isinstance(x, bool):
    out.append(float(x))
  return out


def _split(text: str, script_written: bool = False) -> tuple[str, str]:
  """(prose, generated text) of one markdown file."""
  generated = "\n".join(report.blocks(text).values())
  if script_written and report.NOTES_MARK not in text:
    return "", text
  if report.NOTES_MARK in text:
    above, below = text.split(report.NOTES_MARK, 1)
    generated += "\n" + above
    text = below
  text = re.sub(r"<!-- begin generated: (\S+) -->.*?<!-- end generated: \1 -->", "", text,
                flags=re.S)
  text = re.sub(r"```.*?```", "", text, flags=re.S)
  return ARXIV.sub("", text), generated


def _files(root: Path):
  return [root / "README.md", root / "notebooks" / "README.md",
          *sorted((root / "docs").glob("*.md"))]


def report_values(root: Path) -> list[float]:
  vals = []
  for path, _ in report.GENERATED.values():
    if (root / path).exists():
      _json_numbers(json.loads((root / path).read_text()), vals)
  for f in _files(root):
    if f.exists():
      written = str(f.relative_to(root)) in SCRIPT_WRITTEN
      vals += [float(m) for m in NUMBER.findall(_split(f.read_text(), written)[1])]
  return vals


def unsourced(root: Path, name: str, values: list[float]) -> list[str]:
  """The measured numbers of file `name`'s prose that no report holds."""
  prose, _ = _split((root / name).read_text(), name in SCRIPT_WRITTEN)
  bad = []
  for m in NUMBER.finditer(prose):
    s = m.group()
    half = 0.5 * 10 ** -len(s.split(".")[1]) + 1e-12
    if (name, s) in NOT_MEASURED:
      continue
    if not any(abs(abs(float(s)) - abs(v)) <= half for v in values):
      bad.append(s)
  return bad


@pytest.mark.parametrize("name", [str(f.relative_to(ROOT)) for f in _files(ROOT)])
def test_prose_numbers_come_from_reports(name):
  bad = unsourced(ROOT, name, report_values(ROOT))
  if name in PENDING:
    assert bad, f"{name} is clean now: remove it from PENDING"
    return
  assert not bad, (f"{name}: {bad} appear in hand-written prose but in no generated report "
                   "or script-written table; cite the report's number, or regenerate it")


def test_a_number_without_a_report_is_caught(tmp_path):
  (tmp_path / "docs").mkdir()
  (tmp_path / "notebooks").mkdir()
  # Above the mark: what a script wrote (the source); below it: prose.
  (tmp_path / "README.md").write_text(
      "Recall@1 0.747\n" + report.NOTES_MARK + "\nRecall@1 0.747, then 0.75 and 0.748.\n")
  (tmp_path / "notebooks" / "README.md").write_text(
      "Recall@1 is 0.7466 (arXiv 2303.13294).\n")
  values = report_values(tmp_path)
  # 0.748 is no report's number; 0.75 has two decimals (a setting, not checked).
  assert unsourced(tmp_path, "README.md", values) == ["0.748"]
  # 0.7466 claims a digit the report did not print (0.747 is 0.7465 .. 0.7475, but
  # 0.7466 says 0.74655 .. 0.74665); the arXiv id is not a measurement.
  assert unsourced(tmp_path, "notebooks/README.md", values) == ["0.7466"]
