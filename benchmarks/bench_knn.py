"""The kNN probe's search: brute force on the device (scaleaudit.knn) against the ball tree it replaced.

    PYTHONPATH=src python3 benchmarks/bench_knn.py [--support 89996 --queries 7180 --dim 768 --device cuda]

Both search the same random features (the ball tree on one CPU core, as NearestNeighbors ran it); printed: each
one's time, their ratio, and each one's time for PathMNIST's ViT-B kNN run (89,996 support rows of 768 features,
7,180 test queries), scaled by query-support pairs. The defaults are PathMNIST's own size, which on a GPU takes
seconds; on a CPU use a smaller size (e.g. --support 8000 --queries 800), where the ball tree takes a minute.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from scaleaudit import knn

PATHMNIST_PAIRS = 89_996 * 7_180  # ViT-B features (768-d) of PathMNIST's training split against its test split


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--support", type=int, default=89_996)
    p.add_argument("--queries", type=int, default=7_180)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-tree", action="store_true", help="time brute force only (the tree takes ~2.2 us a pair)")
    args = p.parse_args()
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    support = rng.normal(size=(args.support, args.dim)).astype(np.float32)
    queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    labels = rng.integers(0, 9, args.support)
    device = torch.device(args.device)

    def brute():
        index = knn.Index(torch.from_numpy(support).to(device), labels, knn.K, "multi-class", 9)
        nbrs = index.neighbours(torch.from_numpy(queries).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return nbrs

    brute()  # warm-up: CUDA context, cuBLAS handles
    nbrs, brute_s = _timed(brute)
    scale = PATHMNIST_PAIRS / (args.support * args.queries)
    print(f"{args.support} support x {args.queries} queries x {args.dim} features")
    print(f"brute force on {device}: {brute_s:.2f} s (PathMNIST-sized: {brute_s * scale:.1f} s)")
    if args.skip_tree:
        return
    tree, tree_s = _timed(
        lambda: (
            NearestNeighbors(n_neighbors=knn.K, algorithm="ball_tree", n_jobs=1)
            .fit(support)
            .kneighbors(queries, return_distance=False)
        )
    )
    same = np.mean([set(a) == set(b) for a, b in zip(nbrs, tree)])
    print(f"ball tree (1 core): {tree_s:.2f} s (PathMNIST-sized: {tree_s * scale / 60:.1f} min)")
    print(f"brute force is {tree_s / brute_s:.0f}x faster; same neighbours for {same:.1%} of the queries")


if __name__ == "__main__":
    main()
