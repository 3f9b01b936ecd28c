"""Start-up cost: keep third-party import-time work that gliofed never uses off the import path.

``import monai`` imports every MONAI sub-package, among them ``monai.bundle``, which imports
``jsonschema``; jsonschema's format checkers import ``rfc3987_syntax`` when it is installed (the Jupyter
stack installs it), and that package compiles its Earley grammars at import time: about 4-6 s of a
12 s ``import gliofed.engine`` on 2 cores (upstream: python-jsonschema/jsonschema issue 1428).

:func:`defer_rfc3987_syntax` registers a stand-in module whose ``is_valid_syntax`` / ``parse`` load the
real package on first use, so jsonschema still checks ``iri`` formats exactly as before, but the
grammars are compiled only if something validates an IRI. It is called from ``gliofed/__init__.py`` so
that every entry point (CLI, notebook kernel, Flower app) benefits before MONAI is imported.
"""

from __future__ import annotations

import importlib.util
import sys
import types

__all__ = ["defer_rfc3987_syntax"]

_NAME = "rfc3987_syntax"


class _Deferred(types.ModuleType):
    """Stand-in for ``rfc3987_syntax``: any attribute not defined here loads the real module."""

    def __init__(self, spec) -> None:
        super().__init__(_NAME)
        self.__spec__ = spec
        self.__file__ = spec.origin
        self.__path__ = list(spec.submodule_search_locations or [])
        self.__deferred_real__ = None

    def _real(self) -> types.ModuleType:
        real = self.__dict__.get("__deferred_real__")
        if real is None:
            real = importlib.util.module_from_spec(self.__spec__)
            sys.modules[_NAME] = real  # the package's relative imports need the real module registered
            try:
                self.__spec__.loader.exec_module(real)
            except BaseException:
                sys.modules[_NAME] = self
                raise
            self.__deferred_real__ = real
        return real

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._real(), name)

    # the two names jsonschema imports (``from rfc3987_syntax import is_valid_syntax``); they must exist
    # without loading, and load on call
    def is_valid_syntax(self, term: str, value: str) -> bool:  # noqa: D102 - forwards to the real function
        return self._real().is_valid_syntax(term, value)

    def parse(self, term: str, value: str):  # noqa: D102 - forwards to the real function
        return self._real().parse(term, value)


def defer_rfc3987_syntax() -> bool:
    """Register the lazy stand-in for ``rfc3987_syntax`` unless it is already imported or not installed.

    Returns:
        True when the stand-in was registered.
    """
    if _NAME in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec(_NAME)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.loader is None:
        return False
    sys.modules[_NAME] = _Deferred(spec)
    return True
