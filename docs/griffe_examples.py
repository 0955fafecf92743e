"""Griffe extension for the API pages: a docstring's ``Example:`` section is read as ``Examples:``.

The docstrings follow Google style, where both spellings are common; griffe knows only the plural
and would render the singular as prose (its doctests then read as Markdown links).
"""
from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
