"""Payload formats -> rows (dicts of feature values)."""

from __future__ import annotations

from typing import Any


def rows_from_body(body: Any) -> list[Any] | None:
    """Rows of a parsed JSON body: an object is one row, a list of objects many.

    Returns None when the body has no rows in a known format. Items of a list
    that are not objects are passed on and counted as rejected by the engine.
    """
    if type(body) is dict:
        return [body]
    if type(body) is list:
        return body
    return None
