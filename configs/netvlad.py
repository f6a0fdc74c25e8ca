"""NetVLAD (Arandjelovic et al., CVPR 2016): weakly supervised place recognition.

Embedded default (offline, CPU, a few minutes):
  python -m train.main --config=configs/netvlad.py
Pittsburgh 30k with VGG16, as the paper (your local copy of the dataset):
  python -m train.main --config=configs/netvlad.py:pitts30k \
      --config.data.dir=/data/pittsburgh --config.model.pretrained=vgg16.msgpack
Baselines with the same backbone and budget: --config.model.pooling=avg|max|gem
Later aggregators (docs/aggregators.md): --config.model.pooling=salad|mixvpr|boq|convap
GSV-Cities-style training (P places x K views, multi-similarity loss):
  python -m train.main --config=configs/netvlad.py --config.model.pooling=boq \
      --config.train.mode=pk
"""
import ml_collections

from configs.base import base_config


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = base_config()
  c.method = "netvlad"
  c.data.name = "synthetic_places"
  c.data.image_size = (64, 64)

  c.model.backbone = "small_cnn"
  # small_cnn only (the presets' vgg16 trains whole):
  c.model.widths = (16, 32, 64, 128)  # channels of its 4 conv blocks
  c.model.frozen_blocks = 3         # fine-tune the last conv block and the pooling only
  c.model.pooling = "netvlad"       # or avg | max | gem (the paper's baselines)
  c.model.num_clusters = 64         # K
  c.model.assignment = "paper"      # w = 2 alpha c, b = -alpha |c|^2; "official": v1
  c.model.normalize_input = True
  c.model.whiten_dim = 0            # PCA-whitening of evaluation descriptors (0: none)
  c.model.pretrained = ""           # converted backbone weights (python -m jaxset.convert)
  # The later aggregators (jaxset/models/aggregators.py, which lists the papers'
  # sizes), shrunk for the 8x8x128 map of small_cnn on 64x64 images.
  c.model.salad = ml_collections.ConfigDict(dict(
      num_clusters=16, cluster_dim=64, token_dim=64, score_hidden=128, feature_hidden=128,
      token_hidden=128, num_iters=3, use_token=True))   # paper: 64, 128, 256, 512, 512, 512
  c.model.mixvpr = ml_collections.ConfigDict(dict(
      out_channels=256, out_rows=4, mix_depth=4, mlp_ratio=1.0))  # paper: 1024, 4, 4, 1
  c.model.boq = ml_collections.ConfigDict(dict(
      proj_channels=128, num_queries=32, num_layers=2, row_dim=8))  # paper: 512, 32, 2, 32
  c.model.convap = ml_collections.ConfigDict(dict(out_channels=256, s1=2, s2=2))  # paper: 512

  # Backbone pretraining on embedded labelled views (ImageNet's stand-in; see
  # train/tasks/netvlad.pretrained_backbone), cached: steps = 0 trains from scratch.
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.views = 2000
  c.pretrain.steps = 300
  c.pretrain.batch_size = 64
  c.pretrain.lr = 1e-3
  c.pretrain.seed = 0

  c.kmeans = ml_collections.ConfigDict()
  c.kmeans.num_images = 500         # official: 100 descriptors from each of 500 images
  c.kmeans.descriptors_per_image = 100
  c.kmeans.iters = 20
  # Train-mode passes (batches of eval.batch_size database images) that set the
  # BatchNorm running statistics before k-means: a backbone trained from scratch
  # otherwise gets centroids for its init statistics (mean 0, var 1), not for
  # the descriptors training and evaluation see. 0 for pretrained backbones.
  c.kmeans.bn_calibration_batches = 0

  c.tuples = ml_collections.ConfigDict()
  c.tuples.num_positives = 4        # potential positives per query (within pos_radius)
  c.tuples.num_negatives = 10       # paper: 10 hardest
  c.tuples.negative_pool = 1000     # paper: from 1000 random far database images
  c.tuples.pos_radius = 10.0        # non-trivial potential positives (m)
  c.tuples.neg_radius = 25.0        # negatives are farther than this (m)

  c.mining = ml_collections.ConfigDict()
  c.mining.enabled = True
  # Queries between feature-cache refreshes: the paper's 1000 is a tenth of
  # an epoch of Pittsburgh; a default run sees only 2400 queries, and with a
  # backbone trained from scratch the cache goes stale fast. The default run
  # (python -m train.main --config=configs/netvlad.py, 600 steps), jax 0.10.2,
  # on the project's 2-core machines (all named "AMD EPYC"): Recall@1
  # 0.156 -> 0.368, R@5 0.316 -> 0.568 on one with AVX-512 (fresh clone at
  # e20f949, two runs logging the same losses bit for bit); 0.156 -> 0.256,
  # R@5 0.480 on another, also bit for bit run after run; 0.232 was reported
  # on a third. No op is nondeterministic on one machine. Between machines XLA
  # compiles its CPU kernels for the host's instruction set, so the first loss
  # differs by 4e-7 (relative), and 600 steps of hard-negative argsorts over
  # float16 features grow that into different negatives and another recall.
  # tests/test_pinned_runs.py pins the first steps, which agree across machines.
  c.mining.refresh_every = 1000
  # Positives: the num_positives potential positives nearest the query in the
  # cache (official code: the single best); False = num_positives random ones.
  c.mining.positives = True

  # train.mode = "pk": P places x K views with the multi-similarity loss and
  # miner (train/tasks/place_pk.py) instead of tuples with a feature cache.
  c.pk = ml_collections.ConfigDict()
  c.pk.places = 15                  # P: 15 x 4 = 60 images a step, as 4 tuples of 1+4+10
  c.pk.views = 4                    # K (GSV-Cities: 4)
  c.pk.query_radius = 10.0          # a training query joins the nearest place this close
  c.pk.min_views = 2
  c.ms = ml_collections.ConfigDict()
  # GSV-Cities' setting (alpha 1, beta 50, base 0, miner epsilon 0.1); the
  # MS paper's is alpha 2, beta 50, lambda 1 (jaxset.ops.multi_similarity defaults).
  c.ms.alpha = 1.0
  c.ms.beta = 50.0
  c.ms.base = 0.0
  c.ms.epsilon = 0.1
  c.ms.mine = True

  c.loss = ml_collections.ConfigDict()
  c.loss.margin = 0.1
  c.loss.squared = True             # paper; False = plain distance of the PyTorch ports

  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.train.steps = 1000
  c.train.mode = "tuples"           # or "pk" (see c.pk)
  c.train.batch_size = 4            # queries (tuples) per step, as the paper
  c.train.log_every = 25
  c.train.ckpt_every = 500

  c.eval.split = "test"
  c.eval.recall_ns = (1, 5, 10, 20)
  c.eval.pos_radius = 25.0
  c.eval.batch_size = 128
  c.eval.best_metric = "recall@1"

  if preset in (None, "", "default"):
    return c
  if preset in ("pitts30k", "pitts250k"):
    c.data.name = "pittsburgh30k" if preset == "pitts30k" else "pittsburgh250k"
    c.data.image_size = (480, 640)
    c.model.backbone = "vgg16"
    c.model.assignment = "official"
    c.kmeans.bn_calibration_batches = 0  # VGG16 has no BatchNorm; weights are pretrained
    c.tuples.num_positives = 10
    c.mining.refresh_every = 1000   # paper
    c.optim.name = "sgd"
    c.optim.lr = 1e-3               # VGG16 + NetVLAD: 0.001, halved every 5 epochs
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-3
    c.optim.schedule = "step"
    c.optim.milestones = tuple(i / 6 for i in range(1, 6))
    c.optim.gamma = 0.5
    epochs, queries = 30, (7416 if preset == "pitts30k" else 7824)
    c.train.steps = epochs * queries // c.train.batch_size
    c.train.log_every = 100
    c.train.ckpt_every = 2000
    c.eval.split = "val"
    c.eval.every = 2000
    c.eval.batch_size = 32
    c.model.dtype = "bfloat16"
    return c
  raise ValueError(f"unknown preset {preset!r} for configs/netvlad.py; use pitts30k or pitts250k.")
