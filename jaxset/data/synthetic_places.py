"""`synthetic_places`: an embedded place-recognition city, Pittsburgh's schema.

The default dataset of NetVLAD. Generated procedurally, deterministically and
offline on first use (see jaxset.data.load):

- a city of straight streets on a grid, in metres (UTM-like coordinates);
  train, val and test are three disjoint districts, 300 m apart;
- both sides of every street are lined with buildings: each has a style from a
  shared pool (a real texture from skimage.data, a tint, a window grid), so
  facades repeat across the city (look-alike distractors), while the sequence
  of styles, heights and shop signs is unique to a place; cross streets leave
  gaps that show distant buildings;
- images are rendered with a pinhole camera (90 degree field of view) looking
  at a facade at a yaw of +-35 degrees;
- database images: every `db_spacing` metres along the centre of each street,
  4 headings (2 per side), at daytime;
- queries: random positions (up to 2.5 m off the centre line), headings within
  10 degrees of a database heading, pitch and roll jitter, at the config's
  times of day in turn (default: Pittsburgh's daylight ones, day, morning,
  overcast, harsh sun with shadows; config day_night adds dusk and night with
  lit windows), with occluders (cars, people, trees), blur and noise.

Every query has database images within 10 m (NON_TRIV_POS_DIST_SQ_THR) by
construction. Records are stored in generation order.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from jaxset.data import formats, render

POS_DIST_THR = 25.0  # metres: a retrieved database image within this is correct (dbStruct)
POS_DIST_SQ_THR = POS_DIST_THR ** 2
NON_TRIV_POS_DIST_SQ_THR = 100.0  # 10 m: potential positives for training
SPLITS = ("train", "val", "test")
UTM_ORIGIN = (584000.0, 4477000.0)  # near Pittsburgh's UTM coordinates (zone 17T)
HALF_STREET = 12.0  # metres from the centre line to the facades
CAMERA_HEIGHT = 2.5
DB_YAWS = (-35.0, 35.0)  # degrees from the facade normal, per side
NUM_STYLES = 24
TIMES = ("day", "morning", "overcast", "dusk", "night", "harsh")
# Pittsburgh's queries are Google Street View images, all taken in daylight
# (other years, seasons, weather); dusk and night are Tokyo 24/7's conditions.
DAYLIGHT = ("day", "morning", "overcast", "harsh")


@dataclasses.dataclass
class PlacesConfig(tfds.core.BuilderConfig):
  """Sizes of one build."""
  height: int = 64
  width: int = 64
  block: float = 120.0          # street spacing, metres
  horizontal_streets: int = 3   # per district
  vertical_streets: int = 4     # per district
  db_spacing: float = 6.0       # metres between database places along a street
  # val and test queries each: Pitts30k's ratio of queries to database images
  # (about 7,000 to 10,000) and a 95% interval on Recall@1 of about +-0.03
  # (+-0.06 with 250). The first 250 are 1.1.0's (one seed per query).
  queries: int = 1000
  train_queries: int = 1000
  query_times: tuple[str, ...] = DAYLIGHT
  seed: int = 20260402


CONFIGS = (
    PlacesConfig(name="default", description="3 districts of 3x4 streets (240 m x 360 m), "
                 "database every 6 m x 4 headings (1388 per split), 1000 train queries, "
                 "1000 val and 1000 test queries, in daylight as Pittsburgh's, "
                 "64x64 images."),
    PlacesConfig(name="day_night", description="default with queries at all six times of "
                 "day, dusk and night included (Tokyo 24/7's conditions).", query_times=TIMES),
    PlacesConfig(name="tiny",
                 description="For tests: 2x2 streets 60 m apart, 20 queries per split, "
                 "all six times of day.",
                 block=60.0, horizontal_streets=2, vertical_streets=2, db_spacing=10.0, queries=20,
                 train_queries=20, query_times=TIMES),
)


@dataclasses.dataclass(frozen=True)
class Street:
  origin: tuple[float, float]     # metres, district frame
  direction: tuple[float, float]  # unit vector
  length: float
  crossings: tuple[float, ...]    # positions along the street of the cross streets


@functools.cache
def styles(seed: int) -> list[dict]:
  """The shared pool of facade styles (repetition across the city is deliberate)."""
  rng = np.random.default_rng([seed, 10])
  pool = []
  for _ in range(NUM_STYLES):
    pool.append(dict(
        texture=int(rng.integers(len(render.TEXTURE_NAMES))),
        tint=render.hsv_colour(rng.uniform(0.0, 0.65), rng.uniform(0.05, 0.55),
                               rng.uniform(0.45, 0.95)),
        contrast=float(rng.uniform(0.4, 1.2)),
        floor=float(rng.uniform(3.0, 4.2)), column=float(rng.uniform(2.0, 4.5)),
        window_w=float(rng.uniform(0.3, 0.7)), window_h=float(rng.uniform(0.35, 0.7)),
        glass=render.hsv_colour(rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.5),
                                rng.uniform(0.1, 0.35)),
        shop=render.hsv_colour(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9)),
    ))
  return pool


def district(config: PlacesConfig, split: int) -> tuple[np.ndarray, list[Street]]:
  """The origin (UTM, metres) and the streets of one split's district."""
  c = config
  width_m, height_m = (c.vertical_streets - 1) * c.block, (c.horizontal_streets - 1) * c.block
  origin = np.asarray(UTM_ORIGIN) + np.asarray([split * (width_m + 300.0), 0.0])
  streets = []
  for j in range(c.horizontal_streets):
    streets.append(Street((0.0, j * c.block), (1.0, 0.0), width_m,
                          tuple(i * c.block for i in range(c.vertical_streets))))
  for i in range(c.vertical_streets):
    streets.append(Street((i * c.block, 0.0), (0.0, 1.0), height_m,
                          tuple(j * c.block for j in range(c.horizontal_streets))))
  return origin, streets


