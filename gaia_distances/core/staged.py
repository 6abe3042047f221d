"""The cluster model's sampler: NUTS in stages, extended until its draws pass the convergence rule.

The marginal posterior has tens of parameters. Around its mode it is close to
Gaussian in most directions and far from it in a few: an unresolved depth or
velocity dispersion, whose posterior is a prior's tail cut off by the data.
The sampler works in coordinates whitened by the Laplace covariance at the
MAP (``z = centre + chol @ x``) and runs NUTS there (blackjax's kernel, unit
mass matrix in ``x``) in stages:

1. **pilot**: two thirds of ``num_warmup`` iterations from near the MAP, the
   step size adapted by dual averaging;
2. **rescale**: a parameter whose variance over the pilot differs from the
   Laplace approximation's by more than :data:`RESCALE_FACTOR` gets that
   variance (its row and column of the covariance are rescaled; the Laplace
   correlations are kept), and the chains move to the new coordinates;
3. **adapt**: the rest of ``num_warmup``, adapting the step size again;
4. **draw**: ``num_samples`` draws per chain, the first
   :data:`PROBE_FRACTION` of them first: if those have divergent
   transitions, they are discarded and the step size is adapted to the next
   acceptance target of :data:`DIVERGENCE_TARGETS` before drawing on;
5. **smaller steps**: draws with divergent transitions (a region of high
   curvature the step size is too large for) are discarded and drawn again
   after adapting the step size to a higher acceptance target;
6. **extend**: while the draws fail the convergence rule (``check``), more
   draws, as many as the smallest effective sample size asks for, up to
   :data:`MAX_DRAWS_FACTOR` times ``num_samples`` per chain;
7. **re-whiten**: if they still fail, the covariance of the draws themselves
   whitens one more round of stages 3, 4 and 6.

Every stage is a segment of the same compiled program
(:mod:`~gaia_distances.core.nuts_segments`), whose step size, whitening and
length are arguments; fields of equal padded size share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from gaia_distances.core.diagnostics import ESS_MIN
from gaia_distances.core.nuts_segments import Chains, InitialDensity
from gaia_distances.core.sampling import NutsSettings, PotentialGen, Progress

__all__ = [
    "CRAWL_STEPS",
    "DIVERGENCE_TARGETS",
    "MAX_DRAWS_FACTOR",
    "PROBE_FRACTION",
    "RESCALE_FACTOR",
    "Convergence",
    "StagedDraws",
    "rescaled_covariance",
    "sample_staged",
]

#: A parameter's pilot variance this many times above or below the Laplace variance rescales it.
RESCALE_FACTOR = 2.0
#: Extensions stop at this many times ``num_samples`` draws per chain (per round).
MAX_DRAWS_FACTOR = 4
#: Acceptance targets tried in turn while the draws have divergent transitions.
DIVERGENCE_TARGETS = (0.85, 0.95)
#: The share of the first draws that comes first, a probe for divergent transitions (stage 4).
PROBE_FRACTION = 0.2
#: Draws whose trajectories average more leapfrog steps than this are not extended (a whitened, well
#: identified posterior needs 3-30): the posterior's geometry (a funnel, an unidentified parameter), not
#: the number of draws, is what fails, and more draws would cost minutes without fixing it.
CRAWL_STEPS = 200


class Convergence(NamedTuple):
    """The convergence rule's verdict on some draws: its ``problems`` (empty: converged), the
    smallest bulk or tail effective sample size over the checked quantities (NaN: undefined), the
    largest R-hat, and why more draws cannot help (``hopeless``, e.g. a posterior without a
    cluster, whose cluster parameters are not identified: empty when they can)."""

    problems: tuple[str, ...]
    min_ess: float
    max_r_hat: float
    hopeless: tuple[str, ...] = ()


#: ``check(b, z)``: the verdict on problem ``b``'s draws ``z`` of shape ``(chains, draws, d)``.
Check = Callable[[int, np.ndarray], Convergence]


class StagedDraws(NamedTuple):
    """One problem's draws of ``z`` ``(chains, draws, d)``, their ``diverging`` and ``num_steps``
    ``(chains, draws)``, the final ``step_size`` per chain, the ``stages`` run (plain words), the
    leapfrog steps of the slowest chain over every stage (``gradients``) and the last verdict."""

    z: np.ndarray
    diverging: np.ndarray
    num_steps: np.ndarray
    step_size: np.ndarray
    stages: tuple[str, ...]
    gradients: int
    convergence: Convergence


# --------------------------------------------------------------------------- the compiled program


# --------------------------------------------------------------------------- the stages


def rescaled_covariance(cov: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cov`` with each parameter's variance replaced by that of ``draws`` ``(n, d)`` where they differ
    by more than :data:`RESCALE_FACTOR` (correlations kept); returns it and the factors (1: unchanged).

    Examples
    --------
    >>> cov = np.diag([1.0, 4.0])
    >>> x = np.random.default_rng(0).standard_normal((400, 2)) * [1.0, 0.5]
    >>> new, factor = rescaled_covariance(cov, x)
    >>> factor[0], bool(0.05 < factor[1] < 0.08)
    (np.float64(1.0), True)
    """
    ratio = np.var(draws, axis=0) / np.diag(cov)
    factor = np.where((ratio > RESCALE_FACTOR) | (ratio < 1.0 / RESCALE_FACTOR), np.clip(ratio, 1e-3, 1e3), 1.0)
    factor = np.where(np.isfinite(factor), factor, 1.0)
    scale = np.sqrt(factor)
    return cov * np.outer(scale, scale), factor


