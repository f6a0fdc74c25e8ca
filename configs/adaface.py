"""AdaFace (Kim et al., CVPR 2022): quality-adaptive margin from the feature norm.

Embedded default (offline, CPU, a few minutes):
  python -m train.main --config=configs/adaface.py
MS1M-V2 RecordIO with IResNet-100 as the paper, the classifier sharded over every
device (Partial FC; your local copy):
  python -m train.main --config=configs/adaface.py:ms1m --config.data.dir=/data/faces_emore
WebFace42M (2M identities; Partial FC: sharded classifier, 20% of classes sampled):
  python -m train.main --config=configs/adaface.py:webface --config.data.dir=/data/webface42m
"""
import ml_collections

from configs.faces_base import margin_head_config, with_face_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = margin_head_config("adaface", margin=0.4)   # m (h, t_alpha: faces_base)
  # At scale AdaFace adds dropout on the embedding.
  return with_face_preset(c, preset, "configs/adaface.py", {"model.dropout_rate": 0.4})
