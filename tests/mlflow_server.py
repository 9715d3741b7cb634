"""A real MLflow tracking server on 127.0.0.1 for tests: started, stopped and restarted on the same port and store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` with a SQLite store in ``folder``; ``stop`` and ``start`` again keep its data and port."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.uri = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> MlflowServer:
        cmd = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.folder / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            self.uri.rsplit(":", 1)[1],
            "--workers",
            "1",
        ]
        log = open(self.folder / "mlflow-server.log", "a")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.uri + "/health", timeout=2).read()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"mlflow server did not start: {(self.folder / 'mlflow-server.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server and its workers (the session it leads)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a graceful shutdown can take long; its in-flight data are thrown away
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass
        self.process = None
