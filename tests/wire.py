"""One compiled JSON Schema validator of the /ws messages, shared by the tests.

``jsonschema.validate`` checks the schema itself on every call (about 0.2 s here); a validator
built once validates each event in microseconds.
"""

from __future__ import annotations

from typing import Any

from jsonschema.validators import validator_for

from orchestrator.messages import message_json_schema

_SCHEMA = message_json_schema()
_VALIDATOR = validator_for(_SCHEMA)(_SCHEMA)
_VALIDATOR.check_schema(_SCHEMA)


def validate_wire(event: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``event`` is a valid /ws message."""
    _VALIDATOR.validate(event)


def wire_error(event: dict[str, Any]) -> str | None:
    """Why ``event`` is not a valid /ws message (the first reason), or None when it is."""
    error = next(iter(_VALIDATOR.iter_errors(event)), None)
    return None if error is None else error.message
