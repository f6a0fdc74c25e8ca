"""benchmarks/retrieval.py --quick: every section runs and its checks hold."""
from benchmarks import retrieval


def test_quick_run_prints_every_section(capsys):
  rows = retrieval.main(["--quick"])
  text = capsys.readouterr().out
  assert "--quick run" in text
  whats = {r["what"] for r in rows}
  assert {"search ip top-20", "search l2 top-20", "approx_max_k ip top-20",
          "k-reciprocal re-rank"} <= whats
  assert any(w.startswith("sharded search, 8 fake devices") for w in whats)
  ours = [r for r in rows if r["what"].startswith("search") and r["impl"] == "jaxset"]
  for r in ours:  # the exact search finds what faiss finds (when faiss is there)
    assert "agree 1.0000" in r["note"] or "not installed" in r["note"]
  rr = [r for r in rows if r["impl"] == "jaxset (the same matrices)"]
  assert rr
  assert all(float(r["note"].split("|diff| ")[1]) < 1e-4 for r in rr)
  sharded = [r for r in rows if r["what"].startswith("sharded")][0]
  assert sharded["note"].endswith("True")
