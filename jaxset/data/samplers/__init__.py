"""One module per sampling scheme; each returns a grain.IterDataset of batches.

  pk          pk_batches (P identities x K images), pk_pairs
  sets        set_batches, set_triplet_batches (tracklets)
  tuples      netvlad_tuples (query, potential positives, negatives)
  pairs       pair_batches (verification pairs)
  evaluation  eval_batches (a whole split, in order)
"""
