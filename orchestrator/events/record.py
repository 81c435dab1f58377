"""One released event: its envelope and its one JSON text, with the typed message read from that text on demand.

The EventHub makes one ``EventRecord`` per released event and encodes it once: ``text`` is what
``events.jsonl``, the job store and every ``/ws`` frame carry, byte for byte. Readers take the
envelope from the record's fields and everything else from ``message``, the pydantic model of the
wire contract (``orchestrator.messages``), parsed from ``text`` the first time it is asked for in a
process and kept. A record crosses Ray as its five fields only (``__reduce__``): the parsed
model never travels.

``read_payload`` is the hub's side of a publish: what a producer sent (its message's JSON text
without the envelope, as ``events.publish`` sends it; a model; or a dict) as the validated
message and its text; ``stamped`` adds the envelope to both without encoding the message again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from orchestrator.messages import ENVELOPE_FIELDS, MESSAGE_ADAPTER, Message, without_envelope

__all__ = ["EventRecord", "InvalidEvent", "Payload", "parse_event", "read_payload", "stamped", "body_json"]

# What a producer publishes: its message's JSON text without the envelope (``body_json``), a
# message model, or a dict of one (the hub validates each against the wire contract).
Payload = str | BaseModel | Mapping[str, Any]

_ENVELOPE = set(ENVELOPE_FIELDS)  # a set: what pydantic's ``exclude`` takes


class InvalidEvent(ValueError):
    """A published payload that is not a message of the wire contract."""


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A released event: ``seq``, ``run_id``, ``type``, ``ts`` and its one JSON ``text`` (the
    envelope included). ``message`` is the typed model of ``text``. Immutable; equal when the
    five fields are."""

    seq: int
    run_id: str
    type: str
    ts: float
    text: str
    _parsed: Message | None = field(default=None, compare=False, repr=False)

    @property
    def message(self) -> Message:
        """The message as its pydantic model (parsed once per process, on first use)."""
        parsed = self._parsed
        if parsed is None:
            parsed = parse_event(self.text)
            object.__setattr__(self, "_parsed", parsed)
        return parsed

    def __reduce__(self) -> tuple[Callable[..., EventRecord], tuple[int, str, str, float, str]]:
        # five plain values across Ray or pickle; the receiver parses ``text`` if it reads fields
        return (EventRecord, (self.seq, self.run_id, self.type, self.ts, self.text))


def parse_event(text: str | bytes) -> Message:
    """A message's JSON text as its model (``pydantic.ValidationError`` if it is not one)."""
    return cast(Message, MESSAGE_ADAPTER.validate_json(text))


def body_json(message: BaseModel) -> str:
    """A message's JSON text without the envelope: what a producer sends (NaN and Infinity
    become null, as pydantic writes them)."""
    return message.model_dump_json(exclude=_ENVELOPE)


def read_payload(payload: Payload) -> tuple[Message, str]:
    """What a producer published as a message model of the hub's own (never the caller's
    object) and its JSON text without the envelope; ``InvalidEvent`` if it is no message."""
    try:
        if isinstance(payload, str):
            message = parse_event(payload)
            if _has_envelope(message) or not payload.startswith("{"):
                return message, body_json(message)
            return message, payload
        if isinstance(payload, Mapping):
            payload = cast(BaseModel, MESSAGE_ADAPTER.validate_python(without_envelope(dict(payload))))
        if not isinstance(payload, BaseModel):
            raise InvalidEvent(
                f"a payload must be JSON text, a message or a dict, got {type(payload).__name__}"
            )
        body = body_json(payload)
        # read back from its text, so the model says what the text says (NaN there is null here)
        return parse_event(body), body
    except ValidationError as err:
        raise InvalidEvent(_first_error(err)) from None


def stamped(message: Message, body: str, run_id: str, seq: int, ts: float) -> EventRecord:
    """The released record of ``message`` (the hub's own model, given its envelope here) and its
    ``body`` text: the envelope goes in front of the body, which is not encoded again."""
    message.run_id, message.seq, message.ts = run_id, seq, ts
    text = f'{{"run_id":{json.dumps(run_id, ensure_ascii=False)},"seq":{seq},"ts":{ts!r},{body[1:]}'
    return EventRecord(seq, run_id, message.type, ts, text, message)


def _has_envelope(message: Message) -> bool:
    return message.run_id is not None or message.seq is not None or message.ts is not None


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "message"
    return f"{where}: {first.get('msg', 'invalid')} ({err.error_count()} error(s))"
