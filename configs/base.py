"""Keys every config shares (docs/design.md, conventions); method files fill them in."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = ""
  c.seed = 0
  # True: jax.distributed.initialize() before training (multi-host; reads the
  # coordinator address from the cluster environment or JAX_COORDINATOR_ADDRESS).
  c.distributed = False

  c.data = ml_collections.ConfigDict()
  c.data.name = ""            # a key of jaxset.data.BUILDERS
  c.data.dir = ""             # the user's local copy of a real dataset (manual_dir)
  c.data.cache_dir = ""       # prepared array_record files; "" = ~/.cache/jaxset/datasets
  c.data.builder_config = ""  # tfds BuilderConfig name ("" = the builder's default)
  c.data.image_size = (64, 64)
  # Re-ID data without a validation split (Market-1501, DukeMTMC-reID, CUHK03-NP,
  # MARS): this fraction of the training identities, drawn by holdout_seed, is
  # left out of training and becomes the query/gallery that eval.split = "val"
  # scores (train/tasks/common.held_out_splits; 0 = off).
  c.data.holdout_identities = 0.0
  c.data.holdout_seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "small_cnn"

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 0
  c.optim.milestones = (0.5, 0.75)
  c.optim.gamma = 0.1
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  # The precision policy (README, "GPU and TPU"): "float32", or
  # "bfloat16": convolutions, matmuls and activations in bfloat16; parameters,
  # optimiser state, BatchNorm and EMA statistics, norms, softmax, margins and
  # losses in float32. No loss scaling: bfloat16 has float32's exponent range.
  c.train.precision = "float32"
  c.train.batch_size = 64
  c.train.log_every = 50
  c.train.ckpt_every = 500
  c.train.keep_checkpoints = 3
  c.train.progress_bar = True
  c.train.devices = 0         # 0: every device; n: the first n (1-vs-8 checks)
  # Device mesh (train/meshes.py): model = 1 is the 1-D data-parallel mesh;
  # model = n > 1 (-1: every device) adds a 'model' axis for Partial FC.
  c.train.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
  # True: resume a workdir whose config.json differs in model/data/optim keys
  # (train/checkpoints.py refuses that by default).
  c.train.allow_config_change = False
  # The models' compute dtype is the policy's: one value under two names
  # (setting either sets both), so a workdir refuses a precision change on
  # resume like any model change (train/checkpoints.py).
  c.model.dtype = c.train.get_ref("precision")

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0            # 0: only at the end
  c.eval.at_start = True      # evaluate the untrained model too (before/after table)
  c.eval.batch_size = 256
  c.eval.best_metric = ""
  # Which held-out split evaluation reads: "test" (measured once, for the results) or
  # "val" (disjoint identities / places, for every choice: recipes, thresholds,
  # early stopping). train/tasks/common.evaluation_split maps the names.
  c.eval.split = "test"
  # python -m train.eval: a benchmark of train/evaluators.py's BENCHMARKS run on
  # the files in eval.dir ("" = the method's own evaluation on config.data).
  c.eval.benchmark = ""
  c.eval.dir = ""
  # benchmark=embed: the split of config.data to embed (eval.dir: a folder of
  # images instead), written to --out in chunks of eval.chunk rows (resumable).
  c.eval.embed_split = "train"
  c.eval.chunk = 10000
  return c


def with_overrides(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """`c` with dotted overrides ({"train.steps": 3, ...}) applied in place."""
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = c
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def add_benchmark_keys(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The keys of train.eval's reid / video_reid / places benchmarks (train/eval_reid.py)."""
  c.eval.dataset = ""          # the benchmark's dataset ("" = data.name), read from eval.dir
  c.eval.builder_config = ""   # e.g. split_3 of prid2011 / ilids_vid, labeled of cuhk03_np
  c.eval.reid_metric = "euclidean"  # or "cosine" (same ranking on L2-normalised features)
  c.eval.weights_pooling = "avg"    # --weights: global pooling of the converted backbone
  c.eval.panorama_nms = False  # places: one hit per panorama (Tokyo 24/7's 12 cutouts)
  # places: the set scored (eval.split is what training validates on); Tokyo 24/7
  # has test only, MSLS val only.
  c.eval.benchmark_split = "test"
  # MSLS val: "all" scores every non-panorama query; "with_positives" only those
  # with a database image within eval.pos_radius (docs/evaluation.md).
  c.eval.msls_queries = "all"
  # reid / video_reid: extra rows beside the plain ranking (docs/evaluation.md).
  # rerank "k_reciprocal": Zhong et al.'s re-ranking with k1, k2, lambda (the
  # paper's 20, 6, 0.3); query_expansion k > 0: each query averaged with its k
  # nearest gallery rows, weighted by similarity^qe_alpha (0: AQE, > 0: alpha-QE).
  c.eval.rerank = "none"
  c.eval.rerank_k1 = 20
  c.eval.rerank_k2 = 6
  c.eval.rerank_lambda = 0.3
  c.eval.query_expansion = 0
  c.eval.qe_alpha = 0.0
  for key, value in (("split", "test"), ("recall_ns", (1, 5, 10, 20)), ("pos_radius", 25.0)):
    if key not in c.eval:
      c.eval[key] = value
  return c
