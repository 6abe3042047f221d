"""The persistent compilation cache: on by default at the first fit, moved or turned off by the environment,
by ``set_compilation_cache`` and by the CLI, a user's own JAX folder left alone, shared by concurrent processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from gaia_distances import compile_cache  # noqa: E402


@pytest.fixture
def cache_state(monkeypatch, tmp_path):
    """Each test starts from a process in which nothing chose a folder, and leaves JAX as it found it."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    saved = (compile_cache._choice, compile_cache._active, jax.config.jax_compilation_cache_dir)
    compile_cache._choice, compile_cache._active = None, None
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    monkeypatch.delenv(compile_cache.CACHE_ENV, raising=False)
    yield tmp_path
    compile_cache._choice, compile_cache._active = saved[:2]
    jax.config.update("jax_compilation_cache_dir", saved[2])
    cc.reset_cache()


def _compile_something(scale: float) -> None:
    """A program for the cache (compiled in a noticeable time, as a fit's are)."""
    import jax.numpy as jnp

    def f(x):
        for k in range(60):
            x = jnp.sin(x * scale + k) @ x.T / 7.0
        return x

    jax.jit(f)(jnp.ones((8, 8))).block_until_ready()


def test_on_by_default_in_the_user_cache_folder(cache_state):
    folder = compile_cache.enable_compilation_cache()
    assert folder == compile_cache.default_compilation_cache_folder()
    assert folder.is_relative_to(cache_state / "user-cache") and folder.is_dir()
    assert compile_cache.compilation_cache_folder() == folder
    _compile_something(1.01)
    assert any(p.name.endswith("-cache") for p in folder.iterdir())


@pytest.mark.parametrize("value", ["", "0", "off", "false", "no"])
def test_the_environment_turns_it_off(cache_state, monkeypatch, value):
    monkeypatch.setenv(compile_cache.CACHE_ENV, value)
    assert compile_cache.enable_compilation_cache() is None
    assert compile_cache.compilation_cache_folder() is None


def test_the_environment_moves_it_and_set_compilation_cache_wins(cache_state, monkeypatch):
    monkeypatch.setenv(compile_cache.CACHE_ENV, str(cache_state / "from-env"))
    assert compile_cache.enable_compilation_cache() == cache_state / "from-env"
    mine = compile_cache.set_compilation_cache(cache_state / "mine")
    assert mine == cache_state / "mine" and compile_cache.enable_compilation_cache() == mine
    _compile_something(1.02)
    assert any(p.name.endswith("-cache") for p in mine.iterdir())
    assert compile_cache.set_compilation_cache(False) is None
    assert compile_cache.enable_compilation_cache() is None
    assert compile_cache.set_compilation_cache(True) == compile_cache.default_compilation_cache_folder()
    # None hands the choice back to the environment (the doctest of set_compilation_cache ends so, and
    # leaves the cache on for whatever runs after it in the same process)
    assert compile_cache.set_compilation_cache(None) == cache_state / "from-env"
    assert compile_cache.enable_compilation_cache() == cache_state / "from-env"


def test_a_folder_the_user_gave_jax_is_left_alone(cache_state):
    jax.config.update("jax_compilation_cache_dir", str(cache_state / "users-own"))
    assert compile_cache.enable_compilation_cache() == cache_state / "users-own"
    assert jax.config.jax_compilation_cache_dir == str(cache_state / "users-own")


def test_the_cli_options_move_it_and_turn_it_off(cache_state, tmp_path):
    from gaia_distances.cli import main

    table = tmp_path / "t.csv"
    table.write_text("parallax,parallax_error\n1.0,0.1\n0.5,0.2\n")
    edsd = ["--prior", "edsd", "--length-scale", "1500", "--zero-point", "0"]
    cli = ["--quiet", "--jax-cache", str(tmp_path / "cli"), "estimate", str(table), "-o", str(tmp_path / "a.csv")]
    assert main([*cli, *edsd]) == 0
    assert compile_cache.compilation_cache_folder() == tmp_path / "cli"
    assert main(["--quiet", "estimate", "--no-jax-cache", str(table), "-o", str(tmp_path / "b.csv"), *edsd]) == 0
    assert compile_cache.compilation_cache_folder() is None


