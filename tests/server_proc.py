"""The env server in a subprocess on 127.0.0.1 with the fake backend, for fault tests."""

from __future__ import annotations

from pathlib import Path

from fake_backend import PATH

from env_server.loadgen import REPO, ServerProcess

__all__ = ["REPO", "ServerProc"]


class ServerProc(ServerProcess):
    """``ServerProcess`` defaulting to the fake backend; ``start`` again after ``kill`` reuses the port."""

    def __init__(self, *extra: str, backend: str = "fake", workers: int = 1, port: int = 0):
        super().__init__(*extra, backend=backend, workers=workers, port=port)

    def command(self, port_file: Path) -> list[str]:
        cmd = super().command(port_file)
        return [*cmd, "--backend_module", PATH] if self.backend == "fake" else cmd
