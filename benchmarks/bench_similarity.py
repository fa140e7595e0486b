"""Benchmark of similarity search at paper scale (target: < 10 ms per query on 2 cores).

    python benchmarks/bench_similarity.py                       # 1.7 M x 128-d, 200 queries
    python benchmarks/bench_similarity.py --n 200000 --structure uniform

The database is 1.7 M synthetic 128-d float32 unit vectors (the 0.5 M labeled plus 1.2 M unlabeled
galaxies of the paper), generated in chunks. ``--structure clustered`` (default) draws them from a
mixture of Gaussians in a 16-d latent space projected to 128-d plus isotropic noise, normalised:
learned embeddings have low intrinsic dimension, which is what approximate indexes rely on.
``--structure uniform`` draws them uniformly on the sphere, the worst case for those. Queries are
fresh draws from the same distribution (like validation galaxies against the training pool).

Measured in one process, on the same data: the exact FAISS flat inner-product index of
ssl_photoz.similarity.index against numpy brute force (one matrix-vector product, argpartition and a
sort per query), one query at a time and all queries in one batch; then an approximate IVF-flat
index (and HNSW with ``--hnsw``) at several probe settings with its recall@k against the exact
search; with ``--pipeline-index``, what ``faiss_index.write_index`` builds at this size (its build
time includes the build-time recall measurement). Results go to stdout as one table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

LATENT_DIM = 16
N_CLUSTERS = 256


def synthetic_embeddings(
    n: int, dim: int, seed: int, structure: str = "clustered", chunk: int = 100_000
) -> np.ndarray:
    """(n, dim) float32 unit vectors, built chunk by chunk (peak memory ~ the output)."""
    # The mixture itself is fixed, so the database and the queries (another seed) share it; the
    # draws depend on (seed, chunk) only, so the data do not depend on the chunk size's history.
    shape_rng = np.random.default_rng(12345)
    project = shape_rng.standard_normal((LATENT_DIM, dim)).astype(np.float32) / np.sqrt(LATENT_DIM)
    centres = shape_rng.standard_normal((N_CLUSTERS, LATENT_DIM)).astype(np.float32)
    widths = shape_rng.uniform(0.2, 0.6, N_CLUSTERS).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for number, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        rng = np.random.default_rng([seed, number])
        if structure == "uniform":
            x = rng.standard_normal((m, dim), dtype=np.float32)
        else:
            c = rng.integers(0, N_CLUSTERS, m)
            z = centres[c] + widths[c, None] * rng.standard_normal((m, LATENT_DIM), np.float32)
            x = z @ project + 0.05 * rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def numpy_one(database: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Brute force for one query: inner products, the k largest, sorted."""
    ip = database @ query
    top = np.argpartition(-ip, k - 1)[:k]
    return top[np.argsort(-ip[top], kind="stable")]


