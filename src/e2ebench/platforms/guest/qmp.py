"""QMP (the QEMU Monitor Protocol) for the VM platforms: a small adapter over ``qemu.qmp``'s synchronous client.

``qemu.qmp.legacy.QEMUMonitorProtocol`` does the protocol (greeting, capabilities negotiation, command ids,
events, error replies) and runs its own event loop per thread, so the platform code stays synchronous.  This
module adds only what e2ebench's life cycle needs around it: connecting while QEMU is still creating its socket
(giving up early when QEMU has exited), a timeout on every command, one exception type (:class:`QmpError`) for
every failure, and a ``close()`` that never raises (QEMU closes the connection itself after ``quit``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

from qemu.qmp import ConnectError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

# what qemu.qmp raises besides its own errors when the peer goes away or a command times out
_TRANSPORT_ERRORS = (QMPError, EOFError, OSError, asyncio.TimeoutError, TimeoutError)


class QmpError(RuntimeError):
    pass


class QmpClient:
    def __init__(self, socket_path: Path, timeout_s: float = 10.0):
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self._client: QEMUMonitorProtocol | None = None
        self.greeting: dict = {}

    def connect(self, deadline_s: float = 30.0, alive: Callable[[], bool] | None = None) -> "QmpClient":
        """Connect once the socket accepts (QEMU creates it at start-up), then negotiate capabilities."""
        deadline = time.monotonic() + deadline_s
        client = QEMUMonitorProtocol(str(self.socket_path))
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise QmpError("QEMU exited before its QMP socket accepted a connection")
            try:
                greeting = client.connect(negotiate=True)
            except (ConnectError, OSError) as exc:      # no socket yet, or refused: QEMU is still starting
                last_error = exc
                time.sleep(0.02)
                continue
            except _TRANSPORT_ERRORS as exc:
                raise QmpError(f"QMP handshake failed: {type(exc).__name__}: {exc}") from None
            client.settimeout(self.timeout_s)
            self._client = client
            self.greeting = dict(greeting or {})
            if "QMP" not in self.greeting:
                raise QmpError(f"unexpected QMP greeting: {self.greeting}")
            return self
        raise QmpError(f"no QMP socket at {self.socket_path} after {deadline_s:.0f} s: {last_error}")

    def execute(self, command: str, arguments: dict | None = None) -> Any:
        """Run one command and return its ``return`` value; QmpError for an error reply, a timeout or a lost connection."""
        if self._client is None:
            raise QmpError("not connected")
        message: dict = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        # cmd_obj (the raw reply) means the same in every qemu.qmp release; cmd() changed meaning in 0.0.4
        try:
            reply = self._client.cmd_obj(message)
        except _TRANSPORT_ERRORS as exc:
            raise QmpError(f"{command}: {type(exc).__name__}: {exc}") from None
        if "error" in reply:
            error = reply["error"] or {}
            raise QmpError(f"{command}: {error.get('class')}: {error.get('desc')}")
        return reply.get("return")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.close()
        except _TRANSPORT_ERRORS:
            pass          # QEMU already closed its end (after quit, or it died): nothing left to release

    def __enter__(self) -> "QmpClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
