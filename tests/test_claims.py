"""benchmarks/claims.py: the held judgement, the table, the budgets, one --quick claim."""
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import claims


def _run(setup, seed, **metrics):
  return {"setup": setup, "seed": seed, "method": claims.SETUPS[setup].method,
          "overrides": {"train.steps": 10, "seed": seed}, "steps": 10, "batch_size": 8,
          "seconds": 2.0, "metrics": metrics}


def _edc(proxy, others, k, spread=0.001):
  """EDC metrics and replicates: pAUC proxy and each baseline's (others: name ->
  pAUC), with replicates of their difference spread around it."""
  rng = np.random.default_rng(k)
  pauc = {"random": 0.010, "sharpness": 0.009, "contrast": 0.009, "brightness": 0.010,
          "feature norm": 0.008, "oracle": 0.004, **others}
  metrics = {"edc_pauc_proxy": proxy, **{f"edc_pauc_{b}": v for b, v in pauc.items()}}
  reps = {f"edc_pauc_proxy_minus_{b}": (proxy - v + spread * rng.standard_normal(200)).tolist()
          for b, v in pauc.items()}
  return metrics, reps


def _results(n=3):
  """Synthetic per-seed metrics: QAN and NetVLAD-vs-GeM fail, everything else holds.
  Quality: EQFace's proxy beats every EDC baseline; QAN's loses to sharpness."""
  r = {s: [] for s in claims.SETUPS}
  for k in range(n):
    m, reps = _edc(0.0085, {"sharpness": 0.007}, k)
    r["qan"].append({**_run("qan", k, mu_spearman=-0.3 - 0.01 * k, set_pair_acc=0.70,
                            set_pair_acc_meanpool=0.72, **m), "replicates": reps})
    m, reps = _edc(0.005, {}, k)
    r["eqface"].append({**_run("eqface", k, quality_spearman=-0.7, erc_fnmr_before=0.1,
                               erc_fnmr_quality=0.05, erc_fnmr_random=0.1, **m),
                        "replicates": reps})
    m, reps = _edc(0.006, {}, k)
    r["adaface"].append({**_run("adaface", k, norm_spearman=-0.6, tier_severe_rank1=0.5, **m),
                         "replicates": reps})
    r["arcface"].append(_run("arcface", k, norm_spearman=-0.2, tier_severe_rank1=0.5))
    r["netvlad"].append(_run("netvlad", k, **{"recall@1": 0.80 + 0.01 * k}))
    r["netvlad_avg"].append(_run("netvlad_avg", k, **{"recall@1": 0.60}))
    r["netvlad_max"].append(_run("netvlad_max", k, **{"recall@1": 0.70}))
    r["netvlad_gem"].append(_run("netvlad_gem", k, **{"recall@1": 0.82}))
    r["casn"].append(_run("casn", k, rank1=0.6, mAP=0.5, id_attention_inconsistency=0.2))
    r["ide"].append(_run("ide", k, rank1=0.5, mAP=0.4, id_attention_inconsistency=0.3))
  return r


def test_judge_uses_the_mean_and_counts_the_seeds():
  j = claims.judge([-0.9, -0.8, -0.1], "<=", -0.5)
  assert j["held"] is True and j["seeds_held"] == 2 and j["n"] == 3
  assert j["mean"] == pytest.approx(-0.6) and j["std"] == pytest.approx(0.4358898944)
  j = claims.judge([-0.9, 0.1, 0.2], "<=", -0.5)
  assert j["held"] is False and j["seeds_held"] == 1
  # Equality passes ">=" (at least as accurate) but not ">" (beats).
  assert claims.judge([0.0, 0.0], ">=", 0.0)["held"] is True
  assert claims.judge([0.0, 0.0], ">", 0.0)["held"] is False
  # Missing seeds are left out; nothing measured is neither held nor not held.
  j = claims.judge([None, 0.3, float("nan")], ">", 0.0)
  assert j["n"] == 1 and j["held"] is True and j["std"] == 0.0
  assert claims.judge([None, None], ">", 0.0)["held"] is None
  with pytest.raises(ValueError, match="op must be one of"):
    claims.judge([1.0], "=>", 0.0)


