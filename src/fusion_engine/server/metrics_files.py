"""prometheus-client's multiprocess files, made to fail with an error instead of SIGBUS.

In multiprocess mode every worker keeps its values in files of ``PROMETHEUS_MULTIPROC_DIR``,
each an ``MmapedDict`` (prometheus_client/mmap_dict.py): the file is created and grown with
``truncate`` (64 KiB, then doubling when a new label set does not fit, in ``_init_value``) and
written through ``mmap``. ``truncate`` only makes a sparse file; the filesystem finds room for a
page when it is first written, through the mapping, and when it has none the kernel's only way
to say so is SIGBUS. A full metrics directory therefore killed every worker at its first metric,
and gunicorn respawned them into the same death (~800 times in the red team's run).

``ReservedMmapedDict`` reserves the blocks first with ``os.posix_fallocate``, which reports a
full filesystem as ``OSError`` (ENOSPC; EFBIG past RLIMIT_FSIZE) before anything is mapped.
Then metrics degrade instead of the worker: the values already in the file keep being written
(their blocks exist), a label set that no longer fits is kept in the worker only (never
published), and the failure is logged once per file and counted. Serving is never affected,
and writing a value costs what it did (only adding a label set goes through this class).

prometheus-client builds these dicts itself (``prometheus_client.values`` names the class), so
``install`` points it at this one; it must run before the first metric of a process exists.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from typing import Any

import prometheus_client.values
import structlog
from prometheus_client.mmap_dict import MmapedDict

log = structlog.get_logger("fusion_engine.metrics")

#: prometheus-client's first size of a file (``mmap_dict._INITIAL_MMAP_SIZE``).
INITIAL_SIZE = 1 << 16
#: The scratch slot: one value and its timestamp.
SCRATCH_SIZE = 16
#: Told about each failure to reserve room (the ``Metrics`` counter of write errors).
FailureHook = Callable[[OSError], None]


def _ignore(error: OSError) -> None:
    return None


class ReservedMmapedDict(MmapedDict):
    """``MmapedDict`` whose file blocks are reserved before they are mapped (see the module).

    Only adding a label set (``_init_value``) is changed, so writing a value costs what it
    did. A label set with no room gets the scratch slot: the last 16 bytes of the mapping,
    kept out of the used part that the collector reads, zeroed for each newcomer (so a new
    series starts at 0, as prometheus-client expects) and shared by every such set, whose
    true values live in their ``MmapedValue`` in this process.
    """

    #: Set by ``install``: where failures are counted.
    on_failure: FailureHook = staticmethod(_ignore)

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        #: No more room: new label sets get the scratch slot.
        self._full = False
        if read_mode:
            super().__init__(filename, read_mode=True)  # type: ignore[no-untyped-call]
            return
        try:
            _reserve_new(filename)
            super().__init__(filename)  # type: ignore[no-untyped-call]
        except OSError as error:
            # Not even the first 64 KiB: nothing of this file is published. The empty file
            # must go, or the collector would fail to read it; an anonymous mapping of one
            # page holds the header and the scratch slot.
            _remove_if_empty(filename)
            self._f = None  # type: ignore[assignment]  # close() skips a dict without a file
            self._fname = filename
            self._capacity = mmap.PAGESIZE
            self._m = mmap.mmap(-1, self._capacity)
            self._positions: dict[str, int] = {}
            self._used = 8
            self._went_full(error)

    def _init_value(self, key: str) -> None:
        """Add ``key``: in the file when there is (or can be reserved) room, else scratch."""
        if not self._full and self._make_room(_entry_size(key)):
            super()._init_value(key)  # type: ignore[no-untyped-call]
            return
        scratch = self._capacity - SCRATCH_SIZE
        self._m[scratch : scratch + SCRATCH_SIZE] = bytes(SCRATCH_SIZE)
        self._positions[key] = scratch

    def _make_room(self, entry_size: int) -> bool:
        """Whether an entry fits, growing the file into reserved blocks when it must."""
        needed = self._used + entry_size + SCRATCH_SIZE
        capacity = self._capacity
        while needed > capacity:
            capacity *= 2
        if capacity == self._capacity:
            return True
        try:
            os.posix_fallocate(self._f.fileno(), 0, capacity)
        except OSError as error:
            self._went_full(error)
            return False
        # What prometheus-client's own growth does, after the blocks exist (so its truncate
        # is never reached).
        self._capacity = capacity
        self._m = mmap.mmap(self._f.fileno(), capacity)
        return True

    def _went_full(self, error: OSError) -> None:
        self._full = True
        log.warning(
            "metrics_file_full",
            file=os.path.basename(self._fname),
            error=error.strerror or str(error),
            effect="new label sets of this worker are no longer published",
        )
        self.on_failure(error)


def install(on_failure: FailureHook) -> None:
    """Make prometheus-client use ``ReservedMmapedDict`` in this process (idempotent).

    Args:
        on_failure: told about each file that ran out of room (e.g. to count it).
    """
    ReservedMmapedDict.on_failure = staticmethod(on_failure)
    values: Any = prometheus_client.values
    values.MmapedDict = ReservedMmapedDict


def _reserve_new(filename: str) -> None:
    """Create ``filename`` with its first ``INITIAL_SIZE`` bytes allocated, unless it has some."""
    fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            os.posix_fallocate(fd, 0, INITIAL_SIZE)
    finally:
        os.close(fd)


def _remove_if_empty(filename: str) -> None:
    try:
        if os.path.getsize(filename) == 0:
            os.unlink(filename)
    except OSError:
        pass


def _entry_size(key: str) -> int:
    """Bytes ``MmapedDict._init_value`` adds for ``key`` (length, padded key, two doubles)."""
    encoded = len(key.encode("utf-8"))
    padded = encoded + (8 - (encoded + 4) % 8)
    return struct.calcsize(f"i{padded}sdd")
