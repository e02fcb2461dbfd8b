"""Duplicates in a library: exact copies (same bytes), edited copies (verified), look-alikes.

:func:`imgsearch.dupes.find.find_duplicates` is the entry point; :mod:`imgsearch.dupes.groups` holds
the result (groups of members, each with a suggested keep) and its JSON form.
"""
