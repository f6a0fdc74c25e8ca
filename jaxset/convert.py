"""PyTorch checkpoints -> Flax variables for jaxset's backbones.

  convert_state_dict(state_dict, arch) -> {"params": ..., "batch_stats": ...}

arch and the Flax module whose variables come out:
  vgg16       jaxset.models.backbones.VGG16()       torchvision vgg16 `features.*`
  resnet18    jaxset.models.backbones.ResNet18()    torchvision resnet18
  resnet50    jaxset.models.backbones.ResNet50()    torchvision resnet50
  iresnet50   FaceEmbedder(backbone="iresnet50")    insightface arcface_torch iresnet50
  iresnet100  FaceEmbedder(backbone="iresnet100")   insightface arcface_torch iresnet100

Layout changes: conv weights OIHW -> HWIO, linear weights [out, in] ->
[in, out], BatchNorm weight/bias/running_mean/running_var -> scale/bias
(params) and mean/var (batch_stats), PReLU weight -> negative_slope. The
IResNet `fc` takes PyTorch's NCHW flatten of the 512 x h x w map; its rows are
permuted to the NHWC flatten used here (h x w is read from the weight shape:
7x7 for 112x112 faces).

Dropped on purpose (not errors): `num_batches_tracked`; the ImageNet
classifier of torchvision models (`fc.*` of ResNet, `classifier.*` of VGG),
since jaxset uses them as feature extractors; and, when every backbone key
carries a "model." prefix (AdaFace / Lightning checkpoints, with the weights
under "state_dict"), the keys outside "model." (e.g. the margin head's
"head.kernel"). A "module." prefix (DataParallel) is stripped too. The
insightface embedding BN1d has a weight frozen at 1: a different value
raises, since the Flax layer has no scale.

Anything else missing or unexpected raises ValueError listing the missing
and the unexpected keys.

AdaFace's own net.py layout (input_layer / body / output_layer, e.g. the
official adaface_ir101_*.ckpt under "state_dict" with "model." prefixes) is
detected and renamed to the insightface names (body.n -> layer{s}.{j}). Its
network differs in three settings, so build the model with
backbone_kwargs=backbones.ADAFACE_KWARGS: BGR input, (x - 127.5) / 127.5,
and a subsampling shortcut (MaxPool2d(1, 2)) in the first block instead of
a conv1x1 projection. Its embedding BN1d has no affine parameters.

CLI:
  python -m jaxset.convert --arch=iresnet100 --checkpoint=model.pt --out=params.msgpack
writes flax.serialization.to_bytes(variables); read it back with
`load_variables(path)`.
"""
from __future__ import annotations

import argparse
import math
import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxset.models import backbones

__all__ = ["ARCHS", "convert_state_dict", "detect_layout", "save_variables", "load_variables",
           "load_torch_checkpoint", "main"]

ARCHS = ("vgg16", "resnet18", "resnet50", "iresnet50", "iresnet100")

# torchvision vgg16 `features` indices of conv1_1 ... conv5_3.
_VGG_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG_NAMES = tuple(f"conv{b + 1}_{i + 1}" for b, widths in
                   enumerate(backbones.VGG16_LAYOUT) for i in range(len(widths)))
_VGG_TORCH = dict(zip(_VGG_NAMES, _VGG_CONV_INDEX))

_IGNORED = {
    "vgg16": re.compile(r"^classifier\."),
    "resnet18": re.compile(r"^fc\."),
    "resnet50": re.compile(r"^fc\."),
    "iresnet50": None,
    "iresnet100": None,
}


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


