"""What a user can get wrong, and the faults a run meets: each gives a clear
error that names the problem and the fix, or a documented fallback, and loses
nothing.

Part 1 drives the shared loop in-process on the toy task of tests/test_loop.py
(fast): checkpoint damage of every kind, the NaN stop, a workdir of another
config. Part 2 runs `python -m train.main` / `python -m train.eval` on the
tiniest arcface config: a missing config file, a full disk, a damaged
checkpoint under train.eval. Part 3 calls the public ops with the inputs a
user plausibly passes by mistake.
"""
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxset import eval as E
from jaxset import ops
from tests.test_loop import ToyTask, toy_config
from tests.train_helpers import ROOT, cli_args, run_main, tiny_overrides
from train import checkpoints, loop

# --------------------------------------------------------------------------
# Part 1: checkpoints and the workdir, through the loop (toy task).


def _steps(workdir):
  return checkpoints.step_dirs(Path(workdir) / "checkpoints")


def _largest_file(step_dir: Path, under: str = "state") -> Path:
  return max((p for p in (step_dir / under).rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def _overwrite(path: Path, nbytes: int = 4096):
  data = bytearray(path.read_bytes())
  n = min(nbytes, len(data))
  data[:n] = bytes((i * 37 + 11) % 256 for i in range(n))
  path.write_bytes(bytes(data))


def _truncate(path: Path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_metadata(step_dir: Path):
  path = next(p for p in step_dir.rglob("_METADATA"))
  path.write_bytes(b"\xff\xfe\x00garbled" + path.read_bytes()[:7])


def _half_json(step_dir: Path):
  path = next(p for p in (step_dir / "data").rglob("*") if p.is_file())
  path.write_text(path.read_text()[: max(1, len(path.read_text()) // 2)])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """A finished toy run: checkpoints 5, 10 (keep 3), each with a digest."""
  wd = tmp_path_factory.mktemp("toy") / "run"
  c = toy_config(10, devices=1)
  c.eval.at_start = False
  loop.train_and_evaluate(c, wd, ToyTask())
  return wd, c


def test_every_checkpoint_gets_a_digest(toy_run):
  wd, _ = toy_run
  assert _steps(wd) == [5, 10]
  for step in (5, 10):
    assert checkpoints.verify(wd / "checkpoints", step) is True
    files = json.loads(checkpoints.digest_path(wd / "checkpoints", step).read_text())["files"]
    assert any(k.startswith("state/") for k in files) and any(k.startswith("data/") for k in files)


@pytest.mark.parametrize("damage", ["overwrite", "truncate", "metadata", "iterator_json"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(damage, toy_run, tmp_path, capsys):
  src, c = toy_run
  wd = tmp_path / "run"
  shutil.copytree(src, wd)
  step10 = wd / "checkpoints" / "10"
  {"overwrite": lambda: _overwrite(_largest_file(step10)),
   "truncate": lambda: _truncate(_largest_file(step10)),
   "metadata": lambda: _garble_metadata(step10),
   "iterator_json": lambda: _half_json(step10)}[damage]()
  with pytest.raises(checkpoints.DamagedCheckpoint):
    checkpoints.verify(wd / "checkpoints", 10)
  assert checkpoints.last_good_step(wd / "checkpoints") == 5
  out = loop.train_and_evaluate(c, wd, ToyTask())
  err = capsys.readouterr().err
  assert "checkpoint step 10" in err and "is damaged" in err and "resumed from step 5" in err
  assert str(step10) in err or "10.damaged-0" in err
  # The damaged step is kept aside, and the run re-did steps 6-10 from step 5.
  assert (wd / "checkpoints" / "10.damaged-0").is_dir()
  assert out["step"] == 10 and _steps(wd) == [5, 10]
  assert checkpoints.verify(wd / "checkpoints", 10) is True


def test_every_checkpoint_damaged_is_a_clear_error(toy_run, tmp_path):
  src, c = toy_run
  wd = tmp_path / "run"
  shutil.copytree(src, wd)
  for step in (5, 10):
    _overwrite(_largest_file(wd / "checkpoints" / str(step)))
  with pytest.raises(checkpoints.CheckpointError, match="no readable checkpoint in .*checkpoints"
                     ".*Nothing was deleted.*remove or rename"):
    loop.train_and_evaluate(c, wd, ToyTask())
  assert sorted(p.name for p in (wd / "checkpoints").iterdir() if p.is_dir()) == [
      "10.damaged-0", "5.damaged-0"]


def test_unverifiable_checkpoint_that_fails_to_read_falls_back(toy_run, tmp_path, capsys):
  src, c = toy_run
  wd = tmp_path / "run"
  shutil.copytree(src, wd)
  checkpoints.digest_path(wd / "checkpoints", 10).unlink()   # e.g. an older jaxset's step
  _garble_metadata(wd / "checkpoints" / "10")
  loop.train_and_evaluate(c, wd, ToyTask())
  err = capsys.readouterr().err
  assert "no digest manifest" in err and "could not be read" in err
  assert "resumed from step 5" in err


def test_intact_checkpoint_of_other_shapes_is_an_error_not_damage(toy_run, tmp_path):
  src, c = toy_run
  wd = tmp_path / "run"
  shutil.copytree(src, wd)

  class Wider(ToyTask):
    def create_state(self, config, rng):
      s = super().create_state(config, rng)
      return s.replace(params={"w": jnp.zeros((5,)), "b": jnp.zeros(())},
                       opt_state=s.tx.init({"w": jnp.zeros((5,)), "b": jnp.zeros(())}))

  with pytest.raises(checkpoints.CheckpointError, match="is intact .* does not restore"):
    loop.train_and_evaluate(c, wd, Wider())
  assert _steps(wd) == [5, 10]                                # nothing moved


class _DamageThenNaN(ToyTask):
  """Damages checkpoint 6 at step 7; the loss is NaN at step 8."""

  def __init__(self, workdir):
    super().__init__(poison_step=8)
    self.workdir = workdir

  # The task's refresh hook runs between steps: it damages the checkpoint there.
  def refresh_due(self, config, step):
    return step == 7

  def refresh(self, state, config):
    _overwrite(_largest_file(self.workdir / "checkpoints" / "6"))


def test_nan_stop_never_calls_a_damaged_checkpoint_last_good(tmp_path):
  c = toy_config(10, devices=1)
  c.eval.at_start = False
  c.train.ckpt_every = 2
  c.train.log_every = 2
  with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint is step 4 "):
    loop.train_and_evaluate(c, tmp_path, _DamageThenNaN(tmp_path))


def test_workdir_of_another_config_is_refused_before_anything_is_written(toy_run, tmp_path):
  src, c = toy_run
  wd = tmp_path / "run"
  shutil.copytree(src, wd)
  before = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
  other = toy_config(10, devices=1)
  other.eval.at_start = False
  other.model.dtype = "bfloat16"
  other.optim.lr = 0.5
  with pytest.raises(checkpoints.ConfigMismatchError) as e:
    loop.train_and_evaluate(other, wd, ToyTask())
  msg = str(e.value)
  assert "model.dtype: 'float32' there, 'bfloat16' now" in msg and "optim.lr" in msg
  assert "--workdir" in msg and "allow_config_change" in msg and "Nothing in it was changed" in msg
  after = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
  assert after == before
  # Schedules may change (a longer run), and the override resumes anyway.
  longer = toy_config(15, devices=1)
  longer.eval.at_start = False
  assert loop.train_and_evaluate(longer, wd, ToyTask())["step"] == 15
  other.train.allow_config_change = True
  other.model.dtype = "float32"
  assert loop.train_and_evaluate(other, wd, ToyTask())["step"] == 15


def test_disk_full_message_names_where():
  e = OSError(27, "File too large", "/runs/x/metrics.jsonl")
  msg = checkpoints.disk_full_message(e, Path("/runs/x"))
  assert msg.startswith("error: could not write /runs/x/metrics.jsonl: File too large")
  wrapped = ValueError('Error writing "/runs/x/checkpoints/3/state/d/abc": File too large')
  try:
    try:
      raise wrapped
    except ValueError as inner:
      raise RuntimeError("save failed") from inner
  except RuntimeError as outer:
    msg = checkpoints.disk_full_message(outer, Path("/runs/x"))
  assert "could not write /runs/x/checkpoints/3/state/d/abc: File too large" in msg
  assert checkpoints.disk_full_message(ValueError("shape mismatch"), Path("/runs/x")) is None


# --------------------------------------------------------------------------
# Part 2: the entry points, as subprocesses (tiniest arcface config).


def test_missing_config_file_is_one_message():
  r = run_main([sys.executable, "-m", "train.main", "--config=configs/nothere.py"], timeout=120)
  assert r.returncode == 2
  assert "configs/nothere.py" in r.stderr and "arcface.py" in r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_full_disk_is_one_message_naming_where(tiny_data, tmp_path):
  import subprocess

  from tests.train_helpers import env
  wd = tmp_path / "run"
  # Two steps, a checkpoint every step: the first save (8 MiB of state) fails
  # before the final evaluation would be compiled and run.
  args = cli_args("arcface", wd, tiny_overrides(tiny_data, 2, **{"train.devices": 1,
                                                                 "train.ckpt_every": 1}))
  # A 2 MiB file-size limit (ulimit -f counts KiB), set in a shell: no fork of
  # this multithreaded process with a preexec_fn.
  import shlex
  shell = f"ulimit -f 2048 && exec {' '.join(shlex.quote(str(a)) for a in args)}"
  r = subprocess.run(["bash", "-c", shell], cwd=ROOT, env=env(), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: could not write {wd}") and "File too large" in last
  assert "Traceback" not in r.stderr


def test_eval_of_a_damaged_checkpoint_falls_back_or_names_it(tiny_data, tmp_path):
  wd = tmp_path / "run"
  ov = tiny_overrides(tiny_data, 2, **{"train.devices": 1, "train.ckpt_every": 1})
  r = run_main(cli_args("arcface", wd, ov))
  assert r.returncode == 0, r.stderr[-3000:]
  _overwrite(_largest_file(wd / "checkpoints" / "2"))
  ev = [sys.executable, "-m", "train.eval", "--config=configs/arcface.py", f"--workdir={wd}"]
  ev += [f"--config.{k}={v}" for k, v in ov.items()]
  r = run_main(ev)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "checkpoint step 2" in r.stderr and "damaged" in r.stderr and "step 1" in r.stderr
  assert "step 1 (latest)" in r.stdout
  r = run_main(ev + ["--checkpoint=2"])
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert str(wd / "checkpoints" / "2") in r.stderr and "differs from the file saved" in r.stderr
  # A workdir of another config through the CLI: refused, config.json untouched.
  saved = (wd / "config.json").read_bytes()
  r = run_main(cli_args("arcface", wd, {**ov, "model.embedding_dim": 16}))
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert "model.embedding_dim" in r.stderr and "allow_config_change" in r.stderr
  assert (wd / "config.json").read_bytes() == saved


# --------------------------------------------------------------------------
# Part 3: the public ops and evaluators, called with plausible mistakes.
# Each must raise ValueError naming the argument and what to pass instead.

_X = jnp.ones((4, 3))
_Q = jnp.ones(4)
_C = jnp.ones((2, 3))
_COS = jnp.zeros((2, 3))
_LAB = jnp.array([0, 1])
_rng = np.random.default_rng(0)
_EMB = _rng.standard_normal((20, 3))
_SAME = np.arange(20) % 2 == 0

BAD_CALLS = [
    # dtypes: integer / complex arrays would be cast back (truncated means, int logits)
    ("int features", lambda: ops.quality_pool(_X.astype(jnp.int32), _Q),
     r"features must be a floating-point array; got dtype int32.*astype"),
    ("complex features", lambda: ops.mean_pool(_X.astype(jnp.complex64)),
     r"features must be a floating-point .*complex"),
    ("bool max_pool", lambda: ops.max_pool(_X.astype(bool)), r"features must be a floating"),
    ("int quality", lambda: ops.quality_pool(_X, jnp.ones(4, jnp.int32)),
     r"quality must be a float"),
    ("int descriptors", lambda: ops.netvlad(_X.astype(jnp.int32), _C, _C),
     r"descriptors must be a floating"),
    ("int cos", lambda: ops.margin_logits(_COS.astype(jnp.int32), _LAB, scale=1.0),
     r"cos must be a floating"),
    ("int anchor", lambda: ops.set_triplet_loss(*(jnp.ones((2, 3), jnp.int32),) * 3),
     r"anchor must be a floating"),
    ("float labels", lambda: ops.margin_logits(_COS, _LAB.astype(jnp.float32), scale=1.0),
     r"labels must be integers"),
    ("float segment ids", lambda: ops.segment_quality_pool(_X, _Q, jnp.zeros(4), 2),
     r"segment_ids must be integers"),
    # shapes
    ("1-D features", lambda: ops.quality_pool(jnp.ones(3), jnp.ones(3)),
     r"features must have at least 2 dims"),
    ("quality shape", lambda: ops.quality_pool(_X, jnp.ones(3)), r"quality must have shape \(4,\)"),
    ("mask shape", lambda: ops.netvlad(_X, _C, _C, mask=jnp.ones(3, bool)),
     r"mask must have shape"),
    ("centroid dim", lambda: ops.netvlad(_X, jnp.ones((2, 4)), jnp.ones((2, 4))),
     r"centroids must have shape .*D = descriptors.shape\[-1\] = 3"),
    ("cos rank", lambda: ops.margin_logits(jnp.zeros(3), jnp.array([0]), scale=1.0),
     r"cos must have shape"),
    ("eqface quality", lambda: ops.eqface_logits(_COS, _LAB, jnp.ones(3), scale=1.0),
     r"quality must have shape \(2,\)"),
    ("ranking mask", lambda: ops.weakly_supervised_ranking_loss(
        _X[:2], jnp.ones((2, 1, 3)), jnp.ones((2, 1, 3)), neg_mask=jnp.ones((2, 2), bool)),
     r"neg_mask must have shape"),
    ("pairs mismatch", lambda: E.roc_curve(np.ones(20), np.ones(19, bool)),
     r"Pair counts must agree"),
    # empty sets / sizes
    ("zero segments", lambda: ops.segment_quality_pool(_X, _Q, jnp.zeros(4, jnp.int32), 0),
     r"num_segments must be >= 1"),
    ("no clusters", lambda: ops.netvlad(_X, jnp.ones((0, 3)), jnp.ones((0, 3))),
     r"at least one cluster"),
    ("kmeans k", lambda: ops.kmeans(_X, 0, key=jax.random.key(0)), r"k must be in \[1, M=4\]"),
    ("kmeans key", lambda: ops.kmeans(_X, 2, key=0), r"key must be a typed PRNG key"),
    ("too few pairs", lambda: E.val_at_far(np.ones((3, 3)), np.ones((3, 3)), np.ones(3, bool)),
     r"Cannot split 3 pairs into 10 folds; lower folds"),
    ("no impostors", lambda: E.roc_curve(np.ones(4), np.ones(4, bool)), r"genuine and impostor"),
    # NaN / Inf in valid entries
    ("nan features", lambda: ops.quality_pool(_X.at[0, 0].set(jnp.nan), _Q),
     r"features holds 1 NaN"),
    ("nan p", lambda: ops.gem_pool(_X, p=float("nan")), r"p holds 1 NaN"),
    ("nan cos", lambda: ops.margin_logits(_COS.at[0, 0].set(jnp.nan), _LAB, scale=1.0),
     r"cos holds 1 NaN"),
    ("nan stats",
     lambda: ops.adaface_logits(_COS, jnp.ones(2), _LAB, {"mean": jnp.nan, "std": 1.0}),
     r"stats\['mean'\] holds"),
    ("nan embeddings", lambda: E.kfold_verification_accuracy(
        np.full((20, 3), np.nan), np.ones((20, 3)), _SAME), r"embeddings_a holds 60 NaN"),
    # values out of range
    ("label >= C", lambda: ops.margin_logits(_COS, jnp.array([0, 3]), scale=1.0),
     r"labels has 1 value\(s\) >= num_classes=3.*-1 to ignore"),
    ("negative quality", lambda: ops.quality_pool(_X, -_Q), r"negative value.*sigmoid"),
    ("cos not cosines", lambda: ops.margin_logits(jnp.full((2, 3), 5.0), _LAB, scale=1.0),
     r"cos holds values outside \[-1, 1\].*L2-normalise"),
    ("scale <= 0", lambda: ops.margin_logits(_COS, _LAB, scale=-1.0), r"scale must be in \(0"),
    ("scale nan", lambda: ops.eqface_logits(_COS, _LAB, jnp.ones(2), scale=float("nan")),
     r"scale must be in"),
    ("negative norms", lambda: ops.adaface_logits(_COS, -jnp.ones(2), _LAB,
                                                  ops.adaface_init_stats()),
     r"norms must be >= 0"),
    ("mask not 0/1", lambda: ops.quality_pool(_X, _Q, jnp.full(4, 0.5)), r"mask must hold 0/1"),
    ("same not 0/1", lambda: ops.verification_bce(jnp.zeros(3), jnp.array([0, 1, 2])),
     r"same must hold 0/1"),
    ("pair same not 0/1", lambda: ops.attention_consistency_loss(
        jnp.ones((1, 2, 2)), jnp.ones((1, 2, 2)), jnp.array([2])), r"same must hold 0/1"),
    ("threshold > 1", lambda: ops.attention_consistency_loss(
        jnp.ones((1, 2, 2)), jnp.ones((1, 2, 2)), jnp.ones(1), threshold=2.0),
     r"threshold must be in \[0, 1\]"),
    ("netvlad eps", lambda: ops.netvlad(_X, _C, _C, eps=-1.0), r"eps must be > 0"),
    ("far_target > 1", lambda: E.val_at_far(_EMB, _EMB[::-1], _SAME, far_target=2.0),
     r"far_target must be a false accept rate in \(0, 1\]"),
    ("fars > 1", lambda: E.tar_at_far(np.arange(20.0), _SAME, fars=(2.0,)),
     r"fars must be false accept rates"),
    ("same labels", lambda: E.kfold_verification_accuracy(_EMB, _EMB, np.full(20, 2)),
     r"same must hold booleans or 0/1"),
    # option typos
    ("grad typo", lambda: ops.margin_logits(_COS, _LAB, scale=1.0, grad="exakt"),
     r"grad must be one of"),
    ("fallback typo", lambda: ops.margin_logits(_COS, _LAB, scale=1.0, fallback="arc"),
     r"fallback must be one of"),
    ("transform typo", lambda: ops.eqface_logits(_COS, _LAB, jnp.ones(2), scale=1.0,
                                                quality_transform="offical"),
     r"quality_transform must be"),
    ("interpolation typo", lambda: E.val_at_far(_EMB, _EMB, _SAME, interpolation="scipy"),
     r"interpolation must be one of"),
    ("metric typo", lambda: E.pair_distances(_EMB, _EMB, metric="l2"), r"metric must be"),
    # the fused and sharded heads check as margin_logits does (issue 29)
    ("fused adaface nan norm", lambda: ops.adaface_cross_entropy(
        _COS, jnp.array([1.0, jnp.nan]), _LAB, ops.adaface_init_stats()), r"norms holds 1 NaN"),
    ("fused adaface norms [B, 2]", lambda: ops.adaface_cross_entropy(
        _COS, jnp.ones((2, 2)), _LAB, ops.adaface_init_stats()),
     r"norms must have shape \(2, 1\)"),
    ("fused adaface stats", lambda: ops.adaface_cross_entropy(_COS, jnp.ones(2), _LAB, {}),
     r"stats must be a dict"),
    ("fused eqface nan quality", lambda: ops.eqface_cross_entropy(
        _COS, _LAB, jnp.array([1.0, jnp.nan]), scale=8.0), r"quality holds 1 NaN"),
    ("fused margin scale < 0", lambda: ops.margin_cross_entropy(_COS, _LAB, scale=-1.0),
     r"scale must be in \(0"),
    ("fused margin label >= C", lambda: ops.margin_cross_entropy(
        _COS, jnp.array([0, 3]), scale=8.0), r"labels has 1 value\(s\) >= num_classes=3"),
    ("fused float labels", lambda: ops.margin_cross_entropy(
        _COS, _LAB.astype(jnp.float32), scale=8.0), r"labels must be integers"),
    ("fused margin m1 <= 0", lambda: ops.margin_cross_entropy(_COS, _LAB, scale=8.0, m1=0.0),
     r"m1 must be in \(0"),
    ("adaface t_alpha > 1", lambda: ops.adaface_logits(
        _COS, jnp.ones(2), _LAB, ops.adaface_init_stats(), t_alpha=2.0), r"t_alpha must be in"),
    ("magface l_a >= u_a", lambda: ops.magface_logits(_COS, jnp.ones(2), _LAB, l_a=5.0, u_a=5.0),
     r"0 < l_a < u_a"),
    ("magface negative norms", lambda: ops.magface_cross_entropy(_COS, -jnp.ones(2), _LAB),
     r"norms must be >= 0"),
    ("magface fallback typo", lambda: ops.magface_logits(_COS, jnp.ones(2), _LAB,
                                                         fallback="none"),
     r"fallback must be 'arcface' or 'easy'"),
    ("head typo", lambda: ops.head_logits("arcface", _COS, _LAB, scale=8.0),
     r"head must be one of \('margin', 'eqface', 'adaface', 'magface'\)"),
    ("head kwarg typo", lambda: ops.head_logits("margin", _COS, _LAB, scale=8.0, m=0.5),
     r"head 'margin' takes no \['m'\]"),
    ("pfc scale < 0", lambda: _pfc(head_kwargs={"scale": -1.0}), r"scale must be in \(0"),
    ("pfc label >= C", lambda: _pfc(labels=jnp.array([0, 6])),
     r"labels has 1 value\(s\) >= num_classes=5"),
    ("pfc float labels", lambda: _pfc(labels=jnp.array([0.0, 1.0])), r"labels must be integers"),
    ("pfc no head_kwargs", lambda: _pfc(head_kwargs=None), r"head 'margin' needs \['scale'\]"),
    ("pfc nan embeddings", lambda: _pfc(embeddings=jnp.full((2, 3), jnp.nan)),
     r"embeddings holds 6 NaN"),
    ("pfc adaface no norms", lambda: _pfc(head="adaface", head_kwargs={},
                                          stats=ops.adaface_init_stats()),
     r"head 'adaface' needs norms"),
    ("pfc head typo", lambda: _pfc(head="arcface"), r"head must be one of"),
    # the VPR losses
    ("salad nan feature", lambda: ops.salad_aggregate(
        jnp.full((1, 4, 3), jnp.nan), jnp.ones((1, 4, 2))), r"features holds 12 NaN"),
    ("ms alpha 0", lambda: ops.multi_similarity_loss(jnp.zeros((2, 2)), jnp.eye(2, dtype=bool),
                                                    ~jnp.eye(2, dtype=bool), alpha=0.0),
     r"alpha must be in \(0"),
    ("label_pair_masks [B, 1]", lambda: ops.label_pair_masks(jnp.zeros((3, 1), jnp.int32)),
     r"labels must have shape \(batch,\)"),
    ("label_pair_masks floats", lambda: ops.label_pair_masks(jnp.zeros(3)),
     r"labels must be integers"),
]


def _pfc(embeddings=None, labels=None, head="margin", head_kwargs=(("scale", 8.0),), **kw):
  """partial_fc_cross_entropy on a 1-device mesh, 5 classes padded to 8."""
  from jax.sharding import Mesh
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
  e = jnp.ones((2, 3)) if embeddings is None else embeddings
  lab = _LAB if labels is None else labels
  kw_head = dict(head_kwargs) if head_kwargs is not None else None
  return ops.partial_fc_cross_entropy(e, lab, jnp.ones((3, 8)), mesh=mesh, num_classes=5,
                                      head=head, head_kwargs=kw_head, **kw)


@pytest.mark.parametrize("name,call,match", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_gets_a_clear_error(name, call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_documented_finite_results_instead_of_errors():
  # Empty sets pool to zeros; masked padding may hold NaN; under jit nothing raises.
  assert not np.asarray(ops.quality_pool(jnp.ones((0, 3)), jnp.ones(0))).any()
  assert not np.asarray(ops.gem_pool(jnp.ones((2, 3)), jnp.zeros(2, bool), p=0.0)).any()
  pad = _X.at[3].set(jnp.nan)
  mask = jnp.array([True, True, True, False])
  for op in (lambda x: ops.quality_pool(x, _Q, mask), lambda x: ops.mean_pool(x, mask),
             lambda x: ops.max_pool(x, mask), lambda x: ops.gem_pool(x, mask),
             lambda x: ops.netvlad(x, _C, _C, mask=mask)):
    assert np.isfinite(np.asarray(op(pad))).all()
  out = jax.jit(lambda c: ops.margin_logits(c, _LAB, scale=1.0))(jnp.full((2, 3), 5.0))
  assert np.isfinite(np.asarray(out)).all()                  # under jit: clipped, finite
  # Empty batches: the fused and sharded heads, the miner (issue 29).
  stats = {"mean": jnp.float32(20.0), "std": jnp.float32(100.0)}
  ce, new = ops.adaface_cross_entropy(jnp.zeros((0, 3)), jnp.zeros(0), jnp.zeros(0, jnp.int32),
                                      stats)
  assert ce.shape == (0,) and float(new["mean"]) == 20.0 and float(new["std"]) == 100.0
  out = _pfc(embeddings=jnp.zeros((0, 3)), labels=jnp.zeros(0, jnp.int32))
  assert out.ce.shape == (0,) and not np.asarray(out.class_mask).any()
  pos, neg = ops.multi_similarity_miner(jnp.zeros((0, 0)), jnp.zeros((0, 0), bool),
                                        jnp.zeros((0, 0), bool))
  assert pos.shape == neg.shape == (0, 0)
  # EQFace's quality as [B, 1] is the same as [B].
  q = jnp.array([0.5, 0.9])
  np.testing.assert_array_equal(ops.eqface_cross_entropy(_COS, _LAB, q[:, None], scale=8.0),
                                ops.eqface_cross_entropy(_COS, _LAB, q, scale=8.0))
  # Under jit, a label >= num_classes is an ignored row of Partial FC: no loss, no gradient.
  from jax.sharding import Mesh
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))

  def loss(w, labels):
    return jnp.sum(ops.partial_fc_cross_entropy(
        jnp.ones((2, 3)), labels, w, mesh=mesh, num_classes=5, head_kwargs={"scale": 8.0}).ce)
  w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)), jnp.float32)
  got = jax.jit(jax.value_and_grad(loss))(w, jnp.array([0, 6]))
  want = jax.value_and_grad(loss)(w, jnp.array([0, -1]))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-7)
