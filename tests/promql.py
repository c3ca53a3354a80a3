"""Just enough PromQL reading for the deploy tests: the vector selectors of an expression."""

from __future__ import annotations

import re
from typing import NamedTuple

_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
# Words that stand where a metric name could, and are none.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", *_AGGREGATIONS,
}  # fmt: skip
# Keywords followed by a parenthesised list of label names.
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"'  # a string
    r"|\[[^\]]*\]"  # a range or subquery: [5m], [$__rate_interval], [1h:5m]
    r"|\d[\w.]*(?:[eE][+-]?\d+)?"  # a number or a duration
    r"|(?P<name>[a-zA-Z_:][\w:]*)"
    r"|.",
    re.S,
)


class Selector(NamedTuple):
    name: str
    matchers: str  # the text between the braces; '' for a bare name
    start: int  # the selector's span in the expression
    end: int


def vector_selectors(expr: str) -> list[Selector]:
    """Every vector selector of `expr`, in order. Function names, aggregation operators,
    keywords and the label lists of by/without/on/ignoring/group_* are not selectors."""
    out = []
    pos = 0
    while pos < len(expr):
        token = _TOKEN.match(expr, pos)
        assert token is not None  # the last branch matches any character
        pos = token.end()
        name = token.group("name")
        if name is None:
            continue
        rest = expr[pos:]
        after = rest.lstrip()
        if name in _KEYWORDS:
            if name in _LABEL_LISTS and after.startswith("("):
                pos = expr.index(")", pos) + 1
            continue
        if after.startswith("("):  # a function call
            continue
        if after.startswith("{"):
            brace = pos + len(rest) - len(after)
            end = _closing_brace(expr, brace)
            out.append(Selector(name, expr[brace + 1 : end], token.start(), end + 1))
            pos = end + 1
        else:
            out.append(Selector(name, "", token.start(), token.end()))
    return out


def _closing_brace(expr: str, brace: int) -> int:
    pos = brace + 1
    while expr[pos] != "}":
        string = _STRING.match(expr, pos)
        pos = string.end() if string else pos + 1
    return pos
