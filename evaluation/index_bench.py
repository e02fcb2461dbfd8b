"""Exact search vs Chroma's HNSW vs random-hyperplane LSH on CNN features: recall, speed, size.

Answers the handout's extension question ("can LSH speed up search over CNN features?") with
numbers. Ground truth is exact cosine top-10. Larger sets are made by perturbing real embeddings
(mixtures of two stored vectors plus noise), so they keep the clustered shape real libraries have.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgsearch.core.store import HNSW
from imgsearch.evaluation.lsh import HyperplaneLSH

K = 10
HNSW_CONFIGS = {  # name -> Chroma hnsw configuration
    "hnsw chroma default (M=16, ef_search=100)": {"space": "cosine"},
    "hnsw imgsearch default (M=32, ef_c=200, ef_search=200)": HNSW,
}
LSH_CONFIGS = [(16, 8), (12, 8), (10, 16), (8, 16)]  # (bits, tables)


@dataclass
class Row:
    dataset: str
    size: int
    method: str
    recall_at_10: float
    ms_per_query: float
    build_seconds: float
    megabytes: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def perturbed(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` unit vectors near the real ones: a mix of two real vectors plus noise (cos ≈ 0.9 to the mix)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), np.float32)
    sigma = np.sqrt(0.23 / real.shape[1])
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        a, b = rng.integers(0, len(real), m), rng.integers(0, len(real), m)
        w = rng.uniform(0.6, 1.0, (m, 1)).astype(np.float32)
        mix = _unit(w * real[a] + (1 - w) * real[b])
        out[s : s + m] = _unit(mix + rng.standard_normal(mix.shape).astype(np.float32) * sigma)
    return out


def exact_top(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    out = np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), 64):
        scores = queries[s : s + 64] @ base.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
        out[s : s + 64] = np.take_along_axis(part, order, 1)
    return out


def _recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K].tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def _timed(fn: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[list[np.ndarray], float]:
    started = time.perf_counter()
    found = [fn(q) for q in queries]  # one query at a time: the latency a user sees
    return found, (time.perf_counter() - started) * 1000 / len(queries)


def _chroma(
    base: np.ndarray, queries: np.ndarray, config: dict[str, Any]
) -> tuple[list[np.ndarray], float, float, float]:
    import chromadb
    from chromadb.config import Settings

    tmp = tempfile.mkdtemp(prefix="imgsearch-hnsw-")
    try:
        client = chromadb.PersistentClient(path=tmp, settings=Settings(anonymized_telemetry=False))
        col = client.create_collection("bench", configuration={"hnsw": config}, embedding_function=None)
        started = time.perf_counter()
        step = client.get_max_batch_size()
        for s in range(0, len(base), step):
            col.add(ids=[str(i) for i in range(s, min(s + step, len(base)))], embeddings=base[s : s + step])
        build = time.perf_counter() - started

        def one(q: np.ndarray) -> np.ndarray:
            res = col.query(query_embeddings=q[None, :], n_results=K, include=[])
            return np.array([int(i) for i in res["ids"][0]], np.int64)

        found, ms = _timed(one, queries)
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 1e6
        client.delete_collection("bench")
        return found, ms, build, size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench(
    name: str,
    base: np.ndarray,
    queries: np.ndarray,
    hnsw: bool = True,
    lsh: Sequence[tuple[int, int]] = LSH_CONFIGS,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Every method on one dataset; recall@10 against exact search."""
    rows = []
    truth = exact_top(base, queries)
    found, ms = _timed(lambda q: exact_top(base, q[None, :])[0], queries)
    rows.append(Row(name, len(base), "exact (numpy brute force)", _recall(found, truth), ms, 0.0, base.nbytes / 1e6))
    log(f"{name}: exact {ms:.2f} ms/query")
    if hnsw:
        for method, config in HNSW_CONFIGS.items():
            found, ms, build, size = _chroma(base, queries, config)
            rows.append(Row(name, len(base), method, _recall(found, truth), ms, build, size))
            log(f"{name}: {method} recall {rows[-1].recall_at_10:.3f}, {ms:.2f} ms/query, build {build:.0f} s")
    for bits, tables in lsh:
        started = time.perf_counter()
        index = HyperplaneLSH(bits, tables).build(base)
        build = time.perf_counter() - started
        found, ms = _timed(lambda q, index=index: index.search(q[None, :], K)[0], queries)
        method = f"LSH {bits} bits x {tables} tables"
        rows.append(Row(name, len(base), method, _recall(found, truth), ms, build, index.nbytes / 1e6))
        log(f"{name}: {method} recall {rows[-1].recall_at_10:.3f}, {ms:.2f} ms/query")
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| vectors | method | recall@10 | ms/query | build s | MB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.dataset} ({r.size:,}) | {r.method} | {r.recall_at_10:.3f} | {r.ms_per_query:.2f} | "
        f"{r.build_seconds:.1f} | {r.megabytes:.0f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'imgsearch[bench]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r.dataset for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for i, r in enumerate(r for r in rows if r.dataset == ds):
            marker = "s" if r.method.startswith("exact") else "^" if r.method.startswith("hnsw") else "o"
            ax.scatter(r.ms_per_query, r.recall_at_10, marker=marker, s=60)
            ax.annotate(
                r.method.split(" (")[0],
                (r.ms_per_query, r.recall_at_10),
                fontsize=7,
                xytext=(4, 3 - 11 * (i % 2)),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("latency per query (ms, log scale)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"{ds}: {next(r.size for r in rows if r.dataset == ds):,} vectors")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
