"""Issue 14 point 5: importing gliofed defers rfc3987_syntax's grammar compilation, and IRI checks still work."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
import gliofed
import jsonschema  # what monai.bundle imports; its format checkers import rfc3987_syntax
print("lark" in sys.modules, type(sys.modules["rfc3987_syntax"]).__name__)
validator = jsonschema.Draft7Validator({"format": "iri"}, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
print(validator.is_valid("https://example.org/a?b#c"), validator.is_valid("http://[::1"), "lark" in sys.modules)
"""


def test_grammars_are_compiled_only_when_an_iri_is_validated():
    pytest.importorskip("rfc3987_syntax")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "_Deferred", "True", "False", "True"]
