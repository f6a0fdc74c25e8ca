"""benchmarks/casn_diagnosis.py: its --set parsing and the report's tables (no training)."""
import re

import ml_collections
import pytest

from benchmarks import casn_diagnosis as diag


def test_parse_sets_reads_literals_and_strings():
  assert diag.parse_sets(["casn.sa_weight=0.0", "casn.warmup_verification=none",
                          "model.num_parts=1"]) == {
      "casn.sa_weight": 0.0, "casn.warmup_verification": "none", "model.num_parts": 1}
  assert diag.parse_sets([]) == {}
  with pytest.raises(ValueError, match="key=value"):
    diag.parse_sets(["casn.sa_weight"])


def _cells(line):
  # Markdown cells: split on the pipes that are not escaped.
  return re.split(r"(?<!\\)\|", line)[1:-1]


def test_render_writes_one_cell_per_column():
  config = ml_collections.ConfigDict({"train": {"steps": 4}, "seed": 0, "casn": {
      "warmup_steps": 2, "warmup_verification": "head"}})
  rows = [{"step": s, "stage": "warmup" if s < 2 else "casn", "separation": -0.1 * s,
           **{f"{t}_norm": 1.0 + s for t in diag.TERMS},
           **{f"{t}_cos": 0.1 for t in diag.TERMS}, **{f"{t}_sep": 0.2 for t in diag.TERMS},
           **{k: 0.5 for k, _ in diag.STATE_COLUMNS}} for s in range(4)]
  rows[0].pop("sa_offset_dominates")  # a missing measurement leaves its cell empty
  abl = [{"name": name, "rank1": 0.1, "mAP": 0.2, "seconds": 3.0}
         for name, _, _ in diag.ABLATIONS]
  text = diag.render({"rows": rows}, abl, command="x", seconds=60.0, config=config,
                     sets={"casn.sa_weight": 0.0})
  assert "overrides: casn.sa_weight=0.0" in text
  tables = [[line for line in block.splitlines() if line.startswith("|")]
            for block in text.split("\n\n")]
  tables = [t for t in tables if t]
  assert [len(t) for t in tables] == [2 + len(rows), 2 + len(rows), 2 + len(abl)]
  widths = [len(_cells(t[0])) for t in tables]
  # step, stage, s, 4 norms, 3 cosines with id, 4 cosines with the separation.
  assert widths == [2 + 1 + 4 + 3 + 4, 2 + len(diag.STATE_COLUMNS), 5]
  for t, w in zip(tables, widths):
    assert all(len(_cells(line)) == w for line in t), t
  assert _cells(tables[1][2])[-1].strip() == ""
  assert _cells(tables[1][3])[-1].strip() == "0.500"
