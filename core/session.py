"""Pick the model for a store: the one its collection records, unless the user names one.

Vectors from different models (or weights, or preprocessing) are not comparable, so a model that
does not match the collection's recorded recipe is refused before anything is written.
"""

from __future__ import annotations

from imgsearch.core.backbones import Embedder, embedder_for
from imgsearch.core.config import ModelChoice, ModelUnavailable, resolve
from imgsearch.core.store import Store


def open_embedder(store: Store, choice: ModelChoice | None = None, *, lazy: bool = True) -> Embedder:
    """Load the embedder that fits ``store`` (or, for a new store, the given or default settings).

    Its recipe is checked against the collection's here, before anything is written. ``lazy``: for a
    store already made, the model itself is built by the first image embedded, so a sync with nothing to
    embed never loads it (:func:`imgsearch.core.backbones.embedder_for`); a new store's is built at once.
    """
    recorded = store.fingerprint()
    embedder = embedder_for(resolve(choice, recorded, store.location.describe()), lazy=lazy and recorded is not None)
    if recorded is not None and (why := recorded.recipe.mismatch(embedder.recipe)):
        raise ModelUnavailable(
            f"the loaded model does not match the one {store.location.describe()} was built with: {why}. "
            "Nothing was written. Pass the same --weights/--variant, or use another --collection."
        )
    return embedder
