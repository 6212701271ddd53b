"""What request fields are made of, for the whole API: strict integers and text without control
characters. Every request schema builds its fields from these, so a rule holds everywhere at once.

- ``Integer``: a JSON integer and nothing else. ``true``, ``1.0``, ``"1"`` and ``"1_0"`` are
  refused (422 naming the field) instead of being read as 1 or 10.
- ``QueryDigits``: an integer in a query string, where everything is text: ``"10"`` is ten;
  ``"1_0"``, ``"1e1"``, ``"10.0"`` and ``" 10"`` are refused.
- ``SingleLine``: names, reasons and other one-line text reach email headers, PDFs and log lines;
  they may hold no line break and no other control character (C0, DEL, C1, U+2028, U+2029), and
  must have something besides spaces in them. ``SingleLineOrBlank`` allows an empty or blank one.
- ``MultiLine``: descriptions and postal addresses may break lines (LF, CR) and hold tabs, but no
  other control character, and must have something besides spaces in them; ``MultiLineOrBlank``
  may be empty.

Put length limits before the marker (``Annotated[str, Field(max_length=255), SingleLine]``) so the
OpenAPI document shows them as ``maxLength``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, GetCoreSchemaHandler, GetJsonSchemaHandler, Strict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

Integer = Annotated[int, Strict()]
"""A JSON integer, nothing else (no boolean, no float even 10.0, no string)."""

_DIGITS = re.compile(r"-?[0-9]+")


def _digits(value: object) -> object:
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise ValueError("must be written in digits, such as 20")
        return int(value)
    return value


QueryDigits = BeforeValidator(_digits)
"""For an integer query parameter: ``Annotated[int, Query(ge=1, le=100), QueryDigits]``."""


def _true_or_false(value: object) -> object:
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise ValueError("must be true or false")
        return value == "true"
    return value


QueryBoolean = BeforeValidator(_true_or_false)
"""For a boolean query parameter: ``true`` or ``false``, not ``yes``, ``on`` or ``1`` (which
FastAPI would take): ``Annotated[bool, Query(), QueryBoolean]``."""

CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
"""C0 controls (with TAB, LF and CR), DEL, C1 controls (with NEL), and the Unicode line and
paragraph separators: everything Python's str.splitlines and the email package break a line at."""

_LINE = rf"[^{CONTROL_CHARACTERS}]"
SINGLE_LINE_PATTERN = rf"^{_LINE}*[^\s{CONTROL_CHARACTERS}]{_LINE}*$"
ONE_LINE_PATTERN = rf"^{_LINE}*$"
_TEXT_CONTROLS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029"  # all but TAB, LF and CR
MULTI_LINE_PATTERN = rf"^[^{_TEXT_CONTROLS}]*[^\s{_TEXT_CONTROLS}][^{_TEXT_CONTROLS}]*$"
TEXT_PATTERN = rf"^[^{_TEXT_CONTROLS}]*$"


@dataclass(frozen=True)
class TextRule:
    """A rule on a text field: checked with a readable message, and shown in the OpenAPI
    document as the field's ``pattern`` so clients and fuzzers know it."""

    pattern: str
    message: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        compiled = re.compile(self.pattern)
        message = self.message

        def check(value: str) -> str:
            if not compiled.fullmatch(value):
                raise ValueError(message)
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = self.pattern
        return json_schema


SingleLine = TextRule(
    SINGLE_LINE_PATTERN,
    "must be one line of text with something besides spaces in it, without line breaks, tabs or other "
    "control characters",
)
SingleLineOrBlank = TextRule(ONE_LINE_PATTERN, "must be one line of text, without line breaks, tabs or other control characters")
MultiLine = TextRule(
    MULTI_LINE_PATTERN, "must have something besides spaces in it, and no control characters but line breaks and tabs"
)
MultiLineOrBlank = TextRule(TEXT_PATTERN, "may break lines and hold tabs, but no other control characters")
