"""ArcFace (Deng et al., CVPR 2019): the fixed-margin baseline of AdaFace and EQFace.

Embedded default (offline, CPU, a few minutes):
  python -m train.main --config=configs/arcface.py
CosFace instead: --config.model.head=cosface --config.model.margin=0.35
MS1M-V2 RecordIO with IResNet-100, the classifier sharded over every device
(Partial FC; your local copy):
  python -m train.main --config=configs/arcface.py:ms1m --config.data.dir=/data/faces_emore
WebFace42M (2M identities; Partial FC: sharded classifier, 20% of classes sampled):
  python -m train.main --config=configs/arcface.py:webface --config.data.dir=/data/webface42m
"""
import ml_collections

from configs.faces_base import margin_head_config, with_face_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = margin_head_config("arcface", margin=0.5)   # m2 (arcface) or m3 (cosface)
  return with_face_preset(c, preset, "configs/arcface.py")
