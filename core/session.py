"""Pick the model for a store: the one its collection records, unless the user names one.

Vectors from different models (or weights, or preprocessing) are not comparable, so a model that
does not match the collection's recorded fingerprint is refused before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgsearch.core.backbones import DEFAULT_MODEL, Embedder, ModelUnavailable, fingerprint_mismatch, load_embedder
from imgsearch.core.prepare import HANDOUT_VIEWS, Views
from imgsearch.core.presets import DEFAULT_PRESET, get_preset, matching_preset
from imgsearch.core.store import Store

SEARCH_KEYS = ("preset", "expand", "alpha")  # recorded with a collection: how it is searched


@dataclass(frozen=True)
class ModelChoice:
    """What the user asked for. Each setting left as None takes the collection's recorded value
    (or, for a new collection, the value of ``preset``, else of the default preset)."""

    model: str | None = None
    variant: str | None = None
    weights: Path | None = None
    device: str = "auto"
    backend: str | None = None
    pooling: str | None = None
    crop: str | None = None
    scales: tuple[int, ...] | None = None
    preset: str | None = None


def open_embedder(store: Store, choice: ModelChoice | None = None, *, lazy: bool = True) -> Embedder:
    """Load the embedder that fits ``store`` (or, for a new store, the given or default settings).

    Its fingerprint is checked against the collection's here, before anything is written. ``lazy``: for a
    store already made, the model itself is built by the first image embedded, so a sync with nothing to
    embed never loads it (:func:`imgsearch.core.backbones.load_embedder`); a new store's is built at once.
    """
    c = choice or ModelChoice()
    model, variant, weights = c.model, c.variant, c.weights
    pooling, crop, scales = c.pooling, c.crop, c.scales
    named = get_preset(c.preset) if c.preset else None
    if named is not None:  # the preset's settings, as if each flag had been given
        pooling, crop, scales = pooling or named.pooling, crop or named.crop, scales or named.scales
    recorded = store.fingerprint()
    if recorded is not None:
        if model and model != recorded.get("model"):
            raise ModelUnavailable(
                f"{store.location.describe()} holds {recorded.get('model')} vectors; refusing --model {model} "
                "(vectors of different models cannot be compared). Use another --collection or --db, "
                f"or leave out --model to use {recorded.get('model')}."
            )
        model = recorded.get("model")
        if weights is None and recorded.get("weights_file") and Path(recorded["weights_file"]).is_file():
            weights = Path(recorded["weights_file"])  # the file this collection was built with
        if variant is None and recorded.get("variant") != "file":
            variant = recorded.get("variant")
        # collections made before views were recorded used the handout's centre crop
        pooling = pooling or recorded.get("pooling")
        crop = crop or recorded.get("crop", HANDOUT_VIEWS.crop)
        scales = scales or tuple(recorded.get("scales", HANDOUT_VIEWS.scales))
    default = get_preset(DEFAULT_PRESET)
    views = Views(crop or default.crop, scales or default.scales)
    embedder = load_embedder(
        model or DEFAULT_MODEL,
        variant,
        weights,
        c.device,
        pooling or default.pooling,
        views,
        c.backend,  # with the preset's and the collection's: imgsearch.core.runtime.choose_backend decides
        preset_backend=named.backend if named else None,
        recorded_backend=recorded.get("backend") if recorded else None,
        lazy=lazy and recorded is not None,  # a new collection records the backend that really runs
    )
    if recorded is None:  # a new collection records how it is searched as well as how vectors are made
        chosen = named or matching_preset(embedder.fingerprint)
        embedder.fingerprint.update(
            preset=chosen.name if chosen and chosen == matching_preset(embedder.fingerprint) else "custom",
            expand=chosen.expand if chosen else 0,
            alpha=chosen.alpha if chosen else 0.0,
        )
    else:
        embedder.fingerprint.update({k: recorded[k] for k in SEARCH_KEYS if k in recorded})
    if recorded is not None and (why := fingerprint_mismatch(recorded, embedder.fingerprint)):
        raise ModelUnavailable(
            f"the loaded model does not match the one {store.location.describe()} was built with: {why}. "
            "Nothing was written. Pass the same --weights/--variant, or use another --collection."
        )
    return embedder
