"""Every eval call cached on disk, so a re-run or an interrupted run never pays twice.

The key is (system, model, item id, prompt hash): change the prompt and the call is made again.
One small JSON file per answer, written atomically; failed calls are not cached (a re-run
retries them).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import msgspec

from .systems import Answer

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Answer).decode


class CallCache:
    """Answers on disk under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def key(system: str, model: str, item_id: str, prompt: str) -> str:
        """The cache key of one call."""
        prompt_hash = hashlib.sha256(prompt.encode()).hexdigest()
        material = "\0".join((system, model, item_id, prompt_hash))
        return hashlib.sha256(material.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Answer | None:
        """The cached answer, or None (absent or unreadable)."""
        path = self._path(key)
        try:
            return _decode(path.read_bytes())
        except (OSError, msgspec.DecodeError):
            return None

    def put(self, key: str, answer: Answer) -> None:
        """Store a successful answer (atomically: a crash never leaves half a file)."""
        if answer.error is not None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            stream.write(_encode(answer))
        os.replace(temporary, path)
