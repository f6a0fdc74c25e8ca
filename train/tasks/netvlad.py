"""NetVLAD (Arandjelovic et al., CVPR 2016): weakly supervised place recognition.

What differs from the shared loop:
- on synthetic_places without converted weights, the backbone first comes
  from pretrained_backbone (embedded labelled views of another district,
  ImageNet's stand-in; trained once and cached);
- before training, the NetVLAD centroids come from k-means on the backbone's
  local descriptors of database images, with the official alpha rule;
- tuples (query, potential positives within 10 m, negatives beyond 25 m) are
  trained with the weakly supervised ranking loss (best potential positive);
- hard negatives are mined from a cache of database and query features that is
  recomputed every `config.mining.refresh_every` queries (paper: 1000): a query's
  negatives are the hardest of `negative_pool` random far images plus the
  hardest found for it at the last refresh. The cache holds float32 squared
  distances, ranked with a tie tolerance then by index (the same negatives on
  any machine's float rounding). The cache is part of the checkpoint
  and the data iterator is rebuilt after each refresh, so a resumed run mines
  exactly what an uninterrupted one would.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxset.data.records import neighbours_within, read_metadata
from jaxset.data.samplers.evaluation import eval_batches
from jaxset.data.samplers.tuples import netvlad_tuples
from jaxset.eval import recall_at_n
from jaxset.models import VPRModel
from jaxset.models.netvlad import (
  apply_pca_whitening,
  descriptors_as_seen,
  fit_pca_whitening,
  init_netvlad_params,
)
from jaxset.ops import netvlad_layer as netvlad_ops
from jaxset.ops.losses import weakly_supervised_ranking_loss
from train import task
from train.tasks import common, place_pk


class Task(task.Task):

  def __init__(self):
    self.cache = None  # {"dist": [Q, N] float32 squared distances, "hard": [Q, M] int}
    self._db_src = self._q_src = None
    self._far_lists = self._pos_lists = None

  # -- model and state ------------------------------------------------------
  def build_model(self, config):
    m = config.model
    # The aggregator's own sizes: config.model.<pooling> (salad, mixvpr, boq, convap).
    kwargs = _backbone_kwargs(config)
    if m.get("frozen_blocks", 0) and m.backbone == "small_cnn":
      kwargs["frozen"] = m.frozen_blocks
    return common.model_from_config(VPRModel, config,
                                    aggregator_kwargs=dict(m.get(m.pooling, {})) or None,
                                    backbone_kwargs=kwargs or None)

  def create_state(self, config, rng):
    h, w = config.data.image_size
    sample = jnp.zeros((1, h, w, 3), jnp.uint8)
    state = common.create_state(self.model(config), config, rng, sample, config.train.steps)
    if _pretrain_enabled(config):
      # The pretraining is a concrete training of its own (cached after the first
      # run); ensure_compile_time_eval lets it run when create_state itself is
      # traced, e.g. under jax.eval_shape for an abstract state.
      with jax.ensure_compile_time_eval():
        path = pretrained_backbone(config)
      state = common.load_pretrained(state, str(path))
      state = state.replace(opt_state=state.tx.init(state.params))
    return state

  def _sources(self, config):
    if self._db_src is None:
      self._db_src = common.source(config, "train_database")
      self._q_src = common.source(config, "train_queries")
    return self._db_src, self._q_src

  # -- hooks ------------------------------------------------------------------
  def before_training(self, state, config):
    """BatchNorm statistics, then k-means centroids and alpha, from training images.

    A backbone trained from scratch (SmallCNN) starts with running statistics
    (mean 0, var 1) that match neither its train-mode batch statistics nor
    the data; k-means on those eval-mode descriptors gives centroids for a
    different descriptor distribution than the one training then sees. So the
    running statistics are first set from train-mode passes over database
    images (config.kmeans.bn_calibration_batches; 0 skips it, e.g. for a
    pretrained backbone whose statistics come with its weights).
    """
    model = self.model(config)
    db, _ = self._sources(config)
    rng = np.random.default_rng(config.seed)
    n = min(config.kmeans.num_images, len(db))
    subset = _Subset(db, np.sort(rng.choice(len(db), n, replace=False)))
    if config.kmeans.get("bn_calibration_batches", 0) and "batch_stats" in state.model_state:
      state = self._calibrate_batch_stats(state, config, model, subset)
    if config.model.pooling != "netvlad":
      return state

    def local(state, batch):
      variables = {"params": state.params, **state.model_state}
      return {"d": model.apply(variables, batch["image"], method=model.local_descriptors)}

    desc = common.extract(local, state, subset, config, keys=["image"])["d"]  # [n, hw, D]
    per = min(config.kmeans.descriptors_per_image, desc.shape[1])
    pick = np.stack([rng.choice(desc.shape[1], per, replace=False) for _ in range(n)])
    sample = np.take_along_axis(desc, pick[..., None], axis=1).reshape(-1, desc.shape[-1])
    seen = descriptors_as_seen(model, jnp.asarray(sample))
    centroids = netvlad_ops.kmeans(seen, config.model.num_clusters,
                                   key=jax.random.key(config.seed), iters=config.kmeans.iters)
    params = init_netvlad_params(model, jax.device_get(state.params), centroids,
                                 jnp.asarray(sample))
    return state.replace(params=params)  # the loop places it on the training mesh

  def _calibrate_batch_stats(self, state, config, model, subset):
    """Running BN statistics from train-mode forward passes over `subset` (in order)."""

    @jax.jit
    def update(state, images):
      _, new = model.apply({"params": state.params, **state.model_state}, images, train=True,
                           mutable=["batch_stats"])
      return state.replace(model_state={**state.model_state, **new})

    bs = config.eval.batch_size
    done = 0 if len(subset) else config.kmeans.bn_calibration_batches
    while done < config.kmeans.bn_calibration_batches:
      for batch in eval_batches(subset, batch_size=bs, keys=["image"],
                                         image_fn=common.image_fn(config, False)):
        if done == config.kmeans.bn_calibration_batches:
          break
        images = batch["image"][batch["valid"]]
        if len(images) > 1:  # a last partial batch compiles once more
          state = update(state, jnp.asarray(images))
        done += 1
    return state

  def refresh_due(self, config, step):
    """Every refresh_every queries, and whenever no cache exists yet."""
    if not config.mining.enabled or place_pk.mode(config) == "pk":
      return False
    every = max(1, config.mining.refresh_every // config.train.batch_size)
    return self.cache is None or step % every == 0

  def checkpoint_extra(self):
    return self.cache if self.cache is not None else self._empty_cache

  def restore_extra(self, extra):
    self.cache = {k: np.asarray(v) for k, v in extra.items()}

  # -- mining -------------------------------------------------------------------
  def refresh(self, state, config):
    """Recomputes the hard-negative cache from `state`'s descriptors."""
    model = self.model(config)
    db, queries = self._sources(config)

    def describe(state, batch):
      variables = {"params": state.params, **state.model_state}
      return {"f": model.apply(variables, batch["image"])["descriptor"]}

    fdb = common.extract(describe, state, db, config, keys=["image"])["f"]
    fq = common.extract(describe, state, queries, config, keys=["image"])["f"]
    # The cache keeps each query's distances to the whole database (float32,
    # from float64 products: the same numbers on any BLAS), not the features:
    # every miner ranks by them, and the checkpoint stays small.
    dist = _distance_matrix(fq, fdb)
    m = config.tuples.num_negatives
    hard = np.full((len(fq), m), -1, np.int64)
    rng = np.random.default_rng([config.seed, int(jax.device_get(state.step))])
    for q, far in enumerate(self._far(config)):
      if len(far) == 0:
        continue
      cand = far if len(far) <= config.tuples.negative_pool else rng.choice(
          far, config.tuples.negative_pool, replace=False)
      hard[q, :min(m, len(cand))] = _nearest(dist[q], cand, m)
    self.cache = {"dist": dist, "hard": hard}

  def _far(self, config):
    if self._far_lists is None:
      db, queries = self._sources(config)
      db_utm = read_metadata(db, ["utm"])["utm"]
      q_utm = read_metadata(queries, ["utm"])["utm"]
      near = neighbours_within(q_utm, db_utm, config.tuples.neg_radius)
      all_db = np.arange(len(db_utm))
      self._far_lists = [np.setdiff1d(all_db, n) for n in near]
      self._pos_lists = neighbours_within(q_utm, db_utm, config.tuples.pos_radius)
    return self._far_lists

  def miner(self, config):
    """negative_miner for the sampler: the m hardest of candidates + cached hard ones
    that violate the margin against the best potential positive (paper sec. 4)."""
    margin, m = config.loss.margin, config.tuples.num_negatives

    def mine(q, candidates):
      cache = self.cache
      prev = cache["hard"][q]
      pool = np.unique(np.concatenate([candidates, prev[prev >= 0]]))
      d_neg = cache["dist"][q, pool]
      d_pos = np.min(cache["dist"][q, self._pos_lists[q]])
      order = _ranking(d_neg, pool)
      violating = order[d_neg[order] < d_pos + margin]
      # When too few violate, fill with the next hardest: a query keeps learning
      # signal, and its loss terms are zero for the ones that do not violate.
      chosen = np.concatenate([violating, order[len(violating):]])[:m]
      return pool[chosen]

    return mine

  def positive_miner(self, config):
    """positive_miner for the sampler: the num_positives potential positives nearest
    the query under the cached features. Of a query's ~14 potential positives
    within 10 m only ~3.5 show the facade it sees (the others face another way
    or the other side of the street); a random 4 miss them all for ~30% of the
    queries, whose min over positives (eq. (7)) then pulls unrelated views
    together. The official code likewise takes the best positive from its cache."""
    p = config.tuples.num_positives

    def mine(q, candidates):
      return _nearest(self.cache["dist"][q], candidates, p)

    return mine

  # -- stages -------------------------------------------------------------------
  def stages(self, config):
    model = self.model(config)
    cfg_loss = config.loss
    h, w = config.data.image_size
    db, queries = self._sources(config)
    self._far(config)
    f = config.tuples.num_negatives
    self._empty_cache = {
        "dist": np.zeros((len(queries), len(db)), np.float32),
        "hard": np.full((len(queries), f), -1, np.int64)}
    if place_pk.mode(config) == "pk":
      return place_pk.stages(self, config, model)

    def make_iterator():
      ds = netvlad_tuples(
          db, queries, batch_size=config.train.batch_size,
          num_positives=config.tuples.num_positives,
          num_negatives=config.tuples.num_negatives, seed=config.seed,
          pos_radius=config.tuples.pos_radius, neg_radius=config.tuples.neg_radius,
          negative_pool=config.tuples.negative_pool,
          negative_miner=self.miner(config) if config.mining.enabled else None,
          positive_miner=(self.positive_miner(config)
                          if config.mining.enabled and config.mining.positives else None),
          image_fn=common.image_fn(config, train=True))
      return iter(ds)

    def train_step(state, batch):
      b, p = batch["pos_mask"].shape
      m = batch["neg_mask"].shape[1]
      # Masked (padding) slots hold zero images; they do not enter the loss but
      # would enter the BatchNorm batch statistics: show BN the query instead.
      query = batch["query"][:, None]
      positives = jnp.where(batch["pos_mask"][..., None, None, None], batch["positives"], query)
      negatives = jnp.where(batch["neg_mask"][..., None, None, None], batch["negatives"], query)
      images = jnp.concatenate([batch["query"], positives.reshape(b * p, h, w, 3),
                                negatives.reshape(b * m, h, w, 3)])

      def loss_fn(params):
        out, new_state = model.apply({"params": params, **state.model_state}, images,
                                     train=True, mutable=list(state.model_state))
        d = out["descriptor"]
        q, pos, neg = d[:b], d[b:b + b * p].reshape(b, p, -1), d[b + b * p:].reshape(b, m, -1)
        per_query = weakly_supervised_ranking_loss(
            q, pos, neg, batch["pos_mask"], batch["neg_mask"], margin=cfg_loss.margin,
            squared=cfg_loss.squared)
        return jnp.mean(per_query), new_state

      (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      state = state.apply_gradients(grads=grads, model_state=new_state)
      return state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return [task.Stage("train", config.train.steps, make_iterator, train_step)]

  # -- evaluation ----------------------------------------------------------------
  def embed_apply(self, config):
    """train.eval's benchmarks embed with the image descriptor."""
    model = self.model(config)
    return lambda variables, images: {"embedding": model.apply(variables, images)["descriptor"]}

  def evaluate(self, state, config):
    """Recall@N on held-out queries (config.eval.split: val or test)."""
    model = self.model(config)
    split = config.eval.split
    db = common.source(config, f"{split}_database")
    queries = common.source(config, f"{split}_queries")

    def describe(state, batch):
      variables = {"params": state.params, **state.model_state}
      return {"f": model.apply(variables, batch["image"])["descriptor"]}

    fdb = common.extract(describe, state, db, config, keys=["image"])["f"]
    fq = common.extract(describe, state, queries, config, keys=["image"])["f"]
    pca_dim = int(config.eval.get("pca_dim", 0) or 0)
    if pca_dim:  # NetVLAD sec. 5: PCA-whitening fitted on the training database
      ftrain = common.extract(describe, state, common.source(config, "train_database"), config,
                              keys=["image"])["f"]
      mean, proj = fit_pca_whitening(ftrain, pca_dim)
      fq, fdb = (apply_pca_whitening(f, mean, proj) for f in (fq, fdb))
    db_utm = read_metadata(db, ["utm"])["utm"]
    q_utm = read_metadata(queries, ["utm"])["utm"]
    recalls = recall_at_n(fq, fdb, q_utm, db_utm, ns=tuple(config.eval.recall_ns),
                          pos_radius=config.eval.pos_radius)
    return {f"recall@{n}": float(r) for n, r in recalls.items()}


def _backbone_kwargs(config) -> dict:
  """SmallCNN's widths (config.model.widths) as backbone kwargs. widths and
  frozen_blocks shape the embedded default's small_cnn; other backbones (the
  presets' vgg16) keep their own architecture and train whole."""
  m = config.model
  widths = tuple(m.get("widths", ()) or ())
  return {"widths": widths} if widths and m.backbone == "small_cnn" else {}


def _pretrain_enabled(config) -> bool:
  """The embedded backbone pretraining runs for synthetic_places when no converted
  weights are given (config.model.pretrained) and config.pretrain.steps > 0."""
  p = config.get("pretrain")
  return bool(p and p.steps > 0 and not config.model.get("pretrained")
              and config.data.name == "synthetic_places")


def pretrained_path(config):
  """Where pretrained_backbone caches its weights, and the synthetic_places config."""
  import dataclasses
  import hashlib
  import json

  from jaxset.data import default_data_dir
  from jaxset.data import synthetic_places as sp

  p, m = config.pretrain, config.model
  name = config.data.get("builder_config") or "default"
  places = {c.name: c for c in sp.CONFIGS}[name]
  # The views depend on the city's geometry and seed, not on its queries.
  city = {k: v for k, v in dataclasses.asdict(places).items()
          if k not in ("name", "description", "queries", "train_queries", "query_times",
                       "release_notes", "supported_versions", "version", "tags")}
  key = json.dumps({"pretrain": p.to_dict(), "backbone": m.backbone, "dtype": m.dtype,
                    "backbone_kwargs": _backbone_kwargs(config), "city": city,
                    "version": str(sp.SyntheticPlaces.VERSION)}, sort_keys=True, default=str)
  root = Path(config.data.get("cache_dir") or default_data_dir()) / "pretrained"
  path = root / (f"synthetic_places_{m.backbone}_"
                 f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.msgpack")
  return path, places


def pretrained_backbone(config, log=print) -> Path:
  """The backbone pretrained on synthetic_places.pretraining_views: ImageNet's stand-in.

  Trained once per (backbone, config.pretrain, city geometry; pretrained_path) and
  cached, like the embedded datasets, under <data dir>/pretrained/ (file-locked):
  every run of the main job, whatever its seed, starts from the same weights,
  as every run of the paper starts from the same ImageNet VGG16. Deterministic:
  fixed data (pretraining_views), init and batch order (config.pretrain.seed).
  The task: for each vertical strip of a view, the facade style it shows
  (StripClassifier, softmax cross-entropy), with Adam and a cosine schedule.
  """
  import fcntl

  from jaxset.convert import save_variables
  from jaxset.data import synthetic_places as sp
  from jaxset.models.netvlad import StripClassifier

  p = config.pretrain
  path, places = pretrained_path(config)
  root = path.parent
  root.mkdir(parents=True, exist_ok=True)
  with open(root / f".{path.name}.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if path.exists():
      return path
    model = common.model_from_config(StripClassifier, config, num_classes=sp.NUM_STYLES + 1,
                                     backbone_kwargs=_backbone_kwargs(config) or None)
    sample = jnp.zeros((1, places.height, places.width, 3), jnp.uint8)
    variables = model.init(jax.random.key(p.seed), sample)
    columns = jax.eval_shape(lambda: model.apply(variables, sample)).shape[1]
    # The tests' "tiny" city gets a token pretraining (a few views and steps).
    tiny = places.name == "tiny"
    views, steps = (min(p.views, 32), min(p.steps, 2)) if tiny else (p.views, p.steps)
    images, labels = sp.pretraining_views(places, views, columns, seed=p.seed)
    tx = optax.adam(optax.cosine_decay_schedule(p.lr, steps))
    params, stats = variables["params"], variables.get("batch_stats", {})
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, x, y):
      def loss_fn(params):
        logits, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                  mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
      (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), new["batch_stats"], opt, loss

    rng = np.random.default_rng(p.seed)
    order = np.zeros(0, np.int64)
    for i in range(steps):
      if len(order) < p.batch_size:
        order = np.concatenate([order, rng.permutation(len(images))])
      idx, order = order[:p.batch_size], order[p.batch_size:]
      params, stats, opt, loss = step(params, stats, opt, images[idx], labels[idx])
      if log and (i + 1) % 50 == 0:
        log(f"backbone pretraining: step {i + 1}/{steps}, loss {float(loss):.4f}")
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"backbone pretraining diverged (loss {float(loss)}); lower "
                               "config.pretrain.lr.")
    trunk = {"params": jax.device_get(params["trunk"])}
    if stats:
      trunk["batch_stats"] = jax.device_get(stats["trunk"])
    tmp = path.with_suffix(".tmp")
    save_variables(trunk, str(tmp))
    tmp.rename(path)
  return path


class _Subset:
  """A view of some records of a data source."""

  def __init__(self, src, indices):
    self.src, self.indices = src, np.asarray(indices)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.src[int(self.indices[i])]


def _distance_matrix(fq, fdb, chunk: int = 256) -> np.ndarray:
  """Squared distances [Q, N] between query and database features, float32.

  |q|^2 + |d|^2 - 2 q.d in float64 (chunks of queries), rounded to float32:
  float64 products differ between BLAS kernels by ~1e-16, far below float32's
  rounding, so every machine gets the same float32 numbers from the same features.
  """
  fq, fdb = np.asarray(fq, np.float64), np.asarray(fdb, np.float64)
  db_sq = np.sum(fdb * fdb, axis=1)
  out = np.empty((len(fq), len(fdb)), np.float32)
  for i in range(0, len(fq), chunk):
    q = fq[i:i + chunk]
    d = np.sum(q * q, axis=1)[:, None] + db_sq[None] - 2.0 * (q @ fdb.T)
    out[i:i + chunk] = np.maximum(d, 0.0)
  return out


# Distances that differ by less than this rank as equal, then by database index:
# features from XLA kernels of another instruction set differ by ~1e-7, which
# must not reorder near-ties (float32 steps are 1.2e-7 at 1).
TIE_TOLERANCE = 1e-5


def _ranking(d, indices):
  """Positions of `d` (distances of database rows `indices`) nearest first: by d
  rounded to TIE_TOLERANCE, ties by database index (the same order on any machine)."""
  return np.lexsort((np.asarray(indices), np.round(np.asarray(d, np.float64) / TIE_TOLERANCE)))


def _nearest(dist_q, candidates, m):
  """The m candidates nearest the query (its row of cached distances), by _ranking:
  the hardest negatives, or the best-matching potential positives."""
  candidates = np.asarray(candidates)
  return candidates[_ranking(dist_q[candidates], candidates)[:m]]
