"""The web service: ``imgsearch serve`` — the search page, the JSON API and the worker it runs beside them."""
