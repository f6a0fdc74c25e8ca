"""Retrieval at scale: exact top-k vs faiss-cpu, approx_max_k, re-ranking, sharded memory.

  python -m benchmarks.retrieval            # the sizes below (minutes to hours on 2 cores)
  python -m benchmarks.retrieval --quick    # small sizes, about a minute
  python -m benchmarks.retrieval --queries 2000 --db 100000x1024,200000x256 \\
      --rerank 3000,10000,30000 --reference-max 10000

One table, every row measured in this run on this machine:
- search: jaxset.eval.top_k_search (inner product and squared L2, exact) and
  faiss IndexFlatIP / IndexFlatL2 on the same random unit descriptors, with
  faiss using as many threads as XLA's CPU client (all cores). Time: wall
  seconds for all queries, compile excluded (one warm-up block first).
  "agree" = the fraction of jaxset's top-k indices that faiss also returns.
- approx: approx_max_k per block (recall_target 0.95) and its measured recall@k
  against the exact search.
- rerank: jaxset.eval.k_reciprocal_rerank_features (query 1/5 of the samples,
  clustered features; distances computed inside), and k_reciprocal_rerank on
  the same three distance matrices as the dense numpy re-ranking with
  torchreid's steps (tests/rerank_reference.py, float32 as torchreid);
  "max |diff|" compares those two. Times are first calls (compile included);
  "warm" is a second call at the same size (compiled programs reused).
  The dense reference runs up to
  --reference-max samples; above it the row gives its dense footprint
  (6 arrays of N^2 float32: concatenated, squared/normalised, argsort, V,
  V_qe, plus the inputs) instead of running it.
- sharded: XLA's compiled memory per device of one query block's search over
  --fake-devices CPU devices (a subprocess with
  --xla_force_host_platform_device_count), against database/devices plus the
  stated bound of one step (search.step_bytes).
Peak memory: the process's resident set above its level before the call,
sampled every 2 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

DEFAULT_DB = "250000x4096,1000000x512"
QUICK = dict(queries=500, db="20000x128,50000x64", rerank="600,1500", reference_max=1500,
             fake_db="100000x256")


def _rss() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn, *args, **kwargs):
  """(result, wall seconds, peak resident bytes above the start)."""
  start = _rss()
  peak = [start]
  done = threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], _rss())
      time.sleep(0.002)

  t = threading.Thread(target=sample, daemon=True)
  t.start()
  t0 = time.perf_counter()
  try:
    out = fn(*args, **kwargs)
  finally:
    elapsed = time.perf_counter() - t0
    done.set()
    t.join()
  return out, elapsed, max(peak[0], _rss()) - start


def _sizes(text: str):
  return [tuple(int(v) for v in s.split("x")) for s in text.split(",") if s]


def _unit(rng, n, d):
  x = rng.standard_normal((n, d), dtype=np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x


def search_rows(num_q: int, sizes, k: int, seed: int = 0, approx: bool = True):
  from jaxset.eval import search  # pylint: disable=import-outside-toplevel
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError:
    faiss = None
  rows = []
  rng = np.random.default_rng(seed)
  threads = os.cpu_count()
  if faiss is not None:
    faiss.omp_set_num_threads(threads)
  for n, d in sizes:
    x = _unit(rng, n, d)
    q = _unit(rng, num_q, d)
    for metric in ("ip", "l2"):
      db = search.ShardedDatabase(x, metric=metric)  # the library's default db_block
      search.top_k_search(q[:1024], db, k, metric=metric, query_block=1024)  # compile
      (s, i), t_j, m_j = measure(search.top_k_search, q, db, k, metric=metric,
                                 query_block=1024)
      size = f"{num_q}q x {n}x{d}"
      row = {"what": f"search {metric} top-{k}", "size": size, "impl": "jaxset",
             "seconds": f"{t_j:.2f}", "peak MB": f"{m_j / 2**20:.0f}",
             "note": "faiss not installed (pip install 'jaxset[bench]')"}
      rows.append(row)
      if metric == "ip":
        exact = i
      if faiss is None:
        continue
      index = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
      index.add(x)
      (_, fi), t_f, m_f = measure(index.search, q, k)
      agree = float(np.mean([np.intersect1d(a, b).size / k for a, b in zip(i, fi)]))
      row["note"] = f"{t_j / t_f:.2f}x faiss's time; agree {agree:.4f}"
      rows.append({"what": f"search {metric} top-{k}", "size": size,
                   "impl": f"faiss Flat{metric.upper()} ({threads} threads)",
                   "seconds": f"{t_f:.2f}", "peak MB": f"{m_f / 2**20:.0f}", "note": ""})
      del index
    del db
    if approx and (n, d) == sizes[0]:
      db = search.ShardedDatabase(x, metric="ip")
      search.top_k_search(q[:1024], db, k, query_block=1024, approx=True)
      (_, ai), t_a, m_a = measure(search.top_k_search, q, db, k, query_block=1024,
                                  approx=True, recall_target=0.95)
      rows.append({"what": f"approx_max_k ip top-{k}", "size": size, "impl": "jaxset approx",
                   "seconds": f"{t_a:.2f}", "peak MB": f"{m_a / 2**20:.0f}",
                   "note": f"recall@{k} {search.measured_recall(ai, exact):.4f} "
                           "(target 0.95)"})
      del db
  return rows


def _clustered(rng, n, d, ids):
  centres = rng.standard_normal((ids, d)).astype(np.float32)
  lab = rng.integers(0, ids, n)
  return (centres[lab] + 0.8 * rng.standard_normal((n, d)).astype(np.float32)).astype(
      np.float32)


def rerank_rows(sizes, reference_max: int, dim: int = 256, seed: int = 0):
  from jaxset.eval import rerank  # pylint: disable=import-outside-toplevel
  from jaxset.eval.retrieval import pairwise_sq_distances  # pylint: disable=import-outside-toplevel
  from tests import rerank_reference  # pylint: disable=import-outside-toplevel
  rows = []
  rng = np.random.default_rng(seed)
  rerank.k_reciprocal_rerank_features(*_split(_clustered(rng, 300, dim, 30)))  # compile
  for n in sizes:
    f = _clustered(rng, n, dim, max(n // 10, 2))
    qf, gf = _split(f)
    got, t_j, m_j = measure(rerank.k_reciprocal_rerank_features, qf, gf)
    _, t_w, _ = measure(rerank.k_reciprocal_rerank_features, qf, gf)
    size = f"{qf.shape[0]}q + {gf.shape[0]}g"
    row = {"what": "k-reciprocal re-rank", "size": size, "impl": "jaxset (features)",
           "seconds": f"{t_j:.2f}", "peak MB": f"{m_j / 2**20:.0f}",
           "note": f"warm (second call) {t_w:.2f} s"}
    if n <= reference_max:
      dist = lambda a, b: np.asarray(pairwise_sq_distances(a, b))
      qg, qq, gg = dist(qf, gf), dist(qf, qf), dist(gf, gf)
      ref, t_r, m_r = measure(rerank_reference.dense_rerank, qg, qq, gg, dtype=np.float32)
      mat, t_m, m_m = measure(rerank.k_reciprocal_rerank, qg, qq, gg)
      agree = np.mean(np.argmin(got, axis=1) == np.argmin(ref, axis=1))
      row["note"] = (f"{t_r / t_j:.1f}x faster than dense, {t_r / t_w:.1f}x warm "
                     f"({t_w:.2f} s); rank-1 = dense's for {agree:.3f} of queries")
      rows += [row, {"what": "k-reciprocal re-rank", "size": size,
                     "impl": "jaxset (the same matrices)", "seconds": f"{t_m:.2f}",
                     "peak MB": f"{m_m / 2**20:.0f}",
                     "note": f"{t_r / t_m:.1f}x faster; max |diff| {np.abs(mat - ref).max():.1e}"},
               {"what": "k-reciprocal re-rank", "size": size,
                "impl": "dense numpy (torchreid's steps)", "seconds": f"{t_r:.2f}",
                "peak MB": f"{m_r / 2**20:.0f}", "note": "inputs excluded"}]
    else:
      dense = (6 * n * n * 4 + n * n * 4) / 2**30
      rows += [row, {"what": "k-reciprocal re-rank", "size": size,
                     "impl": "dense numpy (torchreid's steps)", "seconds": "not run",
                     "peak MB": f">= {dense * 1024:.0f}",
                     "note": f"dense footprint >= {dense:.1f} GB"}]
  return rows


def _split(f):
  nq = max(f.shape[0] // 5, 1)
  return f[:nq], f[nq:]


def sharded_rows(num_q: int, n: int, d: int, k: int, devices: int, db_block: int):
  code = (
      "import json, jax\n"
      "from jaxset.eval import search\n"
      f"m = search.search_memory_per_device({num_q}, {n}, {d}, {k}, query_block={num_q}, "
      f"db_block={db_block})\n"
      "print(json.dumps(m))\n")
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, cwd=os.path.dirname(os.path.dirname(__file__)) or ".")
  m = json.loads(out.stdout.strip().splitlines()[-1])
  from jaxset.eval import search  # pylint: disable=import-outside-toplevel
  total = n * d * 4
  per_dev = m["argument_bytes"] + m["temp_bytes"] + m["output_bytes"]
  block = search.step_bytes(d, k, query_block=num_q, db_block=db_block)
  return [{"what": f"sharded search, {m['num_devices']} fake devices", "size": f"{n}x{d}",
           "impl": f"jaxset (query_block {num_q}, db_block {db_block})",
           "seconds": "compile only", "peak MB": f"{per_dev / 2**20:.0f} per device",
           "note": f"database/{devices} = {total / devices / 2**20:.0f} MB, step bound "
                   f"{block / 2**20:.0f} MB; per device <= db/{devices} + step: "
                   f"{per_dev <= total / devices + block}"}]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="small sizes (a test runs this)")
  p.add_argument("--queries", type=int, default=10000)
  p.add_argument("--db", default=DEFAULT_DB, help="database sizes NxD, comma separated")
  p.add_argument("--k", type=int, default=20)
  p.add_argument("--rerank", default="3000,10000,30000", help="query + gallery sizes")
  p.add_argument("--reference-max", type=int, default=10000,
                 help="largest size at which the dense numpy re-ranking runs")
  p.add_argument("--fake-devices", type=int, default=8)
  p.add_argument("--fake-db", default="250000x4096", help="NxD of the sharded memory row")
  p.add_argument("--fake-db-block", type=int, default=4096, help="db_block of that row")
  p.add_argument("--skip", default="",
                 help="comma list of sections: search,approx,rerank,sharded")
  a = p.parse_args(argv)
  if a.quick:
    for key, value in QUICK.items():
      setattr(a, key, value)
  import jax  # pylint: disable=import-outside-toplevel
  skip = set(a.skip.split(","))
  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPU cores" + (" (--quick run)" if a.quick else ""))
  rows = []
  if "search" not in skip:
    rows += search_rows(a.queries, _sizes(a.db), a.k, approx="approx" not in skip)
  if "rerank" not in skip:
    rows += rerank_rows([int(v) for v in str(a.rerank).split(",") if v], a.reference_max)
  if "sharded" not in skip:
    (n, d), = _sizes(a.fake_db)
    rows += sharded_rows(1024, n, d, a.k, a.fake_devices, a.fake_db_block)
  from benchmarks.common import format_rows  # pylint: disable=import-outside-toplevel
  print(format_rows(rows, ["what", "size", "impl", "seconds", "peak MB", "note"]))
  return rows


if __name__ == "__main__":
  main()
