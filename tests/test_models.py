"""Backbones: the ResNet50 loading paths (checkpoints made here) and the feature contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import QUERIES, copy_library, run_cli, run_json

from imgsearch.core.backbones import ModelUnavailable, load_embedder
from imgsearch.core.prepare import HANDOUT_VIEWS, load_views


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real torchvision ResNet50 state dict saved as a file (ImageNet weights cannot be downloaded here)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet50-test.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


def _one(path: Path) -> tuple[np.ndarray, object]:
    views, decoded = load_views(path)
    return views[0], decoded


def test_resnet50_from_weights_file_gives_2048d_unit_vectors(resnet_checkpoint: Path) -> None:
    emb = load_embedder("resnet50", weights=resnet_checkpoint, pooling="avg", views=HANDOUT_VIEWS)
    batch = np.stack([_one(p)[0] for p in sorted(QUERIES.iterdir())[:3]])
    vecs = emb.embed([batch])
    assert vecs.shape == (3, 2048) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert (emb.recipe.model, emb.recipe.dim, emb.recipe.variant) == ("resnet50", 2048, "file")
    # the feature is the handout's: everything up to the global average pool
    net = torchvision.models.resnet50(weights=None)
    net.load_state_dict(torch.load(resnet_checkpoint))
    net.fc = torch.nn.Identity()
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(net.eval()(torch.from_numpy(batch)), dim=1).numpy()
    assert np.allclose(ref, vecs, atol=1e-4)


def test_wrapped_checkpoints_load_and_digest_ignores_the_wrapping(resnet_checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(resnet_checkpoint)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    a = load_embedder("resnet50", weights=resnet_checkpoint).recipe.weights_digest
    b = load_embedder("resnet50", weights=wrapped).recipe.weights_digest
    assert a == b


def test_wrong_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), bogus)
    with pytest.raises(ModelUnavailable, match="is not a torchvision ResNet50 checkpoint"):
        load_embedder("resnet50", weights=bogus)
    with pytest.raises(ModelUnavailable, match="does not exist"):
        load_embedder("resnet50", weights=tmp_path / "missing.pth")


def test_cli_ingest_with_weights_file_then_search_reuses_it(resnet_checkpoint: Path, tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=2)
    db = tmp_path / "db"
    (out,) = run_json("ingest", lib, "--db", db, "--weights", resnet_checkpoint)
    assert out["added"] == 4
    (stats,) = run_json("stats", "--db", db)
    assert stats["model"]["model"] == "resnet50" and stats["model"]["dim"] == 2048
    # the collection remembers its weights file: search needs no --weights
    (res,) = run_json("search", sorted((lib / sorted(p.name for p in lib.iterdir())[0]).iterdir())[0], "--db", db)
    assert res["results"][0]["score"] > 0.99


def test_no_weights_reachable_fails_before_touching_the_store(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=1, per_category=1)
    db = tmp_path / "db"
    proc = run_cli("ingest", lib, "--db", db, env={"TORCH_HOME": str(tmp_path / "empty-torch-home")})
    assert proc.returncode == 1
    assert "--weights FILE" in proc.stderr and "--model efficientnet-lite0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not db.exists()


def test_unknown_model_and_variant(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="unknown model"):
        load_embedder("vgg16")
    with pytest.raises(ModelUnavailable, match="no weights variant"):
        load_embedder("resnet50", variant="IMAGENET1K_V9")
