"""The score bands: where a cosine similarity reads as a close copy (HIGH), a similar subject (MID) or weak.

The one place these numbers live; the HTML report and the search page's JavaScript both get them from here.
"""

# From the default preset's measured scores on photos (docs/quality.md): a copy and its original score
# 0.88-0.99 (10th-90th percentile); top-10 hits that are not relevant 0.53-0.77.
HIGH, MID = 0.85, 0.7


def band(score: float) -> str:
    """The band a score falls in: ``"high"``, ``"mid"`` or ``"low"`` (also its CSS class)."""
    return "high" if score >= HIGH else "mid" if score >= MID else "low"
