"""NUTS segments: a run of NUTS iterations for many chains of many problems, as one compiled program.

The staged sampler (:mod:`~gaia_distances.core.staged`) advances its chains
segment by segment: a pilot, a re-adaptation of the step size, draws, more
draws. Each segment is ``n`` iterations of blackjax's NUTS kernel in whitened
coordinates ``x`` (``z = centre + chol @ x``, unit mass matrix), adapting the
step size by dual averaging or not; the step-size state, the whitening and
``n`` are arguments, so one compiled program (:func:`compile_segments`)
serves every segment, and fields of equal padded size share it.

:class:`Chains` holds the chains' states (position, log density and its
gradient), step-size states and whitening between segments and advances them;
the chains run in a thread each on the CPU cores, vectorised on an
accelerator, and problems are vectorised. The program takes each chain's
state rather than computing it: a second copy of the model's gradient (for
the start of a segment) would cost a third of the program's compilation. The
first state comes from the caller's ``initial`` function (the fit passes the
MAP search's compiled gradient); a new whitening carries the state over
exactly (the log density of a point does not change, its gradient turns with
the coordinates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.exported import Program
from gaia_distances.core.initialisation import whitening
from gaia_distances.core.numerics import Array
from gaia_distances.core.sampling import (
    NutsSettings,
    PotentialGen,
    Progress,
    compile_cached,
    per_chain,
    resolve_chain_method,
    signature,
)

__all__ = ["INITIAL_STEP_SIZE", "Chains", "InitialDensity", "compile_segments"]

#: The step size the first segment starts from (whitened coordinates: the posterior's scale is about 1).
INITIAL_STEP_SIZE = 0.5

#: ``initial(b, z)``: problem ``b``'s log posterior at ``z`` ``(d,)`` and its gradient in ``z`` (host arrays).
InitialDensity = Callable[[int, np.ndarray], tuple[float, np.ndarray]]


def _segment_program(potential_gen: PotentialGen, settings: NutsSettings, buffer: int) -> Callable[..., Any]:
    """``n`` NUTS iterations of one chain of one problem, adapting the step size or not; draws in a buffer."""
    from blackjax.adaptation.step_size import dual_averaging_adaptation
    from blackjax.mcmc import nuts
    from blackjax.mcmc.hmc import HMCState

    kernel = nuts.build_kernel()
    _, da_update, _ = dual_averaging_adaptation(settings.target_accept_prob)
    doublings = settings.max_tree_depth

    def segment(
        key: Array,
        x: Array,
        logp: Array,
        grad: Array,
        da: Any,
        n: Array,
        centre: Array,
        chol: Array,
        data: Any,
        adapt: Array,
        target: Array,
    ) -> tuple[Array, Array, Array, Any, Array, Array, Array]:
        potential = potential_gen(centre, chol, data)

        def log_density(y: Array) -> Array:
            return -potential(y)

        d = x.shape[0]
        unit = jnp.ones(d, x.dtype)
        carry0 = (
            HMCState(x, logp, grad),  # the caller's state: no gradient here but the integrator's
            da,
            jnp.zeros((buffer, d), x.dtype),
            jnp.zeros(buffer, jnp.int32),
            jnp.zeros(buffer, bool),
        )

        def body(i: Array, carry: Any) -> Any:
            state, da, draws, steps, div = carry
            log_eps = jnp.where(adapt, da.log_step_size, da.log_step_size_avg)
            state, info = kernel(jax.random.fold_in(key, i), state, log_density, jnp.exp(log_eps), unit, doublings)
            # dual averaging towards ``target`` (an argument: the update was built for the settings' target)
            shifted = jnp.nan_to_num(info.acceptance_rate) + (settings.target_accept_prob - target)
            adapted = da_update(da, shifted)
            da = jax.tree_util.tree_map(lambda a, b: jnp.where(adapt, a, b), adapted, da)
            return (
                state,
                da,
                draws.at[i].set(state.position),
                steps.at[i].set(info.num_integration_steps),
                div.at[i].set(info.is_divergent),
            )

        state, da, draws, steps, div = jax.lax.fori_loop(0, n, body, carry0)
        return state.position, state.logdensity, state.logdensity_grad, da, draws, steps, div

    return segment


def _program(
    potential_gen: PotentialGen, settings: NutsSettings, buffer: int, vectorised: bool, n_problems: int
) -> Callable[..., Any]:
    """The segment over a leading axis of problems (and of chains when ``vectorised``).

    One problem is sliced rather than vectorised: XLA runs a ``vmap`` over an
    axis of length 1 about three times slower than the same program without it.
    """
    one = _segment_program(potential_gen, settings, buffer)
    if n_problems == 1:

        def over_problems(*args: Any) -> Any:
            first = [jax.tree_util.tree_map(lambda v: v[0], a) for a in args[:9]]
            return jax.tree_util.tree_map(lambda v: v[None], one(*first, *args[9:]))

    else:
        over_problems = jax.vmap(one, in_axes=(0,) * 9 + (None, None))
    if not vectorised:
        return over_problems
    return jax.vmap(over_problems, in_axes=(0,) * 5 + (None,) * 6)


#: The most iterations of one program call (its draws fill a buffer of this many); progress is reported
#: between calls, from the host: a program that calls back to the host cannot be kept in the persistent
#: compilation cache.
SEGMENT = 100


def _da_init(step_size: Any) -> Any:
    """Dual averaging's state (blackjax's, one per element of ``step_size``), starting from ``step_size``.

    Unlike blackjax's own start, the averaged step size starts there too, so
    a run without adaptation iterations keeps it.
    """
    from blackjax.adaptation.step_size import DualAveragingAdaptationState

    eps = np.asarray(step_size)
    log_eps = np.log(eps)  # host-side NumPy: no XLA program is compiled for it
    return DualAveragingAdaptationState(
        log_eps, log_eps, np.ones(eps.shape, np.int32), np.zeros_like(eps), (np.log(10.0) + log_eps).astype(eps.dtype)
    )


def _example_args(n_problems: int, n_chains: int, d: int, data: Any, dtype: Any, vectorised: bool) -> tuple[Any, ...]:
    lead = (n_chains, n_problems) if vectorised else (n_problems,)
    key = jnp.zeros((*lead, 2), jnp.uint32)
    da = _da_init(np.full(lead, INITIAL_STEP_SIZE, dtype))
    return (
        key,
        jnp.zeros((*lead, d), dtype),
        jnp.zeros(lead, dtype),
        jnp.zeros((*lead, d), dtype),
        da,
        jnp.zeros(n_problems, jnp.int32),
        jnp.zeros((n_problems, d), dtype),
        jnp.zeros((n_problems, d, d), dtype),
        data,
        jnp.asarray(True),
        jnp.asarray(0.8, dtype),
    )


def compile_segments(
    potential_gen: PotentialGen, data: Any, d: int, settings: NutsSettings, *, chain_method: str | None = None
) -> Any:
    """The compiled stage program for ``data`` (stacked over problems), kept in the shared cache.

    Thread-safe, so a fit compiles it while its MAP search runs.
    """
    vectorised = resolve_chain_method(chain_method) == "vectorized"
    n_problems = int(jax.tree_util.tree_leaves(data)[0].shape[0])
    dtype = jax.tree_util.tree_leaves(data)[0].dtype
    buffer = SEGMENT
    args = _example_args(n_problems, settings.num_chains, d, data, dtype, vectorised)
    key = (
        "staged",
        potential_gen,
        buffer,
        settings.target_accept_prob,
        settings.max_tree_depth,
        vectorised,
        settings.num_chains if vectorised else 0,
        signature(args),
    )
    program: Any = _program(potential_gen, settings, buffer, vectorised, n_problems)
    name = getattr(potential_gen, "export_name", None)  # a stable description: kept on disk (Program)
    if name is not None:
        program = Program("nuts_segments", program, name, *key[2:7])
    return compile_cached(key, program, args)


class Chains:
    """The chains of ``B`` problems: their positions, step-size states and whitening, advanced stage by stage."""

    def __init__(
        self,
        potential_gen: PotentialGen,
        centre: np.ndarray,
        cov: np.ndarray,
        data: Any,
        settings: NutsSettings,
        seed: int,
        chain_method: str | None,
        progress: Progress | None,
        initial: InitialDensity | None = None,
    ) -> None:
        self.settings = settings
        self.method = resolve_chain_method(chain_method)
        self.vectorised = self.method == "vectorized"
        self.B, self.d = centre.shape
        self.C = settings.num_chains
        self.dtype = jax.tree_util.tree_leaves(data)[0].dtype
        self.data = data
        self.centre = np.asarray(centre, float)
        self.cov = np.asarray(cov, float)
        self.chol = np.stack([whitening(c, self.d) for c in self.cov])
        self.program = compile_segments(potential_gen, data, self.d, settings, chain_method=chain_method)
        self.buffer = SEGMENT
        self.rng = np.random.default_rng(seed)  # starting points and each call's PRNG keys
        self.x = 0.5 * self.rng.standard_normal((self.C, self.B, self.d))
        self.da = _da_init(np.full((self.C, self.B), INITIAL_STEP_SIZE, self.dtype))
        self.target = settings.target_accept_prob  # dual averaging's target (raised after divergences)
        self.gradients = np.zeros((self.C, self.B), np.int64)
        self.progress = progress
        self.logp, self.grad = self._initial_state(potential_gen, initial)

    def _initial_state(
        self, potential_gen: PotentialGen, initial: InitialDensity | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each chain's log density ``(C, B)`` and its gradient in ``x`` ``(C, B, d)`` at its start."""
        if initial is None:
            initial = _potential_density(potential_gen, self.data, self.dtype)
        z = self.z_of(self.x[:, :, None])[:, :, 0]
        logp = np.zeros((self.C, self.B))
        grad = np.zeros((self.C, self.B, self.d))
        for c in range(self.C):
            for b in range(self.B):
                value, g = initial(b, z[c, b])
                logp[c, b], grad[c, b] = value, self.chol[b].T @ np.asarray(g, float)
        return logp, grad

    # positions <-> z
    def z_of(self, x: np.ndarray) -> np.ndarray:
        """``(C, B, ..., d)`` whitened positions -> z."""
        return self.centre[None, :, None] + np.einsum("bij,cbnj->cbni", self.chol, x)

    def rewhiten(self, b: int, centre: np.ndarray, cov: np.ndarray) -> None:
        """Problem ``b``'s new whitening; its chains keep their places in z, their log densities, and their
        gradients turned to the new coordinates."""
        z_now = self.centre[b] + self.x[:, b] @ self.chol[b].T
        grad_z = np.linalg.solve(self.chol[b].T, self.grad[:, b].T).T
        chol = whitening(cov, self.d)
        self.centre[b], self.cov[b], self.chol[b] = centre, cov, chol
        self.x[:, b] = np.linalg.solve(chol, (z_now - centre).T).T
        self.grad[:, b] = grad_z @ chol

    def restart_adaptation(self) -> None:
        """Dual averaging starts again from the step sizes reached."""
        self.da = _da_init(np.exp(self.da.log_step_size_avg))

    def advance(self, n: Sequence[int], adapt: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n[b]`` iterations of every chain of problem ``b``: draws ``(C, B, max n, d)`` in z, steps, divergences."""
        counts = np.asarray(n, int)
        total = int(counts.max(initial=0))
        zs, steps, divs = [], [], []
        done = 0
        while done < total:
            m = np.clip(counts - done, 0, self.buffer)
            x, st, dv = self._call(m, adapt)
            k = int(m.max())
            zs.append(self.z_of(x[:, :, :k]))
            steps.append(st[:, :, :k])
            divs.append(dv[:, :, :k])
            done += k
        if not zs:
            return (
                np.zeros((self.C, self.B, 0, self.d)),
                np.zeros((self.C, self.B, 0), int),
                np.zeros((self.C, self.B, 0), bool),
            )
        return np.concatenate(zs, axis=2), np.concatenate(steps, axis=2), np.concatenate(divs, axis=2)

    def _call(self, m: np.ndarray, adapt: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys = self.rng.integers(0, 2**32, size=(self.C, self.B, 2), dtype=np.uint32)  # raw PRNG keys
        x, logp0, grad0 = (jnp.asarray(a, self.dtype) for a in (self.x, self.logp, self.grad))
        centre, chol = jnp.asarray(self.centre, self.dtype), jnp.asarray(self.chol, self.dtype)
        n = jnp.asarray(m, jnp.int32)
        flag = jnp.asarray(adapt)
        target = jnp.asarray(self.target, self.dtype)
        shared = (n, centre, chol, self.data, flag, target)
        if self.vectorised:
            pos, logp, grad, da, draws, steps, div = self.program(keys, x, logp0, grad0, self.da, *shared)
        else:

            def run(c: int) -> Any:
                da_c = jax.tree_util.tree_map(lambda v: v[c], self.da)
                out = jax.block_until_ready(self.program(keys[c], x[c], logp0[c], grad0[c], da_c, *shared))
                if self.progress is not None:
                    self.progress(int(m.max()))
                return out

            res = per_chain(run, self.C, self.method)
            pos, logp, grad = (np.stack([np.asarray(r[i]) for r in res]) for i in range(3))
            da = jax.tree_util.tree_map(lambda *v: np.stack([np.asarray(x) for x in v]), *[r[3] for r in res])
            draws, steps, div = (np.stack([np.asarray(r[i]) for r in res]) for i in range(4, 7))
        if self.vectorised and self.progress is not None:
            self.progress(int(m.max()) * self.C)
        self.x, self.da = np.asarray(pos, float), jax.tree_util.tree_map(np.asarray, da)
        self.logp, self.grad = np.asarray(logp, float), np.asarray(grad, float)
        mask = np.arange(self.buffer)[None, None, :] < m[None, :, None]
        self.gradients += np.where(mask, np.asarray(steps), 0).sum(axis=2)
        return np.asarray(draws, float), np.asarray(steps), np.asarray(div)

    def step_sizes(self) -> np.ndarray:
        return np.exp(np.asarray(self.da.log_step_size_avg, float))  # (C, B)


def _potential_density(potential_gen: PotentialGen, data: Any, dtype: Any) -> InitialDensity:
    """``initial`` from the potential itself, for callers without a compiled gradient of their own (one
    more program: the fit passes its search's instead)."""
    d_of = jax.jit(
        jax.value_and_grad(lambda z, data: -potential_gen(jnp.zeros_like(z), jnp.eye(z.size, dtype=z.dtype), data)(z))
    )

    def initial(b: int, z: np.ndarray) -> tuple[float, np.ndarray]:
        data_b = jax.tree_util.tree_map(lambda v: v[b], data)
        value, grad = d_of(jnp.asarray(z, dtype), data_b)
        return float(value), np.asarray(grad, float)

    return initial
