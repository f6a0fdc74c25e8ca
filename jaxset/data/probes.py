"""Degradations applied to clean images after the fact: probes for quality proxies.

A quality proxy trained on one dataset's degradations may have learned only
those. The probes here degrade clean test images in the ways that make real
photographs hard to recognise, at a level in [0, 1] (0 = unchanged), so that a
proxy can be checked on degradations the training data need not contain:

| kind | level 1 means | real-world cause |
| --- | --- | --- |
| blur | Gaussian blur, sigma 3 px | defocus, motion |
| lowres | 8x down- and up-sampling | a distant subject, a small crop |
| jpeg | JPEG quality 5 | compression for storage or streaming |
| dark | exposure x0.1, then shot + read noise | low light |
| noise | Gaussian sensor noise, std 0.12 | high ISO |
| occlusion | the lower 60 % covered by a grey textured box | objects, crowds |

Every probe is a deterministic function of (image, kind, level, seed); the
sensor noise draws come from numpy's Generator seeded with `seed`.
"""
from __future__ import annotations

import numpy as np

from jaxset.data import render

PROBES = ("blur", "lowres", "jpeg", "dark", "noise", "occlusion")


def degrade(image: np.ndarray, kind: str, level: float, seed: int = 0) -> np.ndarray:
  """One uint8 image [H, W, 3] degraded by `kind` at `level` in [0, 1] -> uint8 [H, W, 3].

  level 0 returns the image unchanged. Raises ValueError for an unknown kind,
  a level outside [0, 1] or an image that is not uint8 [H, W, 3].
  """
  if kind not in PROBES:
    raise ValueError(f"unknown probe {kind!r}; use one of {PROBES}.")
  if not 0.0 <= level <= 1.0:
    raise ValueError(f"probe level must be in [0, 1]; got {level}.")
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"degrade expects a uint8 image [H, W, 3]; got {image.dtype} "
                     f"{image.shape}.")
  if level == 0:
    return image.copy()
  rng = np.random.default_rng([seed, PROBES.index(kind), int(round(level * 1000))])
  img = image.astype(np.float32) / 255.0
  if kind == "blur":
    img = render.gaussian_blur(img, 3.0 * level)
  elif kind == "lowres":
    img = render.low_resolution(img, 1.0 + 7.0 * level)
  elif kind == "jpeg":
    return render.to_uint8(render.jpeg_compress(img, round(95 - 90 * level)))
  elif kind == "dark":
    img = render.underexpose(img, 1.0 - 0.9 * level, rng)
  elif kind == "noise":
    img = render.add_noise(img, 0.12 * level, rng)
  else:  # occlusion
    h, w = img.shape[:2]
    top = int(round(h * (1.0 - 0.6 * level)))
    tex = render.textures(64)[0]
    yy, xx = np.mgrid[top:h, 0:w]
    img[top:] = np.clip(0.45 + 0.5 * (tex[yy % 64, xx % 64, None] - 0.5), 0, 1)
  return render.to_uint8(img)


def degrade_batch(images: np.ndarray, kind: str, level: float, seed: int = 0) -> np.ndarray:
  """degrade() of every image of [N, H, W, 3] uint8, image i seeded with seed + i."""
  return np.stack([degrade(im, kind, level, seed + i) for i, im in enumerate(images)])
