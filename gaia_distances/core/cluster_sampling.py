"""The cluster model's samplers: NUTS on the marginal model (one field or many) and on the joint model.

The marginal samplers draw ``x``, the population parameters whitened by the
Laplace approximation at the MAP (``z = z_map + chol @ x``), from starting
points ``0.5 x N(0, I)``; they return the draws of ``z``. The extended models
(flexible field, proper motions: tens of parameters) are sampled in stages
until the draws of every reported parameter pass the convergence rule
(:mod:`~gaia_distances.core.staged`), and so is the reference model's
four-parameter one (one sampler for every marginal model). The joint sampler
draws the population and one latent ``ln r`` per star, starting at the MAP and each star's EDSD posterior median.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from gaia_distances.core.collapse import (
    GRID_NODES,
    collapsed_model,
    expand_draws,
    grid_starts,
    n_grid_rows,
    parameter_grid,
    with_grid,
    worth_collapsing,
)
from gaia_distances.core.diagnostics import convergence_problems, ess_rhat, no_cluster_signal
from gaia_distances.core.initialisation import MapResult, value_and_grad, whitening
from gaia_distances.core.kinematics import KinematicData
from gaia_distances.core.likelihood import StarData, split_star_data, stack_star_data
from gaia_distances.core.membership import (
    SCREEN_POINTS,
    SKIP_CHECK_LOG_ODDS,
    certain_non_members,
    log_odds_program,
    max_log_odds,
)
from gaia_distances.core.models import joint_potential_gen, whitened_potential_gen
from gaia_distances.core.nuts_segments import InitialDensity, compile_segments
from gaia_distances.core.population import ClusterModel, physical_draws
from gaia_distances.core.sampling import (
    NutsSettings,
    Progress,
    precompile,
    run_chains,
)
from gaia_distances.core.staged import Convergence, sample_staged

__all__ = [
    "SPLIT_ABOVE",
    "Draws",
    "compile_marginal",
    "convergence_check",
    "sample_joint",
    "sample_marginal",
    "sample_marginal_batch",
]


class Draws(NamedTuple):
    """Unconstrained population draws (chains, draws, 4), the joint model's distances in pc
    (chains, draws, stars) or ``None``, per-draw statistics (``diverging`` and ``n_steps``) and, for the
    staged sampler, what it ran (``stages``, ``gradients`` per chain, final ``step_size``)."""

    z: np.ndarray
    r: np.ndarray | None
    sample_stats: dict[str, np.ndarray]
    sampler: dict[str, Any] | None = None


#: Fields of more stars than this skip the cluster integral of their certain non-members (smaller ones
#: gain less than the sampler's compilation for the split shapes costs, which cannot overlap the search).
SPLIT_ABOVE = 2048


def compile_marginal(data: StarData, model: ClusterModel, settings: NutsSettings) -> None:
    """Compile the marginal sampler for ``data``'s shapes (thread-safe: run it beside the MAP search).

    For the staged sampler of a field of more than :data:`SPLIT_ABOVE` stars
    that is the screen for certain non-members; the sampler itself is
    compiled once the screen has split the stars (its shapes depend on the
    split).
    """
    dt = data.parallax.dtype
    n = model.n_params
    if data.n_stars > SPLIT_ABOVE:
        precompile(log_odds_program(model), jnp.zeros((SCREEN_POINTS, n), dt), data)
        return
    collapsed = collapsed_model(model)
    if collapsed is None:
        compile_segments(whitened_potential_gen(model), stack_star_data([data]), n, settings)
        return
    # whether the sampler collapses the model depends on its MAP; the collapsed sampler is compiled here,
    # as a field with a handful of member velocities (most open clusters') needs it; the grid's shapes do
    # not depend on its values, so a placeholder grid serves
    placeholder = (np.linspace(-1.0, 1.0, GRID_NODES), 1.0)
    gridded = with_grid(data, model, placeholder, n_grid_rows(data, model))
    compile_segments(whitened_potential_gen(collapsed), stack_star_data([gridded]), collapsed.n_params, settings)
    precompile(value_and_grad(collapsed), jnp.zeros(collapsed.n_params, dt), gridded)  # the chains' first densities


def convergence_check(model: ClusterModel, n_stars: Sequence[int]) -> Callable[[int, np.ndarray], Convergence]:
    """The convergence rule on every reported parameter's draws (R-hat, bulk and tail ESS), for the staged
    sampler; draws of problem ``b`` (``n_stars[b]`` stars) without a cluster signal are hopeless (more
    draws do not identify a cluster that is not there). A single chain is judged by its ESS alone (R-hat
    is undefined for it), so its draws are extended only while their ESS asks."""

    def check(b: int, z: np.ndarray) -> Convergence:
        physical = physical_draws(z, model)
        numbers = {k: ess_rhat(v) for k, v in physical.items()}
        bulk = {k: v[0] for k, v in numbers.items()}
        tail = {k: v[1] for k, v in numbers.items()}
        r_hat = {k: v[2] for k, v in numbers.items()}
        problems = convergence_problems(r_hat, bulk, 0, tail, num_chains=z.shape[0])
        ess = [e for v in numbers.values() for e in v[:2]]
        min_ess = float(np.min(ess)) if np.all(np.isfinite(ess)) else math.nan
        finite_r_hat = [v[2] for v in numbers.values() if np.isfinite(v[2])]  # none for a single chain
        max_r_hat = float(max(finite_r_hat)) if finite_r_hat else math.nan
        return Convergence(tuple(problems), min_ess, max_r_hat, tuple(no_cluster_signal(physical, n_stars[b])))

    return check


def sample_marginal(
    data: StarData,
    model: ClusterModel,
    start: MapResult,
    settings: NutsSettings,
    *,
    seed: int,
    progress: Progress | None = None,
    extend: bool = True,
) -> Draws:
    """NUTS over the population parameters of one field, whitened at the MAP (staged: extended until converged).

    For a field of more than :data:`SPLIT_ABOVE` stars the staged sampler
    gives the stars that cannot be members at any
    population near the posterior (:func:`~gaia_distances.core.membership.certain_non_members`)
    the field's term alone, which skips their cluster integral: exact to
    ``e^-30`` per star. Afterwards their log-odds at the draws are checked;
    where one exceeds :data:`~gaia_distances.core.membership.SKIP_CHECK_LOG_ODDS`
    the field is sampled again with every star's cluster term.
    """

    def run(d: StarData) -> Draws:
        return sample_marginal_batch(
            [d], model, [start], settings, seed=seed, progress=progress, extend=extend, search_data=[data]
        )[0]

    if data.n_stars <= SPLIT_ABOVE:
        return run(data)
    skip = certain_non_members(data, model, start.z, start.covariance, seed=seed)
    split = split_star_data(data, skip)
    out = run(split)
    if split is data:
        return out
    flat = out.z.reshape(-1, out.z.shape[-1])
    check = flat[np.linspace(0, len(flat) - 1, SCREEN_POINTS).astype(int)]
    worst = float(np.max(max_log_odds(check, data, model)[skip], initial=-np.inf))
    note = f"{int(skip.sum())} of {int(data.real().sum())} stars sampled as certain field stars"
    assert out.sampler is not None
    if worst < SKIP_CHECK_LOG_ODDS:
        out.sampler["stages"].insert(0, f"{note} (largest membership log-odds at the draws {worst:.0f})")
        return out
    again = run(data)
    assert again.sampler is not None
    again.sampler["stages"].insert(
        0, f"{note}, but one reached log-odds {worst:.1f} at the draws: sampled again with every star"
    )
    return again


def sample_marginal_batch(
    data: Sequence[StarData],
    model: ClusterModel,
    starts: Sequence[MapResult],
    settings: NutsSettings,
    *,
    seed: int,
    progress: Progress | None = None,
    extend: bool = True,
    search_data: Sequence[StarData] | None = None,
) -> list[Draws]:
    """NUTS for many equally padded fields at once (one compiled program); one :class:`Draws` per field.

    The chains' first log densities and gradients come from the MAP search's compiled gradient on
    ``search_data`` (default ``data``; the same stars, unsplit): the posterior is the same up to the
    ``e^-30`` per star that a split leaves out.

    A model with a parameter that a term lets the sampler integrate out is sampled collapsed
    (:mod:`~gaia_distances.core.collapse`) where the MAP leaves that parameter loose in some field
    (:func:`~gaia_distances.core.collapse.worth_collapsing`), then the parameter is drawn from its
    conditional; where the grid fails its checks at the draws, the model is sampled again with the
    parameter in ``z``.
    """
    collapsed = collapsed_model(model)
    if collapsed is not None and not any(worth_collapsing(s.covariance, model) for s in starts):
        collapsed = None  # every field pins the parameter down: its posterior is Gaussian, NUTS samples it well
    note = None
    if collapsed is not None:
        draws, note = _sample_collapsed(data, model, collapsed, starts, settings, seed, progress, extend)
        if draws is not None:
            return draws
    out = _sample_full(data, model, starts, settings, seed, progress, extend, search_data)
    for d in out:
        if note is not None and d.sampler is not None:
            d.sampler["stages"].insert(0, note)
    return out


def _draws(r: Any, z: np.ndarray, stages: list[str]) -> Draws:
    return Draws(
        z,
        None,
        {"diverging": r.diverging, "n_steps": r.num_steps},
        {
            "stages": stages,
            "gradients_per_chain": r.gradients,
            "step_size": [float(e) for e in r.step_size],
            "converged": not r.convergence.problems,
        },
    )


def _sample_collapsed(
    data: Sequence[StarData],
    model: ClusterModel,
    collapsed: ClusterModel,
    starts: Sequence[MapResult],
    settings: NutsSettings,
    seed: int,
    progress: Progress | None,
    extend: bool,
) -> tuple[list[Draws] | None, str | None]:
    """The staged sampler on the collapsed model, its draws expanded; ``(None, why)`` where the grid of a
    field fails its checks."""
    n_rows = max(n_grid_rows(d, model) for d in data)
    gridded = [with_grid(d, model, parameter_grid(s.z, s.covariance, model), n_rows) for d, s in zip(data, starts)]
    centre, cov = grid_starts(starts, model, collapsed)
    staged = _staged(collapsed, centre, cov, gridded, gridded, data, settings, seed, progress, extend)
    out = []
    param = next(n for n in model.names if n not in collapsed.names)
    for b, r in enumerate(staged):
        z, check = expand_draws(r.z, gridded[b], collapsed, seed=seed + b)
        if not check.ok:
            return None, f"{check.describe(param)}: the grid fails its checks, so {param} was sampled instead"
        out.append(_draws(r, z, [*r.stages, check.describe(param)]))
    return out, None


def _sample_full(
    data: Sequence[StarData],
    model: ClusterModel,
    starts: Sequence[MapResult],
    settings: NutsSettings,
    seed: int,
    progress: Progress | None,
    extend: bool,
    search_data: Sequence[StarData] | None,
) -> list[Draws]:
    """The staged sampler on ``model`` itself."""
    n = model.n_params
    cov = np.stack([s.covariance if s.covariance is not None else whitening(None, n) ** 2 for s in starts])
    density = list(search_data) if search_data is not None else list(data)
    centre = np.stack([s.z for s in starts])
    staged = _staged(model, centre, cov, list(data), density, data, settings, seed, progress, extend)
    return [_draws(r, r.z, list(r.stages)) for r in staged]


def _staged(
    model: ClusterModel,
    centre: np.ndarray,
    cov: np.ndarray,
    data: list[StarData],
    density_data: list[StarData],
    counted: Sequence[StarData],
    settings: NutsSettings,
    seed: int,
    progress: Progress | None,
    extend: bool,
) -> Any:
    """The staged sampler on ``model`` over ``data``, its first densities from ``density_data`` (the search's
    compiled gradient) and its convergence judged with the real stars of ``counted``."""
    return sample_staged(
        whitened_potential_gen(model),
        centre,
        cov,
        stack_star_data(data),
        settings,
        seed=seed,
        check=convergence_check(model, [_n_real(d) for d in counted]),
        names=model.names,
        extend=extend,
        progress=progress,
        initial=_search_density(model, density_data),
    )


def _search_density(model: ClusterModel, data: list[StarData]) -> InitialDensity:
    """``initial(b, z)`` of the staged sampler from the search's compiled gradient (no new program)."""
    vg = value_and_grad(model)

    def initial(b: int, z: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = vg(jnp.asarray(z, data[b].parallax.dtype), data[b])
        return float(value), np.asarray(grad, float)

    return initial


def _n_real(data: StarData) -> int:
    """The real stars of ``data``, with those of its ``field_only`` part."""
    return int(data.real().sum()) + (_n_real(data.field_only) if data.field_only is not None else 0)


def sample_joint(
    parallax: np.ndarray,
    parallax_error: np.ndarray,
    zero_point: np.ndarray,
    model: ClusterModel,
    start: MapResult,
    settings: NutsSettings,
    *,
    seed: int,
    progress: Progress | None = None,
    kin: KinematicData | None = None,
    terms: Any = None,
) -> Draws:
    """NUTS over the population and one latent ``ln r`` per star
    (:func:`~gaia_distances.core.models.joint_model`), from the MAP.

    ``parallax`` is zero-point corrected (mas); the model sees the catalogue
    parallax ``parallax + zero_point``. A kinematic model also takes the
    stars' proper motions ``kin``, a model with terms their per-star data
    ``terms`` (:attr:`~gaia_distances.core.likelihood.StarData.terms`).
    """
    from gaia_distances.core.priors import EDSDPrior
    from gaia_distances.core.quadrature import summarize_posteriors

    n = model.n_params
    rng = np.random.default_rng(seed)
    cov = start.covariance
    scale = np.sqrt(np.diag(cov)) if cov is not None else np.full(n, 0.01)
    inits = [start.z + 0.5 * scale * rng.standard_normal(n) for _ in range(settings.num_chains)]
    names = model.names
    # each distance starts at its EDSD median at the MAP length scale (the median distance, flexible field)
    length = math.exp(start.z[model.position("log_L")]) if model.field == "edsd" else 1000.0 / 2.674
    r0 = summarize_posteriors(parallax, parallax_error, EDSDPrior(np.full(len(parallax), length)))["quantiles"][:, 1]
    log_r0 = jnp.asarray(np.log(np.where(np.isfinite(r0), r0, 1000.0)))
    site = "u"  # ln(r / pc), for every model

    def as_sites(z: np.ndarray) -> dict[str, Any]:
        return {**{name: jnp.asarray(z[i]) for i, name in enumerate(names)}, site: log_r0}

    args = (*(jnp.asarray(x) for x in (parallax_error, parallax + zero_point, zero_point)), kin, terms)
    sites = [as_sites(z) for z in inits]
    res = run_chains(joint_potential_gen(model), sites, args, settings, seed=seed, progress=progress)
    z = np.stack([np.asarray(res.samples[name], float) for name in names], axis=-1)
    r = np.exp(np.asarray(res.samples[site], float))  # unconstrained ln r -> pc
    return Draws(z, r, {"diverging": res.diverging, "n_steps": res.num_steps})