def facade(seed: int, split: int, street: int, side: int, length: float) -> dict:
  """Buildings along one side of a street: boundaries and per-building attributes (arrays)."""
  rng = np.random.default_rng([seed, 11, split, street, side + 1])
  edges = [-80.0]
  while edges[-1] < length + 80.0:
    edges.append(edges[-1] + rng.uniform(8.0, 22.0))
  n = len(edges) - 1
  edges = np.asarray(edges)
  width = edges[1:] - edges[:-1]
  sign_lo = edges[:-1] + rng.uniform(0.1, 0.5, n) * width
  style = rng.integers(NUM_STYLES, size=n)
  out = {k: np.stack([np.asarray(p[k], np.float32) for p in styles(seed)])[style]
         for k in styles(seed)[0]}
  out["texture"] = out["texture"].astype(np.int64)
  out.update(
      edges=edges, style=style,
      height=rng.uniform(7.0, 32.0, n),
      sign=rng.uniform(size=n) < 0.35,
      sign_colour=np.stack([render.hsv_colour(h, 0.85, 0.95) for h in rng.uniform(size=n)]),
      sign_lo=sign_lo, sign_hi=sign_lo + rng.uniform(0.25, 0.5, n) * width,
      sign_z=rng.uniform(3.6, 6.5, n),
      skyline=rng.uniform(0, 2 * np.pi, 3),
  )
  return out


_LIGHT = {  # gain, tint, saturation, sky colour, lit-window probability, shadow
    "day": (1.0, (1.0, 1.0, 1.0), 1.0, (0.55, 0.72, 0.95), 0.0, False),
    "morning": (0.9, (1.12, 0.95, 0.78), 1.0, (0.95, 0.75, 0.55), 0.05, False),
    "overcast": (0.85, (1.0, 1.0, 1.02), 0.35, (0.76, 0.76, 0.79), 0.0, False),
    "dusk": (0.6, (1.15, 0.80, 0.95), 0.9, (0.55, 0.32, 0.45), 0.35, False),
    "night": (0.3, (0.80, 0.85, 1.25), 0.8, (0.04, 0.06, 0.14), 0.6, False),
    "harsh": (1.2, (1.05, 1.0, 0.92), 1.1, (0.45, 0.65, 0.98), 0.0, True),
}


