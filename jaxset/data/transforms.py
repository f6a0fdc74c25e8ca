"""Image augmentation and degradation transforms (numpy, uint8 in, uint8 out).

Every transform has the signature `fn(image, rng, **params) -> image` where
`image` is uint8 [H, W, C] and `rng` a `np.random.Generator`; bind the params
with `functools.partial` (or use the factories `train_augment` and
`degrade`) to get the `image_fn(image, rng)` that the samplers in
`jaxset.data.samplers` take. Determinism comes from the rng alone: the
samplers seed one generator per (seed, step, row, slot), so the same seed
gives the same pixels whatever the sharding or prefetching. The same functions
work in grain's `ds.random_map(lambda r, rng: ...)`, whose generator is seeded
from the pipeline seed and the element's index.

Outputs stay uint8: normalisation happens inside the model (docs/design.md).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

ImageFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _check_image(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3:
    raise ValueError(
        f"image must be uint8 [H, W, C]; got dtype {image.dtype} and shape "
        f"{image.shape}. Decode images to uint8 HWC before transforming.")
  return image


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def resize(image, rng=None, *, size: Sequence[int]) -> np.ndarray:
  """Bilinear resize to size=(H, W); the rng is unused (deterministic).

  Real datasets have images of varying sizes: resize before batching.
  """
  del rng
  image = _check_image(image)
  h, w = int(size[0]), int(size[1])
  if h <= 0 or w <= 0:
    raise ValueError(f"size must be positive (H, W); got {tuple(size)}.")
  if image.shape[:2] == (h, w):
    return image
  squeeze = image.shape[2] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((w, h), Image.BILINEAR))
  return out[..., None] if squeeze else out


def random_crop(image, rng: np.random.Generator, *, pad: int = 4) -> np.ndarray:
  """Pad-shift crop: zero-pad by `pad` pixels each side, crop back to H x W
  at a uniform random offset (the usual re-ID / CIFAR augmentation)."""
  image = _check_image(image)
  if pad <= 0:
    return image
  h, w = image.shape[:2]
  dy, dx = (int(v) - pad for v in rng.integers(0, 2 * pad + 1, size=2))
  # out[y, x] = image[y + dy, x + dx] where inside, else 0 (no padded copy).
  out = np.zeros_like(image)
  ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h - max(dy, 0))
  xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w - max(dx, 0))
  out[yd, xd] = image[ys, xs]
  return out


def random_flip(image, rng: np.random.Generator, *, p: float = 0.5) -> np.ndarray:
  """Horizontal flip with probability p."""
  image = _check_image(image)
  return image[:, ::-1] if rng.random() < p else image


def color_jitter(image, rng: np.random.Generator, *, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2) -> np.ndarray:
  """Random brightness b, contrast c and saturation s factors, each uniform in
  [1 - v, 1 + v], applied in that order (ColorJitter-like, one fused pass):
  y = b*x; y = c*(y - mean(y)) + mean(y); y = s*(y - gray(y)) + gray(y)."""
  image = _check_image(image)
  b, c, s = (1.0 + rng.uniform(-v, v) if v > 0 else 1.0
             for v in (brightness, contrast, saturation))
  x = image.astype(np.float32)
  scale = b * c
  shift = (1.0 - c) * b * float(x.mean())
  if x.shape[2] == 3 and s != 1.0:
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    y = (s * scale) * x + ((1.0 - s) * scale * gray + shift)[..., None]
  else:
    y = scale * x + shift
  return _to_uint8(y)


def gaussian_blur(image, rng: np.random.Generator, *, max_sigma: float = 2.0
                  ) -> np.ndarray:
  """Gaussian blur with sigma ~ U(0, max_sigma) over H and W."""
  image = _check_image(image)
  sigma = rng.uniform(0.0, max_sigma)
  if sigma < 1e-3:
    return image
  out = ndimage.gaussian_filter(image.astype(np.float32), (sigma, sigma, 0))
  return _to_uint8(out)


def gaussian_noise(image, rng: np.random.Generator, *, max_std: float = 20.0
                   ) -> np.ndarray:
  """Additive Gaussian noise, std ~ U(0, max_std) in pixel units."""
  image = _check_image(image)
  std = rng.uniform(0.0, max_std)
  noise = rng.normal(0.0, 1.0, image.shape).astype(np.float32) * std
  return _to_uint8(image.astype(np.float32) + noise)


def downscale_upscale(image, rng: np.random.Generator, *, min_scale: float = 0.25
                      ) -> np.ndarray:
  """Low resolution: bilinear down to scale ~ U(min_scale, 1), back up."""
  image = _check_image(image)
  if not 0 < min_scale <= 1:
    raise ValueError(f"min_scale must be in (0, 1]; got {min_scale}.")
  h, w = image.shape[:2]
  scale = rng.uniform(min_scale, 1.0)
  small = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
  return resize(resize(image, size=small), size=(h, w))


def occlusion(image, rng: np.random.Generator, *, max_fraction: float = 0.5,
              fill: int = 0) -> np.ndarray:
  """Fills a random rectangle covering up to max_fraction of the area."""
  image = _check_image(image)
  h, w = image.shape[:2]
  area = rng.uniform(0.0, max_fraction) * h * w
  aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
  rh = int(min(h, round(np.sqrt(area * aspect))))
  rw = int(min(w, round(np.sqrt(area / aspect))))
  if rh == 0 or rw == 0:
    return image
  y = rng.integers(0, h - rh + 1)
  x = rng.integers(0, w - rw + 1)
  out = image.copy()
  out[y:y + rh, x:x + rw] = fill
  return out


DEGRADATIONS = {
    "blur": gaussian_blur,
    "noise": gaussian_noise,
    "downscale": downscale_upscale,
    "occlusion": occlusion,
}


def random_degradation(image, rng: np.random.Generator, *,
                       kinds: Sequence[str] = tuple(DEGRADATIONS), p: float = 0.5
                       ) -> np.ndarray:
  """With probability p applies one degradation drawn uniformly from `kinds`
  (keys of DEGRADATIONS) at a random strength; else returns the image."""
  unknown = [k for k in kinds if k not in DEGRADATIONS]
  if unknown or not kinds:
    raise ValueError(
        f"kinds must be a non-empty subset of {sorted(DEGRADATIONS)}; got "
        f"{list(kinds)}.")
  image = _check_image(image)
  if rng.random() >= p:
    return image
  kind = kinds[int(rng.integers(len(kinds)))]
  return DEGRADATIONS[kind](image, rng)


class _Composed:
  """Picklable chain of image_fns (grain's multiprocess prefetch pickles)."""

  def __init__(self, fns):
    self.fns = tuple(fns)

  def __call__(self, image, rng):
    for fn in self.fns:
      image = fn(image, rng)
    return image


def compose(*fns: ImageFn) -> ImageFn:
  """Chains image_fns left to right, all drawing from the same rng."""
  return _Composed(fns)


def train_augment(size: Sequence[int] | None = None, *, pad: int = 4,
                  flip: bool = True, jitter: float = 0.2,
                  degrade_p: float = 0.0) -> ImageFn:
  """The default training image_fn: [resize] -> pad-shift crop -> [flip] ->
  [colour jitter] -> [random degradation with probability degrade_p]."""
  fns = []
  if size is not None:
    fns.append(functools.partial(resize, size=tuple(size)))
  if pad > 0:
    fns.append(functools.partial(random_crop, pad=pad))
  if flip:
    fns.append(random_flip)
  if jitter > 0:
    fns.append(functools.partial(
        color_jitter, brightness=jitter, contrast=jitter, saturation=jitter))
  if degrade_p > 0:
    fns.append(functools.partial(random_degradation, p=degrade_p))
  return compose(*fns)


def eval_transform(size: Sequence[int] | None = None) -> ImageFn | None:
  """The evaluation image_fn: resize only (None when size is None)."""
  if size is None:
    return None
  return functools.partial(resize, size=tuple(size))
