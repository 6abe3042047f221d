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


#: The data arguments public functions take positionally; every other argument is keyword-only.
DATA_ARGUMENTS = {
    "apply_zeropoint": ["table"],
    "estimate_distances": ["table"],
    "fit_cluster": ["table"],
    "fit_clusters": ["tables"],
    "load_bailer_jones_2021_table": ["path"],
    "load_table": ["source"],
    "query_adql": ["adql"],
    "query_cluster": ["name", "radius"],
    "query_field": ["centre", "radius"],
    "simulate_field": ["n_field"],
    "set_compilation_cache": ["folder"],
    "write_table": ["table", "path"],
    "estimate_distances_dask": ["frame"],
    "estimate_distances_hats": ["catalog"],
    "estimate_partition": ["frame"],
    "output_columns": [],
    "read_cluster_list": ["source"],
    "cluster_catalogue": ["name"],
    "cluster_key": ["name"],
    "fit_catalogue": ["clusters"],
}


def test_options_are_keyword_only():
    import inspect

    from gaia_distances import scale

    seen = []
    for mod, names in ((gd, gd.__all__), (scale, scale.__all__)):
        for name in names:
            fn = getattr(mod, name)
            if not inspect.isfunction(fn):
                continue
            params = inspect.signature(fn).parameters.values()
            positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            assert positional == DATA_ARGUMENTS[name], (name, positional)
            seen.append(name)
    assert set(seen) == set(DATA_ARGUMENTS)
    sig = inspect.signature(gd.ClusterPriors.physical)
    assert all(p.kind is p.KEYWORD_ONLY for p in sig.parameters.values() if p.name != "kw")


def test_the_same_keyword_means_the_same_thing():
    """zero_point, prior, seed and the NUTS settings are spelled alike across the API."""
    import inspect

    from gaia_distances import scale

    for fn in (gd.estimate_distances, gd.fit_cluster, gd.fit_clusters, scale.estimate_partition):
        params = inspect.signature(fn).parameters
        assert "zero_point" in params and "prior" in params, fn.__name__
        assert not {"zeropoint", "priors"} & set(params), fn.__name__
    for fn in (gd.estimate_distances, gd.fit_cluster, gd.fit_clusters):
        params = inspect.signature(fn).parameters
        for name in ("num_warmup", "num_samples", "num_chains", "seed"):
            assert params[name].default is (0 if name == "seed" else None), (fn.__name__, name)
