"""Shared fixtures: seeded simulations, the shared reference data and a socket guard."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

#: Environment variable naming the shared reference-data folder.
DATA_ENV = "GAIA_DISTANCES_TEST_DATA"
_DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV, _DEFAULT_DATA))


def shared_file(name: str) -> Path:
    """Path of a shared reference file, skipping the test when it is absent."""
    path = shared_data_dir() / name
    if not path.exists():
        pytest.skip(f"reference file {name} not found in {path.parent}; set ${DATA_ENV} to the shared data folder")
    return path


@pytest.fixture(scope="session")
def data_file():
    return shared_file


@pytest.fixture(autouse=True)
def _socket_guard(request, monkeypatch):
    """Fail any test not marked ``network`` that connects beyond loopback."""
    if request.node.get_closest_marker("network"):
        yield
        return
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (
            host.startswith("127.") or host in ("localhost", "::1") or self.family == socket.AF_UNIX
        ):
            raise RuntimeError(f"test tried to reach {address}; mark it 'network' or use a 127.0.0.1 server")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield


@pytest.fixture(scope="session")
def sim_field():
    """A seeded simulated field with a cluster, 2p solutions and a magnitude limit."""
    import gaia_distances as gd

    return gd.simulate_field(3000, n_cluster=300, frac_2p=0.02, magnitude_limit=20.7, seed=11)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _bj_prior_env(monkeypatch):
    """Point the Bailer-Jones prior at the shared copy when it exists (never download)."""
    path = shared_data_dir() / "bj2021_prior_summary.csv"
    if path.exists() and "GAIA_DISTANCES_BJ2021_PRIOR" not in os.environ:
        monkeypatch.setenv("GAIA_DISTANCES_BJ2021_PRIOR", str(path))
    yield


def x64():
    """Context manager enabling JAX float64 (works across JAX versions)."""
    import jax

    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:  # pragma: no cover - older JAX
        from jax.experimental import enable_x64 as ctx
    return ctx(True)
