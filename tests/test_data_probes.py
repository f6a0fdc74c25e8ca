"""jaxset.data.probes: degradations applied to clean images after the fact."""
import numpy as np
import pytest

from jaxset.data import probes


def _image(seed=0):
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:64, 0:32]
  base = (0.5 + 0.4 * np.sin(x / 2.0) * np.cos(y / 3.0))[..., None] * np.ones(3)
  return np.clip((base + 0.02 * rng.normal(size=base.shape)) * 255, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", probes.PROBES)
def test_level_zero_is_the_image_and_damage_grows_with_the_level(kind):
  img = _image()
  np.testing.assert_array_equal(probes.degrade(img, kind, 0.0), img)
  errors = [np.abs(probes.degrade(img, kind, lv, seed=3).astype(float) - img).mean()
            for lv in (0.25, 0.5, 1.0)]
  assert errors[0] > 0 and errors[0] < errors[1] < errors[2], errors
  again = probes.degrade(img, kind, 0.5, seed=3)
  np.testing.assert_array_equal(again, probes.degrade(img, kind, 0.5, seed=3))
  assert again.dtype == np.uint8 and again.shape == img.shape


def test_what_each_probe_removes():
  img = _image()
  detail = lambda im: np.abs(np.diff(im.astype(float), axis=1)).mean()
  assert detail(probes.degrade(img, "blur", 1.0)) < 0.5 * detail(img)
  assert probes.degrade(img, "dark", 1.0).mean() < 0.2 * img.mean()
  occ = probes.degrade(img, "occlusion", 1.0)
  np.testing.assert_array_equal(occ[:25], img[:25])   # the top 40 % is untouched
  assert np.abs(occ[40:].astype(float) - img[40:]).mean() > 20
  batch = probes.degrade_batch(np.stack([img, img]), "noise", 1.0, seed=0)
  assert not np.array_equal(batch[0], batch[1])        # each image its own draw


def test_bad_arguments_say_what_to_pass():
  img = _image()
  with pytest.raises(ValueError, match="unknown probe 'fog'"):
    probes.degrade(img, "fog", 0.5)
  with pytest.raises(ValueError, match=r"level must be in \[0, 1\]"):
    probes.degrade(img, "blur", 1.5)
  with pytest.raises(ValueError, match="uint8 image"):
    probes.degrade(img.astype(np.float32), "blur", 0.5)
