"""YAML text for the generated files: block style, keys in the order the code writes them
(the order each project's own examples use), lists indented under their key, multi-line
strings (PromQL) as literal blocks, no line wrapping, and a header naming the module to
edit instead of the file."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        # A value used twice is written twice: generated files are read by people.
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump(document: Any, source: str, command: str = "yardarm observability") -> str:
    """`document` as YAML under a comment saying `source` generates it, with `command`."""
    body = yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        width=10_000,
        allow_unicode=True,
        default_flow_style=False,
    )
    assert isinstance(body, str)
    return f"# Generated from {source} by `{command}`: edit that, not this.\n{body}"
