"""The one page `imgsearch serve` shows at ``/``: self-contained (no CDN; the service may run offline).

It talks only to the JSON API of :mod:`imgsearch.service.app`: ``/api/stats`` for the store's facts and
categories, ``/api/search`` for an uploaded query, ``/api/search/by-id/{id}`` for "more like this" (both with
``box`` when the user drags a rectangle on the query, or on a result after its "region" button),
``POST /api/dupes`` for the Duplicates view (groups of duplicates, the suggested keep first),
``POST /api/why`` (or ``/api/why/by-id/{query}/{result}``) for a result's "why?" (heat grids and fitted
frames drawn on canvases over both pictures) and ``/api/images/{id}/thumb`` for every picture. Results are
built with ``textContent``, never ``innerHTML``, so a file name cannot inject markup. Each result card
carries ``data-rank``, ``data-score``, ``data-id`` and ``data-category`` for tests and scripts. A busy
server (503) is not a failure: the page says "busy, retrying" and asks again after the server's ``Retry-After``.
:func:`render_login_page` is what a server with a token shows instead until its form posts the right token.

Both are Jinja2 templates in ``service/templates`` (autoescaped); the page includes the report's
``cards.css`` (``reports/templates``), so a result looks the same in the browser and in a saved report,
and gets the score bands from :mod:`imgsearch.reports.bands`. Each is rendered once, then reused.
"""

import functools

import jinja2

from imgsearch.reports.bands import HIGH, MID


@functools.cache
def _environment() -> jinja2.Environment:
    loader = jinja2.ChoiceLoader(
        [jinja2.PackageLoader("imgsearch.service", "templates"), jinja2.PackageLoader("imgsearch.reports", "templates")]
    )
    return jinja2.Environment(
        loader=loader,
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@functools.cache
def render_page() -> str:
    """The search page's HTML."""
    return _environment().get_template("page.html").render(high=HIGH, mid=MID)


@functools.cache
def render_login_page() -> str:
    """The sign-in page's HTML: one password field that posts the token to ``/login``."""
    return _environment().get_template("login.html").render()