def render_view(config: PlacesConfig, facades: dict, street: int, side: int, s: float,
                lateral: float, yaw: float, horizon: float, roll: float, time: str,
                rng: np.random.Generator, occluders: int, blur: float) -> np.ndarray:
  """One uint8 view [H, W, 3]: camera at `s` m along `street`, `lateral` m off its centre.

  The camera looks at the facade on `side` (+1 left of the street direction,
  -1 right), `yaw` degrees from its normal, with the horizon at row `horizon`
  and `roll` degrees of roll, lit as `time` (a key of _LIGHT).
  """
  h, w = config.height, config.width
  f = 0.5 * w  # 90 degree horizontal field of view
  fac = facades[(street, side)]
  tex = render.textures(64)
  gain, tint, sat, sky, lit_p, shadow = _LIGHT[time]
  y, x = render.grid(h, w)
  cr, sr = np.cos(np.radians(roll)), np.sin(np.radians(roll))
  xu, yv = x - 0.5 * w, y - horizon
  xc = (cr * xu + sr * yv) / f
  yc = -(-sr * xu + cr * yv) / f
  phi = np.radians(yaw)
  dn = np.cos(phi) - xc * np.sin(phi)
  dt = np.sin(phi) + xc * np.cos(phi)
  d0 = HALF_STREET - side * lateral
  facing = dn > 0.05
  lam = np.where(facing, d0 / np.maximum(dn, 0.05), 0.0)  # rays away from the facade: masked
  t_hit = s + side * lam * dt
  z_hit = CAMERA_HEIGHT + lam * yc
  b = np.clip(np.searchsorted(fac["edges"], t_hit, side="right") - 1, 0, len(fac["style"]) - 1)
  in_gap = np.zeros_like(t_hit, bool)
  for cross in fac["crossings"]:
    in_gap |= np.abs(t_hit - cross) < HALF_STREET
  is_wall = facing & (z_hit >= 0) & (z_hit <= fac["height"][b]) & ~in_gap

  # Facade colour: texture x tint, window grid, shop floor, cornice, signs.
  tints, floor_h, col_w = fac["tint"][b], fac["floor"][b], fac["column"][b]
  ty = (z_hit * 4.0).astype(np.int64) % 64
  tx = (t_hit * 4.0).astype(np.int64) % 64
  t_val = tex[fac["texture"][b], ty, tx]
  wall = tints * (0.8 + 1.4 * fac["contrast"][b] * (t_val - 0.5))[..., None]
  fy = np.mod(z_hit / floor_h, 1.0)
  rel_t = t_hit - fac["edges"][b]
  fx = np.mod(rel_t / col_w, 1.0)
  height_b = fac["height"][b]
  window = ((np.abs(fx - 0.5) < 0.5 * fac["window_w"][b]) & (fy > 0.3)
            & (fy < 0.3 + fac["window_h"][b]) & (z_hit > 3.2) & (z_hit < height_b - 1.0))
  colour = np.where(window[..., None], fac["glass"][b], wall)
  shop = fac["shop"][b]
  door = np.mod(rel_t / 6.0, 1.0) < 0.25
  colour = np.where(((z_hit < 3.2) & ~door)[..., None], shop, colour)
  colour = np.where(((z_hit < 2.6) & door)[..., None], 0.15 * shop, colour)
  colour = np.where((z_hit > height_b - 0.8)[..., None], 0.55 * tints, colour)
  sign_lo, sign_hi = fac["sign_lo"][b], fac["sign_hi"][b]
  on_sign = (fac["sign"][b] & (t_hit > sign_lo) & (t_hit < sign_hi) & (z_hit > fac["sign_z"][b])
             & (z_hit < fac["sign_z"][b] + 1.6))
  stripe = (np.mod((t_hit - sign_lo) / 1.2, 1.0) < 0.5)[..., None]
  colour = np.where(on_sign[..., None], fac["sign_colour"][b] * np.where(stripe, 1.0, 0.6), colour)
  if shadow:  # a diagonal cast shadow across the lower facade
    colour = np.where((z_hit < 0.6 * height_b + 0.5 * np.mod(t_hit, 20.0))[..., None],
                      colour * 0.5, colour)
  # Lit windows: a fixed per-window hash so that night views are consistent per place.
  floor_i = np.floor(z_hit / floor_h)
  col_i = np.floor(rel_t / col_w)
  hashed = np.mod(np.sin(floor_i * 12.9898 + col_i * 78.233 + b * 37.719) * 43758.5453, 1.0)
  lit = window & (hashed < lit_p)

  # Sky, distant skyline through gaps and above low buildings, road and pavement.
  img = np.broadcast_to(np.asarray(sky, np.float32) * (0.85 + 0.3 * (y / h))[..., None],
                        (h, w, 3)).copy()
  far = d0 + 60.0
  lam_far = far / np.maximum(dn, 0.05)
  t_far = s + side * lam_far * dt
  z_far = CAMERA_HEIGHT + lam_far * yc
  ph = fac["skyline"]
  sky_h = 18.0 + 8.0 * np.sin(t_far / 23.0 + ph[0]) + 6.0 * np.sign(np.sin(t_far / 9.0 + ph[1]))
  distant = (dn > 0.05) & (z_far > 0) & (z_far < sky_h)
  img = np.where(distant[..., None], 0.6 * np.asarray(sky, np.float32) + 0.25, img)
  ground = yc < 0
  lam_g = CAMERA_HEIGHT / np.maximum(-yc, 1e-3)
  n_ground = lam_g * dn
  road = np.where((n_ground > d0 - 3.5)[..., None], np.float32(0.62), np.float32(0.38))
  img = np.where(ground[..., None], road * np.asarray((1.0, 0.98, 0.95), np.float32), img)
  img = np.where(is_wall[..., None], colour, img).astype(np.float32)

  img = render.colour_transform(img, gain=gain, tint=tint, saturation=sat)
  img = np.where((lit & is_wall)[..., None], np.asarray((1.0, 0.85, 0.45), np.float32), img)
  img = np.ascontiguousarray(img, np.float32)
  _occluders(img, occluders, horizon, rng, night=time in ("dusk", "night"), gain=gain)
  img = render.gaussian_blur(img, blur)
  img = render.add_noise(img, 0.015, rng)
  return render.to_uint8(img)


