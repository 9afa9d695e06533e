"""The prometheus multiprocess directory of one ``fusion serve``: made fresh, removed on exit.

Several workers need one (each writes its own files and /metrics sums them). It is always a new
directory — inside ``PROMETHEUS_MULTIPROC_DIR`` when that is set (a Kubernetes ``emptyDir``, a
tmpfs), else in the system temp dir — so two servers given the same directory never sum, or
wipe, each other's files. Its name carries the pid of the process that made it, which gunicorn's
master keeps (``fusion serve`` execs it), so the master's ``on_exit`` removes exactly its own and
never a directory an operator made.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "fusion-metrics-"


def with_private_metrics_dir(environ: Mapping[str, str], *, workers: int) -> dict[str, str]:
    """The environment for the workers, with a multiprocess directory of this server's own.

    Raises:
        ConfigError: the directory cannot be made (named with the variable).
    """
    env = dict(environ)
    parent = env.get(VARIABLE) or None
    if workers <= 1 and parent is None:
        return env  # one process: prometheus-client's in-memory values suffice
    try:
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        # mkdtemp needs no file blocks, so this works on a full filesystem too (metrics then
        # degrade, see metrics_files); the name alone marks the owner.
        env[VARIABLE] = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)
    except OSError as error:
        raise ConfigError(
            f"{VARIABLE}: cannot make a metrics directory in {parent or tempfile.gettempdir()}: "
            f"{error.strerror or error}"
        ) from error
    return env


def remove_private_metrics_dir(environ: Mapping[str, str]) -> None:
    """Remove the directory ``with_private_metrics_dir`` made, if this process made it."""
    directory = environ.get(VARIABLE)
    if directory and Path(directory).name.startswith(f"{PREFIX}{os.getpid()}-"):
        shutil.rmtree(directory, ignore_errors=True)
