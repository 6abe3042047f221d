"""NUTS chains run side by side on the CPU cores, without touching XLA flags.

NumPyro runs several chains in parallel only across XLA devices, and a CPU
has one device unless ``XLA_FLAGS`` is set before JAX starts. Here a whole
chain is one compiled program, compiled once in the calling thread; the chains
then run in a thread pool, and since XLA releases the GIL while it computes,
``k`` chains use ``k`` cores. On an accelerator the chains are vectorised on
the one device instead.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.parallel import usable_cores

log = logging.getLogger(__name__)

Array = Any


class _CompiledCache(OrderedDict):
    """Compiled programs by signature, least recently used dropped beyond ``maxsize``.

    Fitting many fields of different sizes one by one compiles a program per
    size; an unbounded cache would keep every executable (and its memory
    mappings) alive until the process runs out.
    """

    def __init__(self, maxsize: int = 48) -> None:
        super().__init__()
        self.maxsize = maxsize

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)


_COMPILED: _CompiledCache = _CompiledCache()

#: Iterations between progress reports from inside a compiled chain.
_REPORT_EVERY = 50
#: The progress bar the running chains report to (None: reports are ignored).
_PROGRESS: dict[str, Any] = {"bar": None}


def _report(n: Any) -> None:
    bar = _PROGRESS["bar"]
    if bar is not None:
        bar.update(int(np.sum(n)))


def _resolve_chain_method(chain_method: str | None) -> str:
    """Threads over CPU cores, or vectorised chains on an accelerator, unless told."""
    if chain_method is not None:
        return chain_method
    return "threads" if jax.default_backend() == "cpu" else "vectorized"


@contextmanager
def _progress(enabled: bool, total: int, desc: str) -> Iterator[None]:
    """A bar the compiled chains report to (every ``_REPORT_EVERY`` iterations of each program)."""
    bar = None
    if enabled:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="it", leave=False)
    _PROGRESS["bar"] = bar
    try:
        yield
    finally:
        _PROGRESS["bar"] = None
        if bar is not None:
            bar.close()


def _per_chain(run: Callable[[int], Any], n_chains: int, chain_method: str) -> list[Any]:
    """``run(c)`` for every chain: in a thread pool over the cores, or one after another."""
    if chain_method == "threads" and n_chains > 1:
        with ThreadPoolExecutor(max_workers=min(n_chains, usable_cores())) as pool:
            return list(pool.map(run, range(n_chains)))
    return [run(c) for c in range(n_chains)]


def _compile(cache_key: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``fn`` (jitted here unless it already is) compiled for ``args``, kept in the shared cache."""
    compiled = _COMPILED.get(cache_key)
    if compiled is None:
        jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        compiled = jitted.lower(*args).compile()  # type: ignore[attr-defined]
        _COMPILED[cache_key] = compiled
    return compiled


def _nuts_config(**config: Any) -> dict[str, Any]:
    keys = ("num_warmup", "num_samples", "dense_mass", "target_accept_prob", "max_tree_depth")
    return {k: config[k] for k in keys}


def _signature(tree: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__))) for x in leaves)


def _chain_program(
    potential_fn_gen: Callable[..., Callable[[Any], Array]],
    *,
    num_warmup: int,
    num_samples: int,
    dense_mass: bool,
    target_accept_prob: float,
    max_tree_depth: int,
) -> Callable[..., Any]:
    """One whole NUTS chain (warm-up + draws) as a function of (key, z0, args, imm)."""
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")
    total = num_warmup + num_samples

    def one_chain(key: Array, z0: Any, model_args: tuple[Any, ...], imm: Any) -> Any:
        state = init_kernel(
            z0,
            num_warmup,
            inverse_mass_matrix=imm,
            dense_mass=dense_mass,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            model_args=model_args,
            rng_key=key,
        )

        def step(st: Any, i: Array) -> tuple[Any, tuple[Any, Array, Array]]:
            st = sample_kernel(st, model_args=model_args)
            # a host callback every _REPORT_EVERY iterations drives the progress bar
            jax.lax.cond(
                (i + 1) % _REPORT_EVERY == 0,
                lambda: jax.debug.callback(_report, _REPORT_EVERY),
                lambda: None,
            )
            return st, (st.z, st.diverging, st.num_steps)

        state, (zs, div, nsteps) = jax.lax.scan(step, state, jnp.arange(total))
        keep = slice(num_warmup, total)
        zs = jax.tree_util.tree_map(lambda a: a[keep], zs)
        return zs, div[keep], nsteps[keep], state.adapt_state.step_size

    return one_chain