def _more_draws(verdict: Convergence, n_drawn: int, settings: NutsSettings, cap: int) -> int:
    """How many more draws per chain the verdict asks for (0: none, hopeless, or the cap is reached)."""
    if not verdict.problems or verdict.hopeless:
        return 0
    want = 1.2 * ESS_MIN / verdict.min_ess if verdict.min_ess > 0 and math.isfinite(verdict.min_ess) else 2.0
    more = int(math.ceil(n_drawn * (max(want, 1.0) - 1.0)))
    more = max(more, settings.num_samples // 2)
    return min(int(math.ceil(more / 50.0) * 50), max(cap - n_drawn, 0))


def sample_staged(
    potential_gen: PotentialGen,
    centre: np.ndarray,
    cov: np.ndarray,
    data: Any,
    settings: NutsSettings,
    *,
    seed: int,
    check: Check,
    names: Sequence[str] | None = None,
    extend: bool = True,
    progress: Progress | None = None,
    chain_method: str | None = None,
    initial: InitialDensity | None = None,
) -> list[StagedDraws]:
    """Draws of ``B`` problems at once, each staged until converged (or its draws capped).

    Parameters
    ----------
    potential_gen
        ``potential_gen(centre, chol, data)`` -> the potential (negative log
        posterior) of whitened ``x``, for one problem (one module-level
        function object, so the program is shared between fits).
    centre, cov
        ``(B, d)`` and ``(B, d, d)``: each problem's MAP and Laplace covariance.
    data
        Each problem's data, stacked on a leading axis of length ``B``.
    settings
        ``num_warmup`` (split two thirds pilot, one third re-adaptation),
        ``num_samples`` (first draws per chain), ``num_chains``,
        ``target_accept_prob`` and ``max_tree_depth``.
    check
        ``check(b, z)``: the convergence rule's verdict on problem ``b``'s
        draws ``(chains, draws, d)``.
    names
        The parameters' names, for the stages' descriptions.
    extend
        Extend and re-whiten until converged (default); ``False`` stops after
        stage 4.
    progress
        Called with the number of iterations done (every 50 per chain).
    initial
        ``initial(b, z)``: problem ``b``'s log posterior and its gradient at
        ``z``, for the chains' starting states (default: a program compiled
        from ``potential_gen``).
    """
    run = Chains(potential_gen, centre, cov, data, settings, seed, chain_method, progress, initial)
    B = run.B
    stages: list[list[str]] = [[] for _ in range(B)]
    pilot = max(int(round(settings.num_warmup * 2 / 3)), 0)
    adapt = max(settings.num_warmup - pilot, 0)
    if pilot:
        z, _, _ = run.advance([pilot] * B, adapt=True)
        for b in range(B):
            stages[b].append(f"pilot: {pilot} iterations")
            kept = z[:, b, pilot // 4 :].reshape(-1, run.d)
            if kept.shape[0] >= 10:
                cov_b, factor = rescaled_covariance(run.cov[b], kept)
                if np.any(factor != 1.0):
                    run.rewhiten(b, run.centre[b], cov_b)
                    stages[b].append("rescaled the Laplace covariance (" + _factor_words(factor, names) + ")")
        run.restart_adaptation()
    z, steps, div = _first_draws(run, adapt, settings, stages, probe=extend)
    draws = [(z[:, b], steps[:, b], div[:, b]) for b in range(B)]
    check = _with_crawling(check, draws, settings)
    verdicts = [check(b, draws[b][0]) for b in range(B)]
    if extend:
        _note_hopeless(verdicts, stages)
    if extend and _fewer_divergences(run, draws, verdicts, adapt, settings, stages):
        verdicts = [check(b, draws[b][0]) for b in range(B)]
    cap = MAX_DRAWS_FACTOR * settings.num_samples
    for rewhitened in (False, True):
        if not extend:
            break
        draws, verdicts = _extend(run, draws, verdicts, check, settings, cap, stages)
        failing = [b for b in range(B) if verdicts[b].problems and not verdicts[b].hopeless]
        if rewhitened or not failing:
            break
        # one more round, whitened by the draws themselves
        for b in failing:
            pooled = draws[b][0].reshape(-1, run.d)
            try:
                run.rewhiten(b, pooled.mean(axis=0), np.cov(pooled.T))
                stages[b].append(f"re-whitened with the covariance of its {pooled.shape[0]} draws")
            except np.linalg.LinAlgError:  # draws that never moved in some direction: keep the whitening
                stages[b].append("drew again (the draws' covariance is singular)")
        run.restart_adaptation()
        n_adapt = [adapt if b in failing else 0 for b in range(B)]
        run.advance(n_adapt, adapt=True)
        n_new = [settings.num_samples if b in failing else 0 for b in range(B)]
        z, steps, div = run.advance(n_new, adapt=False)
        for b in failing:
            stages[b].append(f"adapted the step size: {adapt} iterations; drew {settings.num_samples} per chain")
            draws[b] = (z[:, b], steps[:, b], div[:, b])
            verdicts[b] = check(b, draws[b][0])
    if extend and _fewer_divergences(run, draws, verdicts, adapt, settings, stages):
        verdicts = [check(b, draws[b][0]) for b in range(B)]
        draws, verdicts = _extend(run, draws, verdicts, check, settings, cap, stages)
    if extend:
        _note_hopeless(verdicts, stages)  # verdicts that turned hopeless in a later stage
    eps = run.step_sizes()
    return [
        StagedDraws(
            z=draws[b][0],
            diverging=draws[b][2],
            num_steps=draws[b][1],
            step_size=eps[:, b],
            stages=tuple(stages[b]),
            gradients=int(run.gradients[:, b].max()),
            convergence=verdicts[b],
        )
        for b in range(B)
    ]


def _note_hopeless(verdicts: list[Convergence], stages: list[list[str]]) -> None:
    """Say once in each problem's stages why its failing draws were not extended (hopeless verdicts)."""
    for verdict, said in zip(verdicts, stages):
        if verdict.problems and verdict.hopeless and not any(s.startswith("not extended") for s in said):
            said.append("not extended (more draws cannot help): " + "; ".join(verdict.hopeless))


def _with_crawling(
    check: Check, draws: list[tuple[np.ndarray, np.ndarray, np.ndarray]], settings: NutsSettings
) -> Check:
    """``check`` whose failing verdicts are also hopeless while the latest draws of their problem
    (``draws``, updated in place by the stages) crawl (:data:`CRAWL_STEPS`)."""
    cap = 2**settings.max_tree_depth - 1

    def crawling(b: int, z: np.ndarray) -> Convergence:
        verdict = check(b, z)
        steps = float(np.mean(draws[b][1]))
        if verdict.problems and steps > CRAWL_STEPS:
            why = (
                f"its trajectories average {steps:.0f} leapfrog steps per draw (the cap is {cap}): the "
                "posterior's geometry, not the number of draws, is the problem"
            )
            return verdict._replace(hopeless=(*verdict.hopeless, why))
        return verdict

    return crawling


def _fewer_divergences(
    run: Chains,
    draws: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    verdicts: list[Convergence],
    adapt: int,
    settings: NutsSettings,
    stages: list[list[str]],
) -> bool:
    """Draws with divergent transitions drawn again after adapting the step size to the next acceptance
    target of :data:`DIVERGENCE_TARGETS` (in place, except for hopeless verdicts); whether any were."""
    again = False
    for target in DIVERGENCE_TARGETS:
        diverging = [b for b in range(run.B) if draws[b][2].any() and not verdicts[b].hopeless]
        if not diverging or target <= run.target:
            continue
        _readapt(run, diverging, target, adapt)
        n = settings.num_samples
        z, steps, div = run.advance([n if b in diverging else 0 for b in range(run.B)], adapt=False)
        for b in diverging:
            stages[b].append(
                f"{int(draws[b][2].sum())} divergent transitions: re-adapted the step size to a {target} "
                f"acceptance target ({adapt} iterations) and drew {n} per chain again"
            )
            draws[b] = (z[:, b], steps[:, b], div[:, b])
        again = True
    return again


def _readapt(run: Chains, problems: Sequence[int], target: float, adapt: int) -> None:
    """Dual averaging to the acceptance ``target`` again, for ``adapt`` iterations of ``problems`` only."""
    run.target = target
    run.restart_adaptation()
    run.advance([adapt if b in problems else 0 for b in range(run.B)], adapt=True)


def _first_draws(
    run: Chains, adapt: int, settings: NutsSettings, stages: list[list[str]], *, probe: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stages 3 and 4: adapt the step size, then ``num_samples`` draws per chain (each problem's stage said).

    With ``probe``, the first :data:`PROBE_FRACTION` of the draws come first: a problem whose probe
    diverges is re-adapted to the next acceptance target of :data:`DIVERGENCE_TARGETS` at once and
    drawn from there, instead of drawing all of them and drawing them again (stage 5).
    """
    B, n = run.B, settings.num_samples
    if adapt:
        run.advance([adapt] * B, adapt=True)
    first = int(n * PROBE_FRACTION) if probe else 0
    target = next((t for t in DIVERGENCE_TARGETS if t > run.target), None)
    drew = f"adapted the step size: {adapt} iterations; drew {n} per chain"
    if first < 1 or target is None:
        for said in stages:
            said.append(drew)
        return run.advance([n] * B, adapt=False)
    z0, s0, d0 = run.advance([first] * B, adapt=False)
    diverging = [int(b) for b in np.flatnonzero(d0.any(axis=(0, 2)))]
    if diverging:
        _readapt(run, diverging, target, adapt)
    for b, said in enumerate(stages):
        said.append(
            f"adapted the step size: {adapt} iterations; {int(d0[:, b].sum())} divergent transitions in the "
            f"first {first} draws per chain: re-adapted to a {target} acceptance target ({adapt} iterations); "
            f"drew {n} per chain"
            if b in diverging
            else drew
        )
    z1, s1, d1 = run.advance([n if b in diverging else n - first for b in range(B)], adapt=False)
    parts = []
    for a0, a1 in ((z0, z1), (s0, s1), (d0, d1)):
        out = np.empty((run.C, B, n, *a1.shape[3:]), a1.dtype)
        for b in range(B):
            out[:, b] = a1[:, b, :n] if b in diverging else np.concatenate([a0[:, b], a1[:, b, : n - first]], axis=1)
        parts.append(out)
    return parts[0], parts[1], parts[2]


def _extend(
    run: Chains,
    draws: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    verdicts: list[Convergence],
    check: Check,
    settings: NutsSettings,
    cap: int,
    stages: list[list[str]],
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], list[Convergence]]:
    """More draws for the problems that fail, while the verdicts ask and the cap allows."""
    while True:
        more = [_more_draws(verdicts[b], draws[b][0].shape[1], settings, cap) for b in range(run.B)]
        if not any(more):
            return draws, verdicts
        z, steps, div = run.advance(more, adapt=False)
        for b, m in enumerate(more):
            if m:
                zb, sb, db = draws[b]
                draws[b] = (
                    np.concatenate([zb, z[:, b, :m]], axis=1),
                    np.concatenate([sb, steps[:, b, :m]], axis=1),
                    np.concatenate([db, div[:, b, :m]], axis=1),
                )
                why = "; ".join(verdicts[b].problems)
                stages[b].append(f"extended to {draws[b][0].shape[1]} draws per chain ({why})")
                verdicts[b] = check(b, draws[b][0])


def _factor_words(factor: np.ndarray, names: Sequence[str] | None) -> str:
    changed = [int(i) for i in np.flatnonzero(factor != 1.0)]
    return ", ".join(f"{names[i] if names is not None else i}: variance x{factor[i]:.3g}" for i in changed)
