"""jaxset.data.place_pk: places from positions, P places x K views per batch."""
import numpy as np
import pytest

from jaxset.data.samplers import places as place_pk
from tests.test_data_pipeline import PlaceSource, _decode


def _street(places=12, views=3, queries_per_place=2, spacing=20.0, seed=0):
  """`places` positions `spacing` m apart, `views` database images at each,
  and queries within 4 m of a random place (plus one 50 m from everything)."""
  rng = np.random.default_rng(seed)
  pos = np.stack([np.arange(places) * spacing, np.zeros(places)], 1)
  db = np.repeat(pos, views, axis=0)
  owner = rng.integers(0, places, places * queries_per_place)
  q = pos[owner] + rng.uniform(-4, 4, (len(owner), 2)) * [1, 0.5]
  q = np.concatenate([q, [[0.0, 50.0]]])
  return PlaceSource(db), PlaceSource(q, offset=1000), owner


def test_place_groups_by_position_and_nearest_query():
  db, q, owner = _street()
  db_place, q_place, place_utm = place_pk.place_groups(db.utm, q.utm, query_radius=10.0)
  np.testing.assert_array_equal(db_place, np.repeat(np.arange(12), 3))
  np.testing.assert_array_equal(q_place[:-1], owner)
  assert q_place[-1] == -1  # 50 m from every place: in none
  np.testing.assert_allclose(place_utm[:, 0], np.arange(12) * 20.0)


def test_batches_hold_p_places_k_views_each_and_are_deterministic():
  db, q, _ = _street()
  ds = place_pk.place_pk_batches(db, q, p=4, k=3, seed=3)
  it = iter(ds)
  batches = [next(it) for _ in range(3)]  # one epoch: 12 places / 4
  seen = []
  db_place, q_place, place_utm = place_pk.place_groups(db.utm, q.utm)
  for b in batches:
    labels = b["label"].reshape(4, 3)
    assert (labels == labels[:, :1]).all() and len(set(labels[:, 0])) == 4
    seen.extend(labels[:, 0])
    # Every image is a view of its row's place: a database image or a joined query.
    ids = _decode(b["image"])
    np.testing.assert_array_equal(b["is_query"], ids >= 1000)
    np.testing.assert_array_equal(np.where(b["is_query"], ids - 1000, ids), b["index"])
    places = [q_place[i] if is_q else db_place[i] for i, is_q in zip(b["index"], b["is_query"])]
    np.testing.assert_array_equal(places, b["label"])
    np.testing.assert_allclose(b["utm"], place_utm[b["label"]], rtol=1e-6)
  assert sorted(seen) == list(range(12))  # an epoch draws every place once
  again = next(iter(place_pk.place_pk_batches(db, q, p=4, k=3, seed=3)))
  np.testing.assert_array_equal(again["index"], batches[0]["index"])
  other = next(iter(place_pk.place_pk_batches(db, q, p=4, k=3, seed=4)))
  assert not np.array_equal(other["label"], batches[0]["label"])


def test_process_shards_split_whole_places():
  db, q, _ = _street()
  full = next(iter(place_pk.place_pk_batches(db, q, p=4, k=2, seed=1, shard=(0, 1))))
  parts = [next(iter(place_pk.place_pk_batches(db, q, p=4, k=2, seed=1, shard=(i, 2))))
           for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["index"] for p in parts]), full["index"])
  np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), full["label"])


def test_bad_sizes_name_the_fix():
  db, q, _ = _street(places=3)
  with pytest.raises(ValueError, match="lower p"):
    place_pk.place_pk_batches(db, q, p=4, k=2)
  with pytest.raises(ValueError, match="k >= 2"):
    place_pk.place_pk_batches(db, q, p=2, k=1)
  with pytest.raises(ValueError, match="database split is empty"):
    place_pk.place_groups(np.zeros((0, 2)))