def test_rows_are_judged_by_the_interval_rule():
  rows = claims.build_rows(_results())
  got = {(r.claim, r.judged): claims.verdict(r).split(":")[0] for r in rows}
  assert len(rows) == 20   # 4 EDC rows per quality method, 1 + 1 + 3 + 3 others
  # The quality claims are EDC pAUC against random and the image statistics.
  assert got[("1 QAN", "pAUC QAN mu - pAUC sharpness")] == "**contradicted**"
  assert got[("1 QAN", "pAUC QAN mu - pAUC random")] == "**held**"
  # -0.0005 with a replicate spread of 0.001: the interval reaches 0.
  assert got[("1 QAN", "pAUC QAN mu - pAUC contrast")] == "**inconclusive**"
  for base in claims.EDC_JUDGED:
    assert got[("2 EQFace", f"pAUC EQFace s_i - pAUC {base}")] == "**held**"
  eq = next(x for x in rows if x.judged == "pAUC EQFace s_i - pAUC random")
  assert len(eq.replicates) == 3 and "seeds and comparisons resampled" in claims.verdict(eq)
  assert got[("1 QAN", "quality pooling - mean pooling")] == "**contradicted**"
  # A tie is not evidence of "at least as accurate": the interval [0, 0] holds 0.
  assert got[("3 AdaFace", "AdaFace - ArcFace")] == "**inconclusive**"
  # -0.02, -0.01, 0.00: the interval reaches 0.
  assert got[("4 NetVLAD", "NetVLAD - GeM pooling")] == "**inconclusive**"
  assert got[("4 NetVLAD", "NetVLAD - max pooling")] == "**held**"
  assert got[("5 CASN", "CASN inconsistency - IDE inconsistency")] == "**held**"
  text = claims.render(_results(), [0, 1, 2], command="python -m benchmarks.claims",
                       wall_seconds=60.0)
  qan = next(l for l in text.splitlines() if l.startswith("| 1 QAN | quality pooling"))
  assert "quality pooling: 0.700 ± 0.000" in qan and "mean pooling: 0.720" in qan
  assert "quality pooling - mean pooling: -0.020 ± 0.000" in qan
  assert "**contradicted**: [-0.020, -0.020] (seeds resampled" in qan and "0/3 seeds" in qan
  for needed in ("python -m benchmarks.claims", "jax ", "wall time", "seed 2", "## Budgets",
                 "configs/casn.py", "## EDC of every quality source"):
    assert needed in text
  edc = text.split("## EDC of every quality source")[1].split("## Quality proxies")[0]
  oracle = next(l for l in edc.splitlines() if l.startswith("| EQFace | oracle |"))
  # The oracle is 0.001 below the proxy, one replicate spread: not decided.
  assert oracle.startswith("| EQFace | oracle | 0.0040 ± 0.0000 | +0.0010 [")
  assert oracle.endswith("| inconclusive |")
  norm = next(l for l in edc.splitlines() if l.startswith("| EQFace | feature norm |"))
  assert norm.endswith("| held |")


def test_one_seed_is_inconclusive_whatever_its_value():
  rows = claims.build_rows(_results(1))
  row = next(r for r in rows if r.judged == "NetVLAD - max pooling")
  assert claims.verdict(row).startswith("**inconclusive**")


def test_per_query_units_are_paired_and_resampled_within_seeds():
  rng = np.random.default_rng(0)
  r = _results(3)
  for k in range(3):
    hits = (rng.random(500) < 0.8).astype(float)
    r["netvlad"][k]["units"] = {"recall@1": hits.tolist()}
    # max pooling: NetVLAD's hits less 5% of them; GeM: the same hits.
    r["netvlad_max"][k]["units"] = {"recall@1": (hits * (rng.random(500) > 0.05)).tolist()}
    r["netvlad_gem"][k]["units"] = {"recall@1": hits.tolist()}
  rows = {x.judged: x for x in claims.build_rows(r)}
  mx, gem = rows["NetVLAD - max pooling"], rows["NetVLAD - GeM pooling"]
  assert len(mx.units) == 3 and mx.units[0].shape == (500,)
  assert claims.verdict(mx).startswith("**held**: [+0.0")
  assert "seeds and units resampled" in claims.verdict(mx)
  assert claims.verdict(gem).startswith("**inconclusive**: [+0.000, +0.000]")
  # Units on two of three seeds of a baseline: the row falls back to the per-seed values.
  for k in (0, 2):
    r["netvlad_avg"][k]["units"] = {"recall@1": [0.0] * 500}
  row = next(x for x in claims.build_rows(r) if x.judged == "NetVLAD - average pooling")
  assert row.units is None and "(seeds resampled" in claims.verdict(row)


