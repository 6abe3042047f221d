"""The NUTS runner of the joint model and of per-star validation.

Whole chains are compiled programs, run side by side on the CPU cores.

NumPyro runs several chains in parallel only across XLA devices, and a CPU
has one device unless ``XLA_FLAGS`` is set before JAX starts. Here a whole
chain (warm-up and draws) is one compiled program built from NumPyro's
functional ``hmc`` kernels, compiled once in the calling thread and kept in a
bounded cache; the chains then run in a thread pool, and since XLA releases
the GIL while it computes, ``k`` chains use ``k`` cores. On an accelerator the
chains are vectorised on the one device instead.

- :class:`NutsSettings` and :func:`nuts_settings`: the sampler's settings, with
  the defaults of every method in one table (:data:`NUTS_DEFAULTS`);
- :func:`run_chains`: independent chains of one problem, as a
  :class:`ChainResult`.

The marginal cluster models run the staged sampler instead
(:mod:`~gaia_distances.core.staged` on :mod:`~gaia_distances.core.nuts_segments`).

Progress: a run reports to the ``progress`` callable it is given (for example
a tqdm bar's ``update``). The compiled program calls back with a token passed
as an argument, so concurrent runs in different threads, which share compiled
programs, each report to their own callable.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.exported import CompiledCache, Program, signature
from gaia_distances.core.numerics import Array, checked_integer
from gaia_distances.core.parallel import usable_cores

__all__ = [
    "EXTENDED_MAX_TREE_DEPTH",
    "NUTS_DEFAULTS",
    "PROGRESS_ROUTES",
    "REPORT_EVERY",
    "SEED_LIMIT",
    "TARGET_ACCEPT",
    "ChainResult",
    "NutsSettings",
    "ProgressRoutes",
    "aot_call",
    "chain_iterations",
    "checked_seed",
    "compile_cached",
    "compile_chains",
    "nuts_settings",
    "per_chain",
    "precompile",
    "resolve_chain_method",
    "run_chains",
    "signature",
]

log = logging.getLogger(__name__)

#: ``gen(*args)`` -> a potential (minus the log density) of the sampled position.
PotentialGen = Callable[..., Callable[[Any], Array]]
Progress = Callable[[int], None]


class NutsSettings(NamedTuple):
    """Settings of a NUTS run (see :func:`nuts_settings` for each method's defaults)."""

    num_warmup: int
    num_samples: int
    num_chains: int
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = True

    @property
    def iterations(self) -> int:
        """Warm-up plus draws, per chain."""
        return self.num_warmup + self.num_samples


#: Defaults by method: ``(num_warmup, num_samples, num_chains)``. The number
#: of chains never depends on the machine, so a seed gives the same draws
#: everywhere; the cores only decide how the chains run.
NUTS_DEFAULTS: dict[str, tuple[int, int, int]] = {
    # fit_cluster, fit_clusters: every model (the reference one included), staged (core/staged.py),
    # extended until converged
    "marginal": (150, 500, 2),
    "joint": (2000, 4000, 2),  # fit_cluster(method="joint"): the reference analysis's settings
    "per_star": (500, 1000, 2),  # estimate_distances(method="nuts"): validation
}

#: The cluster model's longest trajectory (the marginal method, every model): ``2^8 - 1`` leapfrog steps per draw.
EXTENDED_MAX_TREE_DEPTH = 8

#: Default target acceptance statistic by method (0.8 where not listed). The staged sampler of the
#: extended models runs in coordinates whitened by the posterior's own scales, where the posterior
#: is close to a unit Gaussian and a step size tuned to 0.65 (near the optimum of Beskos et al.
#: 2013) takes about 7 leapfrog steps per draw instead of 12.
TARGET_ACCEPT = {"marginal": 0.65}


def nuts_settings(
    method: str,
    *,
    num_warmup: int | None = None,
    num_samples: int | None = None,
    num_chains: int | None = None,
    target_accept_prob: float | None = None,
    max_tree_depth: int | None = None,
    dense_mass: bool = True,
) -> NutsSettings:
    """The settings for ``method`` (a key of :data:`NUTS_DEFAULTS`), with ``None`` taken from its defaults.

    ``target_accept_prob`` defaults to :data:`TARGET_ACCEPT` (0.8 where not listed).
    ``num_warmup`` (>= 0), ``num_samples`` and ``num_chains`` (>= 1) must be
    integers: ``ValueError`` names the one that is not (``2.5`` is not taken
    as 2).

    ``max_tree_depth`` defaults to 10 (1 023 leapfrog steps per draw), and to
    :data:`EXTENDED_MAX_TREE_DEPTH` for the cluster model's marginal method,
    whose tens of parameters include weakly identified ones (a minor field
    component's shape): a fit that needs longer trajectories is badly
    conditioned, and is reported through its R-hat and ESS rather than left
    running for hours.
    """
    try:
        warmup, samples, chains = NUTS_DEFAULTS[method]
    except KeyError:
        raise ValueError(f"no NUTS defaults for {method!r}; expected one of {sorted(NUTS_DEFAULTS)}") from None
    if max_tree_depth is None:
        max_tree_depth = EXTENDED_MAX_TREE_DEPTH if method == "marginal" else 10
    out = NutsSettings(
        num_warmup=warmup if num_warmup is None else checked_integer("num_warmup", num_warmup, 0),
        num_samples=samples if num_samples is None else checked_integer("num_samples", num_samples),
        num_chains=chains if num_chains is None else checked_integer("num_chains", num_chains),
        target_accept_prob=float(TARGET_ACCEPT.get(method, 0.8) if target_accept_prob is None else target_accept_prob),
        max_tree_depth=int(max_tree_depth),
        dense_mass=bool(dense_mass),
    )
    if not 0.0 < out.target_accept_prob < 1.0:
        raise ValueError(f"target_accept_prob must lie in (0, 1); got {out.target_accept_prob}")
    return out


#: Seeds are non-negative integers below this: NumPy's generators refuse negative seeds, JAX's keys larger ones.
SEED_LIMIT = 2**63


def checked_seed(seed: Any) -> int:
    """``seed`` as an ``int``, or ``ValueError`` naming it: a non-negative integer (Python or NumPy), not a bool.

    The public functions that draw at random check their seed with this
    before any work: :func:`~gaia_distances.estimate_distances`, the cluster
    fits, :func:`~gaia_distances.simulate_field`, ``ClusterFit.predictive``,
    ``ClusterFit.predictive_proper_motions`` and
    :func:`~gaia_distances.pm_plots.simulate_proper_motions`.

    Examples
    --------
    >>> checked_seed(np.int64(7))
    7
    >>> checked_seed(-1)
    Traceback (most recent call last):
    ...
    ValueError: seed must be a non-negative integer below 2**63; got -1
    """
    if isinstance(seed, bool | np.bool_) or not isinstance(seed, int | np.integer) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be a non-negative integer below 2**63; got {seed!r}")
    return int(seed)


class ChainResult(NamedTuple):
    """Draws and sampler statistics of :func:`run_chains` (leading axes ``(chains, draws)``)."""

    samples: Any  # pytree of arrays
    diverging: np.ndarray
    num_steps: np.ndarray
    step_size: np.ndarray


# --------------------------------------------------------------------------- compiled programs


_COMPILED = CompiledCache()


def compile_cached(cache_key: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``fn`` (jitted here unless it already is) compiled for ``args``, kept in the shared cache."""

    def build() -> Any:
        if isinstance(fn, Program):
            return fn.compiled(args)  # read back from disk when a process stored it before
        jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        return jitted.lower(*args).compile()  # type: ignore[attr-defined]

    return _COMPILED.get_or_compile(cache_key, build)


def aot_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call jitted ``fn`` through the ahead-of-time compile cache that :func:`precompile` fills."""
    return _aot(fn, args)(*args)


def precompile(fn: Callable[..., Any], *args: Any) -> None:
    """Compile jitted ``fn`` for the shapes of ``args`` (values are not used), e.g. in another thread."""
    _aot(fn, args)


def _aot(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return compile_cached(("aot", fn, signature(args)), fn, args)


# --------------------------------------------------------------------------- progress


#: Iterations between progress reports from inside a compiled chain.
REPORT_EVERY = 50


class ProgressRoutes:
    """Token -> the ``progress`` callable of the run that holds it.

    Compiled programs are shared between runs, so the callable cannot be baked
    into them: each run passes its token as an argument instead, and the host
    callback looks the callable up here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[int, Progress] = {}
        self._tokens = itertools.count(1)

    @contextmanager
    def open(self, progress: Progress | None) -> Iterator[np.int32]:
        token = next(self._tokens) % (2**31 - 1) if progress is not None else 0
        if progress is not None:
            with self._lock:
                self._routes[token] = progress
        try:
            yield np.int32(token)
        finally:
            with self._lock:
                self._routes.pop(token, None)

    def report(self, token: Any, n: Any) -> None:
        with self._lock:
            fn = self._routes.get(int(np.ravel(token)[0]))
        if fn is not None:
            fn(int(np.ravel(n)[0]))


PROGRESS_ROUTES = ProgressRoutes()


# --------------------------------------------------------------------------- the chain program


def resolve_chain_method(chain_method: str | None) -> str:
    """Threads over CPU cores, or vectorised chains on an accelerator, unless told."""
    if chain_method is None:
        return "threads" if jax.default_backend() == "cpu" else "vectorized"
    if chain_method not in ("threads", "vectorized", "sequential"):
        raise ValueError(f"chain_method must be 'threads', 'vectorized' or 'sequential'; got {chain_method!r}")
    return chain_method


def _program_config(settings: NutsSettings) -> tuple[Any, ...]:
    """The settings a compiled chain depends on (not the number of chains)."""
    return (
        settings.num_warmup,
        settings.num_samples,
        settings.dense_mass,
        settings.target_accept_prob,
        settings.max_tree_depth,
    )


def _chain_program(potential_fn_gen: PotentialGen, settings: NutsSettings) -> Callable[..., Any]:
    """One whole NUTS chain (warm-up + draws) as a function of ``(key, z0, args, imm, token)``."""
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")
    total = settings.iterations

    def one_chain(key: Array, z0: Any, model_args: tuple[Any, ...], imm: Any, token: Array) -> Any:
        state = init_kernel(
            z0,
            settings.num_warmup,
            inverse_mass_matrix=imm,
            dense_mass=settings.dense_mass,
            target_accept_prob=settings.target_accept_prob,
            max_tree_depth=settings.max_tree_depth,
            model_args=model_args,
            rng_key=key,
        )

        def step(st: Any, i: Array) -> tuple[Any, tuple[Any, Array, Array]]:
            st = sample_kernel(st, model_args=model_args)
            jax.lax.cond(
                (token > 0) & ((i + 1) % REPORT_EVERY == 0),
                lambda: jax.debug.callback(PROGRESS_ROUTES.report, token, REPORT_EVERY),
                lambda: None,
            )
            return st, (st.z, st.diverging, st.num_steps)

        state, (zs, div, nsteps) = jax.lax.scan(step, state, jnp.arange(total))
        if total % REPORT_EVERY:  # the iterations after the last report
            jax.lax.cond(
                token > 0, lambda: jax.debug.callback(PROGRESS_ROUTES.report, token, total % REPORT_EVERY), lambda: None
            )
        keep = slice(settings.num_warmup, total)
        zs = jax.tree_util.tree_map(lambda a: a[keep], zs)
        return zs, div[keep], nsteps[keep], state.adapt_state.step_size

    return one_chain


def per_chain(run: Callable[[int], Any], n_chains: int, chain_method: str) -> list[Any]:
    """``run(c)`` for every chain: in a thread pool over the cores, or one after another."""
    if chain_method == "threads" and n_chains > 1:
        with ThreadPoolExecutor(max_workers=min(n_chains, usable_cores())) as pool:
            return list(pool.map(run, range(n_chains)))
    return [run(c) for c in range(n_chains)]


def _stack(results: list[Any], axis: int) -> tuple[Any, ...]:
    return tuple(jax.tree_util.tree_map(lambda *x: jnp.stack(x, axis=axis), *[r[i] for r in results]) for i in range(4))


def _as_result(zs: Any, div: Any, nsteps: Any, step: Any) -> ChainResult:
    return ChainResult(zs, np.asarray(div), np.asarray(nsteps), np.atleast_1d(np.asarray(step)))


def compile_chains(
    potential_fn_gen: PotentialGen,
    example_init: Any,
    model_args: tuple[Any, ...],
    settings: NutsSettings,
    *,
    inverse_mass_matrix: Any = None,
    chain_method: str | None = None,
) -> Any:
    """Compile (or fetch) the program :func:`run_chains` will use; thread-safe, so it can run early."""
    chain_method = resolve_chain_method(chain_method)
    one_chain = _chain_program(potential_fn_gen, settings)
    key0 = jax.random.PRNGKey(0)
    token = np.int32(0)
    config = _program_config(settings)
    if chain_method == "vectorized":
        n = settings.num_chains
        keys = jnp.stack([key0] * n)
        stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), example_init)
        args = (keys, stacked, model_args, inverse_mass_matrix, token)
        cache_key = ("vmap", potential_fn_gen, config, signature(args))
        return compile_cached(cache_key, jax.vmap(one_chain, in_axes=(0, 0, None, None, None)), args)
    args = (key0, example_init, model_args, inverse_mass_matrix, token)
    return compile_cached(("one", potential_fn_gen, config, signature(args)), one_chain, args)


def run_chains(
    potential_fn_gen: PotentialGen,
    inits: Sequence[Any],
    model_args: tuple[Any, ...],
    settings: NutsSettings,
    *,
    seed: int,
    inverse_mass_matrix: Any = None,
    chain_method: str | None = None,
    progress: Progress | None = None,
) -> ChainResult:
    """Run one NUTS chain from each of ``inits`` (``settings.num_chains`` of them).

    The data enter as ``model_args`` (arguments, not constants baked into the
    program), so the program is compiled once per input shape and reused by
    later runs.

    Parameters
    ----------
    potential_fn_gen
        ``potential_fn_gen(*model_args)`` returns the negative log density of
        the unconstrained parameters. Pass the same (module-level) function
        object for every run so that compiled programs are reused.
    inits
        One starting point (array or pytree of arrays) per chain.
    model_args
        Arrays (pytrees) passed to ``potential_fn_gen``.
    settings
        :class:`NutsSettings`; ``num_chains`` must equal ``len(inits)``.
    seed
        Equal seeds give equal draws, whatever the chain method.
    inverse_mass_matrix
        Starting inverse mass matrix; it is still adapted during warm-up.
    chain_method
        ``"threads"`` (CPU default), ``"vectorized"`` (accelerator default) or
        ``"sequential"``.
    progress
        Called with the number of iterations done, every 50 iterations of each
        chain program (one program for vectorised chains).
    """
    n_chains = len(inits)
    if n_chains != settings.num_chains:
        raise ValueError(f"{n_chains} starting points for {settings.num_chains} chains")
    chain_method = resolve_chain_method(chain_method)
    keys = jax.random.split(jax.random.PRNGKey(seed), n_chains)
    compiled = compile_chains(
        potential_fn_gen,
        inits[0],
        model_args,
        settings,
        inverse_mass_matrix=inverse_mass_matrix,
        chain_method=chain_method,
    )
    with PROGRESS_ROUTES.open(progress) as token:
        if chain_method == "vectorized":
            stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *inits)
            return _as_result(*compiled(keys, stacked, model_args, inverse_mass_matrix, token))

        def run(c: int) -> Any:
            return jax.block_until_ready(compiled(keys[c], inits[c], model_args, inverse_mass_matrix, token))

        return _as_result(*_stack(per_chain(run, n_chains, chain_method), axis=0))


def chain_iterations(settings: NutsSettings, chain_method: str | None = None) -> int:
    """Iterations a run reports in all (vectorised chains share one counter): the total of a progress bar."""
    programs = 1 if resolve_chain_method(chain_method) == "vectorized" else settings.num_chains
    return programs * settings.iterations
