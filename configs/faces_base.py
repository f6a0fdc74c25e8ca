"""Keys shared by the face-recognition configs (AdaFace, ArcFace, EQFace)."""
import ml_collections

from configs.base import base_config, with_overrides


def face_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.data.name = "synthetic_identities"
  c.data.image_size = (64, 32)
  c.data.k = 4                      # images per identity in a P x K batch
  c.data.augment = True
  c.data.flip = True

  c.model.backbone = "small_cnn"
  c.model.embedding_dim = 128
  c.model.dropout_rate = 0.0
  c.model.scale = 32.0              # s; 64 in the papers with 512-D embeddings
  c.model.margin_grad = "exact"     # or "straight_through" (current insightface)
  c.model.pretrained = ""
  # Partial FC (train/partial_fc.py): the classifier split by class over
  # `shards` devices (1: unsharded; -1: every device), each step's softmax
  # over all positive classes plus sampled negatives, sample_rate of each
  # shard's classes (1: every class).
  c.model.classifier = ml_collections.ConfigDict()
  c.model.classifier.shards = 1
  c.model.classifier.sample_rate = 1.0
  c.model.classifier.update_unsampled = False  # True: optimiser also steps unsampled rows
  c.model.classifier.loss_cap = 0.0            # 0: none; 69.0776 = insightface's -log(1e-30)
  # Classes of a shard whose cosines (against the gathered batch) exist at
  # once, forward and backward (jaxset.ops.partial_fc); 0: ceil(K / shards),
  # K the shard's softmax classes. Larger is faster, smaller leaner.
  c.model.classifier.chunk_classes = 0
  c.train.mesh.model = c.model.classifier.get_ref("shards")

  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 50
  c.train.steps = 800
  c.train.batch_size = 64
  c.train.log_every = 50
  c.train.ckpt_every = 400
  c.eval.batch_size = 256
  c.eval.best_metric = "pair_acc"
  return c


def margin_head_config(head: str, margin: float) -> ml_collections.ConfigDict:
  """face_config() for train/tasks/adaface.py's task, which AdaFace and its
  fixed-margin baselines (ArcFace, CosFace) share: the head and its margin
  (m; m2 for arcface, m3 for cosface), and AdaFace's h and EMA weight t_alpha
  (paper momentum 0.99), which the fixed-margin heads leave unused."""
  c = face_config()
  c.method = head
  c.model.head = head
  c.model.margin = margin
  c.model.h = 0.333
  c.model.t_alpha = 0.01
  return c


def ms1m_preset(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """MS1M-style training as insightface / AdaFace: IResNet, 112x112, SGD.

  The 85k-class classifier is sharded over every device (Partial FC at
  sample_rate 1, as insightface's MS1MV2 configs).
  """
  c.data.name = "mxnet_recordio"
  c.model.classifier.shards = -1
  c.model.classifier.sample_rate = 1.0
  c.data.image_size = (112, 112)
  c.data.k = 2
  c.model.backbone = "iresnet100"
  c.model.embedding_dim = 512
  c.model.scale = 64.0
  c.train.precision = "bfloat16"
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "step"
  c.optim.milestones = (12 / 26, 20 / 26, 24 / 26)  # AdaFace: epochs 12, 20, 24 of 26
  c.optim.gamma = 0.1
  c.optim.warmup_steps = 0
  c.train.batch_size = 512
  c.train.steps = 26 * 5_800_000 // 512
  c.train.log_every = 100
  c.train.ckpt_every = 5000
  c.eval.every = 5000
  return c


def webface_preset(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """WebFace42M (2M identities, RecordIO) as insightface's Partial FC configs:
  the MS1M recipe with the classifier sharded over every device and 20% of
  each shard's classes sampled per step; 20 epochs of 42.5M images."""
  c = ms1m_preset(c)
  c.model.classifier.sample_rate = 0.2
  c.optim.milestones = (10 / 20, 16 / 20, 18 / 20)
  c.train.steps = 20 * 42_500_000 // c.train.batch_size
  return c


def with_face_preset(c: ml_collections.ConfigDict, preset: str | None, config_file: str,
                     large: dict | None = None) -> ml_collections.ConfigDict:
  """The presets every face config has: c itself (None, "" or "default"), or
  ms1m_preset / webface_preset on top of c and then `large`, the method's own
  dotted changes to the large-scale recipe ({"model.dropout_rate": 0.4})."""
  if preset in (None, "", "default"):
    return c
  if preset not in ("ms1m", "webface"):
    raise ValueError(f"unknown preset {preset!r} for {config_file}; use ms1m or webface.")
  c = ms1m_preset(c) if preset == "ms1m" else webface_preset(c)
  return with_overrides(c, large or {})
