"""The configuration as people read it, generated from the model in procmon.config: the
reference (docs/config.md: key, type, default, environment variable, what it does) and the
effective configuration as TOML (`procmon agent --print-config`), secrets masked."""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from procmon.config import AgentConfig

ENV_PREFIX = "PROCMON_"
MASK = "********"
# Keys holding a secret itself (a path to one is not a secret: it says where, not what).
_SECRET_KEY = re.compile(r"password|passwd|token|secret", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"^(?P<head>[a-z][a-z0-9+.-]*://[^/@:]*:)(?P<password>[^/@]*)@")
# Defaults too long for a table cell (the built-in redaction patterns) are named, not shown.
_LONG_DEFAULT = 120


def _sections(model: type[BaseModel]) -> Iterator[tuple[str, type[BaseModel]]]:
    """The model's nested sections, as (TOML table name, model); the top level is ""."""
    yield "", model
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield name, info.annotation


def _keys(model: type[BaseModel]) -> Iterator[tuple[str, str, FieldInfo]]:
    """(table, key, field) for every leaf key, in the model's order."""
    for table, section in _sections(model):
        for name, info in section.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                continue
            yield table, name, info


def env_name(table: str, key: str) -> str:
    return ENV_PREFIX + (f"{table}__{key}" if table else key).upper()


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        return " | ".join(_type_text(a) for a in present) + " (optional)"
    if origin is tuple:
        return f"list of {_type_text(args[0])}"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(info: FieldInfo) -> str:
    low = high = None
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"≥ {item.ge}"
        elif isinstance(item, annotated_types.Gt):
            low = f"> {item.gt}"
        elif isinstance(item, annotated_types.Le):
            high = f"≤ {item.le}"
        elif isinstance(item, annotated_types.Lt):
            high = f"< {item.lt}"
    return ", ".join(b for b in (low, high) if b)


def _default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "the hostname"
    value = info.default
    if value is None:
        return "unset"
    text = toml_value(value)
    if len(text) > _LONG_DEFAULT:
        return _default_text_of(value)
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_reference() -> str:
    """docs/config.md: one table per TOML table, every key of the model."""
    lines = [
        "# procmon agent configuration reference",
        "",
        "<!-- Generated from agent/procmon/config.py by `make config-doc`"
        " (procmon schema --config-reference); do not edit. -->",
        "",
        "`procmon agent` reads `/etc/procmon/agent.toml` (or `--config PATH`), then `PROCMON_*`",
        "environment variables (nested keys joined with `__`), then its flags (`--broker`,",
        "`--host-id`, `--log-level`); later sources win. Lists in the environment are JSON",
        "(`PROCMON_ENRICH__REDACT_EXTRA='[\"token=\\\\S+\"]'`). An unknown key or a bad",
        "value stops the start with one line naming it. `procmon agent --print-config` prints",
        "the result as TOML, secrets masked; `procmon agent --check-config` validates and",
        "exits. A commented example: [agent.sample.toml](agent.sample.toml).",
        "",
    ]
    current = None
    for table, key, info in _keys(AgentConfig):
        if table != current:
            current = table
            section = AgentConfig.model_fields[table].annotation if table else AgentConfig
            assert isinstance(section, type)
            doc = (section.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
            lines += ["", f"## `[{table}]`" if table else "## Top level", ""]
            if table:
                lines += [doc, ""]
            lines += [
                "| key | type | default | environment | what it does |",
                "|---|---|---|---|---|",
            ]
        bounds = _bounds(info)
        kind = _type_text(info.annotation) + (f", {bounds}" if bounds else "")
        name = f"{table}.{key}" if table else key
        lines.append(
            f"| `{name}` | {_cell(kind)} | {_cell(_default_text(info))} | "
            f"`{env_name(table, key)}` | {_cell(info.description or '')} |"
        )
    return "\n".join(lines) + "\n"


def missing_descriptions() -> list[str]:
    return [
        f"{table}.{key}" if table else key
        for table, key, info in _keys(AgentConfig)
        if not info.description
    ]


# --- the effective configuration -------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # JSON's escapes are TOML's, but for DEL, which TOML wants escaped too.
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def mask_secrets(key: str, value: Any) -> Any:
    """A secret's value as MASK; a URL keeps everything but its password."""
    if isinstance(value, list | tuple):
        return [mask_secrets(key, v) for v in value]
    if not isinstance(value, str):
        return value
    if _SECRET_KEY.search(key) and not key.endswith(("_file", "_path", "_dir")):
        return MASK
    return _URL_PASSWORD.sub(lambda m: m["head"] + MASK + "@", value)


def _table_lines(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            continue
        text = None if value is None else toml_value(mask_secrets(key, value))
        if text is None:
            lines.append(f"# {key}: unset")
        elif len(text) > _LONG_DEFAULT and value == defaults.get(key):
            lines.append(f"# {key}: the default, {_default_text_of(value)}")
        else:
            lines.append(f"{key} = {text}")
    return lines


def _default_text_of(value: Any) -> str:
    n = len(value)
    return f"{n} built-in pattern{'s' if n != 1 else ''} (`procmon.enrich.redact`)"


def effective_toml(cfg: AgentConfig) -> str:
    """The configuration the agent would run with, as TOML it reads back (unset keys are
    comments: TOML has no null)."""
    data = cfg.model_dump(mode="json")
    defaults = AgentConfig.model_construct().model_dump(mode="json")
    out = ["# procmon agent: effective configuration (file, environment, flags)", ""]
    out += _table_lines(data, defaults)
    for table, values in data.items():
        if isinstance(values, dict):
            out += ["", f"[{table}]", *_table_lines(values, defaults[table])]
    return "\n".join(out) + "\n"
