"""The prometheus multiprocess directory: private to one server, removed on exit, and a full
filesystem under it degrades metrics, never serving (it used to SIGBUS every worker in a loop).

The full filesystem is a real one: a tmpfs of a few KiB mounted for the test (needs root;
skipped otherwise, and a failure under CI=true)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from fusion_engine.server.metrics_dir import remove_private_metrics_dir, with_private_metrics_dir
from fusion_engine.server.metrics_files import ReservedMmapedDict

from .helpers import FakeInThread, GatewayProcess, gateway_env

KEY = "metrics-key"
CHAT = {"model": "vendor/plain", "messages": [{"role": "user", "content": "hi"}]}


def worker_pids(gateway: GatewayProcess) -> set[int]:
    """The gunicorn master's children."""
    master = gateway.process.pid
    return {int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()}


@pytest.fixture
def full_filesystem(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs of 256 KiB mounted for the test, filled up but for ``request.param`` KiB."""
    mountpoint = tmp_path / "full"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here: {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        free_kib: int = request.param
        with open(mountpoint / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass  # full
        if free_kib:
            os.truncate(
                mountpoint / "filler", os.path.getsize(mountpoint / "filler") - free_kib * 1024
            )
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.mark.parametrize("full_filesystem", [0, 80], indirect=True, ids=["0KiB-free", "80KiB-free"])
def test_a_full_metrics_filesystem_degrades_metrics_not_serving(
    upstream: FakeInThread, full_filesystem: Path
) -> None:
    """Two workers whose metrics directory is on a full filesystem serve every completion with
    200, none of them dies (same pids before and after), and /metrics still answers."""
    upstream.fake.reset()
    gateway = GatewayProcess(
        gateway_env(upstream.fake, KEY, PROMETHEUS_MULTIPROC_DIR=str(full_filesystem)), workers=2
    )
    try:
        before = worker_pids(gateway)
        assert len(before) == 2
        served_by: set[int] = set()
        for attempt in range(30):
            with httpx.Client(
                base_url=gateway.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
            ) as http:
                served_by.add(http.get("/health").json()["pid"])
                reply = http.post("/v1/chat/completions", json=CHAT)
                assert reply.status_code == 200, (attempt, reply.text)
                metrics = http.get("/metrics")
                assert metrics.status_code == 200
                # Counted where it can be read (found in review: the counter lived in the
                # very files that were full, so it was never published).
                errors = [
                    float(line.rsplit(" ", 1)[1])
                    for line in metrics.text.splitlines()
                    if line.startswith("fusion_metrics_file_errors_total ")
                ]
                assert errors and errors[0] >= 1, metrics.text[-2000:]
        assert worker_pids(gateway) == before
        assert served_by <= before
        output = gateway.output()
        assert "SIGBUS" not in output and "WORKER TIMEOUT" not in output
        assert "metrics_file_full" in output  # the degradation is logged
    finally:
        gateway.stop()


def requests_counted(gateway: GatewayProcess) -> float:
    text = httpx.get(f"{gateway.base_url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fusion_requests_total{") and 'route="/health"' in line
    )


def test_each_server_has_a_private_metrics_dir_removed_on_exit(
    upstream: FakeInThread, tmp_path: Path
) -> None:
    """Two servers given the same PROMETHEUS_MULTIPROC_DIR each count only their own requests
    (starting the second does not wipe the first's files), and each leaves nothing behind."""
    env = gateway_env(upstream.fake, KEY, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    first = GatewayProcess(env, workers=2)
    second: GatewayProcess | None = None
    try:
        for _ in range(5):
            httpx.get(f"{first.base_url}/health", timeout=10)
        counted = requests_counted(first)
        assert counted >= 5
        second = GatewayProcess(env, workers=2)
        httpx.get(f"{second.base_url}/health", timeout=10)
        assert requests_counted(first) == counted
        assert 1 <= requests_counted(second) < counted
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("full_filesystem", [0], indirect=True, ids=["0KiB-free"])
def test_a_file_that_cannot_be_made_is_not_left_behind(full_filesystem: Path) -> None:
    """No room for a new file: values are kept in the process only, the failure is reported,
    and no empty file is left for the collector to choke on."""
    failures: list[OSError] = []
    ReservedMmapedDict.on_failure = staticmethod(failures.append)
    try:
        values = ReservedMmapedDict(str(full_filesystem / "counter_1.db"))
        values.write_value("a", 1.0, 0.0)
        assert values.read_value("b") == (0.0, 0.0)  # a new series still starts at 0
        values.close()
    finally:
        ReservedMmapedDict.on_failure = staticmethod(lambda error: None)
    assert [error.errno for error in failures] == [errno.ENOSPC]
    assert not (full_filesystem / "counter_1.db").exists()


@pytest.mark.parametrize("full_filesystem", [72], indirect=True, ids=["72KiB-free"])
def test_a_file_that_cannot_grow_keeps_its_series_and_drops_new_ones(
    full_filesystem: Path,
) -> None:
    """Room for the first 64 KiB only: once a new label set does not fit, the series already
    in the file keep being written and read back by the collector; the new one is dropped."""
    failures: list[OSError] = []
    ReservedMmapedDict.on_failure = staticmethod(failures.append)
    path = str(full_filesystem / "counter_1.db")
    try:
        values = ReservedMmapedDict(path)
        key = 0
        while not failures:  # fill the 64 KiB with series until one no longer fits
            values.write_value(f"series-{key}-" + "x" * 200, float(key), 0.0)
            key += 1
        values.write_value("series-0-" + "x" * 200, 42.0, 0.0)
        values.close()
    finally:
        ReservedMmapedDict.on_failure = staticmethod(lambda error: None)
    stored = {name: value for name, value, _, _ in MmapedDict.read_all_values_from_file(path)}
    assert len(stored) == key - 1  # the last one had no room
    assert stored["series-0-" + "x" * 200] == 42.0
    assert [error.errno for error in failures] == [errno.ENOSPC]


def test_the_private_dir_is_made_inside_the_named_one_and_only_its_maker_removes_it(
    tmp_path: Path,
) -> None:
    """PROMETHEUS_MULTIPROC_DIR is a parent: each server gets a fresh directory in it, and
    removing takes only a directory this process made."""
    env = with_private_metrics_dir({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}, workers=1)
    private = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    assert private.parent == tmp_path and private.is_dir()
    other = tmp_path / "fusion-metrics-1-operator"
    other.mkdir()
    remove_private_metrics_dir({"PROMETHEUS_MULTIPROC_DIR": str(other)})
    remove_private_metrics_dir(env)
    assert list(tmp_path.iterdir()) == [other]
    assert with_private_metrics_dir({}, workers=1) == {}
