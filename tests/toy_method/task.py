"""A toy method's task: plain triplet loss on P x K batches of the embedded identities.

Row (j, t) of a P x K batch is an anchor; its positive is row (j, t+1 mod K),
another image of identity j, and its negative row (j+1 mod P, t), an image of
the next identity: max(0, |a - p|^2 - |a - n|^2 + margin), averaged.
"""
import jax
import jax.numpy as jnp
import numpy as np

from tests.toy_method.model import ToyEmbedder
from train import task
from train.tasks import common, identities


def triplet_rows(p: int, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Positive and negative row of every anchor row j * k + t."""
  j, t = np.divmod(np.arange(p * k), k)
  return j * k + (t + 1) % k, ((j + 1) % p) * k + t


class Task(task.Task):

  def build_model(self, config):
    return common.model_from_config(ToyEmbedder, config)

  def create_state(self, config, rng):
    h, w = config.data.image_size
    return common.create_state(self.model(config), config, rng,
                               jnp.zeros((1, h, w, 3), jnp.uint8), config.train.steps)

  def stages(self, config):
    model = self.model(config)
    k = config.data.k
    pos, neg = triplet_rows(config.train.batch_size // k, k)

    def train_step(state, batch):
      def loss_fn(params):
        e = model.apply({"params": params}, batch["image"], train=True)["embedding"]
        d_pos = jnp.sum((e - e[pos]) ** 2, axis=-1)
        d_neg = jnp.sum((e - e[neg]) ** 2, axis=-1)
        return jnp.mean(jax.nn.relu(d_pos - d_neg + config.loss.margin))

      loss, grads = jax.value_and_grad(loss_fn)(state.params)
      return state.apply_gradients(grads=grads), {"loss": loss}

    return [task.Stage("train", config.train.steps,
                       lambda: identities.pk_iterator(config), train_step)]

  def evaluate(self, state, config):
    model = self.model(config)

    def describe(state, batch):
      return {"f": model.apply({"params": state.params}, batch["image"])["embedding"]}

    q = identities.split_embeddings(describe, state, config, "query")
    g = identities.split_embeddings(describe, state, config, "gallery")
    return identities.reid_metrics(q, g)
