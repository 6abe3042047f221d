"""Shared fixtures: seeded simulations, the shared reference data and a socket guard.

Float64 references and test helpers live in ``test_utils.py``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from test_utils import x64

__all__ = ["DATA_ENV", "shared_data_dir", "shared_file", "x64"]  # x64 lives in test_utils; kept here for old imports


def pytest_configure(config):
    """The tests use the package's persistent compilation cache as a user's session would.

    Its first fit turns it on (:mod:`gaia_distances.compile_cache`: the
    platform's user cache folder, or ``$GAIA_DISTANCES_JAX_CACHE``; empty to
    turn it off), so the ``pytest-xdist`` workers and later runs load the
    programs that another has compiled. Keys include the JAX version, the
    machine and the program, so a stale entry is never used.
    """


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


# --------------------------------------------------------------------------- shared cluster fits (one MCMC run each)


def _quiet_call(fn, *args, **kwargs):
    import warnings

    import gaia_distances as gd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="session")
def m67(data_file):
    """The reference M67 field with zero points (NaN zero points set to 0, as the reference does)."""
    import gaia_distances as gd

    return _quiet_call(gd.apply_zeropoint, gd.load_table(data_file("m67.fits.gz")), fallback=0.0)


@pytest.fixture(scope="session")
def m67_fit(m67):
    """The marginal fit of M67 with the reference cuts."""
    import gaia_distances as gd

    return gd.fit_cluster(
        m67, kinematics=False, field="edsd", parallax_limits=(0.2, 3.0), truncate=False, systematics=None, seed=1
    )


@pytest.fixture(scope="session")
def cluster_input():
    """A simulated field with a cluster, after zero points and per-star distances; rows 0-4 have no
    parallax and rows 5-7 a zero, negative or missing error."""
    import astropy.units as u

    import gaia_distances as gd

    t = gd.simulate_field(1500, n_cluster=400, seed=21)
    t = _quiet_call(gd.apply_zeropoint, t, fallback=-0.017)
    t = _quiet_call(gd.estimate_distances, t, prior=gd.EDSD(1350.0))
    t["parallax"][:5] = np.nan * u.mas
    t["parallax_corrected"][:5] = np.nan * u.mas
    t["parallax_error"][5:8] = [0.0, -1.0, np.nan] * u.mas
    return t


@pytest.fixture(scope="session")
def cluster_fit(cluster_input):
    """A quick fit of :func:`cluster_input`, with parallax limits (-1, 50) mas."""
    import gaia_distances as gd

    before = cluster_input.copy()
    fit = _quiet_call(
        gd.fit_cluster,
        cluster_input,
        kinematics=False,
        field="edsd",
        num_warmup=150,
        num_samples=300,
        seed=3,
        parallax_limits=(-1.0, 50.0),
    )
    for name in before.colnames:  # the input is never changed
        assert np.array_equal(np.asarray(before[name]), np.asarray(cluster_input[name]), equal_nan=True), name
    return fit
