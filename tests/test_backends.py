"""Backends: ONNX Runtime fp32 equals eager PyTorch, int8 agrees with fp32 on real images, and the
backend a collection was built with is recorded and reused. Speed lives in bench/ingest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LIBRARY, MODEL, QUERIES, copy_library, run_cli, run_json

from imgsearch.core.backbones import ModelUnavailable, load_embedder
from imgsearch.core.batching import embed_files, embed_paths
from imgsearch.core.prepare import Views
from imgsearch.core.presets import DEFAULT_PRESET, PRESETS
from imgsearch.core.runtime import EXPORT_VERSION
from imgsearch.evaluation.evaluate import agreement


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh cache, so the export and the quantisation really run here."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("IMGSEARCH_CACHE")
    os.environ["IMGSEARCH_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["IMGSEARCH_CACHE"]
    else:
        os.environ["IMGSEARCH_CACHE"] = old


def _vectors(backend: str, paths: list[str], preset: str = DEFAULT_PRESET) -> np.ndarray:
    p = PRESETS[preset]
    embedder = load_embedder(MODEL, backend=backend, device="cpu", pooling=p.pooling, views=Views(p.crop, p.scales))
    assert embedder.recipe.backend == backend
    return np.stack([e.vector for e in embed_files(paths, embedder)])


@pytest.fixture(scope="module")
def sample() -> list[str]:
    """Half the demo library (every other file, all categories) and the held-out queries."""
    return sorted(map(str, LIBRARY.glob("*/*.jpg")))[::2] + sorted(map(str, QUERIES.iterdir()))


@pytest.fixture(scope="module")
def fp32(sample: list[str]) -> np.ndarray:
    return _vectors("torch", sample)


# int8 vs fp32, per preset's features: (cosine min, top-10 overlap) floors. Two averaged views smooth
# int8's rounding a little more than the fast preset's single 224 px view (docs/ingest-bench.md).
INT8_FLOORS = {"accurate": (0.98, 0.9), "fast": (0.97, 0.9)}  # measured 0.983 / 0.920, 0.979 / 0.904


def test_onnx_fp32_equals_eager_pytorch(sample: list[str], fp32: np.ndarray, model_cache: Path) -> None:
    onnx = _vectors("onnx", sample[:40])
    assert np.min(np.sum(onnx * fp32[:40], axis=1)) >= 0.9999
    assert list(model_cache.glob("efficientnet-lite0-*.onnx"))  # exported once, then cached


@pytest.mark.parametrize("preset", list(INT8_FLOORS))
def test_int8_agrees_with_fp32_on_real_images(sample: list[str], fp32: np.ndarray, preset: str) -> None:
    reference = fp32 if preset == "fast" else _vectors("torch", sample, preset)  # fast = balanced's features
    int8 = _vectors("int8", sample, preset)
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    found = agreement(reference, int8)
    print(preset, found)
    cosine_floor, overlap_floor = INT8_FLOORS[preset]
    assert found.cosine_min >= cosine_floor, found
    assert found.overlap >= overlap_floor, found


def test_backend_is_recorded_and_reused(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=4)
    db = ["--db", str(tmp_path / "db")]
    (summary,) = run_json("ingest", lib, *db, "--model", MODEL, "--backend", "int8", "--device", "auto")
    assert summary["added"] == 8
    (stats,) = run_json("stats", *db)
    assert stats["model"]["backend"] == "int8"
    query = sorted(lib.glob("*/*.jpg"))[0]
    # --expand 0: the query's own vector against the stored one (expansion would mix in neighbours)
    (found,) = run_json("search", query, *db, "-k", "1", "--expand", "0")  # int8 again: the recorded backend
    assert found["results"][0]["path"] == str(query) and found["results"][0]["score"] > 0.999
    (found,) = run_json("search", query, *db, "-k", "1", "--expand", "0", "--backend", "torch")  # fp32 query
    assert found["results"][0]["path"] == str(query) and found["results"][0]["score"] > 0.98


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ModelUnavailable, match="unknown backend 'tensorrt'"):
        load_embedder(MODEL, backend="tensorrt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: --device cuda works here")
def test_cuda_without_a_gpu_fails_before_touching_the_store(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=1, per_category=2)
    for extra in (["--device", "cuda"], ["--device", "cuda", "--backend", "int8"]):
        proc = run_cli("ingest", lib, "--db", tmp_path / "db", "--model", MODEL, *extra)
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr and "--device" in proc.stderr and "error:" in proc.stderr
        assert not (tmp_path / "db").exists()


def test_a_damaged_cached_model_is_rebuilt(model_cache: Path) -> None:
    load_embedder(MODEL, backend="onnx")
    (cached,) = model_cache.glob(f"efficientnet-lite0-*-v{EXPORT_VERSION}.onnx")
    cached.write_bytes(cached.read_bytes()[:1000])  # e.g. a disk that filled up
    embedder = load_embedder(MODEL, backend="onnx")
    vec = embed_paths([str(sorted(QUERIES.iterdir())[0])], embedder)
    assert vec.shape == (1, 1280) and cached.stat().st_size > 1_000_000


def test_auto_runs_onnx_on_a_cpu_and_falls_back_to_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_embedder(MODEL, device="cpu").recipe.backend == "onnx"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("IMGSEARCH_CACHE", str(blocker / "cache"))  # the exported model cannot be written
    assert load_embedder(MODEL, device="cpu").recipe.backend == "torch"
    with pytest.raises(ModelUnavailable, match="--backend onnx"):
        load_embedder(MODEL, device="cpu", backend="onnx")
