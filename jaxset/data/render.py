"""Procedural drawing and degradation helpers shared by the embedded datasets.

Everything works on float32 images [H, W, 3] with values in [0, 1] and is a
deterministic function of its inputs (randomness comes in as a numpy
Generator), so that the embedded datasets are byte-identical on every build.
"""
from __future__ import annotations

import functools
import io

import numpy as np
import PIL.Image
from scipy import ndimage

# Real photographs / textures shipped inside the scikit-image wheel (offline).
TEXTURE_NAMES = ("brick", "gravel", "grass", "text", "page", "moon", "coins", "camera")


@functools.cache
def textures(size: int = 64) -> np.ndarray:
  """Grey textures [T, size, size] float32 in [0, 1], zero-mean contrast around 0.5.

  Centre crops of skimage.data images, resized with PIL (deterministic) and
  contrast-normalised so that all textures have a similar spread (std 0.18).
  """
  import skimage.data

  tiles = []
  for name in TEXTURE_NAMES:
    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 3:
      img = img[..., :3].mean(-1)
    side = min(img.shape[:2])
    y0, x0 = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    crop = np.clip(img[y0:y0 + side, x0:x0 + side], 0, 255).astype(np.uint8)
    small = np.asarray(PIL.Image.fromarray(crop).resize((size, size), PIL.Image.BILINEAR),
                       np.float32) / 255.0
    small = (small - small.mean()) / (small.std() + 1e-6)
    tiles.append(np.clip(0.5 + 0.18 * small, 0.0, 1.0))
  return np.stack(tiles).astype(np.float32)


def grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (y, x), each [H, W] float32."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  return y + 0.5, x + 0.5


def _unit(v):
  """Clips to [0, 1] (np.clip's Python overhead matters at 10^5 calls)."""
  return np.minimum(np.maximum(v, 0.0), 1.0)


def _window(img, y0, y1, x0, x1):
  """Integer pixel window covering [y0, y1] x [x0, x1] clipped to img; None if empty."""
  h, w = img.shape[:2]
  r0, r1 = max(0, int(np.floor(y0))), min(h, int(np.ceil(y1)) + 1)
  c0, c1 = max(0, int(np.floor(x0))), min(w, int(np.ceil(x1)) + 1)
  if r0 >= r1 or c0 >= c1:
    return None
  y = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
  x = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
  return r0, r1, c0, c1, y, x


def _blend(img, win, alpha, colour):
  r0, r1, c0, c1, y, x = win
  if callable(colour):
    colour = colour(np.broadcast_to(y, alpha.shape), np.broadcast_to(x, alpha.shape))
  a = alpha[..., None]
  img[r0:r1, c0:c1] = img[r0:r1, c0:c1] * (1.0 - a) + np.asarray(colour, np.float32) * a


def paint_box(img: np.ndarray, y0, y1, x0, x1, colour) -> np.ndarray:
  """Paints the axis-aligned box [y0, y1] x [x0, x1] (pixels) in place, anti-aliased.

  `colour` is an RGB [3], or a function (y, x) -> [h, w, 3] of pixel-centre
  coordinates (patterns). Boxes outside the image are a no-op. Returns img.
  """
  win = _window(img, y0, y1, x0, x1)
  if win is None:
    return img
  _, _, _, _, y, x = win
  cy = _unit(np.minimum(y - y0, y1 - y) + 0.5)
  cx = _unit(np.minimum(x - x0, x1 - x) + 0.5)
  _blend(img, win, cy * cx, colour)
  return img


def paint_ellipse(img: np.ndarray, cy, cx, ry, rx, colour, y_max=None) -> np.ndarray:
  """Paints an axis-aligned ellipse in place (optionally only rows above y_max). Returns img."""
  win = _window(img, cy - ry - 1, cy + ry + 1, cx - rx - 1, cx + rx + 1)
  if win is None:
    return img
  _, _, _, _, y, x = win
  r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
  alpha = _unit(0.5 - (r - 1.0) * min(ry, rx))
  if y_max is not None:
    alpha = alpha * _unit(y_max - y + 0.5)
  _blend(img, win, alpha, colour)
  return img


def hsv_colour(h: float, s: float, v: float) -> np.ndarray:
  """An RGB colour [3] float32 from hue, saturation, value in [0, 1]."""
  i = int(h * 6.0) % 6
  f = h * 6.0 - int(h * 6.0)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  return np.asarray([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i],
                    np.float32)


def colour_transform(img: np.ndarray, gain=1.0, tint=(1.0, 1.0, 1.0), saturation=1.0,
                     gamma=1.0, offset=0.0) -> np.ndarray:
  """Illumination / camera colour response: per-channel gain, saturation, gamma."""
  grey = img.mean(-1, keepdims=True)
  out = grey + saturation * (img - grey)
  out = np.clip(out * gain * np.asarray(tint, np.float32) + offset, 0.0, 1.0)
  return out ** np.float32(gamma) if gamma != 1.0 else out


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian blur of std `sigma` pixels over H and W (sigma <= 0: unchanged)."""
  if sigma <= 0:
    return img
  return ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest")


def add_noise(img: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
  """Additive Gaussian pixel noise of `std` (in [0,1] units), clipped to [0, 1]."""
  return np.clip(img + rng.normal(0.0, std, img.shape).astype(np.float32), 0.0, 1.0)


def low_resolution(img: np.ndarray, factor: float) -> np.ndarray:
  """Downsamples by `factor` (box filter) and upsamples back (nearest): blocky detail loss."""
  h, w = img.shape[:2]
  small = (max(1, round(w / factor)), max(1, round(h / factor)))
  pil = PIL.Image.fromarray(to_uint8(img))
  pil = pil.resize(small, PIL.Image.BOX).resize((w, h), PIL.Image.NEAREST)
  return np.asarray(pil, np.float32) / 255.0


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
  """A JPEG round trip at `quality` (1..95): block artefacts, lost colour detail."""
  buf = io.BytesIO()
  PIL.Image.fromarray(to_uint8(img)).save(buf, format="JPEG", quality=int(quality))
  return np.asarray(PIL.Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
                    np.float32) / 255.0


def underexpose(img: np.ndarray, gain: float, rng: np.random.Generator) -> np.ndarray:
  """Low light: the signal scaled by `gain` in (0, 1], then shot and read noise.

  Fewer photons shrink the signal while the sensor's own noise stays, so the
  signal-to-noise ratio falls with the exposure: shot noise grows as the
  square root of the signal (variance 0.002 x signal, in [0, 1] units), read
  noise is a constant std 0.01.
  """
  signal = img * np.float32(gain)
  shot = rng.normal(0.0, 1.0, img.shape).astype(np.float32) * np.sqrt(signal * 0.002)
  return np.clip(signal + shot + rng.normal(0.0, 0.01, img.shape).astype(np.float32), 0, 1)


def to_uint8(img: np.ndarray) -> np.ndarray:
  """[H, W, 3] float in [0, 1] -> uint8 with rounding."""
  return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def encode(img: np.ndarray, fmt: str = "png", quality: int = 92) -> bytes:
  """Encodes a float [0,1] or uint8 image as PNG or JPEG bytes (deterministic)."""
  arr = img if img.dtype == np.uint8 else to_uint8(img)
  buf = io.BytesIO()
  if fmt == "png":
    PIL.Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
  elif fmt == "jpeg":
    PIL.Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
  else:
    raise ValueError(f"fmt must be 'png' or 'jpeg', got {fmt!r}.")
  return buf.getvalue()
