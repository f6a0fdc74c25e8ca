"""Flax Linen models: backbones and the networks (QAN, EQFace, NetVLAD, the margin-head face
model of AdaFace / ArcFace / CosFace / MagFace, CASN)."""
from jaxset.models.adaface import AdaFaceHead, MarginFaceModel
from jaxset.models.backbones import (
  BACKBONES,
  VGG16,
  FaceEmbedder,
  IResNet,
  IResNet50,
  IResNet100,
  ResNet,
  ResNet18,
  ResNet50,
  SmallCNN,
  create_backbone,
  normalize_images,
)
from jaxset.models.casn import CASN, CASNLossConfig, casn_loss
from jaxset.models.eqface import EQFace, QualityHead
from jaxset.models.heads import CosineClassifier, MarginHead, l2_normalize, safe_norm
from jaxset.models.netvlad import NetVLADPool, VPRModel
from jaxset.models.qan import QAN, QualityCNN
