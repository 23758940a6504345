"""Re-exports a package resolves on first use (PEP 562), so importing the package, or one
light module of it, does not import every heavy module its root re-exports."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, sources: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__` for `sources` (name -> its submodule).

    A name is imported from its submodule when first asked for, then kept in the
    package's namespace. Any other name is an AttributeError, which is also how
    `from package import submodule` falls back to importing the submodule.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        source = sources.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{source}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *sources})

    return __getattr__, __dir__
