"""PyTorch -> Flax conversion: output parity with hand-built torch networks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxset import convert
from jaxset.models import backbones
from tests import torch_reference as tr

torch.set_num_threads(2)


def _images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _torch_input(images, mode):
  x = images.astype(np.float32)
  if mode == "imagenet":
    x = (x - np.array(backbones.IMAGENET_MEAN, np.float32)) / np.array(
        backbones.IMAGENET_STD, np.float32)
  else:
    x = (x - 127.5) / 128.0
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _close(a, b, tol=1e-4):
  a, b = np.asarray(a), np.asarray(b)
  scale = max(1.0, float(np.abs(b).max()))
  np.testing.assert_allclose(a / scale, b / scale, atol=tol, rtol=0)


@pytest.mark.parametrize("arch,make,flax_model", [
    ("vgg16", tr.TorchVGG16Features, backbones.VGG16),
    ("resnet18", tr.torch_resnet18, backbones.ResNet18),
    ("resnet50", tr.torch_resnet50, backbones.ResNet50),
])
def test_torchvision_parity(arch, make, flax_model):
  net = tr.randomize_(make(), seed=1)
  images = _images((2, 64, 64, 3))
  with torch.no_grad():
    expected = _nhwc(net(_torch_input(images, "imagenet")))
  variables = convert.convert_state_dict(net.state_dict(), arch)
  got = flax_model().apply(variables, jnp.asarray(images))
  assert got.shape == expected.shape
  _close(got, expected)


def test_iresnet50_parity_and_adaface_wrapping():
  net = tr.randomize_(tr.torch_iresnet50(fc_scale=2 * 2), seed=2)  # 32x32 input
  images = _images((2, 32, 32, 3), seed=3)
  with torch.no_grad():
    fmap, emb = net(_torch_input(images, "insightface"))
  # AdaFace / Lightning checkpoints: {"state_dict": {"model.<key>": ...}} plus
  # a margin head outside "model.".
  wrapped = {"state_dict": {**{f"model.{k}": v for k, v in net.state_dict().items()},
                            "head.kernel": torch.zeros(512, 10)}}
  variables = convert.convert_state_dict(wrapped, "iresnet50")
  out = backbones.FaceEmbedder("iresnet50").apply(variables, jnp.asarray(images))
  _close(out["feature_map"], _nhwc(fmap))
  _close(out["embedding"], emb.numpy())
  np.testing.assert_allclose(out["norm"], np.linalg.norm(emb.numpy(), axis=-1), rtol=1e-4)


def test_adaface_netpy_layout_parity():
  net = tr.randomize_(tr.TorchAdaFaceIR(side=2), seed=6)  # 32x32 input
  images = _images((2, 32, 32, 3), seed=7)
  x = (images[..., ::-1].astype(np.float32) - 127.5) / 127.5  # BGR, /127.5
  with torch.no_grad():
    fmap, emb = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  ckpt = {"state_dict": {**{f"model.{k}": v for k, v in net.state_dict().items()},
                         "head.kernel": torch.zeros(512, 10)}}
  assert convert.detect_layout(ckpt) == "adaface"
  variables = convert.convert_state_dict(ckpt, "iresnet50")
  assert "downsample_conv" not in variables["params"]["trunk"]["layer1_0"]
  model = backbones.FaceEmbedder("iresnet50", backbone_kwargs=backbones.ADAFACE_KWARGS)
  out = model.apply(variables, jnp.asarray(images))
  _close(out["feature_map"], _nhwc(fmap))
  _close(out["embedding"], emb.numpy())


def test_iresnet100_layout_converts():
  # Layer counts only (3, 13, 30, 3): keys and shapes, no forward pass.
  net = tr.torch_iresnet100(fc_scale=1)
  variables = convert.convert_state_dict(net.state_dict(), "iresnet100")
  abstract = jax.eval_shape(backbones.FaceEmbedder("iresnet100").init, jax.random.key(0),
                            jnp.zeros((1, 16, 16, 3), jnp.uint8))
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, abstract)
  assert len(variables["params"]["trunk"]) == 3 + 3 + 13 + 30 + 3
  with pytest.raises(ValueError, match="missing keys"):
    convert.convert_state_dict(net.state_dict(), "iresnet50")


def test_missing_and_unexpected_keys_are_listed():
  sd = dict(tr.torch_resnet18().state_dict())
  sd.pop("layer2.0.bn1.running_var")
  sd["layer9.0.conv1.weight"] = torch.zeros(1)
  with pytest.raises(ValueError) as err:
    convert.convert_state_dict(sd, "resnet18")
  msg = str(err.value)
  assert "missing keys (1): ['layer2.0.bn1.running_var']" in msg
  assert "unexpected keys (1): ['layer9.0.conv1.weight']" in msg


def test_wrong_shape_and_arch_raise():
  sd = dict(tr.torch_resnet18().state_dict())
  sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
  with pytest.raises(ValueError, match="conv1.weight: shape"):
    convert.convert_state_dict(sd, "resnet18")
  with pytest.raises(ValueError, match="arch must be one of"):
    convert.convert_state_dict(sd, "resnet34")
  # a ResNet-18 checkpoint read as ResNet-50: everything is reported
  with pytest.raises(ValueError, match="conv3"):
    convert.convert_state_dict(tr.torch_resnet18().state_dict(), "resnet50")


def test_cli_roundtrip(tmp_path):
  net = tr.randomize_(tr.torch_resnet18(), seed=4)
  ckpt, out = tmp_path / "model.pt", tmp_path / "params.msgpack"
  torch.save(net.state_dict(), ckpt)
  convert.main(["--arch=resnet18", f"--checkpoint={ckpt}", f"--out={out}"])
  loaded = convert.load_variables(str(out))
  images = _images((1, 32, 32, 3), seed=5)
  with torch.no_grad():
    expected = _nhwc(net(_torch_input(images, "imagenet")))
  _close(backbones.ResNet18().apply(loaded, jnp.asarray(images)), expected)
