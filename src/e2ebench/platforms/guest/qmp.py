"""A minimal synchronous QMP client: JSON lines over QEMU's unix socket (standard library only).

Only what e2ebench needs: the capabilities handshake, ``execute`` (events are skipped), and a
timeout on every read.  (``qemu.qmp`` offers the same asynchronously; a synchronous client keeps
the platform code free of an event loop.)
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any, Callable


class QmpError(RuntimeError):
    pass


class QmpClient:
    def __init__(self, socket_path: Path, timeout_s: float = 10.0):
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._file = None
        self.greeting: dict = {}

    def connect(self, deadline_s: float = 30.0, alive: Callable[[], bool] | None = None) -> "QmpClient":
        """Connect once the socket accepts (QEMU creates it at start-up), then negotiate capabilities."""
        deadline = time.monotonic() + deadline_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise QmpError("QEMU exited before its QMP socket accepted a connection")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(str(self.socket_path))
            except OSError as exc:
                sock.close()
                last_error = exc
                time.sleep(0.02)
                continue
            self._sock = sock
            self._file = sock.makefile("rb")
            self.greeting = self._read()
            if "QMP" not in self.greeting:
                raise QmpError(f"unexpected QMP greeting: {self.greeting}")
            self.execute("qmp_capabilities")
            return self
        raise QmpError(f"no QMP socket at {self.socket_path} after {deadline_s:.0f} s: {last_error}")

    def _read(self) -> dict:
        assert self._file is not None
        line = self._file.readline()
        if not line:
            raise QmpError("QMP connection closed")
        return json.loads(line)

    def execute(self, command: str, arguments: dict | None = None) -> Any:
        if self._sock is None:
            raise QmpError("not connected")
        message: dict = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise QmpError(f"{command}: {reply['error'].get('class')}: {reply['error'].get('desc')}")
            return reply.get("return")

    def close(self) -> None:
        for closable in (self._file, self._sock):
            try:
                if closable is not None:
                    closable.close()
            except OSError:
                pass
        self._file = self._sock = None

    def __enter__(self) -> "QmpClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
