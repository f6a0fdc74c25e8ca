"""benchmarks.reports: every generated block of docs/ equals its JSON report rendered."""
from pathlib import Path

import numpy as np
import pytest

from benchmarks import baselines, netvlad_baselines, report

ROOT = Path(__file__).resolve().parents[1]


def _doc_blocks():
  for doc in sorted((ROOT / "docs").glob("*.md")):
    for name, text in report.blocks(doc.read_text()).items():
      yield doc.name, name, text


def test_every_generated_block_in_docs_is_registered():
  names = [name for _, name, _ in _doc_blocks()]
  assert set(names) <= set(report.GENERATED), sorted(set(names) - set(report.GENERATED))
  # Each registered report that exists is shown somewhere.
  for name, (path, _) in report.GENERATED.items():
    if (ROOT / path).exists():
      assert name in names, f"{path} exists but no doc holds its block {name!r}"


@pytest.mark.parametrize("doc, name, text", list(_doc_blocks()))
def test_generated_block_equals_its_report(doc, name, text):
  assert text.rstrip() == report.rendered(name, ROOT), (
      f"docs/{doc}: block {name!r} differs from {report.GENERATED[name][0]} rendered; "
      "regenerate it with its script, never edit it by hand")


def _report(value):
  run = {"method": "casn", "seed": 0, "steps": 10,
         "raw_pixels": {"rank1": 0.1, "mAP": 0.05}, "untrained": {"rank1": 0.2, "mAP": 0.1},
         "trained": {"rank1": value, "mAP": 0.3}}
  return {"rows": baselines.summarize([run]), "runs": [run]}


def test_render_block_replaces_only_its_block_and_a_hand_edit_is_caught(tmp_path, monkeypatch):
  doc = tmp_path / "d.md"
  doc.write_text("# Title\n\nhand-written prose 0.5\n")
  report.render_block(doc, "baselines", baselines.render_report(_report(0.4)))
  report.render_block(doc, "baselines", baselines.render_report(_report(0.6)))
  text = doc.read_text()
  assert text.startswith("# Title\n\nhand-written prose 0.5\n")
  assert text.count("<!-- begin generated: baselines -->") == 1
  assert "| 0.600 |" in text and "| 0.400 |" not in text
  assert "| yes |" in text   # 0.6 >= max(0.1, 0.2) + 0.05

  (tmp_path / "docs").mkdir()
  report.write_json(tmp_path / "docs" / "baselines.json", _report(0.6))
  block = report.blocks(text)["baselines"]
  assert block == report.rendered("baselines", tmp_path)
  edited = block.replace("0.600", "0.610")
  assert edited != report.rendered("baselines", tmp_path)


def test_summarize_needs_the_margin_on_every_seed():
  runs = [{"method": "qan", "seed": s, "steps": 5,
           "raw_pixels": {"set_rank1": 0.0, "set_pair_acc": 0.5},
           "untrained": {"set_rank1": 0.1, "set_pair_acc": 0.6},
           "trained": {"set_rank1": v, "set_pair_acc": 0.7}} for s, v in ((0, 0.5), (1, 0.12))]
  (row,) = baselines.summarize(runs)
  assert row["trained:set_rank1"] == pytest.approx(0.31)
  assert row["clearly_beats_both"] is False
  (row,) = baselines.summarize(runs[:1])
  assert row["clearly_beats_both"] is True


def _place_runs(name_hits: dict) -> dict:
  return {name: [{"seed": s, "recall@1": float(np.mean(h)), "hits": list(h)}
                 for s, h in enumerate(hits)] for name, hits in name_hits.items()}


def test_netvlad_baselines_judges_each_row_by_the_paired_interval():
  rng = np.random.default_rng(0)
  nv = [(rng.random(400) < 0.7).astype(int) for _ in range(3)]
  # max pooling misses 15% of what NetVLAD finds, seed by seed: a clear, paired gap.
  worse = [h * (rng.random(400) > 0.15) for h in nv]
  rows = _place_runs({"netvlad": nv, "raw pixels (mean-centred)": [nv[0] * 0],
                      "max pooling, trained the same way": worse,
                      "gem pooling, trained the same way": nv})
  summary = netvlad_baselines.summarize(rows)
  by = {e["row"]: e for e in summary}
  assert by["max pooling, trained the same way"]["verdict"] == "held"
  assert by["gem pooling, trained the same way"]["verdict"] == "inconclusive"  # identical
  assert by["raw pixels (mean-centred)"]["netvlad_minus_row"]["estimate"] == pytest.approx(
      np.mean([h.mean() for h in nv]))
  checks = {c["check"]: c["passed"] for c in netvlad_baselines.bar(summary, [])}
  assert checks["NetVLAD Recall@1 >= 0.6"] is True
  assert checks["NetVLAD above max pooling (interval above 0)"] is True
  assert checks["NetVLAD above gem pooling (interval above 0)"] is False
  rep = {"command": "python -m benchmarks.netvlad_baselines", "split": "val", "queries": 400,
         "rows": summary, "isa": [], "bar": netvlad_baselines.bar(summary, []),
         "train_wall_s": [1.0, 2.0]}
  text = netvlad_baselines.render_report(rep)
  assert "| gem pooling, trained the same way |" in text and "| inconclusive |" in text
  # A row without NetVLAD's seeds cannot be paired.
  rows["max pooling, trained the same way"] = rows["max pooling, trained the same way"][1:] + [
      {"seed": 7, "recall@1": 0.5, "hits": list(worse[0])}]
  with pytest.raises(ValueError, match="no run of seed 0"):
    netvlad_baselines.summarize(rows)
