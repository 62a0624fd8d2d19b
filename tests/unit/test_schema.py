"""The checked-in schema is generated from the model, and events validate against it."""

from __future__ import annotations

import json

import jsonschema

from helpers.common import REPO
from procmon.event import EventBuilder
from procmon.probe.record import FLAG_GROUP_DEAD, RawExit
from procmon.schema import SCHEMA_FILE, exit_event_schema


def test_checked_in_schema_matches_model() -> None:
    checked_in = json.loads((REPO / "schemas" / SCHEMA_FILE).read_text())
    assert checked_in == exit_event_schema(), "run `make schema` and commit the result"


def test_event_json_validates_against_schema() -> None:
    rec = RawExit(1, 0, 2, 3, 5, 10, 1, 7, 7, 1, 0, 0, 9, 1, 7, FLAG_GROUP_DEAD, b'\xffx\n"')
    event = EventBuilder("h", "core", boot_id="0" * 8 + "-0000-0000-0000-" + "0" * 12).build(rec)
    instance = json.loads(event.model_dump_json())
    jsonschema.Draft202012Validator(exit_event_schema()).validate(instance)
    assert instance["schema"] == "procmon.exit/v1"
    assert instance["signal"] == {"number": 9, "name": "SIGKILL"}
