"""Talks to the per-display helper (``agent.py``) over pipes, with a deadline on every call."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

from env_server.x11.session import SYSTEM_PYTHON, XSession

AGENT_SOURCE = Path(__file__).with_name("agent.py")


class AgentError(RuntimeError):
    """The helper answered with an error (the message is meant for the agent/user)."""


class AgentDied(RuntimeError):
    """The helper did not answer in time or exited; the backend restarts it."""


class AgentClient:
    def __init__(self, session: XSession, timeout_s: float = 10.0):
        self.timeout_s = timeout_s
        # copied into the session directory: the desktop user may not be able to read the project tree
        script = session.dir / "agent.py"
        shutil.copyfile(AGENT_SOURCE, script)
        script.chmod(0o644)
        self.proc = session.spawn([SYSTEM_PYTHON, "-X", "utf8", str(script)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, log_name="agent")
        self._buf = b""
        self.info = self.call("ping")

    def call(self, op: str, timeout_s: float | None = None, **kwargs) -> dict:
        if self.proc.poll() is not None:
            raise AgentDied(f"the X11 helper exited with code {self.proc.returncode}")
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise AgentDied(f"the X11 helper is gone: {err}") from err
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        line = self._read_line(deadline, op)
        reply = json.loads(line)
        if not reply.pop("ok", False):
            raise AgentError(reply.get("error", "unknown helper error"))
        return reply

    def _read_line(self, deadline: float, op: str) -> bytes:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AgentDied(f"the X11 helper did not answer {op!r} in time")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise AgentDied("the X11 helper closed its output")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=2)
