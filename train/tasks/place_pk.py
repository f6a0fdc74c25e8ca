"""config.train.mode = "pk": place recognition trained as GSV-Cities trains
MixVPR, BoQ and SALAD, with any aggregator of configs/netvlad.py.

Each step draws P places x K views (jaxset.data.place_pk: database images
of one position plus the training queries within config.pk.query_radius),
mines pairs with the multi-similarity miner and applies the multi-similarity
loss over the whole global batch (jaxset.ops.multi_similarity). Two places
closer than config.tuples.neg_radius (25 m) are positives for the evaluation,
so they are not made negatives of each other either. No feature cache, no
mining refreshes: the batch is its own pool.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxset.data.samplers.places import place_pk_batches
from jaxset.ops.multi_similarity import (
  label_pair_masks,
  multi_similarity_loss,
  multi_similarity_miner,
)
from train.task import Stage
from train.tasks import common

MODES = ("tuples", "pk")


def mode(config) -> str:
  """config.train.mode, checked ("tuples" when absent)."""
  m = config.train.get("mode", "tuples")
  if m not in MODES:
    raise ValueError(f"config.train.mode must be one of {MODES}; got {m!r}.")
  return m


def pk_loss(descriptors, labels, utm, config):
  """Mean multi-similarity loss of a P x K batch (descriptors L2-normalised).

  descriptors [B, F], labels [B] place ids, utm [B, 2] the places' positions.
  Pairs of different places within config.tuples.neg_radius are neither
  positive nor negative. Returns (loss, number of mined pairs).
  """
  ms = config.ms
  s = descriptors @ descriptors.T
  pos, neg = label_pair_masks(labels)
  d2 = jnp.sum((utm[:, None, :] - utm[None, :, :]) ** 2, axis=-1)
  neg = neg & (d2 > config.tuples.neg_radius ** 2)
  if ms.mine:
    pos, neg = multi_similarity_miner(s, pos, neg, epsilon=ms.epsilon)
  per_anchor = multi_similarity_loss(s, pos, neg, alpha=ms.alpha, beta=ms.beta, lam=ms.base)
  return jnp.mean(per_anchor), jnp.sum(pos) + jnp.sum(neg)


def stages(task, config, model):
  """The single training stage of pk mode (task: the NetVLAD task, for its sources)."""
  db, queries = task._sources(config)
  pk = config.pk

  def make_iterator():
    ds = place_pk_batches(db, queries, p=pk.places, k=pk.views, seed=config.seed,
                          query_radius=pk.query_radius, min_views=pk.min_views,
                          image_fn=common.image_fn(config, train=True))
    return iter(ds)

  def train_step(state, batch):
    def loss_fn(params):
      out, new_state = common.apply(model, state, batch["image"], params=params, train=True)
      loss, pairs = pk_loss(out["descriptor"], batch["label"], batch["utm"], config)
      return loss, (new_state, pairs)

    (loss, (new_state, pairs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state = state.apply_gradients(grads=grads, model_state=new_state)
    return state, {"loss": loss, "grad_norm": optax.global_norm(grads), "mined_pairs": pairs}

  return [Stage("train", config.train.steps, make_iterator, train_step)]