def _occluders(img, count: int, horizon: float, rng: np.random.Generator, night: bool, gain: float):
  """Cars, people and trees in front of the facade (in place)."""
  h, w = img.shape[:2]
  for _ in range(count):
    kind = rng.choice(3, p=[0.5, 0.3, 0.2])
    colour = render.hsv_colour(rng.uniform(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.9))
    colour = colour * min(1.0, gain + 0.2)
    if kind == 0:  # car
      cw, ch = rng.uniform(0.25, 0.55) * w, rng.uniform(0.14, 0.24) * h
      x0, bottom = rng.uniform(-0.2 * w, w), rng.uniform(0.9, 1.05) * h
      render.paint_box(img, bottom - ch, bottom - 0.3 * ch, x0, x0 + cw, colour)
      render.paint_box(img, bottom - 1.5 * ch, bottom - ch, x0 + 0.2 * cw, x0 + 0.8 * cw,
                       0.3 * colour)
      for wx in (x0 + 0.2 * cw, x0 + 0.8 * cw):
        render.paint_ellipse(img, bottom - 0.3 * ch, wx, 0.2 * ch, 0.2 * ch, (0.05, 0.05, 0.05))
      if night:
        render.paint_box(img, bottom - 0.8 * ch, bottom - 0.6 * ch, x0, x0 + 0.08 * cw,
                         (1.0, 0.95, 0.7))
    elif kind == 1:  # pedestrian
      ph, px = rng.uniform(0.2, 0.4) * h, rng.uniform(0, w)
      bottom = rng.uniform(0.85, 1.0) * h
      render.paint_box(img, bottom - 0.85 * ph, bottom, px - 0.08 * ph, px + 0.08 * ph, colour)
      render.paint_ellipse(img, bottom - 0.92 * ph, px, 0.08 * ph, 0.07 * ph, (0.8, 0.6, 0.5))
    else:  # tree: trunk and crown
      px, top = rng.uniform(0, w), rng.uniform(0.1, 0.4) * h
      render.paint_box(img, top + 0.15 * h, h, px - 0.02 * w, px + 0.02 * w, (0.25, 0.18, 0.1))
      render.paint_ellipse(img, top + 0.1 * h, px, 0.13 * h, 0.11 * w,
                           np.asarray((0.2, 0.45, 0.15), np.float32) * min(1.0, gain + 0.2))


def _world(origin, street: Street, s: float, lateral: float) -> np.ndarray:
  d = np.asarray(street.direction)
  left = np.asarray([-d[1], d[0]])
  return origin + np.asarray(street.origin) + d * s + left * lateral


def _heading_deg(street: Street, side: int, yaw: float) -> int:
  """World heading (degrees clockwise from north) of the camera's optical axis."""
  d = np.asarray(street.direction)
  normal = np.asarray([-d[1], d[0]]) * side
  phi = np.radians(yaw)
  fwd = normal * np.cos(phi) + side * d * np.sin(phi)
  return int(round(np.degrees(np.arctan2(fwd[0], fwd[1])))) % 360