def aot_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call jitted ``fn`` through an explicit ahead-of-time compile cache.

    :func:`precompile` fills the same cache from another thread, so that a
    program can compile while other work (or another compile) goes on.
    """
    return _aot(fn, args)(*args)


def precompile(fn: Callable[..., Any], *args: Any) -> None:
    """Compile jitted ``fn`` for the shapes of ``args`` (values are not used)."""
    _aot(fn, args)


def _aot(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return _compile(("aot", fn, _signature(args)), fn, args)


def chain_runner(
    potential_fn_gen: Callable[..., Callable[[Any], Array]],
    example_init: Any,
    model_args: tuple[Any, ...] = (),
    *,
    num_warmup: int,
    num_samples: int,
    dense_mass: bool = True,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    inverse_mass_matrix: Any = None,
    n_chains: int = 1,
    chain_method: str | None = None,
) -> Any:
    """Compile (or fetch) the program :func:`run_chains` will use; thread-safe to call early."""
    chain_method = _resolve_chain_method(chain_method)
    config = _nuts_config(
        num_warmup=num_warmup,
        num_samples=num_samples,
        dense_mass=dense_mass,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
    )
    one_chain = _chain_program(potential_fn_gen, **config)
    key0 = jax.random.PRNGKey(0)
    if chain_method == "vectorized":
        keys = jnp.stack([key0] * n_chains)
        stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x] * n_chains), example_init)
        args = (keys, stacked, model_args, inverse_mass_matrix)
        cache_key = ("vmap", potential_fn_gen, tuple(config.items()), _signature(args))
        return _compile(cache_key, jax.vmap(one_chain, in_axes=(0, 0, None, None)), args)
    args = (key0, example_init, model_args, inverse_mass_matrix)
    cache_key = ("one", potential_fn_gen, tuple(config.items()), _signature(args))
    return _compile(cache_key, one_chain, args)


def run_chains(
    potential_fn_gen: Callable[..., Callable[[Any], Array]],
    inits: Sequence[Any],
    model_args: tuple[Any, ...] = (),
    *,
    num_warmup: int,
    num_samples: int,
    seed: int,
    dense_mass: bool = True,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    progress: bool = False,
    chain_method: str | None = None,
    inverse_mass_matrix: Any = None,
) -> dict[str, Any]:
    """Run ``len(inits)`` NUTS chains from the given unconstrained starting points.

    One chain (warm-up with step-size and mass-matrix adaptation, then
    sampling) is a single compiled program built from NumPyro's functional
    ``hmc`` kernels. The data enter as ``model_args`` (arguments, not constants
    baked into the program), so the program is compiled once per input shape
    and reused by later fits. The chains run in a thread pool on CPU, or are
    vectorised with ``vmap`` on an accelerator.

    Parameters
    ----------
    potential_fn_gen
        ``potential_fn_gen(*model_args)`` returns the negative log density of
        the unconstrained parameters. Pass the same (module-level) function
        object for every fit so that compiled programs are reused.
    inits
        One starting point (array or pytree of arrays) per chain.
    model_args
        Arrays passed to ``potential_fn_gen``.
    chain_method
        ``"threads"`` (CPU default), ``"vectorized"`` (accelerator default) or
        ``"sequential"``.
    inverse_mass_matrix
        Starting inverse mass matrix; it is still adapted during warm-up.
    progress
        Show a progress bar over all chains' iterations (updated from inside
        the compiled loop every 50 iterations).

    Returns
    -------
    dict
        ``samples`` (pytree with leading axes (chains, draws)), ``diverging``
        and ``num_steps`` (chains, draws), ``step_size`` per chain.
    """
    n_chains = len(inits)
    chain_method = _resolve_chain_method(chain_method)
    keys = jax.random.split(jax.random.PRNGKey(seed), n_chains)
    compiled = chain_runner(
        potential_fn_gen,
        inits[0],
        model_args,
        num_warmup=num_warmup,
        num_samples=num_samples,
        dense_mass=dense_mass,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        inverse_mass_matrix=inverse_mass_matrix,
        n_chains=n_chains,
        chain_method=chain_method,
    )
    # vectorised chains share one iteration counter, so one program reports for all of them
    programs = 1 if chain_method == "vectorized" else n_chains
    with _progress(progress, programs * (num_warmup + num_samples), f"NUTS ({n_chains} chains)"):
        return _execute(compiled, keys, inits, model_args, inverse_mass_matrix, n_chains, chain_method)


def _execute(
    compiled: Any,
    keys: Array,
    inits: Sequence[Any],
    model_args: tuple[Any, ...],
    inverse_mass_matrix: Any,
    n_chains: int,
    chain_method: str,
) -> dict[str, Any]:
    if chain_method == "vectorized":
        stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *inits)
        zs, div, nsteps, step = compiled(keys, stacked, model_args, inverse_mass_matrix)
    else:

        def run(c: int) -> Any:
            return jax.block_until_ready(compiled(keys[c], inits[c], model_args, inverse_mass_matrix))

        results = _per_chain(run, n_chains, chain_method)
        zs = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[r[0] for r in results])
        div = jnp.stack([r[1] for r in results])
        nsteps = jnp.stack([r[2] for r in results])
        step = jnp.stack([r[3] for r in results])
    return {
        "samples": zs,
        "diverging": np.asarray(div),
        "num_steps": np.asarray(nsteps),
        "step_size": np.atleast_1d(np.asarray(step)),
    }


def run_batched_chains(
    potential_fn_gen: Callable[..., Callable[[Any], Array]],
    inits: Array,
    model_args: tuple[Any, ...],
    *,
    num_warmup: int,
    num_samples: int,
    seed: int,
    dense_mass: bool = True,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    progress: bool = False,
    chain_method: str | None = None,
) -> dict[str, Any]:
    """NUTS for ``B`` independent problems at once, ``C`` chains each, in one compiled program.

    ``inits`` has shape ``(B, C, d)``; every leaf of ``model_args`` has a
    leading axis of length ``B`` (problem ``b`` gets ``model_args[..][b]``).
    The problems are vectorised with ``vmap``; on CPU the ``C`` chains run in a
    thread pool (one vectorised program per chain), on an accelerator they are
    vectorised too. Each problem adapts its own step size and mass matrix.

    Returns the dict of :func:`run_chains` with leading axes ``(B, C, draws)``.
    """
    inits = jnp.asarray(inits)
    B, C = inits.shape[:2]
    chain_method = _resolve_chain_method(chain_method)
    config = _nuts_config(
        num_warmup=num_warmup,
        num_samples=num_samples,
        dense_mass=dense_mass,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
    )
    one_chain = _chain_program(potential_fn_gen, **config)
    over_problems = jax.vmap(one_chain, in_axes=(0, 0, 0, None))
    keys = jax.random.split(jax.random.PRNGKey(seed), B * C).reshape(B, C, -1)
    if chain_method == "vectorized":
        fn = jax.vmap(over_problems, in_axes=(1, 1, None, None), out_axes=1)
        args: tuple[Any, ...] = (keys, inits, model_args, None)
    else:
        fn = over_problems
        args = (keys[:, 0], inits[:, 0], model_args, None)
    cache_key = ("batched", chain_method, potential_fn_gen, tuple(config.items()), _signature(args))
    compiled = _compile(cache_key, fn, args)
    programs = 1 if chain_method == "vectorized" else C  # see run_chains
    with _progress(progress, programs * (num_warmup + num_samples), f"NUTS ({B} problems x {C} chains)"):
        if chain_method == "vectorized":
            zs, div, nsteps, step = compiled(keys, inits, model_args, None)
        else:

            def run(c: int) -> Any:
                return jax.block_until_ready(compiled(keys[:, c], inits[:, c], model_args, None))

            results = _per_chain(run, C, chain_method)
            zs, div, nsteps, step = (jnp.stack([r[i] for r in results], axis=1) for i in range(4))
    return {
        "samples": zs,
        "diverging": np.asarray(div),
        "num_steps": np.asarray(nsteps),
        "step_size": np.asarray(step),
    }
