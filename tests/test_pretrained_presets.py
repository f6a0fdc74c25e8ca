"""The QAN, CASN and NetVLAD presets load converted torchvision weights through
model.pretrained: the backbone inside each model then gives the torch network's
features (1e-4 relative to the largest activation)."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxset import convert
from jaxset.models import backbones
from tests import torch_reference as tr
from train import tasks
from train.tasks import identities

torch.set_num_threads(2)


def _torch_features(net, images):
  x = (images.astype(np.float32) - np.array(backbones.IMAGENET_MEAN, np.float32)) / np.array(
      backbones.IMAGENET_STD, np.float32)
  with torch.no_grad():
    out = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  return out.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("config,preset,arch,make,flax_model", [
    ("qan", "mars", "resnet50", tr.torch_resnet50, backbones.ResNet50),
    ("casn", "market1501", "resnet50", tr.torch_resnet50, backbones.ResNet50),
    ("netvlad", "pitts30k", "vgg16", tr.TorchVGG16Features, backbones.VGG16),
])
def test_preset_backbone_gives_torch_features(tmp_path, monkeypatch, config, preset, arch,
                                              make, flax_model):
  net = tr.randomize_(make(), seed=3)
  path = str(tmp_path / f"{arch}.msgpack")
  convert.save_variables(convert.convert_state_dict(net.state_dict(), arch), path)
  c = importlib.import_module(f"configs.{config}").get_config(preset)
  assert c.model.pretrained == ""  # the preset names the key; the command gives the file
  c.model.pretrained = path
  c.model.dtype = "float32"
  c.data.image_size = (96, 32)  # a 3 x 1 ResNet map: one row per QAN part
  # The classifier width comes from the data; no dataset is needed for this check.
  monkeypatch.setattr(identities, "num_classes", lambda config: 5)
  state = tasks.get(c.method).create_state(c, jax.random.key(0))
  trunk = {"params": state.params["trunk"]}
  if "batch_stats" in state.model_state:
    trunk["batch_stats"] = state.model_state["batch_stats"]["trunk"]
  images = np.random.default_rng(1).integers(0, 256, (2, 96, 32, 3), dtype=np.uint8)
  got = np.asarray(flax_model().apply(trunk, jnp.asarray(images)))
  want = _torch_features(net, images)
  assert got.shape == want.shape
  scale = float(np.abs(want).max())
  np.testing.assert_allclose(got / scale, want / scale, atol=1e-4, rtol=0)
