"""`synthetic_identities`: an embedded re-ID / set-recognition dataset with graded quality.

The default dataset of QAN, EQFace, AdaFace and CASN. Generated procedurally,
deterministically and offline on first use (see jaxset.data.load):

- identities: a person-like figure (head, hair, patterned top, trousers/shorts/
  skirt, shoes, optional bag or logo) with its own palette and clothing pattern
  (stripes, checks, or a real texture from skimage.data);
- cameras: each changes the view (front / back / mirrored front, scale) the
  colour response (warm, cool and dim, washed out) and the background type;
- nuisance per frame: position, scale, walking phase, background clutter;
- tracklets: `frames` consecutive frames per (identity, camera, tracklet); most
  frames are clean, a minority carry one degradation with a stored level in
  [0, 1]: blur, sensor noise, low resolution, occlusion, JPEG compression,
  dark exposure, or a pure-background frame (identity absent, level 1.0).

Records are stored in generation order (identity, camera, tracklet, frame), so
a tracklet's frames are contiguous in every split.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from jaxset.data import formats, render

DEGRADATION_TYPES = ("clean", "blur", "noise", "lowres", "occlusion", "jpeg", "dark",
                     "background")
CLEAN, BLUR, NOISE, LOWRES, OCCLUSION, JPEG, DARK, BACKGROUND = range(8)
# How often each degradation is drawn (a cycling bag, so each appears in
# proportion). Why these and at these levels: docs/data.md, "Degradations".
_BAG = (BLUR, BLUR, LOWRES, LOWRES, OCCLUSION, OCCLUSION, JPEG, JPEG, DARK, DARK, NOISE,
        BACKGROUND)
NUM_FOLDS = 10


@dataclasses.dataclass
class IdentitiesConfig(tfds.core.BuilderConfig):
  """Sizes of one build. Image size is (height, width) = (64, 32) in both configs."""
  height: int = 64
  width: int = 32
  # Who is filmed: identities, each by every camera in a few tracklets of frames.
  train_identities: int = 160
  test_identities: int = 80
  # Held-out identities for choices (recipes, thresholds, early stopping), disjoint
  # from train and test: the val_* splits mirror the test splits.
  val_identities: int = 40
  cameras: int = 3
  tracklets_per_camera: int = 2
  frames: int = 8
  # Verification protocols, 10 folds of them.
  pairs_per_fold: int = 60        # half same, half different
  set_pairs_per_fold: int = 40    # half same, half different
  seed: int = 20260401


CONFIGS = (
    IdentitiesConfig(name="default", description="160 train / 80 test / 40 val identities, "
                     "3 cameras, 2 tracklets of 8 frames, 64x32 images."),
    IdentitiesConfig(name="tiny", description="For tests: 10 train / 20 test identities, "
                     "3 cameras, 2 tracklets of 4 frames.",
                     train_identities=10, test_identities=20, val_identities=20, frames=4,
                     pairs_per_fold=6, set_pairs_per_fold=4),
)

# Camera models: view ("front", "back"), horizontal mirror, scale, colour response,
# background kind. Cameras beyond three reuse these with a shifted colour response.
_CAMERAS = (
    dict(view="front", mirror=False, scale=1.00, gain=1.05, tint=(1.12, 1.0, 0.80),
         saturation=1.0, gamma=1.0, offset=0.0, background="wall"),
    dict(view="back", mirror=False, scale=0.90, gain=0.80, tint=(0.82, 0.95, 1.22),
         saturation=0.9, gamma=1.15, offset=0.0, background="indoor"),
    dict(view="front", mirror=True, scale=1.07, gain=1.10, tint=(1.0, 1.05, 0.95),
         saturation=0.5, gamma=0.85, offset=0.04, background="outdoor"),
)

_SKIN = np.asarray([(0.96, 0.80, 0.69), (0.89, 0.67, 0.53), (0.76, 0.53, 0.38),
                    (0.55, 0.36, 0.24), (0.36, 0.23, 0.15)], np.float32)
_HAIR = np.asarray([(0.08, 0.06, 0.05), (0.30, 0.18, 0.09), (0.62, 0.45, 0.22),
                    (0.85, 0.72, 0.45), (0.55, 0.55, 0.55), (0.60, 0.15, 0.10)], np.float32)
_BOTTOM = np.asarray([(0.10, 0.12, 0.25), (0.15, 0.15, 0.15), (0.45, 0.40, 0.30),
                      (0.25, 0.35, 0.55), (0.60, 0.60, 0.62), (0.35, 0.20, 0.12),
                      (0.15, 0.30, 0.18), (0.70, 0.65, 0.50)], np.float32)
_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "texture")


def identity_attributes(identity: int, seed: int) -> dict:
  """The appearance of one identity, a deterministic function of (identity, seed)."""
  rng = np.random.default_rng([seed, 1, identity])
  hue = rng.integers(12) / 12.0 + rng.uniform(-0.02, 0.02)
  top = render.hsv_colour(hue % 1.0, rng.choice([0.35, 0.75]), rng.choice([0.45, 0.85]))
  second = render.hsv_colour((hue + rng.uniform(0.25, 0.75)) % 1.0, rng.uniform(0.2, 0.8),
                             rng.uniform(0.3, 0.95))
  return dict(
      skin=_SKIN[rng.integers(len(_SKIN))],
      hair=_HAIR[rng.integers(len(_HAIR))],
      hair_style=int(rng.integers(3)),  # 0 short, 1 long, 2 hat
      hat=render.hsv_colour(rng.uniform(), 0.6, 0.7),
      top=top, top_second=second,
      pattern=_PATTERNS[rng.integers(len(_PATTERNS))],
      period=float(rng.uniform(3.0, 6.0)), texture=int(rng.integers(len(render.TEXTURE_NAMES))),
      long_sleeves=bool(rng.integers(2)),
      bottom=_BOTTOM[rng.integers(len(_BOTTOM))] * np.float32(rng.uniform(0.85, 1.15)),
      bottom_style=int(rng.choice(3, p=[0.6, 0.2, 0.2])),  # trousers, shorts, skirt
      shoes=render.hsv_colour(rng.uniform(), 0.3, rng.uniform(0.05, 0.9)),
      bag=int(rng.choice(3, p=[0.5, 0.3, 0.2])),  # none, backpack, side bag
      bag_colour=render.hsv_colour(rng.uniform(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.8)),
      logo=bool(rng.integers(2)), logo_colour=render.hsv_colour(rng.uniform(), 0.9, 0.9),
      width=float(rng.uniform(0.85, 1.15)), height=float(rng.uniform(0.92, 1.04)),
  )


def _camera(camera: int) -> dict:
  cam = dict(_CAMERAS[camera % len(_CAMERAS)])
  if camera >= len(_CAMERAS):  # extra cameras: rotate the colour response
    cam["tint"] = tuple(np.roll(cam["tint"], camera // len(_CAMERAS)))
  return cam


@functools.cache
def _background_canvas(kind: str, h: int, w: int) -> np.ndarray:
  """A camera's static background, 64 px larger than the image each way [h+64, w+64, 3]."""
  tex = render.textures(64)
  H, W = h + 64, w + 64
  y = np.arange(H, dtype=np.float32)[:, None, None] + 0.5
  if kind == "wall":
    t = np.tile(tex[0], (H // 64 + 1, W // 64 + 1))[:H, :W]
    img = t[..., None] * np.asarray((0.95, 0.62, 0.50), np.float32) + 0.15
  elif kind == "indoor":
    img = np.broadcast_to(np.asarray((0.55, 0.62, 0.70), np.float32) * (0.6 + 0.4 * y / h),
                          (H, W, 3))
  else:
    t = np.tile(tex[2], (H // 64 + 1, W // 64 + 1))[:H, :W]
    img = t[..., None] * np.asarray((0.55, 0.85, 0.45), np.float32)
  return np.ascontiguousarray(img, np.float32)


def _background(cam: dict, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
  """Camera-specific background at a random offset, with per-frame clutter [H, W, 3]."""
  kind = cam["background"]
  oy, ox = rng.integers(0, 64, 2)
  img = _background_canvas(kind, h, w)[oy:oy + h, ox:ox + w].copy()
  if kind == "wall":
    img[int(0.85 * h):] = np.asarray((0.45, 0.43, 0.40), np.float32)  # pavement
  elif kind == "indoor":
    img[int(0.8 * h):] = np.asarray((0.35, 0.30, 0.28), np.float32)  # floor
  else:
    img[: int(0.3 * h)] = np.asarray((0.75, 0.82, 0.90), np.float32)  # sky
  # Clutter: poles, boxes and signs in random colours, some close to clothing colours.
  for _ in range(rng.integers(1, 4)):
    colour = render.hsv_colour(rng.uniform(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95))
    bx, bw = rng.uniform(-4, w), rng.uniform(2, 10)
    by, bh = rng.uniform(0, h * 0.8), rng.uniform(4, h * 0.5)
    render.paint_box(img, by, by + bh, bx, bx + bw, colour)
  return img


def _top_colour(a: dict, ty, tx) -> np.ndarray:
  """Clothing colour [H, W, 3] at torso-local coordinates (pixels)."""
  two = np.stack([a["top"], a["top_second"]])
  p = a["period"]
  if a["pattern"] == "hstripes":
    sel = (np.sin(2 * np.pi * ty / p) > 0)
  elif a["pattern"] == "vstripes":
    sel = (np.sin(2 * np.pi * tx / p) > 0)
  elif a["pattern"] == "checks":
    sel = (np.sin(2 * np.pi * ty / p) > 0) ^ (np.sin(2 * np.pi * tx / p) > 0)
  elif a["pattern"] == "texture":
    tex = render.textures(64)[a["texture"]]
    t = tex[(ty * 2).astype(int) % 64, (tx * 2).astype(int) % 64]
    return a["top"] * (0.35 + 1.3 * t[..., None])
  else:
    sel = np.zeros(ty.shape, bool)
  return two[sel.astype(int)]


def _person(img, a: dict, cam: dict, cx: float, feet: float, scale: float, phase: float,
            h: int, w: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
  """Draws one identity; returns the image and the person's box (y0, y1, x0, x1)."""
  u = h / 64.0 * scale * a["height"]
  wd = a["width"]
  mirror = -1.0 if cam["mirror"] else 1.0
  back = cam["view"] == "back"
  stride = 2.2 * u * np.sin(phase)
  swing = 1.5 * u * np.sin(phase)
  hip, shoulder = feet - 24 * u, feet - 43 * u
  half = 6.5 * u * wd
  def box(y0, y1, x0, x1, colour):
    render.paint_box(img, y0, y1, x0, x1, colour)

  # Legs (trousers / shorts / skirt) and shoes.
  for side in (-1.0, 1.0):
    lx = cx + side * (2.4 * u * wd + stride * 0.5)
    box(hip, feet - 1.2 * u, lx - 2.0 * u, lx + 2.0 * u, a["bottom"])
    if a["bottom_style"] == 1:
      box(hip + 10 * u, feet - 1.2 * u, lx - 1.6 * u, lx + 1.6 * u, a["skin"])
    box(feet - 2.2 * u, feet, lx - 2.0 * u, lx + 2.6 * u, a["shoes"])
  if a["bottom_style"] == 2:
    box(hip - 1 * u, hip + 9 * u, cx - half - 1.5 * u, cx + half + 1.5 * u, a["bottom"])
  # Arms behind the torso edges, swinging opposite to the legs.
  for side in (-1.0, 1.0):
    ax, dy = cx + side * (half + 1.3 * u), side * swing
    box(shoulder + 1 * u + dy, hip + 1 * u + dy, ax - 1.3 * u, ax + 1.3 * u,
        a["top"] if a["long_sleeves"] else a["skin"])
    if not a["long_sleeves"]:
      box(shoulder + dy, shoulder + 7 * u + dy, ax - 1.5 * u, ax + 1.5 * u, a["top"])
  # Torso with its pattern; a chest logo seen from the front only.
  box(shoulder, hip, cx - half, cx + half,
      lambda yy, xx: _top_colour(a, yy - shoulder, (xx - cx) * mirror))
  if a["logo"] and not back:
    lx = cx - mirror * 2.0 * u
    box(shoulder + 4 * u, shoulder + 8 * u, lx - 2 * u, lx + 2 * u, a["logo_colour"])
  if a["bag"] == 1:  # backpack: a block from behind, straps from the front
    if back:
      box(shoulder + 2 * u, hip - 2 * u, cx - half + 1 * u, cx + half - 1 * u, a["bag_colour"])
    else:
      for side in (-1.0, 1.0):
        sx = cx + side * 3.5 * u
        box(shoulder, shoulder + 12 * u, sx - 0.7 * u, sx + 0.7 * u, a["bag_colour"] * 0.6)
  elif a["bag"] == 2:  # side bag on the right hip; mirrored cameras see it on the left
    bx = cx + mirror * (half + 2.5 * u) * (-1.0 if back else 1.0)
    box(hip - 6 * u, hip + 3 * u, bx - 2.5 * u, bx + 2.5 * u, a["bag_colour"])
  # Head: face with a hair cap from the front, all hair from behind.
  hy = feet - 49 * u
  render.paint_ellipse(img, hy, cx, 5.2 * u, 4.2 * u, a["hair"] if back else a["skin"])
  if a["hair_style"] == 2:
    box(hy - 6.0 * u, hy - 2.0 * u, cx - 4.8 * u, cx + 4.8 * u, a["hat"])
  else:
    render.paint_ellipse(img, hy - 2.0 * u, cx, 3.8 * u, 4.6 * u, a["hair"], y_max=hy - 0.5 * u)
    if a["hair_style"] == 1:
      for side in (-1.0, 1.0):
        lx = cx + side * 4.2 * u
        box(hy - 2 * u, hy + 7 * u, lx - 1.2 * u, lx + 1.2 * u, a["hair"])
  return img, (feet - 55 * u, feet, cx - half - 3 * u, cx + half + 3 * u)


def render_tracklet(identity: int, camera: int, tracklet: int, frames: int, height: int,
                    width: int, seed: int,
                    degradation: list[tuple[int, float]]) -> list[np.ndarray]:
  """The uint8 frames [H, W, 3] of one tracklet.

  `degradation` gives (type id, level) per frame. Deterministic in all arguments.
  """
  a = identity_attributes(identity, seed)
  cam = _camera(camera)
  rng = np.random.default_rng([seed, 2, identity, camera, tracklet])
  cx0 = width / 2 + rng.uniform(-2.5, 2.5)
  drift = rng.uniform(-0.4, 0.4) * width / 32
  feet = height * rng.uniform(0.93, 0.975)
  scale = cam["scale"] * rng.uniform(0.92, 1.06)
  phase0 = rng.uniform(0, 2 * np.pi)
  light = rng.uniform(0.9, 1.1)
  out = []
  for f in range(frames):
    kind, level = degradation[f]
    img = _background(cam, height, width, rng)
    box = None
    if kind != BACKGROUND:
      cx = cx0 + drift * (f - frames / 2) + rng.normal(0, 0.4)
      img, box = _person(img, a, cam, cx, feet + rng.normal(0, 0.4),
                         scale * rng.uniform(0.98, 1.02),
                         phase0 + 0.9 * f, height, width)
    img = render.colour_transform(img, gain=cam["gain"] * light, tint=cam["tint"],
                                  saturation=cam["saturation"], gamma=cam["gamma"],
                                  offset=cam["offset"])
    if kind == BLUR:
      img = render.gaussian_blur(img, 0.5 + 2.5 * level)
    elif kind == NOISE:
      img = render.add_noise(img, 0.02 + 0.10 * level, rng)
    elif kind == LOWRES:
      img = render.low_resolution(img, 2.0 + 6.0 * level)
    elif kind == OCCLUSION:
      y0, y1, x0, x1 = box
      frac = 0.3 + 0.5 * level
      where = rng.integers(3)  # from below, from above, from a side
      if where == 0:
        ob = (y1 - frac * (y1 - y0), height + 1, -1, width + 1)
      elif where == 1:
        ob = (-1, y0 + frac * (y1 - y0), x0 - 2, x1 + 2)
      else:
        side = rng.choice([-1, 1])
        if side < 0:
          ob = (-1, height + 1, -1, x0 + frac * (x1 - x0))
        else:
          ob = (-1, height + 1, x1 - frac * (x1 - x0), width + 1)
      tex = render.textures(64)[rng.integers(len(render.TEXTURE_NAMES))]
      colour = render.hsv_colour(rng.uniform(), rng.uniform(0.1, 0.8), rng.uniform(0.2, 0.8))
      render.paint_box(img, *ob, lambda yy, xx: np.clip(
          colour * (0.5 + tex[yy.astype(int) % 64, xx.astype(int) % 64][..., None]), 0, 1))
    elif kind == DARK:
      img = render.underexpose(img, 1.0 - 0.9 * level, rng)
    if kind != DARK:  # underexpose adds its own read noise
      img = render.add_noise(img, 0.01, rng)  # sensor noise on every frame
    if kind == JPEG:  # compression comes last, after the sensor
      img = render.jpeg_compress(img, round(95 - 90 * level))
    out.append(render.to_uint8(img))
  return out


def degradation_schedule(identity: int, camera: int, tracklet: int, frames: int,
                         seed: int, bag: list[int]) -> list[tuple[int, float]]:
  """(type id, level) per frame: most frames clean, 0 to 3/8 of them degraded.

  Degraded types are drawn from `bag`, a shared, cycling shuffled list that the
  caller refills, so every type appears in proportion across a split.
  """
  rng = np.random.default_rng([seed, 3, identity, camera, tracklet])
  max_bad = max(1, (3 * frames) // 8)
  n_bad = int(rng.choice(max_bad + 1, p=_bad_probs(max_bad)))
  sched = [(CLEAN, 0.0)] * frames
  for f in rng.choice(frames, n_bad, replace=False):
    if not bag:
      bag.extend(rng.permutation(_BAG).tolist())
    kind = bag.pop()
    sched[f] = (kind, 1.0 if kind == BACKGROUND else float(np.float32(rng.uniform(0.2, 1.0))))
  return sched


def _bad_probs(max_bad: int) -> np.ndarray:
  p = np.asarray([0.2, 0.35, 0.3, 0.15][:max_bad + 1])
  return p / p.sum()


def generate(config: IdentitiesConfig) -> dict[str, list[dict]]:
  """All records of all splits (images PNG-encoded), deterministic in `config`."""
  c = config
  if c.test_identities < 2 * NUM_FOLDS:
    raise ValueError(f"test_identities must be >= {2 * NUM_FOLDS} (two per verification fold), "
                     f"got {c.test_identities}.")
  if c.val_identities < 2 * NUM_FOLDS:
    raise ValueError(f"val_identities must be >= {2 * NUM_FOLDS} (two per verification fold), "
                     f"got {c.val_identities}.")
  if c.cameras < 2:
    raise ValueError(f"cameras must be >= 2 for cross-camera query/gallery, got {c.cameras}.")
  train_ids = list(range(1, c.train_identities + 1))
  test_ids = list(range(c.train_identities + 1, c.train_identities + c.test_identities + 1))
  first_val = c.train_identities + c.test_identities + 1
  val_ids = list(range(first_val, first_val + c.val_identities))
  splits = {"train": [], "query": [], "gallery": [], "val_query": [], "val_gallery": []}
  # part -> {(identity, camera, k): (tracklet id, [records])}
  held_out = {"test": {}, "val": {}}
  bag: list[int] = []
  # val comes last, so train and test are what they were before it existed.
  for part, ids in (("train", train_ids), ("test", test_ids), ("val", val_ids)):
    tracklet_id = 0
    prefix = "val_" if part == "val" else ""
    for label, ident in enumerate(ids):
      for cam in range(c.cameras):
        split = part if part == "train" else (
            prefix + ("query" if cam == ident % c.cameras else "gallery"))
        for k in range(c.tracklets_per_camera):
          sched = degradation_schedule(ident, cam, k, c.frames, c.seed, bag)
          imgs = render_tracklet(ident, cam, k, c.frames, c.height, c.width, c.seed, sched)
          recs = []
          for f, (img, (kind, level)) in enumerate(zip(imgs, sched)):
            recs.append({
                "image": render.encode(img, "png"), "label": label, "identity": ident,
                "camera": cam, "tracklet": tracklet_id, "frame": f,
                "degradation": np.float32(level), "degradation_type": kind,
                "filename": f"{ident:04d}_c{cam}_t{tracklet_id:05d}_f{f:02d}.png"})
          splits[split].extend(recs)
          if part != "train":
            held_out[part][(ident, cam, k)] = (tracklet_id, recs)
          tracklet_id += 1
  splits["pairs"], splits["set_pairs"] = _pairs(c, test_ids, held_out["test"], 4)
  splits["val_pairs"], splits["val_set_pairs"] = _pairs(c, val_ids, held_out["val"], 5)
  return splits


def _pairs(c: IdentitiesConfig, test_ids, test_frames, stream: int):
  """Image pairs and tracklet pairs in 10 identity-disjoint folds (LFW / YTF style),
  drawn from random stream [seed, stream] (4: test, 5: val)."""
  rng = np.random.default_rng([c.seed, stream])
  groups = np.array_split(np.asarray(test_ids), NUM_FOLDS)
  pairs, set_pairs = [], []
  for fold, group in enumerate(groups):
    for n, rows, is_set in ((c.pairs_per_fold, pairs, False),
                            (c.set_pairs_per_fold, set_pairs, True)):
      for i in range(n):
        same = int(i < n // 2)
        if same:
          ia = ib = int(rng.choice(group))
          ca, cb = rng.choice(c.cameras, 2, replace=False)  # cross-camera positives
        else:
          ia, ib = (int(v) for v in rng.choice(group, 2, replace=False))
          ca, cb = rng.integers(c.cameras, size=2)
        ta = test_frames[(ia, int(ca), int(rng.integers(c.tracklets_per_camera)))]
        tb = test_frames[(ib, int(cb), int(rng.integers(c.tracklets_per_camera)))]
        if is_set:
          rows.append({"tracklet_a": ta[0], "tracklet_b": tb[0], "same": same, "fold": fold})
        else:
          ra, rb = ta[1][rng.integers(c.frames)], tb[1][rng.integers(c.frames)]
          rows.append({"image_a": ra["image"], "image_b": rb["image"], "same": same, "fold": fold,
                       "degradation_a": ra["degradation"], "degradation_b": rb["degradation"]})
  return pairs, set_pairs


# Features of each split (the schemas shared with the real datasets, see
# jaxset.data.formats). tfds stores one feature set per dataset, so records hold
# the union (unused fields hold a blank image / -1 / "") and
# SyntheticIdentities.as_data_source returns only the split's own fields.
SPLIT_FEATURES = {
    "train": formats.IDENTITY_KEYS, "query": formats.IDENTITY_KEYS,
    "gallery": formats.IDENTITY_KEYS, "pairs": formats.PAIR_KEYS,
    "set_pairs": formats.SET_PAIR_KEYS,
}
# Validation: the same protocols on held-out identities (config.eval.split = "val").
SPLIT_FEATURES.update({f"val_{k}": v for k, v in list(SPLIT_FEATURES.items()) if k != "train"})
_IMAGES, _FLOATS = formats.IMAGE_KEYS, formats.FLOAT_KEYS


class SyntheticIdentities(formats.OfflineBuilder):
  """Procedural identities x cameras x tracklets with graded, labelled degradations.

  Splits: train; query / gallery (test identities, query from one camera per
  identity, gallery from the others); pairs (image verification, 10 folds);
  set_pairs (tracklet verification, 10 folds). Tracklet ids of query and
  gallery share one id space (the test tracklets), which set_pairs refers to.
  val_query / val_gallery / val_pairs / val_set_pairs: the same on the
  validation identities (their own tracklet id space), for every choice.
  """
  VERSION = tfds.core.Version("2.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Blur, noise (std 0.05-0.35), low resolution, occlusion, background.",
      "2.0.0": "Adds JPEG compression and dark exposure; sensor noise at std 0.02-0.12 "
               "(docs/data.md, Degradations).",
      "2.1.0": "Adds val_query / val_gallery / val_pairs / val_set_pairs on 40 held-out "
               "identities (20 in tiny); every 2.0.0 split is unchanged.",
  }
  BUILDER_CONFIGS = list(CONFIGS)
  DEGRADATION_TYPES = DEGRADATION_TYPES
  NUM_FOLDS = NUM_FOLDS
  SPLIT_FEATURES = SPLIT_FEATURES

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    feats = {}
    for name in sorted({k for keys in SPLIT_FEATURES.values() for k in keys}):
      if name in _IMAGES:
        feats[name] = tfds.features.Image(shape=(c.height, c.width, 3), encoding_format="png")
      elif name in _FLOATS:
        feats[name] = tfds.features.Scalar(np.float32)
      elif name == "filename":
        feats[name] = tfds.features.Text()
      else:
        feats[name] = tfds.features.Scalar(np.int64)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        disable_shuffling=True,
        features=tfds.features.FeaturesDict(feats),
        metadata=tfds.core.MetadataDict(degradation_types=list(DEGRADATION_TYPES),
                                        num_folds=NUM_FOLDS,
                                        split_features={k: list(v)
                                                        for k, v in SPLIT_FEATURES.items()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    records = generate(self.builder_config)
    return {name: self._generate_examples(rows) for name, rows in records.items()}

  def _generate_examples(self, rows):
    c = self.builder_config
    blank = render.encode(np.zeros((c.height, c.width, 3), np.uint8), "png")
    for i, row in enumerate(rows):
      full = {}
      for name in self.info.features.keys():
        if name in row:
          full[name] = row[name]
        elif name in _IMAGES:
          full[name] = blank
        elif name in _FLOATS:
          full[name] = np.float32(-1.0)
        else:
          full[name] = "" if name == "filename" else -1
      yield i, full

  def as_data_source(self, split=None, **kwargs):
    """tfds' data source, restricted to the split's own fields (see SPLIT_FEATURES).

    Images of other splits are not decoded. Pass deserialize_method to get the
    raw tfds behaviour.
    """
    if not isinstance(split, str) or split not in SPLIT_FEATURES or "deserialize_method" in kwargs:
      return super().as_data_source(split, **kwargs)
    keys = SPLIT_FEATURES[split]
    decoders = {k: tfds.decode.SkipDecoding() for k in _IMAGES if k not in keys}
    decoders.update(kwargs.pop("decoders", None) or {})
    return formats.SplitSource(super().as_data_source(split, decoders=decoders, **kwargs), keys)