def test_concurrent_processes_share_one_folder(tmp_path):
    """Two processes compile the same programs into one empty folder at once; a third then loads them."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import jax, jax.monitoring
        hits = []
        jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))
        from gaia_distances import compile_cache
        compile_cache.enable_compilation_cache()
        from test_compile_cache import _compile_something
        _compile_something(1.5)
        print(sum("cache_hits" in h for h in hits))
        """
    )
    env = {**os.environ, compile_cache.CACHE_ENV: str(tmp_path / "shared")}
    run = [sys.executable, "-c", script]
    procs = [
        subprocess.Popen(run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert not any("Error" in err and "cache" in err for _, err in outs), [o[1][-2000:] for o in outs]
    later = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert int(later.stdout.strip().splitlines()[-1]) >= 1


# --------------------------------------------------------------------------- traced programs kept on disk


class _Pair(NamedTuple):
    a: object
    b: object


def _counted(calls):
    import jax.numpy as jnp

    def fn(x, pair):
        calls.append(1)  # runs only while JAX traces the function
        return _Pair(jnp.sin(x) * pair.a, (x * pair.b).sum())

    return fn


def _args(n=5):
    import jax.numpy as jnp

    return jnp.linspace(0.0, 1.0, n, dtype=jnp.float32), _Pair(jnp.float32(2.0), jnp.arange(n, dtype=jnp.float32))


def test_a_program_is_traced_once_and_read_back_by_a_later_process(cache_state):
    """A fresh :class:`Program` (as in a new process) reads the stored trace: the Python function is not
    traced again, and the results, pytrees included, are the traced program's."""
    from gaia_distances.core.exported import Program, export_folder

    compile_cache.set_compilation_cache(cache_state / "c")
    calls: list[int] = []
    first = Program("test_sin", _counted(calls), "parts", 1)(*_args())
    assert len(calls) == 1 and len(list(export_folder().glob("*.jaxexport"))) == 1
    again = Program("test_sin", _counted(calls), "parts", 1)
    out = again(*_args())
    assert len(calls) == 1  # read back, not traced
    assert isinstance(out, _Pair)
    np.testing.assert_array_equal(np.asarray(out.a), np.asarray(first.a))
    assert float(out.b) == float(first.b)
    # another shape, another name or other parts: traced and stored apart
    again(*_args(7))
    Program("test_sin", _counted(calls), "parts", 2)(*_args())
    Program("test_cos", _counted(calls), "parts", 1)(*_args())
    assert len(calls) == 4 and len(list(export_folder().glob("*.jaxexport"))) == 4


def test_a_damaged_stored_program_is_traced_again_and_replaced(cache_state):
    from gaia_distances.core.exported import Program, export_folder

    compile_cache.set_compilation_cache(cache_state / "c")
    calls: list[int] = []
    expected = Program("test_sin", _counted(calls), 0)(*_args())
    (path,) = export_folder().glob("*.jaxexport")
    path.write_bytes(b"not a program")
    out = Program("test_sin", _counted(calls), 0)(*_args())
    assert len(calls) == 2 and float(out.b) == float(expected.b)
    assert Program("test_sin", _counted(calls), 0)(*_args()) is not None and len(calls) == 2  # replaced


def test_without_the_compilation_cache_nothing_is_stored(cache_state):
    from gaia_distances.core.exported import Program, export_folder

    compile_cache.set_compilation_cache(False)
    assert export_folder() is None
    calls: list[int] = []
    Program("test_sin", _counted(calls), 0)(*_args())
    Program("test_sin", _counted(calls), 0)(*_args())
    assert len(calls) == 2


def test_a_program_that_cannot_be_exported_still_runs(cache_state):
    """A host callback cannot be serialised: such a program is traced as before, and nothing is stored."""
    import jax.numpy as jnp

    from gaia_distances.core.exported import Program, export_folder

    compile_cache.set_compilation_cache(cache_state / "c")

    def with_callback(x):
        y = jax.pure_callback(lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return y + 1

    out = Program("test_callback", with_callback, 0)(jnp.ones(3, jnp.float32))
    np.testing.assert_array_equal(np.asarray(out), [3.0, 3.0, 3.0])
    assert not list(export_folder().glob("*.jaxexport"))
