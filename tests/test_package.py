"""The public face: exports, version, no side effects at import."""

from __future__ import annotations

import subprocess
import sys

import gaia_distances as gd


def test_public_api():
    for name in gd.__all__:
        assert hasattr(gd, name), name
    assert gd.__version__
    assert issubclass(gd.MissingColumnsError, KeyError)
    assert issubclass(gd.GaiaDistancesWarning, UserWarning)


def test_import_opens_no_socket_and_imports_no_astroquery():
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k):\n"
        "    raise SystemExit('socket opened at import')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import gaia_distances\n"
        "bad = [m for m in ('astroquery', 'matplotlib', 'lsdb') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "import jax\n"
        "assert not jax.config.read('jax_enable_x64')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def test_core_imports_without_astropy():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'astropy' or name.startswith('astropy.'):\n"
        "            raise ImportError('astropy blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from gaia_distances.core import EDSDPrior, summarize_posteriors\n"
        "out = summarize_posteriors(np.array([1.0]), np.array([0.1]), EDSDPrior(np.array([1000.0])))\n"
        "assert np.isfinite(out['quantiles']).all()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
