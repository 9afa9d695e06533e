"""Decode YAML files into msgspec structs with errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from .errors import ConfigFileError
from .protocol import split_validation_error

T = TypeVar("T")


def load_yaml_mapping(path: Path, data: bytes) -> dict[str, Any]:
    """Parse ``data`` (the bytes of ``path``) as a YAML mapping.

    Raises:
        ConfigFileError: malformed YAML, or a document that is not a mapping.
    """
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        summary = " ".join(str(exc).split())
        raise ConfigFileError(str(path), None, f"invalid YAML: {summary}") from exc
    if not isinstance(document, dict):
        raise ConfigFileError(str(path), None, "the file must hold a YAML mapping")
    return document


def convert_at(value: Any, struct_type: type[T], path: Path, *, prefix: str = "") -> T:
    """Convert parsed YAML into ``struct_type``; errors carry ``path`` and the dotted field.

    Raises:
        ConfigFileError: naming the file and the field (``models[1].temperature``).
    """
    try:
        return msgspec.convert(value, struct_type, strict=True)
    except msgspec.ValidationError as exc:
        field, problem = split_validation_error(str(exc))
        if prefix:
            field = f"{prefix}.{field}" if field else prefix
        raise ConfigFileError(str(path), field, problem) from exc


def decode_yaml(path: Path, data: bytes, struct_type: type[T]) -> T:
    """Parse and convert a whole YAML file into ``struct_type``."""
    return convert_at(load_yaml_mapping(path, data), struct_type, path)
