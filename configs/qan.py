"""QAN (Liu et al., CVPR 2017): quality aware network for set-to-set recognition.

Embedded default (offline, CPU, a few minutes):
  python -m train.main --config=configs/qan.py
MARS (video re-ID; your local copy), from ImageNet ResNet-50 weights as the paper:
  python -m jaxset.convert --arch=resnet50 --checkpoint=resnet50-0676ba61.pth \
      --out=resnet50.msgpack
  python -m train.main --config=configs/qan.py:mars --config.data.dir=/data/MARS \
      --config.model.pretrained=resnet50.msgpack
PRID2011 / iLIDS-VID: the same with :prid2011 / :ilids_vid (config.data.builder_config
split_0 .. split_9 picks one of the ten identity splits).
Video re-ID with mean and with quality (mu) pooling, on the benchmark's own splits:
  python -m train.eval --config=configs/qan.py:mars --workdir=runs/qan_mars \
      --config.eval.benchmark=video_reid --config.data.dir=/data/MARS

The quality branch trains with its own SGD (qan.quality_optimizer="sgd", the
paper's Caffe solver); "run" puts it on the run's Adam, under which mu
saturates or stalls (docs/conventions.md). Measured (docs/claims.md,
synthetic_identities 2.0.0, seeds 0-2, the claims budget): rho(mu,
degradation) -0.279 +- 0.012; set-pair accuracy with quality pooling 0.703
against mean pooling's 0.694 (+0.008 +- 0.023). At 3x (seed 0): rho -0.365,
0.845 against 0.835.
"""
import ml_collections

from configs.base import add_benchmark_keys, base_config


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = base_config()
  c.method = "qan"
  c.data.name = "synthetic_identities"
  c.data.image_size = (64, 32)
  c.data.k = 4                      # P x K batches in the softmax pretraining stage
  c.data.augment = True

  c.model.backbone = "small_cnn"
  c.model.feature_dim = 128
  c.model.embedding_dim = 128
  c.model.num_parts = 1             # >1: one quality score per horizontal part (official)
  c.model.quality_input = "trunk"   # the trunk's last map; "middle": paper fig. 2; "image": code
  c.model.quality_tap = 2           # the trunk block "middle" splits after
  c.model.quality_relu = False      # ReLUs in the quality CNN (the released code has none)
  c.model.pretrained = ""           # converted backbone weights (python -m jaxset.convert)

  c.qan = ml_collections.ConfigDict()
  c.qan.pretrain_fraction = 0.4     # single-image softmax stage (sec. 3.2)
  c.qan.sets_per_batch = 8          # anchor sets per step (plus as many pos. and neg.)
  c.qan.set_size = 8
  c.qan.set_size_range = (4, 8)     # variable set sizes, padded with masks; () = fixed
  c.qan.margin = 0.4                # triplet margin on L2-normalised set embeddings
  c.qan.softmax_weight = 0.0        # >0: keep a frame identity loss (official code)
  # The quality branch's solver (train/tasks/qan.py, Task.optimizer): "sgd",
  # momentum 0.9 at quality_lr on the run's schedule (the paper's Caffe solver);
  # "run": the run's Adam with its steps scaled by quality_lr_scale (at 1.0 Adam
  # drives mu towards saturation: docs/quality_diagnosis.md, qan_adam).
  c.qan.quality_optimizer = "sgd"
  c.qan.quality_lr = 0.1
  c.qan.quality_lr_scale = 0.1

  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.train.steps = 300
  c.train.batch_size = 64           # images per pretraining step (P x K)
  c.train.log_every = 50
  c.train.ckpt_every = 300
  c.eval.batch_size = 32            # sets per evaluation batch
  c.eval.best_metric = "set_rank1"
  add_benchmark_keys(c)
  if preset in (None, "", "default"):
    return c
  if preset in ("mars", "prid2011", "ilids_vid"):
    c.data.name = preset
    c.data.image_size = (256, 128)
    c.model.backbone = "resnet50"
    c.model.pretrained = ""         # give the converted ImageNet ResNet-50 (docstring)
    c.model.num_parts = 3
    c.model.feature_dim = 512
    c.model.embedding_dim = 512
    c.qan.margin = 1.2              # official code, with L2-normalised features
    c.qan.softmax_weight = 1.0
    c.optim.name = "sgd"
    c.optim.lr = 1e-3
    c.qan.quality_lr = 1e-3         # one SGD rate for the whole net, as the Caffe solver
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.optim.schedule = "step"
    c.train.steps = 40_000
    c.train.log_every = 100
    c.train.ckpt_every = 2000
    c.eval.every = 5000
    c.train.precision = "bfloat16"
    return c
  raise ValueError(
      f"unknown preset {preset!r} for configs/qan.py; use mars, prid2011 or ilids_vid.")
