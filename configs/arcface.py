"""ArcFace (Deng et al., CVPR 2019): the fixed-margin baseline of AdaFace and EQFace.

Embedded default (offline, CPU, a few minutes):
  python -m train.main --config=configs/arcface.py
CosFace instead: --config.model.head=cosface --config.model.margin=0.35
MS1M-V2 RecordIO with IResNet-100, the classifier sharded over every device
(Partial FC; your local copy, train.rec read in place, validated on its lfw, cfp_fp
and agedb_30 .bin every 2000 steps, the best kept):
  python -m train.main --config=configs/arcface.py:ms1m --config.data.dir=/data/faces_emore
WebFace42M (2M identities; Partial FC: sharded classifier, 20% of classes sampled):
  python -m train.main --config=configs/arcface.py:webface --config.data.dir=/data/webface42m
A folder of identities (<dir>/<identity>/<image>), validated on the .bin sets in eval.dir:
  python -m train.main --config=configs/arcface.py:folder --config.data.dir=/data/my_faces \
      --config.eval.dir=/data/faces_emore
"""
import ml_collections

from configs.faces_base import margin_head_config, with_face_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = margin_head_config("arcface", margin=0.5)   # m2 (arcface) or m3 (cosface)
  return with_face_preset(c, preset, "configs/arcface.py")