def test_a_claim_without_its_baseline_has_no_comparison_row():
  r = _results(1)
  r["arcface"] = [None]  # the baseline's only run failed
  rows = claims.build_rows(r)
  assert [x.judged for x in rows if x.claim == "3 AdaFace"] == [
      f"pAUC AdaFace norm - pAUC {b}" for b in claims.EDC_JUDGED]


def test_method_and_baseline_share_the_budget():
  casn, ide = claims.make_config("casn", 1), claims.make_config("ide", 1)
  assert casn.train.steps == ide.train.steps == claims.BUDGETS["casn"]["train.steps"]
  assert casn.seed == ide.seed == 1
  assert (ide.casn.ia_weight, ide.casn.verification_weight, ide.casn.sa_weight) == (0, 0, 0)
  assert casn.casn.ia_weight > 0 and casn.casn.sa_weight > 0
  poolings = {claims.make_config(s, 0).model.pooling: claims.make_config(s, 0).train.steps
              for s in claims.CLAIM_SETUPS["netvlad"]}
  assert set(poolings) == {"netvlad", "avg", "max", "gem"}
  assert set(poolings.values()) == {claims.BUDGETS["netvlad"]["train.steps"]}
  a, b = claims.make_config("adaface", 0), claims.make_config("arcface", 0)
  assert (a.train.steps, a.train.batch_size) == (b.train.steps, b.train.batch_size)
  assert claims.config_hash(a) != claims.config_hash(claims.make_config("adaface", 1))


def test_quick_claim_end_to_end_then_from_the_cache(tmp_path, monkeypatch):
  args = ["--quick", "--seeds", "1", "--claims", "adaface", "--workdir", str(tmp_path / "w"),
          "--out", str(tmp_path / "claims.md"), "--compile_cache", ""]
  first = claims.main(args)   # --jobs 2 by default: AdaFace and ArcFace in two processes
  assert first["failures"] == []
  text = (tmp_path / "claims.md").read_text()
  judged = [l for l in text.splitlines() if l.startswith("| 3 AdaFace |")
            and "**inconclusive**" in l]   # one seed decides nothing
  assert "--quick run" in text and len(judged) == 5
  cached = sorted((tmp_path / "w" / "results").glob("*.json"))
  assert [p.name.split("_seed")[0] for p in cached] == ["adaface", "arcface"]
  saved = json.loads(cached[0].read_text())
  assert {"norm_spearman", "tier_severe_queries", "edc_pauc_proxy", "edc_pauc_oracle",
          "edc_pauc_sharpness"} <= set(saved["metrics"])
  reps = saved["replicates"]["edc_pauc_proxy_minus_random"]
  assert len(reps) == claims.EDC_RESAMPLES and np.isfinite(reps).all()
  # The per-query values behind the judged metric, for the paired intervals.
  severe = saved["units"]["tier_severe_rank1"]
  assert len(severe) >= saved["metrics"]["tier_severe_queries"] // 2 > 0
  assert np.mean(severe) == pytest.approx(saved["metrics"]["tier_severe_rank1"])
  tiers = saved["proxy_tiers"]
  assert tiers[0]["type"] == "clean" and sum(r["n"] for r in tiers) > 0
  table = text.split("## Quality proxies by tier")[1].split("## Budgets")[0]
  assert "| AdaFace norm | ArcFace norm |" in table and "| clean | 0 |" in table

  # A hand-written part below the mark survives a rewrite.
  (tmp_path / "claims.md").write_text(text + "\n" + claims.NOTES_MARK + "\nwhy it fails\n")

  # A second invocation trains nothing: every run comes from the result cache.
  from train import loop

  def no_training(*a, **k):
    raise AssertionError("trained although the result was cached")
  monkeypatch.setattr(loop, "train_and_evaluate", no_training)
  second = claims.main(args + ["--jobs", "1"])   # in this process, so the patch applies
  assert second["failures"] == []
  assert second["results"]["adaface"][0]["metrics"] == saved["metrics"]
  rewritten = (tmp_path / "claims.md").read_text()
  assert rewritten.count(claims.NOTES_MARK) == 1 and rewritten.endswith("why it fails\n")


def test_budget_curve_lists_each_judged_series_per_budget():
  low, high = _results(3), _results(1)
  high["qan"] = [_run("qan", 0, mu_spearman=-0.55, set_pair_acc=0.8,
                      set_pair_acc_meanpool=0.7)]
  text = claims.render_budget_curve({1.0: low, 3.0: high})
  mu = next(l for l in text.splitlines() if "quality pooling - mean pooling" in l)
  assert mu == ("| 1 QAN | quality pooling - mean pooling | > 0 | -0.020 (3 seeds) | "
                "0.100 (1 seed) |")
  assert text.splitlines()[0].endswith("| 1x | 3x |")
  # A stale cache entry (another config) is not read back as a budget.
  assert claims.other_budgets(Path("/nonexistent"), ["qan"], [0], False) == {}


