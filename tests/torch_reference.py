"""Hand-built PyTorch reference networks with torchvision / insightface parameter names.

There is no CPU torchvision here, so the conversion tests build the networks
themselves. Parameter names and layouts follow torchvision's resnet.py / vgg.py
and insightface's arcface_torch/backbones/iresnet.py, which is what
jaxset.convert reads. Each module's forward returns what the Flax side is
compared against: the last conv map (ResNet, VGG) or (map, embedding) (IResNet).
Inputs are NCHW float, already normalised.
"""
from __future__ import annotations

import torch
from torch import nn

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")


class TorchVGG16Features(nn.Module):
  """torchvision vgg16: `features` (the classifier is left out, 100M+ params)."""

  def __init__(self):
    super().__init__()
    layers, c = [], 3
    for v in VGG16_CFG:
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
        c = v
    self.features = nn.Sequential(*layers)

  def forward(self, x):
    return self.features[:29](x)  # up to conv5_3, before its ReLU (NetVLAD)


class TorchBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class TorchResNet(nn.Module):
  """torchvision ResNet; forward returns layer4's map (fc kept for its keys)."""

  def __init__(self, block, layers, num_classes=10):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], 2)
    self.layer3 = self._make_layer(block, 256, layers[2], 2)
    self.layer4 = self._make_layer(block, 512, layers[3], 2)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def torch_resnet18():
  return TorchResNet(TorchBasicBlock, [2, 2, 2, 2])


def torch_resnet50():
  return TorchResNet(TorchBottleneck, [3, 4, 6, 3])


class TorchIBasicBlock(nn.Module):
  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
    self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
    self.prelu = nn.PReLU(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
    self.downsample = downsample

  def forward(self, x):
    out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
    identity = x if self.downsample is None else self.downsample(x)
    return out + identity


class TorchIResNet(nn.Module):
  """insightface arcface_torch IResNet; `fc_scale` = (input side / 16)^2."""

  def __init__(self, layers, fc_scale=7 * 7, num_features=512, dropout=0.0):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
    self.prelu = nn.PReLU(64)
    self.layer1 = self._make_layer(64, layers[0], 2)
    self.layer2 = self._make_layer(128, layers[1], 2)
    self.layer3 = self._make_layer(256, layers[2], 2)
    self.layer4 = self._make_layer(512, layers[3], 2)
    self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
    self.dropout = nn.Dropout(p=dropout)
    self.fc = nn.Linear(512 * fc_scale, num_features)
    self.features = nn.BatchNorm1d(num_features, eps=1e-05)
    nn.init.constant_(self.features.weight, 1.0)
    self.features.weight.requires_grad = False

  def _make_layer(self, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes, eps=1e-05))
    layers = [TorchIBasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [TorchIBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.prelu(self.bn1(self.conv1(x)))
    fmap = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = self.dropout(torch.flatten(self.bn2(fmap), 1))
    return fmap, self.features(self.fc(x))


def torch_iresnet50(fc_scale=7 * 7):
  return TorchIResNet([3, 4, 14, 3], fc_scale)


def torch_iresnet100(fc_scale=7 * 7):
  return TorchIResNet([3, 13, 30, 3], fc_scale)


class TorchAdaFaceBlockIR(nn.Module):
  """AdaFace net.py BasicBlockIR: names shortcut_layer / res_layer."""

  def __init__(self, in_channel, depth, stride):
    super().__init__()
    if in_channel == depth:
      self.shortcut_layer = nn.MaxPool2d(1, stride)
    else:
      self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                          nn.BatchNorm2d(depth))
    self.res_layer = nn.Sequential(
        nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
        nn.BatchNorm2d(depth), nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
        nn.BatchNorm2d(depth))

  def forward(self, x):
    return self.res_layer(x) + self.shortcut_layer(x)


class TorchAdaFaceIR(nn.Module):
  """AdaFace net.py Backbone (mode "ir"): input_layer / body / output_layer."""

  def __init__(self, layers=(3, 4, 14, 3), side=7):
    super().__init__()
    self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False),
                                     nn.BatchNorm2d(64), nn.PReLU(64))
    blocks, c = [], 64
    for depth, n in zip((64, 128, 256, 512), layers):
      blocks.append(TorchAdaFaceBlockIR(c, depth, 2))
      blocks += [TorchAdaFaceBlockIR(depth, depth, 1) for _ in range(n - 1)]
      c = depth
    self.body = nn.Sequential(*blocks)
    self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(),
                                      nn.Linear(512 * side * side, 512),
                                      nn.BatchNorm1d(512, affine=False))

  def forward(self, x):
    fmap = self.body(self.input_layer(x))
    return fmap, self.output_layer(fmap)


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights AND random BN running stats / PReLU slopes, then eval mode.

  Scales keep activations O(1) through deep stacks so the comparison at 1e-4
  stays meaningful. The insightface embedding BN1d keeps weight 1 (frozen
  there).
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, m in module.named_modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
        if m.bias is not None:
          m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
      elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        c = m.num_features
        if m.affine:
          if name != "features":
            m.weight.copy_(0.5 + 0.5 * torch.rand(c, generator=g))
          m.bias.copy_(0.1 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
      elif isinstance(m, nn.PReLU):
        m.weight.copy_(0.1 + 0.3 * torch.rand(m.weight.shape, generator=g))
  return module.eval()