def _unwrap(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Unwraps {"state_dict": ...}, strips "model." / "module." prefixes."""
  if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
    state_dict = state_dict["state_dict"]
  keys = list(state_dict)
  for prefix in ("model.", "module."):
    if any(k.startswith(prefix) for k in keys):
      state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
      keys = list(state_dict)
  return {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


_IRESNET_STAGES = {"iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}
_ADAFACE_RES_LAYER = ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")
_ADAFACE_TOP = {"input_layer.0": "conv1", "input_layer.1": "bn1", "input_layer.2": "prelu",
                "output_layer.0": "bn2", "output_layer.3": "fc", "output_layer.4": "features"}


def detect_layout(state_dict: Mapping[str, Any]) -> str:
  """"adaface" for AdaFace's net.py names (input_layer / body / output_layer),
  else "standard" (torchvision / insightface names)."""
  keys = _unwrap(state_dict)
  return "adaface" if any(k.startswith("input_layer.") for k in keys) else "standard"


def _rename_adaface(sd: dict, arch: str) -> dict:
  """AdaFace net.py keys -> insightface iresnet keys (body.n -> layer{s}.{j})."""
  where = [(s + 1, j) for s, n in enumerate(_IRESNET_STAGES[arch]) for j in range(n)]
  out = {}
  for key, value in sd.items():
    new = key
    m = re.fullmatch(r"body\.(\d+)\.(res_layer|shortcut_layer)\.(\d+)\.(\w+)", key)
    if m and int(m.group(1)) < len(where):
      s, j = where[int(m.group(1))]
      idx = int(m.group(3))
      if m.group(2) == "res_layer" and idx < len(_ADAFACE_RES_LAYER):
        new = f"layer{s}.{j}.{_ADAFACE_RES_LAYER[idx]}.{m.group(4)}"
      elif m.group(2) == "shortcut_layer":
        new = f"layer{s}.{j}.downsample.{idx}.{m.group(4)}"
    else:
      prefix, _, leaf = key.rpartition(".")
      if prefix in _ADAFACE_TOP:
        new = f"{_ADAFACE_TOP[prefix]}.{leaf}"
    out[new] = value
  return out


def _target(arch: str, sd: Mapping[str, Any], layout: str = "standard"):
  """The Flax module for `arch` and an input shape giving the checkpoint's fc size."""
  if arch in ("iresnet50", "iresnet100"):
    side = 7
    if "fc.weight" in sd:
      in_features = int(np.shape(sd["fc.weight"])[1])
      hw = in_features // 512
      side = math.isqrt(hw)
      if side * side * 512 != in_features or side == 0:
        raise ValueError(
            f"fc.weight has {in_features} input features; expected 512 * s * s (a square "
            "s x s map, s = input side / 16: 7 for 112x112 faces).")
    kwargs = backbones.ADAFACE_KWARGS if layout == "adaface" else None
    return backbones.FaceEmbedder(arch, backbone_kwargs=kwargs), (1, 16 * side, 16 * side, 3)
  return backbones.create_backbone(arch), (1, 64, 64, 3)


def _torch_module_name(path: tuple[str, ...], arch: str) -> str:
  parts = []
  for p in path:
    if p in ("trunk", "embedding"):  # FaceEmbedder wrappers: flat in insightface
      continue
    m = re.fullmatch(r"layer(\d)_(\d+)", p)
    if m:
      parts.append(f"layer{m.group(1)}.{m.group(2)}")
    elif p == "downsample_conv":
      parts.append("downsample.0")
    elif p == "downsample_bn":
      parts.append("downsample.1")
    elif arch == "vgg16" and p in _VGG_TORCH:
      parts.append(f"features.{_VGG_TORCH[p]}")
    else:
      parts.append(p)
  return ".".join(parts)


_LEAF = {("params", "kernel"): "weight", ("params", "bias"): "bias",
         ("params", "scale"): "weight", ("params", "negative_slope"): "weight",
         ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def _convert_leaf(value: np.ndarray, collection: str, path, shape, key: str):
  leaf = path[-1]
  if collection == "params" and leaf == "kernel":
    if len(shape) == 4:  # conv OIHW -> HWIO
      if value.ndim != 4:
        raise ValueError(f"{key}: expected a 4-D conv weight, got shape {value.shape}.")
      value = value.transpose(2, 3, 1, 0)
    elif path[-2] == "fc" and "embedding" in path:  # insightface fc on NCHW flatten
      out, inp = value.shape
      side = math.isqrt(inp // 512)
      value = value.reshape(out, 512, side, side).transpose(2, 3, 1, 0).reshape(inp, out)
    else:  # linear [out, in] -> [in, out]
      value = value.T
  if tuple(value.shape) != tuple(shape):
    raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit the Flax "
                     f"parameter {'/'.join(path)} of shape {tuple(shape)}; wrong arch?")
  return np.asarray(value, np.float32)


def convert_state_dict(state_dict: Mapping[str, Any], arch: str) -> dict:
  """A PyTorch state dict -> Flax variables {"params", "batch_stats"} (numpy float32).

  Args:
    state_dict: name -> tensor (torch.Tensor or numpy), as torch.load gives it;
      an outer {"state_dict": ...} and "model." / "module." prefixes are unwrapped.
    arch: one of ARCHS (see the module docstring for the matching Flax module).

  Returns:
    the variables of that module, ready for module.apply.

  Raises:
    ValueError: unknown arch; missing or unexpected keys (both listed); a
      tensor whose shape does not fit; an embedding BN1d weight other than 1.
  """
  if arch not in ARCHS:
    raise ValueError(f"arch must be one of {ARCHS}; got {arch!r}.")
  sd = {k: _to_numpy(v) for k, v in _unwrap(state_dict).items()}
  layout = detect_layout(sd)
  if layout == "adaface":
    if arch not in _IRESNET_STAGES:
      raise ValueError(f"this is an AdaFace (net.py) checkpoint; arch must be iresnet50 or "
                       f"iresnet100, got {arch!r}.")
    sd = _rename_adaface(sd, arch)
  module, shape = _target(arch, sd, layout)
  abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape, jnp.uint8))
  out, todo, used, missing = {}, [], set(), []
  for collection in ("params", "batch_stats"):
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract.get(collection, {})))
    for path, leaf in flat.items():
      key = f"{_torch_module_name(path[:-1], arch)}.{_LEAF[(collection, path[-1])]}"
      if key not in sd:
        if key == "features.bias" and "features.weight" not in sd:
          # AdaFace's BatchNorm1d(affine=False): no weight, no bias.
          out[(collection,) + path] = np.zeros(leaf.shape, np.float32)
          continue
        missing.append(key)
        continue
      used.add(key)
      todo.append((collection, path, leaf.shape, key))
  if arch.startswith("iresnet") and "features.weight" in sd:
    used.add("features.weight")
    w = sd["features.weight"]
    if not np.allclose(w, 1.0):
      raise ValueError("features.weight (the embedding BatchNorm1d scale) must be 1, as "
                       "insightface freezes it; jaxset's layer has no scale. Fold it into "
                       "fc first.")
  ignored = _IGNORED[arch]
  unexpected = sorted(k for k in sd if k not in used
                      and not (ignored is not None and ignored.search(k)))
  if missing or unexpected:
    raise ValueError(
        f"state dict does not match arch={arch!r}.\n  missing keys ({len(missing)}): "
        f"{missing}\n  unexpected keys ({len(unexpected)}): {unexpected}\n"
        "Check --arch (e.g. iresnet50 vs iresnet100) and the checkpoint's layout "
        "(torchvision / insightface names, see jaxset/convert.py).")
  for collection, path, shape, key in todo:
    out[(collection,) + path] = _convert_leaf(sd[key], collection, path, shape, key)
  return flax.traverse_util.unflatten_dict(out)


