"""One typed configuration: how vectors are made, how a collection is searched, and who decides each setting.

- :class:`Recipe`: how a collection's vectors are made (model, weights, pooling, views). Recorded with the
  collection and compared when it is opened: vectors made otherwise cannot be mixed with its own.
- :class:`SearchSettings`: how it is searched (the preset's query expansion; the pixel verification). The
  preset and its expansion are recorded too, so every later search ranks the same way.
- :class:`Fingerprint`: the two together, as a collection records them (one JSON object in its metadata).
- :func:`resolve`: every setting, from the first that gives it: the user's flag (:class:`ModelChoice`), the
  named preset, the collection's record, the default preset. The one place this order is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from imgsearch.core.presets import CROP, DEFAULT_PRESET, Preset, get_preset, matching_preset

if TYPE_CHECKING:  # prepare imports numpy and PIL: the store reads a record without them
    from imgsearch.core.prepare import Views

DEFAULT_MODEL = "resnet50"
DEFAULT_BACKEND = "auto"
VERIFY = 20  # candidates compared by their pixels by default: past the 20th, second shots are rare, the cost grows
# pooling name -> generalised-mean exponent p: 1 is average pooling, larger p leans towards max pooling.
# "gem" (p=3, Radenović et al.'s default) keeps its name because collections record it; p=2 measured
# better on photos for both category and instance search (docs/quality.md).
POOLINGS = {"avg": 1.0, "gem2": 2.0, "gem": 3.0}
T = TypeVar("T")


class ModelUnavailable(Exception):
    """The model or its weights cannot be loaded (or do not fit the store); the message says what to do."""


@dataclass(frozen=True)
class Recipe:
    """How vectors are made: which weights, and how a picture becomes one vector."""

    model: str
    variant: str  # the weights variant, or "file" for --weights
    weights_digest: str
    weights_source: str
    dim: int
    pooling: str
    preprocess: str  # :attr:`imgsearch.core.prepare.Views.version`
    # collections made before views were recorded used the handout's centre crop
    crop: str = "center"
    scales: tuple[int, ...] = (CROP,)
    backend: str = "torch"  # informational: fp32 backends agree closely (core/runtime.py)
    weights_file: str | None = None  # the --weights file, resolved
    normalised: str = "l2"
    windows: int = 0  # window vectors stored per picture beside its own (core/windows.py); 0: none

    COMPARED: ClassVar[tuple[str, ...]] = ("model", "dim", "weights_digest", "pooling", "preprocess")

    @property
    def views(self) -> Views:
        from imgsearch.core.prepare import Views

        return Views(self.crop, self.scales)

    def mismatch(self, now: Recipe) -> str | None:
        """Why vectors made ``now`` cannot be mixed with these (the stored ones), or None when they can."""
        diffs = [
            f"{key} {getattr(self, key)!r} (stored) vs {getattr(now, key)!r} (now)"
            for key in self.COMPARED
            if getattr(self, key) != getattr(now, key)
        ]
        return "; ".join(diffs) or None

    def describe(self) -> str:
        """One human line: model, weights and feature."""
        view = "centre crop" if self.crop == "center" else "whole image"
        windows = f", and {self.windows} window vectors a picture" if self.windows else ""
        return (
            f"{self.model} ({self.variant} weights {self.weights_digest}, {self.pooling}-pooled {self.dim}-d, "
            f"L2-normalised, {view} at {'+'.join(map(str, self.scales))} px{windows})"
        )


@dataclass(frozen=True)
class SearchSettings:
    """How a collection is searched. ``preset``, ``expand`` and ``alpha`` are recorded with it; ``verify`` is
    each search's own."""

    preset: str = "custom"  # the feature preset the collection was made with ("custom": none of them)
    expand: int = 0  # α-weighted query expansion: neighbours added to each query (0 = off)
    alpha: float = 0.0  # neighbour weight = score ** alpha
    verify: int = VERIFY  # best candidates compared by their pixels (0 = the vectors alone)

    RECORDED: ClassVar[tuple[str, ...]] = ("preset", "expand", "alpha")

    @classmethod
    def of(cls, preset: Preset | None, name: str | None = None) -> SearchSettings:
        """The settings ``preset`` searches with, under ``name`` (default: the preset's own)."""
        if preset is None:
            return cls()
        return cls(name or preset.name, preset.expand, preset.alpha)


