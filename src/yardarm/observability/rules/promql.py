"""PromQL text built from parts, and read back into the names it uses.

Rules are written as text (PromQL has no Python model worth its weight here), but every
selector goes through `Selector` so quoting is right, and `names_in` reads any
expression back into the metric and label names it references, so a test can check
each one against the metric catalog without a full PromQL parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Op = Literal["=", "!=", "=~", "!~"]


def quote(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Matcher:
    label: str
    op: Op
    value: str

    def __str__(self) -> str:
        return f"{self.label}{self.op}{quote(self.value)}"


@dataclass(frozen=True)
class Selector:
    """`metric{label="value", ...}`: an instant vector selector."""

    metric: str
    matchers: tuple[Matcher, ...] = ()

    def where(self, label: str, op: Op, value: str) -> Selector:
        """This selector with one more matcher."""
        return Selector(self.metric, (*self.matchers, Matcher(label, op, value)))

    def without(self, label: str) -> Selector:
        """This selector without its matchers on `label`."""
        return Selector(self.metric, tuple(m for m in self.matchers if m.label != label))

    def renamed(self, metric: str) -> Selector:
        """The same matchers on another series (a histogram's `_bucket` for its `_count`)."""
        return Selector(metric, self.matchers)

    def __str__(self) -> str:
        if not self.matchers:
            return self.metric
        return self.metric + "{" + ", ".join(str(m) for m in self.matchers) + "}"


def by(labels: tuple[str, ...]) -> str:
    return "by (" + ", ".join(labels) + ")"


def sum_rate(selector: Selector, window: str, labels: tuple[str, ...]) -> str:
    """`sum by (labels) (rate(selector[window]))`."""
    return f"sum {by(labels)} (rate({selector}[{window}]))"


# -- reading names back ---------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<variable>\$\{?\w+\}?)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
  | (?P<space>\s+)
    """,
    re.VERBOSE,
)
_MATCH_OPS: dict[str, Op] = {"=": "=", "!=": "!=", "=~": "=~", "!~": "!~"}
_KEYWORDS = frozenset(
    {"and", "or", "unless", "offset", "bool", "inf", "nan", "group_left", "group_right"}
)
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values",
})  # fmt: skip


@dataclass
class Names:
    """The names one expression references: each selector with its matchers, and the
    labels of its grouping clauses (`by`, `on`, ...)."""

    selectors: list[tuple[str, tuple[Matcher, ...]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {metric for metric, _ in self.selectors}


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r}")
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, match.group()))
    return out


def names_in(expr: str) -> Names:
    """The selectors and grouping labels `expr` references (a light reading of PromQL:
    enough for the expressions rules and dashboards write, not a validator; Grafana's
    `$variables` are read as values)."""
    tokens = _tokens(expr)
    names = Names()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in _LABEL_LISTS and following == "(":
            j = i + 2
            while tokens[j][1] != ")":
                if tokens[j][0] == "ident":
                    names.grouping.add(tokens[j][1])
                j += 1
            i = j + 1
            continue
        if kind == "ident" and following == "(":  # a function or an aggregation
            i += 1
            continue
        if kind == "ident" and (text.lower() in _KEYWORDS or text in _AGGREGATIONS):
            i += 1
            continue
        if kind == "ident" or (kind == "op" and text == "{"):
            metric = text if kind == "ident" else ""
            matchers: list[Matcher] = []
            j = i + 1 if kind == "ident" else i
            if j < len(tokens) and tokens[j][1] == "{":
                j += 1
                while tokens[j][1] != "}":
                    (_, label), (_, op), (_, value) = tokens[j : j + 3]
                    if op not in _MATCH_OPS:
                        raise ValueError(f"cannot read the matcher {label}{op}{value} in {expr!r}")
                    matchers.append(Matcher(label, _MATCH_OPS[op], _unquote(value)))
                    j += 3
                    if tokens[j][1] == ",":
                        j += 1
                j += 1
            names.selectors.append((metric, tuple(matchers)))
            i = j
            continue
        i += 1
    return names
