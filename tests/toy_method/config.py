"""A toy method's config: plain triplet loss on the embedded identities.

The example of docs/adding_a_method.md (tests/test_add_method.py trains it):
  tasks.register("toy_triplet", "tests.toy_method.task:Task")
  loop.train_and_evaluate(get_config(), workdir)
"""
import ml_collections

from configs.base import base_config


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = base_config()
  c.method = "toy_triplet"
  c.data.name = "synthetic_identities"
  c.data.image_size = (64, 32)
  c.data.k = 2                  # P x K batches: K images of each of P identities

  c.model.width = 8             # ToyEmbedder's fields, by the same names
  c.model.embedding_dim = 16

  c.loss = ml_collections.ConfigDict()
  c.loss.margin = 0.2           # on L2-normalised embeddings

  c.train.steps = 100
  c.train.batch_size = 16
  if preset not in (None, "", "default"):
    raise ValueError(f"unknown preset {preset!r} for the toy method; it has none.")
  return c