def test_tiers_table_averages_the_seeds():
  r = {"qan": [{"proxy_tiers": [{"type": "clean", "lo": 0.0, "hi": 0.0, "n": 5,
                                 "mean": m, "std": 0.1},
                                {"type": "blur", "lo": 0.2, "hi": 0.5, "n": 2,
                                 "mean": m - 1, "std": 0.2}]} for m in (1.0, 2.0)]}
  lines = claims.render_tiers(r).splitlines()
  assert lines[0] == "| type | level | images | QAN mu |"
  assert lines[2] == "| clean | 0 | 5 | 1.500 |" and lines[3] == "| blur | [0.2, 0.5) | 2 | 0.500 |"
  assert lines[4] == "| clean: std within the tier | | | 0.100 |"


def test_budget_scales_every_step_count_and_only_those():
  assert claims.scaled_budget("qan", 1.0) == claims.BUDGETS["qan"]
  casn = claims.scaled_budget("casn", 3.0)
  assert casn == {"train.steps": 3 * claims.BUDGETS["casn"]["train.steps"],
                  "casn.warmup_steps": 3 * claims.BUDGETS["casn"]["casn.warmup_steps"]}
  config = claims.make_config("netvlad_gem", 0, budget=10)
  assert config.train.steps == 10 * claims.BUDGETS["netvlad"]["train.steps"]
  assert config.model.pooling == "gem" and config.train.ckpt_every == config.train.steps
  with pytest.raises(ValueError, match="budget must be > 0"):
    claims.scaled_budget("qan", 0)
  with pytest.raises(SystemExit):
    claims.parse_args(["--budget", "-1"])


def test_report_command_drops_machine_paths():
  from benchmarks.report import report_command
  argv = ["--workdir=/tmp/w", "--seeds", "5", "--out", "out/x.md", "--claims_workdir", "/a/b",
          "--budget=3"]
  assert report_command("benchmarks.claims", argv) == (
      "python -m benchmarks.claims --seeds 5 --budget=3")
  # An argument with a space is quoted, so the printed command runs as it reads.
  assert report_command("benchmarks.x", ["--ablations", "1000 steps"]) == (
      "python -m benchmarks.x --ablations '1000 steps'")


def test_baselines_table_reads_the_generated_reports(tmp_path):
  (tmp_path / "baselines.json").write_text(json.dumps({"rows": [
      {"method": "casn", "raw_pixels:rank1": 0.01, "untrained:rank1": 0.02,
       "raw_pixels:mAP": 0.03, "untrained:mAP": 0.04}]}))
  (tmp_path / "netvlad_baselines.json").write_text(json.dumps({"rows": [
      {"row": "netvlad", "mean": 0.7}, {"row": "raw pixels (mean-centred)", "mean": 0.26},
      {"row": "untrained network (random init)", "mean": 0.21}]}))
  lines = claims.render_baselines(_results(), tmp_path).splitlines()
  assert "| CASN (IA + SA) | rank1 | 0.010 | 0.020 | 0.600 ± 0.000 |" in lines
  assert "| NetVLAD | recall@1 | 0.260 | 0.210 | 0.810 ± 0.010 |" in lines
  # No report for the face methods: no row rather than a made-up baseline.
  assert not any(l.startswith("| EQFace") for l in lines)


def test_report_json_round_trip_renders_the_same_doc():
  r = _results(3)
  r["netvlad"][0]["units"] = {"recall@1": [1.0, 0.0, 1.0]}
  rep = claims.build_report(r, [0, 1, 2], command="python -m benchmarks.claims",
                            wall_seconds=60.0, load=(0.5, 1.0))
  again = json.loads(json.dumps(rep))
  text = claims.render_report(again)
  assert text == claims.render_report(rep)
  # The numbers are the runs' (rounded to 6 digits), not re-measured.
  assert again["results"]["qan"][1]["metrics"]["set_pair_acc"] == 0.7
  assert "| 1 QAN | quality pooling" in text and "2026" not in again["command"]
  # A hand edit of a number in the JSON changes the rendered doc (the test of
  # docs/claims.md against docs/claims.json can fail).
  again["results"]["casn"][0]["metrics"]["rank1"] = 0.9
  assert claims.render_report(again) != text
