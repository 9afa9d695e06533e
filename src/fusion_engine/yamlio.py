"""Decode YAML files into msgspec structs with errors that name the file and the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

import msgspec
import msgspec.yaml

from .errors import ConfigFileError

T = TypeVar("T")

_AT_PATH = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN_FIELD = re.compile(r"unknown field `(?P<name>[^`]+)`")
_MISSING_FIELD = re.compile(r"missing required field `(?P<name>[^`]+)`")


def decode_yaml(path: Path, data: bytes, struct_type: type[T]) -> T:
    """Decode ``data`` (the bytes of ``path``) into ``struct_type``.

    Raises:
        ConfigFileError: the YAML is malformed or does not fit the struct; the message carries
            the file path and the dotted field path (``models[1].temperature``).
    """
    try:
        return msgspec.yaml.decode(data, type=struct_type)
    except msgspec.ValidationError as exc:
        field, problem = split_validation_error(str(exc))
        raise ConfigFileError(str(path), field, problem) from exc
    except msgspec.DecodeError as exc:
        first_line = str(exc).strip().splitlines()
        raise ConfigFileError(str(path), None, "invalid YAML: " + " ".join(first_line)) from exc


def split_validation_error(message: str) -> tuple[str | None, str]:
    """Split msgspec's ``"Expected `int`, got `str` - at `$.a[0].b`"`` into field and problem."""
    match = _AT_PATH.match(message)
    problem = match.group("problem") if match else message
    path = (match.group("path") if match else None) or ""
    field = path.lstrip(".")
    for pattern in (_UNKNOWN_FIELD, _MISSING_FIELD):
        named = pattern.search(problem)
        if named:
            field = f"{field}.{named.group('name')}" if field else named.group("name")
    return (field or None), problem