def generate(config: PlacesConfig) -> dict[str, list[dict]]:
  """All records of all splits (images JPEG-encoded), deterministic in `config`."""
  c = config
  unknown = [t for t in c.query_times if t not in _LIGHT]
  if unknown or not c.query_times:
    raise ValueError(f"query_times must be a non-empty subset of {TIMES}; got {c.query_times}.")
  out = {}
  for k, split in enumerate(SPLITS):
    origin, streets = district(c, k)
    facades = {}
    for si, st in enumerate(streets):
      for side in (-1, 1):
        fac = facade(c.seed, k, si, side, st.length)
        fac["crossings"] = st.crossings
        facades[(si, side)] = fac
    db, pano = [], 0
    for si, st in enumerate(streets):
      for s in np.arange(0.0, st.length + 1e-6, c.db_spacing):
        utm = _world(origin, st, s, 0.0)
        for side in (1, -1):
          for yi, yaw in enumerate(DB_YAWS):
            rng = np.random.default_rng([c.seed, 20, k, pano, side + 1, yi])
            occ = int(rng.uniform() < 0.2)
            img = render_view(c, facades, si, side, float(s), 0.0, yaw, 0.62 * c.height, 0.0,
                              "day", rng, occ, 0.0)
            db.append({"image": render.encode(img, "jpeg"), "utm": utm,
                       "timestamp": _DB_TIME + pano, "panorama": pano,
                       "filename": f"{split}/database/@{utm[0]:.2f}@{utm[1]:.2f}@pano{pano:05d}"
                                   f"@yaw{_heading_deg(st, side, yaw):03d}@.jpg"})
        pano += 1
    lengths = np.asarray([st.length for st in streets])
    queries = []
    for qi in range(c.train_queries if split == "train" else c.queries):
      rng = np.random.default_rng([c.seed, 30, k, qi])
      si = int(rng.choice(len(streets), p=lengths / lengths.sum()))
      st = streets[si]
      s = float(rng.uniform(0.0, st.length))
      lateral = float(rng.uniform(-2.5, 2.5))
      side = int(rng.choice([-1, 1]))
      yaw = float(rng.choice(DB_YAWS) + np.clip(rng.normal(0, 5.0), -10, 10))
      time = c.query_times[qi % len(c.query_times)]
      img = render_view(c, facades, si, side, s, lateral, yaw,
                        0.62 * c.height + rng.uniform(-3, 3), rng.uniform(-4, 4), time, rng,
                        int(rng.integers(0, 4)), float(rng.uniform(0.0, 1.0)))
      utm = _world(origin, st, s, lateral)
      hour = {"day": 12, "morning": 7, "overcast": 13, "dusk": 19, "night": 23, "harsh": 12}[time]
      ts = _QUERY_TIME + int(rng.integers(0, 365)) * 86400 + hour * 3600
      queries.append({"image": render.encode(img, "jpeg"), "utm": utm, "timestamp": ts,
                      "panorama": -1,
                      "filename": f"{split}/queries/@{utm[0]:.2f}@{utm[1]:.2f}@q{qi:05d}"
                                  f"@yaw{_heading_deg(st, side, yaw):03d}@{time}@.jpg"})
    out[f"{split}_database"] = db
    out[f"{split}_queries"] = queries
  return out


