"""EQFace (Liu et al., CVPR 2021): explicit quality head trained in three steps.

Embedded default (offline, CPU, a few minutes):
  python -m train.main --config=configs/eqface.py
MS1M-V2 RecordIO with IResNet-100, the classifier sharded over every device
(Partial FC; your local copy, train.rec read in place, validated on its lfw, cfp_fp
and agedb_30 .bin every 2000 steps, the best kept):
  python -m train.main --config=configs/eqface.py:ms1m --config.data.dir=/data/faces_emore
WebFace42M (2M identities; Partial FC: sharded classifier, 20% of classes sampled):
  python -m train.main --config=configs/eqface.py:webface --config.data.dir=/data/webface42m
A folder of identities (<dir>/<identity>/<image>), validated on the .bin sets in eval.dir:
  python -m train.main --config=configs/eqface.py:folder --config.data.dir=/data/my_faces \
      --config.eval.dir=/data/faces_emore
The EQFace code's choices instead of the paper's:
  --config.model.quality_form=official --config.model.quality_transform=official \
  --config.eqface.official_stage2=True
"""
import ml_collections

from configs.faces_base import face_config, with_face_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = face_config()
  c.method = "eqface"
  c.model.m1, c.model.m2, c.model.m3 = 1.0, 0.5, 0.0   # ArcFace margin inside loss (6)
  c.model.quality_form = "paper"        # FC-BN-ReLU-FC-Sigmoid on the embedding
  c.model.quality_hidden = 128
  c.model.quality_transform = "paper"   # row scale s_i * S; "official": S*clamp(s-0.2,0,1)*1.2
  c.eqface = ml_collections.ConfigDict()
  c.eqface.steps = (0.6, 0.15, 0.25)    # fractions of train.steps for steps 1, 2, 3
  c.eqface.cycles = 1                   # repeat steps 2-3 this many times (sec. 3.4)
  c.eqface.official_stage2 = False      # True: step 2 also trains the classifier (code)
  c.train.steps = 1000
  return with_face_preset(c, preset, "configs/eqface.py", {"model.quality_hidden": 512})
