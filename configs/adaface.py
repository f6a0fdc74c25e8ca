"""AdaFace (Kim et al., CVPR 2022): quality-adaptive margin from the feature norm.

Embedded default (offline, CPU, a few minutes):
  python -m train.main --config=configs/adaface.py
MS1M-V2 RecordIO with IResNet-100, as the paper (your local copy):
  python -m train.main --config=configs/adaface.py:ms1m --config.data.dir=/data/faces_emore
"""
import ml_collections

from configs.faces_base import face_config, ms1m_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = face_config()
  c.method = "adaface"
  c.model.head = "adaface"
  c.model.margin = 0.4              # m
  c.model.h = 0.333
  c.model.t_alpha = 0.01            # EMA weight of the batch statistics (paper momentum 0.99)
  if preset in (None, "", "default"):
    return c
  if preset == "ms1m":
    c = ms1m_preset(c)
    c.model.dropout_rate = 0.4      # AdaFace's embedding dropout
    return c
  raise ValueError(f"unknown preset {preset!r} for configs/adaface.py; use ms1m.")
