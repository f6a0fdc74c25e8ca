"""grain input pipelines: metadata, samplers, evaluation iterators, checkpoints.

One import for all of them; they live by concept in
  jaxset/data/records.py    records and the metadata cache (read_metadata, fetch)
  jaxset/data/images.py     image reads, the decoded-image cache, image_fn
  jaxset/data/sampling.py   shards, seeds, epochs, grain datasets, checkpoint args
  jaxset/data/samplers/     one module per sampling scheme

Every sampler returns a `grain.IterDataset` of batches (dicts of numpy with
leading batch dims); `iter(ds)` gives a `grain.DatasetIterator` with
`get_state()` / `set_state()` that orbax checkpoints through `save_args` /
`restore_args`. How a batch is made:

  grain.MapDataset.range(num_steps)          # one element per global step
    .map(BatchMaker)                         # step -> plan (indices) -> records
    .to_iter_dataset(ReadOptions(threads))   # background-thread prefetch
    [.mp_prefetch(workers)]                  # optional worker processes

The plan of a step depends only on (seed, step): training samplers are
infinite (num_steps=None) and reshuffle once per epoch (a permutation of
identities / tracklets / queries seeded by (seed, epoch)); evaluation
iterators are finite. Per-image randomness (augmentation) uses one
`np.random.Generator` per (seed, step, global row, slot), so a global batch is
bit-identical whatever the process count, thread count or prefetch depth.
Samplers read only the image feature of tfds records, and keep a split's
decoded images in memory when they fit in _IMAGE_CACHE_BYTES (the embedded
datasets do): the same pixels, without the decode from the second epoch on.

Multi-host: each sampler takes `shard=(process_index, process_count)`
(default: `process_shard()`, i.e. jax.process_index()/process_count()). Every
process builds the same global plan and loads only its contiguous slice of
rows, 1/process_count of the global batch (PK slices whole identities). The
training loop then assembles global arrays with
`jax.make_array_from_process_local_data(sharding, local_batch)`.
"""
# ruff: noqa: F401  (this module re-exports)
from jaxset.data.images import (
  _clear_decoded_images,
  _DecodedImages,
  _image_reader,
  _TfdsImageReader,
)
from jaxset.data.records import fetch, neighbours_within, read_metadata
from jaxset.data.samplers.evaluation import eval_batches
from jaxset.data.samplers.pairs import pair_batches
from jaxset.data.samplers.pk import pk_batches, pk_pairs
from jaxset.data.samplers.places import place_groups, place_pk_batches
from jaxset.data.samplers.sets import set_batches, set_triplet_batches
from jaxset.data.samplers.tuples import Miner, netvlad_tuples
from jaxset.data.sampling import process_shard, restore_args, save_args
