"""The ``imgsearch`` command line: the top layer; nothing imports it."""
