"""Converted torch face weights (python -m jaxset.convert), scored by train.eval.

The architecture and the input convention are config keys; each released
family has a preset:
  insightface  arcface_torch IResNet (default): RGB, (x - 127.5) / 127.5
  adaface      AdaFace's net.py IR (official adaface_ir*.ckpt): BGR,
               (x - 127.5) / 127.5, subsampling shortcut (backbones.ADAFACE_KWARGS)
  mxnet        the MXNet-era insightface model zoo: RGB, (x - 127.5) / 128

AdaFace IR-101 on the .bin sets of an insightface data folder:
  python -m jaxset.convert --arch=iresnet100 --checkpoint=adaface_ir101_ms1mv2.ckpt \\
      --out=ir101.msgpack --allow_pickle
  python -m train.eval --config=configs/pretrained.py:adaface --weights=ir101.msgpack \\
      --config.model.backbone=iresnet100 --config.eval.benchmark=face_bin \\
      --config.eval.dir=/data/faces_emore
IJB-C 1:1 and 1:N: --config.eval.benchmark=ijb --config.eval.dir=/data/IJB_release/IJBC
"""
import ml_collections

from configs.faces_base import face_config

CONVENTIONS = {
    "insightface": {"input_scale": 127.5, "bgr": False, "pool_shortcut": False},
    "adaface": {"input_scale": 127.5, "bgr": True, "pool_shortcut": True},
    "mxnet": {"input_scale": 128.0, "bgr": False, "pool_shortcut": False},
}


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = face_config()
  c.method = "pretrained"
  c.data.image_size = (112, 112)
  c.model.backbone = "iresnet50"      # iresnet50 | iresnet100 (jaxset.convert --arch)
  c.model.embedding_dim = 512
  preset = preset or "insightface"
  if preset not in CONVENTIONS:
    raise ValueError(f"unknown preset {preset!r} for configs/pretrained.py; use one of "
                     f"{', '.join(CONVENTIONS)}.")
  c.model.convention = preset
  for k, v in CONVENTIONS[preset].items():
    c.model[k] = v
  c.eval.benchmark = "face_bin"
  c.eval.at_start = False
  return c
