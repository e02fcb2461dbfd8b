"""``imgsearch bench-index``: exact vs HNSW vs LSH on a collection's vectors and on scaled-up copies."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imgsearch.cli.options import JsonOpt, fail, store_options, user_errors
from imgsearch.cli.output import json_stdout, say

if TYPE_CHECKING:
    from imgsearch.core.store import Location


@store_options
def bench_index(
    location: Location,
    sizes: Annotated[str, typer.Option(help="Synthetic set sizes (perturbed real vectors), comma-separated.")] = (
        "100000,1000000"
    ),
    hnsw_max: Annotated[int, typer.Option(help="Skip Chroma HNSW above this size (it inserts ~700 vectors/s).")] = (
        100_000
    ),
    queries: Annotated[int, typer.Option(min=1, help="Queries per set (perturbed, not in the set).")] = 200,
    lsh: Annotated[
        str, typer.Option(help="LSH settings to try, BITSxTABLES, comma-separated.")
    ] = "16x8,12x8,10x16,8x16",
    out: Annotated[Path | None, typer.Option(help="Write the table here (Markdown; JSON beside it).")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the recall-vs-latency plot here (PNG).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recall@10 against exact search, query latency, build time and size of each index type.

    Exact brute force, Chroma's HNSW (default and tuned), and random-hyperplane LSH (several bits x
    tables), on the collection's stored vectors and on larger sets made by perturbing them.
    """
    with user_errors(), json_stdout(as_json) as emit:
        import numpy as np

        from imgsearch.core.store import Store
        from imgsearch.evaluation.index_bench import bench, markdown, perturbed
        from imgsearch.evaluation.index_bench import plot as draw

        try:
            configs = [
                (int(b), int(t)) for b, t in (part.lower().split("x") for part in lsh.split(",") if part.strip())
            ]
        except ValueError:
            fail(f"--lsh {lsh!r}: expected BITSxTABLES pairs such as 12x8,8x16")
        if plot is not None and importlib.util.find_spec("matplotlib") is None:
            fail("--plot needs matplotlib: pip install 'imgsearch[bench]'")
        store = Store(location)
        ids = [i for i, _ in store.scan()]
        if len(ids) < 20:
            fail(f"{store.location.describe()} holds {len(ids)} vectors; ingest at least 20 first")
        stored = store.get(ids, embeddings=True)
        store.close()
        real = np.stack([stored[i]["_embedding"] for i in ids]).astype(np.float32)
        rng = np.random.default_rng(0)
        picks = rng.choice(len(real), size=min(queries, len(real)), replace=False)
        rows = bench("stored", real, perturbed(real[picks], len(picks), seed=1), lsh=configs, log=say)
        for n in (int(s) for s in sizes.split(",") if s.strip()):
            base = perturbed(real, n, seed=2)
            queries_n = perturbed(real, queries, seed=3)
            rows += bench(f"{n // 1000}k", base, queries_n, hnsw=n <= hnsw_max, lsh=configs, log=say)
            del base
        table = markdown(rows)
        if out is not None:
            out.write_text(table)
            out.with_suffix(".json").write_text(json.dumps([r.as_dict() for r in rows], indent=1) + "\n")
        if plot is not None:
            draw(rows, plot)
            say(f"plot: {plot}")
        if as_json:
            emit({"rows": [r.as_dict() for r in rows]})
        else:
            print(table)
