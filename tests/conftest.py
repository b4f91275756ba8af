"""Test-wide setup: simulate an 8-device CPU mesh before any JAX backend is created."""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "")
import jax

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
if not SHARED.exists():  # CI checks out main elsewhere; allow an override
    SHARED = Path(os.environ.get("JAXRL_SHARED_DIR", "/work/shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (real data and reference fixtures; never copied into the repo)."""
    if not SHARED.exists():
        pytest.fail(f"shared data folder not found at {SHARED}; set JAXRL_SHARED_DIR")
    return SHARED
