"""Named feature presets: the few measured settings a user picks from, instead of five expert flags.

A preset fixes how a vector is made (pooling, view, scales, backend) and how a search uses it (query
expansion). The collection records the preset's name and its expansion, so every later search of it
ranks the same way. Each preset's quality and cost on photos is in docs/quality.md.
"""

from __future__ import annotations

from dataclasses import dataclass

# the model's input: Resize(RESIZE) then CenterCrop(CROP), as the lab handout; here so --help needs no numpy
RESIZE = 256
CROP = 224


@dataclass(frozen=True)
class Preset:
    name: str
    pooling: str
    crop: str
    scales: tuple[int, ...]
    expand: int  # α-weighted query expansion: neighbours added to each query (0 = off)
    alpha: float  # neighbour weight = score ** alpha (0 = plain average query expansion)
    backend: str | None  # None: the machine's fastest fp32 backend; "int8": quantised
    summary: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "balanced",
            "gem2",
            "center",
            (CROP,),
            2,
            3.0,
            None,
            "the default: GeM (p=2) over the centre crop at 224 px, α-query expansion with 2 neighbours",
        ),
        Preset(
            "fast",
            "gem2",
            "center",
            (CROP,),
            2,
            3.0,
            "int8",
            "balanced from the int8 model: ResNet50 ingests ~1.4x faster on CPUs, quality within 0.005",
        ),
        Preset(
            "accurate",
            "gem",
            "full",
            (CROP, 320),
            2,
            3.0,
            None,
            "GeM (p=3) over the whole image at 224 + 320 px, α-query expansion with 2: best on photos, ~4x the cost",
        ),
        Preset(
            "handout",
            "avg",
            "center",
            (CROP,),
            0,
            0.0,
            None,
            "the lab handout's recipe: average pooling over the centre crop at 224 px, no expansion",
        ),
    )
}
DEFAULT_PRESET = "balanced"


def preset_help() -> str:
    """One line per preset, for --help."""
    return "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values())


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown feature preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def matching_preset(pooling: str, crop: str, scales: tuple[int, ...], *, int8: bool) -> Preset | None:
    """The preset that makes vectors this way (None for a hand-made combination)."""
    for p in PRESETS.values():
        if (p.pooling, p.crop, p.scales) == (pooling, crop, tuple(scales)) and (p.backend == "int8") == int8:
            return p
    return None