def pretraining_views(config: PlacesConfig, count: int, columns: int = 8,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Labelled views of a fourth district, for pretraining a backbone (no place labels).

  The stand-in for what ImageNet gives the paper's VGG16: generic appearance
  knowledge (materials, lighting), not this benchmark's places. The district
  (split index 3) shares the style pool with train/val/test, as ImageNet's
  buildings share materials with Pittsburgh's, but none of their facades.
  Views: random street, position (up to 4 m off the centre), side, yaw
  (-50..50 degrees), pitch, roll, time of day (all of TIMES), occluders,
  blur and noise, JPEG round trip like the records.

  Returns images [count, H, W, 3] uint8 and labels [count, columns] int32: for
  each of `columns` vertical strips, the style (0..NUM_STYLES-1) of the facade
  that the horizon ray at the strip's centre hits, or NUM_STYLES for none (a
  cross street's gap). Deterministic in (config, count, columns, seed).
  """
  c = config
  origin, streets = district(c, 3)
  facades = {}
  for si, st in enumerate(streets):
    for side in (-1, 1):
      fac = facade(c.seed, 3, si, side, st.length)
      fac["crossings"] = st.crossings
      facades[(si, side)] = fac
  lengths = np.asarray([st.length for st in streets])
  f = 0.5 * c.width
  xs = (np.arange(columns) + 0.5) * c.width / columns - 0.5 * c.width
  images = np.zeros((count, c.height, c.width, 3), np.uint8)
  labels = np.zeros((count, columns), np.int32)
  for i in range(count):
    rng = np.random.default_rng([c.seed, 40, seed, i])
    si = int(rng.choice(len(streets), p=lengths / lengths.sum()))
    s = float(rng.uniform(0.0, streets[si].length))
    lateral, side = float(rng.uniform(-4.0, 4.0)), int(rng.choice([-1, 1]))
    yaw = float(rng.uniform(-50.0, 50.0))
    time = TIMES[int(rng.integers(len(TIMES)))]
    img = render_view(c, facades, si, side, s, lateral, yaw,
                      0.62 * c.height + rng.uniform(-4, 4), rng.uniform(-5, 5), time, rng,
                      int(rng.integers(0, 4)), float(rng.uniform(0.0, 1.0)))
    images[i] = _jpeg_round_trip(img)
    # Horizon rays (as render_view, without roll): the facade hit per strip.
    fac, phi = facades[(si, side)], np.radians(yaw)
    dn = np.cos(phi) - xs / f * np.sin(phi)
    dt = np.sin(phi) + xs / f * np.cos(phi)
    t_hit = s + side * (HALF_STREET - side * lateral) / np.maximum(dn, 0.05) * dt
    b = np.clip(np.searchsorted(fac["edges"], t_hit, side="right") - 1, 0,
                len(fac["style"]) - 1)
    gap = np.zeros(columns, bool)
    for cross in fac["crossings"]:
      gap |= np.abs(t_hit - cross) < HALF_STREET
    labels[i] = np.where((dn > 0.05) & ~gap, fac["style"][b], NUM_STYLES)
  return images, labels


def _jpeg_round_trip(img: np.ndarray) -> np.ndarray:
  import io

  from PIL import Image
  return np.asarray(Image.open(io.BytesIO(render.encode(img, "jpeg"))).convert("RGB"))


_DB_TIME = 1181736000     # 2007-06-13 12:00 UTC, database capture (+1 s per panorama)
_QUERY_TIME = 1230768000  # 2009-01-01 00:00 UTC, queries on other days and hours


class SyntheticPlaces(formats.OfflineBuilder):
  """A procedural city for place recognition, with Pittsburgh's features and splits.

  Splits: {train,val,test}_{database,queries}; districts are disjoint. Features:
  image (H, W, 3) uint8 JPEG, utm (2,) float64 metres (east, north), filename,
  timestamp (unix seconds), panorama (database panorama id; -1 for queries).
  """
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {
      "1.0.0": "Queries at six times of day (day, morning, overcast, dusk, night, harsh).",
      "1.1.0": "Default queries in daylight only (day, morning, overcast, harsh), as "
               "Pittsburgh's Street View queries; config day_night keeps all six "
               "(docs/data.md, synthetic_places).",
      "1.2.0": "1000 val and 1000 test queries (250 before; the first 250 unchanged): "
               "Pitts30k's ratio of queries to database images, and Recall@1 measured "
               "to about +-0.03 (docs/data.md, synthetic_places).",
  }
  BUILDER_CONFIGS = list(CONFIGS)
  POS_DIST_THR = POS_DIST_THR
  POS_DIST_SQ_THR = POS_DIST_SQ_THR
  NON_TRIV_POS_DIST_SQ_THR = NON_TRIV_POS_DIST_SQ_THR

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(c.height, c.width, 3), encoding_format="jpeg"),
            "utm": tfds.features.Tensor(shape=(2,), dtype=np.float64),
            "filename": tfds.features.Text(),
            "timestamp": tfds.features.Scalar(np.int64),
            "panorama": tfds.features.Scalar(np.int64),
        }),
        metadata=tfds.core.MetadataDict(pos_dist_thr=POS_DIST_THR,
                                        non_triv_pos_dist_sq_thr=NON_TRIV_POS_DIST_SQ_THR),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    records = generate(self.builder_config)
    return {name: self._generate_examples(rows) for name, rows in records.items()}

  def _generate_examples(self, rows):
    for i, row in enumerate(rows):
      yield i, row
