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
  # Face benchmarks (train/eval_faces.py), also run while training when
  # eval.benchmark is set: the .bin validation of insightface's callback.
  c.eval.sets = ""            # face_bin: .bin stems "lfw,cfp_fp"; "" = every .bin in eval.dir
  c.eval.flip = True          # add the mirrored image's embedding (insightface's flip test)
  c.eval.far = 1e-3           # face_bin: the FAR of VAL@FAR
  c.eval.val_interpolation = "insightface"  # or "distinct_far" (jaxset.eval.val_at_far)
  c.eval.resize = False       # resize the benchmark's images to data.image_size
  c.eval.ijb_norm = False     # ijb: eval_ijbc's N flag (keep each image feature's norm)
  c.eval.ijb_detector = False  # ijb: D flag (weight image features by detector score)
  c.eval.ijb_align = True     # ijb: align loose crops with the 5 landmarks (112x112)
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
  # train.rec read in place through grain (jaxset.data.recordio.RecordioSource):
  # the first step starts in seconds. data.name=mxnet_recordio copies it into
  # array_record first instead (tfds builder).
  c.data.name = "recordio"
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
  bin_validation(c, every=2000)
  return c


def bin_validation(c: ml_collections.ConfigDict, every: int,
                   sets: str = "lfw,cfp_fp,agedb_30") -> ml_collections.ConfigDict:
  """insightface's verification callback: every `every` steps the .bin sets
  (in eval.dir, default data.dir: an insightface training folder holds them)
  are scored with the flip test, and the best checkpoint is kept by their
  mean accuracy."""
  c.eval.benchmark = "face_bin"
  c.eval.sets = sets
  c.eval.every = every
  c.eval.at_start = False
  c.eval.best_metric = "bin_acc_mean"
  return c


def folder_preset(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A folder of identities (<data.dir>/<identity>/<image>, any image size,
  resized to 112x112), insightface's recipe with IResNet-50 and an
  unsharded classifier; validation on the .bin files in eval.dir."""
  c = ms1m_preset(c)
  c.data.name = "face_folder"
  c.model.backbone = "iresnet50"
  c.model.classifier.shards = 1
  c.train.batch_size = 128
  c.train.steps = 100_000           # set to epochs x images / batch_size for your data
  bin_validation(c, every=2000, sets="")
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
  ms1m_preset / webface_preset / folder_preset on top of c and then `large`, the method's own
  dotted changes to the large-scale recipe ({"model.dropout_rate": 0.4})."""
  if preset in (None, "", "default"):
    return c
  presets = {"ms1m": ms1m_preset, "webface": webface_preset, "folder": folder_preset}
  if preset not in presets:
    raise ValueError(f"unknown preset {preset!r} for {config_file}; use ms1m, webface or "
                     "folder.")
  c = presets[preset](c)
  return with_overrides(c, large or {})
