"""MagFace (Meng et al., CVPR 2021): the feature magnitude as margin and quality.

The head is ArcFace with a per-sample margin m(a) = l_m + (u_m - l_m)(a - l_a)/(u_a - l_a)
on the magnitude a = ||f|| clipped to [l_a, u_a], plus the regulariser
lambda_g * (1/a + a/u_a^2), which pulls a up for easy samples; the magnitude
is then a quality score (jaxset.ops.margins.magface_logits). l_a, u_a, l_m,
u_m, lambda_g default to the official code's 10, 110, 0.45, 0.8, 35.

Embedded default (offline, CPU, a few minutes):
  python -m train.main --config=configs/magface.py
MS1M-V2 RecordIO with IResNet-100, the classifier sharded over every device
(Partial FC; your local copy, train.rec read in place, validated on its lfw, cfp_fp
and agedb_30 .bin every 2000 steps, the best kept):
  python -m train.main --config=configs/magface.py:ms1m --config.data.dir=/data/faces_emore
WebFace42M (2M identities; Partial FC: sharded classifier, 20% of classes sampled):
  python -m train.main --config=configs/magface.py:webface --config.data.dir=/data/webface42m
A folder of identities (<dir>/<identity>/<image>), validated on the .bin sets in eval.dir:
  python -m train.main --config=configs/magface.py:folder --config.data.dir=/data/my_faces \
      --config.eval.dir=/data/faces_emore
"""
import ml_collections

from configs.faces_base import margin_head_config, with_face_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = margin_head_config("magface", margin=0.0)  # the margin is m(a), not one number
  c.model.l_a = 10.0      # magnitude range [l_a, u_a]
  c.model.u_a = 110.0
  c.model.l_m = 0.45      # margin range [l_m, u_m] (radians)
  c.model.u_m = 0.8
  c.model.lambda_g = 35.0  # the regulariser's weight
  return with_face_preset(c, preset, "configs/magface.py")
