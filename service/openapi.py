"""The web API's OpenAPI schema, as committed in docs/openapi.json.

Regenerate it after changing a route: ``python -m imgsearch.service.openapi > docs/openapi.json``
(``--check`` instead: exit 1 when the committed file is not current). It is the schema of a server with
every optional route on (``--token``: ``POST /login``; ``--metrics``: ``GET /metrics``), made from
:func:`imgsearch.service.app.create_app` without starting it: no model is loaded, no store is opened.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from imgsearch.core.store import Location
from imgsearch.service.app import create_app

COMMITTED = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


def schema() -> dict[str, Any]:
    """The schema ``/openapi.json`` serves on a server with ``--token`` and ``--metrics``."""
    # a store that is never opened: creating the app only makes a handle on it
    app = create_app(Location(db=None, url="http://127.0.0.1:8000"), token="unused", metrics=True)
    return app.openapi()


def render(value: dict[str, Any]) -> str:
    """The committed text: sorted keys and two-space indents, so that a change is a readable diff."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render(schema())
    if argv == ["--check"]:
        if COMMITTED.is_file() and json.loads(COMMITTED.read_text(encoding="utf-8")) == json.loads(text):
            return 0
        print(f"{COMMITTED} is not current: python -m imgsearch.service.openapi > docs/openapi.json", file=sys.stderr)
        return 1
    if argv:
        print("usage: python -m imgsearch.service.openapi [--check] > docs/openapi.json", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
