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

from configs.faces_base import face_config, ms1m_preset, webface_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = face_config()
  c.method = "adaface"
  c.model.head = "adaface"
  c.model.margin = 0.4              # m
  c.model.h = 0.333
  c.model.t_alpha = 0.01            # EMA weight of the batch statistics (paper momentum 0.99)
  if preset in (None, "", "default"):
    return c
  if preset in ("ms1m", "webface"):
    c = ms1m_preset(c) if preset == "ms1m" else webface_preset(c)
    c.model.dropout_rate = 0.4      # AdaFace's embedding dropout
    return c
  raise ValueError(f"unknown preset {preset!r} for configs/adaface.py; use ms1m or webface.")
