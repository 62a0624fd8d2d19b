"""The JSON Schema contract, generated from ExitEvent (never written by hand)."""

from __future__ import annotations

from typing import Any

from procmon.event import SCHEMA_ID, ExitEvent

SCHEMA_FILE = "exit-event.v1.json"


def exit_event_schema() -> dict[str, Any]:
    schema = ExitEvent.model_json_schema(by_alias=True, mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **{k: v for k, v in schema.items() if k != "$id"},
    }
