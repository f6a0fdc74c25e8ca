"""The public surface: every op importable from jaxset.ops and from jaxset."""
import jaxset
from jaxset import ops


def test_every_op_is_exported_and_documented():
  names = set(ops.__all__)
  assert {"quality_pool", "segment_quality_pool", "mean_pool", "max_pool", "gem_pool",
          "netvlad", "vlad", "kmeans", "margin_logits", "eqface_logits", "adaface_logits",
          "set_triplet_loss", "weakly_supervised_ranking_loss", "verification_bce",
          "attention_consistency_loss", "grad_cam"} <= names
  for name in names:
    fn = getattr(ops, name)
    assert getattr(jaxset, name) is fn
    assert fn.__doc__ and len(fn.__doc__) > 40, name


def test_ops_import_no_flax():
  import subprocess
  import sys
  code = "import sys, jaxset.ops; print('flax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"
