"""Person re-identification: CMC, mAP and mINP as torchreid / fast-reid compute them.

Per query (Market-1501 protocol): rank the gallery by distance; drop gallery
entries that share the query's pid AND camera (same-camera true matches are too
easy); skip the query if no true match remains; CMC(r) = 1 if the first
remaining true match is at rank <= r; AP = sum_k precision@k * rel_k / num_rel
over the remaining list; INP = num_rel / R_hard, R_hard the 1-based rank of
the last (hardest) remaining true match in the remaining list (Ye et al., TPAMI
2021, eq. 8; fast-reid's evaluation/rank.py): the precision at the point where
every true match has been retrieved. CMC, mAP and mINP average over the valid
(not skipped) queries. max_rank only truncates the CMC curve; AP and INP always
see the whole remaining list.

Distractors (pid 0 in Market-1501) are ordinary gallery entries that never match
a query, so they stay. Junk (pid -1) images are dropped by the loaders; if they do
reach the gallery, torchreid keeps them as non-matches (only same pid + same
camera is removed); pass junk_pids=(-1,) to remove them for every query as
Market-1501's original MATLAB evaluation does.

Ties: torchreid ranks with np.argsort (quicksort; its order among exactly equal
distances depends on the numpy build). jaxset uses a stable sort, so equal
distances keep gallery order: identical to torchreid except where exact ties
straddle a true match, and deterministic everywhere.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxset.eval import search
from jaxset.ops import _checks


def _first_ranks_and_ap(dist: np.ndarray, q_pids, g_pids, q_cams, g_cams, junk: np.ndarray):
  """Per query: 0-based rank of the first kept true match (-1 if none), AP, INP
  and whether the query is valid."""
  order = np.argsort(dist, axis=1, kind="stable")
  gp = g_pids[order]
  gc = g_cams[order]
  match = gp == q_pids[:, None]
  keep = ~(match & (gc == q_cams[:, None])) & ~junk[order]
  rel = match & keep
  kept_rank = np.cumsum(keep, axis=1)  # 1-based rank among kept entries
  hits = np.cumsum(rel, axis=1)
  num_rel = rel.sum(axis=1)
  valid = num_rel > 0
  first = np.where(valid, np.argmax(rel, axis=1), 0)
  first_rank = np.where(valid, kept_rank[np.arange(len(first)), first] - 1, -1)
  precision = hits / np.maximum(kept_rank, 1)
  ap = np.where(valid, (precision * rel).sum(axis=1) / np.maximum(num_rel, 1), 0.0)
  # The hardest true match: the last one in gallery order; INP = precision there.
  last = rel.shape[1] - 1 - np.argmax(rel[:, ::-1], axis=1)
  hard_rank = kept_rank[np.arange(len(last)), last]
  inp = np.where(valid, num_rel / np.maximum(hard_rank, 1), 0.0)
  return first_rank, ap, inp, valid


def _ids_and_cams(query_ids, gallery_ids, query_cams, gallery_cams, nq, ng, rows):
  """The four id/camera columns as flat arrays, checked against nq queries and
  ng gallery entries (`rows` names where those counts come from)."""
  q_pids, g_pids, q_cams, g_cams = (np.asarray(x).reshape(-1) for x in (
      query_ids, gallery_ids, query_cams, gallery_cams))
  _checks.check_same((rows[0], "query_ids", "query_cams"),
                     (nq, q_pids.size, q_cams.size), "Query counts")
  _checks.check_same((rows[1], "gallery_ids", "gallery_cams"),
                     (ng, g_pids.size, g_cams.size), "Gallery counts")
  return q_pids, g_pids, q_cams, g_cams


def cmc_map_from_distances(distances, query_ids, gallery_ids, query_cams, gallery_cams,
                           max_rank: int = 50, junk_pids: Sequence[int] = (), *,
                           chunk_size: int = 256):
  """CMC, mAP and mINP from a [Q, G] distance matrix (smaller = more similar).

  Args:
    distances: [Q, G] float.
    query_ids, gallery_ids: [Q], [G] int person ids.
    query_cams, gallery_cams: [Q], [G] int camera ids.
    max_rank: CMC length; capped at G (as torchreid does).
    junk_pids: gallery pids removed for every query (default: none, torchreid).
    chunk_size: queries ranked at a time (working memory ~ chunk_size x G).

  Returns:
    dict with "cmc" (float64 [max_rank], cmc[r] = fraction of valid queries whose
    first true match is at rank <= r + 1), "rank1", "rank5", "rank10" (from the
    first-match ranks, whatever max_rank), "mAP", "mINP" (fast-reid's mean
    inverse negative penalty), "num_valid_queries", "ap" and "inp" ([Q] float64,
    0 for skipped queries), "first_rank" ([Q] int, 0-based rank of the first true
    match, -1 for skipped queries) and "valid" ([Q] bool): the per-query values
    whose means over valid queries are rank-1 (first_rank == 0) and mAP. Raises
    ValueError if no query has a true match left (torchreid and fast-reid assert).
  """
  dist = np.asarray(distances)
  _checks.check_rank("distances", dist, 2, "[num_query, num_gallery]")
  nq, ng = dist.shape
  q_pids, g_pids, q_cams, g_cams = _ids_and_cams(
      query_ids, gallery_ids, query_cams, gallery_cams, nq, ng,
      ("distances rows", "distances cols"))
  _checks.check_finite("distances", dist)
  if ng == 0 or nq == 0:
    raise ValueError(f"Need at least one query and one gallery entry; got Q={nq}, G={ng}.")
  if max_rank < 1:
    raise ValueError(f"max_rank must be >= 1; got {max_rank}.")
  max_rank = min(int(max_rank), ng)
  junk = np.isin(g_pids, np.asarray(list(junk_pids), g_pids.dtype))
  # Row blocks: the sort order and masks are [block, G], not [Q, G] (a re-ranked
  # MSMT17 matrix is 11659 x 82161).
  parts = [_first_ranks_and_ap(dist[s:s + chunk_size], q_pids[s:s + chunk_size], g_pids,
                               q_cams[s:s + chunk_size], g_cams, junk)
           for s in range(0, nq, max(1, int(chunk_size)))]
  return _summarise(*(np.concatenate([p[i] for p in parts]) for i in range(4)), max_rank)


def _summarise(first_rank, ap, inp, valid, max_rank):
  num_valid = int(valid.sum())
  if num_valid == 0:
    raise ValueError(
        "No query has a true match in the gallery once same-pid same-camera entries "
        "are removed; check that query and gallery ids/cameras come from the same "
        "split and are not swapped.")
  fr = first_rank[valid]
  cmc = np.array([(fr <= r).mean() for r in range(max_rank)], np.float64)
  # From the first-match ranks, so rank-10 is right even when max_rank < 10.
  at = lambda r: float((fr < r).mean())
  return {"cmc": cmc, "rank1": at(1), "rank5": at(5), "rank10": at(10),
          "mAP": float(ap[valid].mean()), "mINP": float(inp[valid].mean()),
          "num_valid_queries": num_valid, "ap": ap, "inp": inp, "first_rank": first_rank,
          "valid": valid}


def cmc_map(query_features, gallery_features, query_ids, gallery_ids, query_cams,
            gallery_cams, max_rank: int = 50, metric: str = "euclidean", *,
            chunk_size: int = 256, junk_pids: Sequence[int] = ()):
  """CMC, mAP and mINP from features (torchreid / fast-reid evaluate_rank, Market-1501 rules).

  metric: "euclidean" (squared Euclidean, torchreid's default; same ranking as
  Euclidean) or "cosine" (1 - cosine similarity). The gallery is ranked by
  jaxset.eval.search.top_k_search (sharded over every device, ties by index),
  `chunk_size` queries at a time, so the full Q x G matrix is never built.
  Returns the dict of `cmc_map_from_distances`.
  """
  if metric not in ("euclidean", "cosine"):
    raise ValueError(f"metric must be 'euclidean' or 'cosine'; got {metric!r}.")
  qf, gf = search.query_gallery_features(query_features, gallery_features)
  nq, ng = qf.shape[0], gf.shape[0]
  q_pids, g_pids, q_cams, g_cams = _ids_and_cams(
      query_ids, gallery_ids, query_cams, gallery_cams, nq, ng,
      ("query_features", "gallery_features"))
  if ng == 0 or nq == 0:
    raise ValueError(f"Need at least one query and one gallery entry; got Q={nq}, G={ng}.")
  if max_rank < 1:
    raise ValueError(f"max_rank must be >= 1; got {max_rank}.")
  junk = np.isin(g_pids, np.asarray(list(junk_pids), g_pids.dtype))
  step = max(1, min(int(chunk_size), nq))
  # The full ranking of the gallery from the sharded search (search.top_k_search,
  # ties by index), laid back into gallery order for _first_ranks_and_ap.
  if metric == "cosine":
    qf, gf = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (qf, gf))
  gallery = search.ShardedDatabase(gf, metric="ip" if metric == "cosine" else "l2")
  parts = []
  for s in range(0, nq, step):
    block = qf[s:s + step]
    found, order = search.top_k_search(block, gallery, ng, metric=gallery.metric,
                                       query_block=step)
    d = np.empty(found.shape, np.float32)
    np.put_along_axis(d, order, 1.0 - found if metric == "cosine" else found, axis=1)
    parts.append(_first_ranks_and_ap(d, q_pids[s:s + step], g_pids,
                                     q_cams[s:s + step], g_cams, junk))
  columns = [np.concatenate([p[i] for p in parts]) for i in range(4)]
  return _summarise(*columns, min(int(max_rank), ng))