@dataclass(frozen=True)
class Fingerprint:
    """What a collection records: how its vectors were made and how it is searched."""

    recipe: Recipe
    search: SearchSettings = SearchSettings()

    def as_dict(self) -> dict[str, Any]:
        """The flat JSON object collections record and ``stats --json`` prints (its keys are a contract)."""
        out: dict[str, Any] = {f.name: getattr(self.recipe, f.name) for f in fields(Recipe)}
        out["scales"] = list(self.recipe.scales)
        if out["weights_file"] is None:
            del out["weights_file"]
        return out | {key: getattr(self.search, key) for key in SearchSettings.RECORDED}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Fingerprint:
        """A recorded object back (keys it does not know are ignored; missing ones take the old defaults)."""
        known = {f.name for f in fields(Recipe)}
        recipe = {k: v for k, v in raw.items() if k in known}
        if "scales" in recipe:
            recipe["scales"] = tuple(int(s) for s in recipe["scales"])
        search = {k: raw[k] for k in SearchSettings.RECORDED if k in raw}
        return cls(Recipe(**recipe), SearchSettings(**search))

    @classmethod
    def from_json(cls, raw: str) -> Fingerprint:
        return cls.from_dict(json.loads(raw))

    def searched(self, expand: int | None = None, verify: int | None = None) -> Fingerprint:
        """These settings as one search overrides them (None: as recorded)."""
        search = replace(self.search, **_given(expand=expand, verify=verify))
        return replace(self, search=search)

    def describe(self) -> str:
        return self.recipe.describe()

    def describe_feature(self) -> str:
        """How a vector is made and a query expanded, in words."""
        f, s = self.recipe, self.search
        p = POOLINGS.get(f.pooling, 1.0)
        pooling = "global average pooling" if p == 1.0 else f"generalised-mean (GeM, p={p:g}) pooling"
        view = "the centre crop" if f.crop == "center" else "the whole image"
        mean = ", averaged over the scales" if len(f.scales) > 1 else ""
        qe = (
            f"; each query is expanded with its {s.expand} nearest stored images, weighted by score^{s.alpha:g}"
            if s.expand
            else ""
        )
        return (
            f"{pooling} of the last convolutional layer over {view} at {'+'.join(map(str, f.scales))} px{mean} "
            f"→ a {f.dim}-dimensional vector, L2-normalised (unit length){qe}"
        )


@dataclass(frozen=True)
class ModelChoice:
    """What the user asked for (flags, or :func:`imgsearch.open`'s arguments). Each setting left as None is
    decided by :func:`resolve`."""

    model: str | None = None
    variant: str | None = None
    weights: Path | None = None
    device: str = "auto"
    backend: str | None = None
    pooling: str | None = None
    crop: str | None = None
    scales: tuple[int, ...] | None = None
    preset: str | None = None
    windows: bool | None = None  # a new collection's option: store window vectors (core/windows.py)


@dataclass(frozen=True)
class Resolved:
    """Every setting decided: what to load, how to run it, and how its collection is searched."""

    model: str
    variant: str | None  # None: the model's default weights
    weights: Path | None
    pooling: str
    views: Views
    backend: str  # asked for: auto, torch, onnx or int8 (imgsearch.core.runtime.choose_backend places it)
    device: str
    search: SearchSettings
    windows: bool = False


def resolve(
    choice: ModelChoice | None = None, recorded: Fingerprint | None = None, holder: str = "this collection"
) -> Resolved:
    """Each setting from the first that gives it: ``choice`` (the flag), its named preset, ``recorded`` (the
    collection's, ``holder`` in messages), the default preset. Raises :class:`ModelUnavailable` for another
    model than the collection's, and ValueError for an unknown preset or a bad view."""
    from imgsearch.core.prepare import Views

    c = choice or ModelChoice()
    named = get_preset(c.preset) if c.preset else None
    default = get_preset(DEFAULT_PRESET)
    stored = recorded.recipe if recorded else None
    if stored is not None and c.model and c.model != stored.model:
        raise ModelUnavailable(
            f"{holder} holds {stored.model} vectors; refusing --model {c.model} (vectors of different "
            f"models cannot be compared). Use another --collection or --db, or leave out --model to use {stored.model}."
        )
    weights = c.weights
    if weights is None and stored is not None and stored.weights_file and Path(stored.weights_file).is_file():
        weights = Path(stored.weights_file)  # the file this collection was built with
    variant = c.variant or (stored.variant if stored is not None and stored.variant != "file" else None)
    pooling = _first(c.pooling, named and named.pooling, stored and stored.pooling, default.pooling)
    views = Views(
        _first(c.crop, named and named.crop, stored and stored.crop, default.crop),
        _first(c.scales, named and named.scales, stored and stored.scales, default.scales),
    )
    # fp32 backends give the same vectors, so each machine picks its own; an int8 collection stays int8
    backend = _first(
        c.backend,
        named and named.backend,
        "int8" if stored is not None and stored.backend == "int8" else None,
        default.backend,
        DEFAULT_BACKEND,
    )
    if recorded is not None:
        search = recorded.search
    else:  # a new collection records how it is searched as well as how its vectors are made
        matching = matching_preset(pooling, views.crop, views.scales, int8=backend == "int8")
        chosen = named or matching
        search = SearchSettings.of(chosen, chosen.name if chosen and chosen == matching else "custom")
    model = _first(c.model, stored and stored.model, DEFAULT_MODEL)
    windows = stored.windows > 0 if stored is not None else bool(c.windows)
    if stored is not None and c.windows is not None and c.windows != windows:
        raise ModelUnavailable(
            f"{holder} was made {'with' if windows else 'without'} window vectors; --windows is chosen when a "
            "collection is made. Use another --collection or --db for the other choice."
        )
    return Resolved(model, variant, weights, pooling, views, backend, c.device, search, windows)


def _first(*values: T | None) -> T:
    """The first value given (not None, not empty)."""
    return next(v for v in values if v)


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