def per_query_ms(fn, queries: np.ndarray) -> np.ndarray:
    times = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        fn(q)
        times[i] = time.perf_counter() - t0
    return times * 1e3


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_700_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--structure", choices=("clustered", "uniform"), default="clustered")
    parser.add_argument("--nlist", type=int, default=4096, help="IVF cells (0: skip IVF)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--hnsw", action="store_true", help="also build HNSW (slow to build)")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pipeline-index",
        action="store_true",
        help="also time what write_index builds at this size (flat, or IVF with nprobe tuned)",
    )
    args = parser.parse_args()

    import faiss

    from ssl_photoz.similarity import index as sim

    print(
        f"# {args.n:,} x {args.dim}-d {args.structure} unit vectors, {args.queries} queries, "
        f"k={args.k}; {os.cpu_count()} CPUs, faiss {faiss.__version__} with "
        f"{faiss.omp_get_max_threads()} threads, load average {os.getloadavg()[0]:.1f}, "
        f"{platform.processor() or platform.machine()}"
    )
    t0 = time.perf_counter()
    database = synthetic_embeddings(args.n, args.dim, args.seed, args.structure)
    queries = synthetic_embeddings(args.queries, args.dim, args.seed + 1, args.structure)
    gen_s = time.perf_counter() - t0
    k = args.k
    print(f"# data generated in {gen_s:.1f} s; speed-up = numpy 1-query median / the row's")
    table = Table(k)

    t0 = time.perf_counter()
    flat = sim.build_index(database)
    flat_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, exact = sim.search(flat, queries, k)
    flat_batch = (time.perf_counter() - t0) * 1e3 / len(queries)

    np_one = per_query_ms(lambda q: numpy_one(database, q, k), queries)
    np_found = np.stack([numpy_one(database, q, k) for q in queries[: min(50, len(queries))]])
    table.row("numpy brute force", "1 query", np_one, recall(np_found, exact[: len(np_found)]))
    flat_one = per_query_ms(lambda q: sim.search(flat, q, k), queries)
    table.row("faiss IndexFlatIP", "1 query", flat_one, 1.0, flat_build)
    t0 = time.perf_counter()
    _, np_batch_idx = sim.search_numpy(database, queries, k)
    np_batch = (time.perf_counter() - t0) * 1e3 / len(queries)
    batch = f"batch {len(queries)}"
    table.row("numpy brute force", batch, np.array([np_batch]), recall(np_batch_idx, exact))
    table.row("faiss IndexFlatIP", batch, np.array([flat_batch]), 1.0, flat_build)

    if args.nlist:
        t0 = time.perf_counter()
        quantizer = faiss.IndexFlatIP(args.dim)
        ivf = faiss.IndexIVFFlat(quantizer, args.dim, args.nlist, faiss.METRIC_INNER_PRODUCT)
        # 40 training points per cell: enough for k-means, FAISS warns below 39.
        picked = np.random.default_rng(1).choice(args.n, min(args.n, 40 * args.nlist), False)
        ivf.train(database[np.sort(picked)])
        ivf.add(database)
        ivf_build = time.perf_counter() - t0
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            _, found = sim.search(ivf, queries, k)
            one = per_query_ms(lambda q: sim.search(ivf, q, k), queries)
            name = f"faiss IVF{args.nlist},Flat nprobe={nprobe}"
            table.row(name, "1 query", one, recall(found, exact), ivf_build)
        del ivf, quantizer

    if args.pipeline_index:
        t0 = time.perf_counter()
        index, info = sim.build_index_by_size(database)
        build_s = time.perf_counter() - t0  # includes the recall measurement and nprobe tuning
        _, found = sim.search(index, queries, k)
        one = per_query_ms(lambda q: sim.search(index, q, k), queries)
        ivf = faiss.try_extract_index_ivf(index)
        kind = "flat" if ivf is None else f"IVF{ivf.nlist} nprobe={ivf.nprobe}"
        table.row(f"write_index: {kind}", "1 query", one, recall(found, exact), build_s)
        print(f"# write_index's sidecar: {info}", flush=True)
        del index

    if args.hnsw:
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        hnsw.add(database)
        hnsw_build = time.perf_counter() - t0
        for ef in args.ef_search:
            hnsw.hnsw.efSearch = ef
            _, found = sim.search(hnsw, queries, k)
            one = per_query_ms(lambda q: sim.search(hnsw, q, k), queries)
            table.row(
                f"faiss HNSW32 efSearch={ef}", "1 query", one, recall(found, exact), hnsw_build
            )


class Table:
    """Rows printed as they are measured; the first row's median is the speed-up baseline."""

    def __init__(self, k: int):
        self.base = None
        print(
            f"{'method':<32} {'mode':>10} {'ms/query':>9} {'p95 ms':>8} {'speed-up':>9}"
            f" {f'recall@{k}':>9} {'build s':>8} {'< 10 ms':>8}",
            flush=True,
        )

    def row(self, method: str, mode: str, ms: np.ndarray, rec: float, build_s: float = 0.0):
        median = float(np.median(ms))
        self.base = self.base or median
        print(
            f"{method:<32} {mode:>10} {median:>9.2f} {np.percentile(ms, 95):>8.2f}"
            f" {self.base / median:>8.1f}x {rec:>9.3f} {build_s:>8.1f}"
            f" {'yes' if median < 10 else 'no':>8}",
            flush=True,
        )


if __name__ == "__main__":
    main()