def save_variables(variables, path: str) -> None:
  """Writes variables as msgpack (flax.serialization.to_bytes)."""
  with open(path, "wb") as f:
    f.write(flax.serialization.to_bytes(variables))


def load_variables(path: str) -> dict:
  """Reads a msgpack file written by save_variables / the CLI (nested dicts of arrays)."""
  with open(path, "rb") as f:
    return flax.serialization.msgpack_restore(f.read())


def load_torch_checkpoint(path: str, allow_pickle: bool = False):
  """torch.load on CPU. weights_only=True unless allow_pickle (only for trusted files:
  a full pickle runs code; Lightning checkpoints may need it)."""
  import torch  # pylint: disable=g-import-not-at-top
  return torch.load(path, map_location="cpu", weights_only=not allow_pickle)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m jaxset.convert",
      description="Convert a PyTorch checkpoint to jaxset Flax variables (msgpack).")
  parser.add_argument("--arch", required=True, choices=ARCHS)
  parser.add_argument("--checkpoint", required=True, help="a .pt/.pth/.ckpt state dict")
  parser.add_argument("--out", required=True, help="output .msgpack path")
  parser.add_argument("--allow_pickle", action="store_true",
                      help="torch.load with weights_only=False (trusted files only)")
  args = parser.parse_args(argv)
  checkpoint = load_torch_checkpoint(args.checkpoint, args.allow_pickle)
  variables = convert_state_dict(checkpoint, args.arch)
  save_variables(variables, args.out)
  n = sum(int(np.size(x)) for x in jax.tree.leaves(variables["params"]))
  print(f"wrote {args.out}: arch={args.arch}, {n:,} parameters")
  if detect_layout(checkpoint) == "adaface":
    print("AdaFace layout: build the model with "
          "backbone_kwargs=jaxset.models.backbones.ADAFACE_KWARGS (BGR, /127.5, pool shortcut)")


if __name__ == "__main__":
  main()
