"""config.model.pretrained: converted backbone weights land in the model, or a clear error."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import netvlad as netvlad_config
from jaxset.convert import save_variables
from jaxset.models import SmallCNN, VPRModel
from train.tasks import common


def _state(config):
  model = VPRModel(backbone="small_cnn", num_clusters=4)
  return common.create_state(model, config, jax.random.key(0),
                             jnp.zeros((1, 32, 32, 3), jnp.uint8), 10)


def test_backbone_weights_are_placed_and_optimizer_rebuilt(tmp_path):
  trunk = SmallCNN().init(jax.random.key(7), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  trunk = jax.tree.map(lambda x: x + 0.5, trunk)  # distinct from any init
  path = str(tmp_path / "trunk.msgpack")
  save_variables(jax.device_get(trunk), path)
  c = netvlad_config.get_config()
  c.model.pretrained = path
  state = _state(c)
  for got, want in zip(jax.tree.leaves(state.params["trunk"]), jax.tree.leaves(trunk["params"])):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(state.model_state["batch_stats"]["trunk"]),
                       jax.tree.leaves(trunk["batch_stats"])):
    np.testing.assert_array_equal(got, want)
  # The NetVLAD layer keeps its own init.
  assert "vlad" in state.params
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(
      state.tx.init(state.params))


def test_wrong_architecture_is_an_error_naming_the_difference(tmp_path):
  other = SmallCNN(widths=(16, 32, 64, 64)).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  path = str(tmp_path / "narrow.msgpack")
  save_variables(jax.device_get(other), path)
  c = netvlad_config.get_config()
  c.model.pretrained = path
  wrong = r"matches no part of the model.*params/trunk.*differs in shape"
  with pytest.raises(ValueError, match=wrong):
    _state(c)
