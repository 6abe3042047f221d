"""Gaia DR3 radial velocities as a term of the cluster model (:class:`RadialVelocities`).

**Members** share the cluster's mean radial velocity ``v_r`` with the
internal dispersion ``sigma_v`` of the proper-motion model (km/s; with
``perspective=True``, ``v_r`` is the projection's own parameter). A member's
catalogue velocity is Gaia's mean over its epochs, so an unresolved binary
can move it by tens of km/s: a fraction ``f_b`` of the members (a parameter)
has its velocity spread by a further :data:`BINARY_SD_KMS`::

    p(v_i | cluster) = (1 - f_b) N(v_i | v_r, sigma_v^2 + e_i^2)
                       + f_b N(v_i | v_r, sigma_v^2 + BINARY_SD_KMS^2 + e_i^2)

**The field**'s velocities are a Student t with :data:`FIELD_DOF` degrees of
freedom around a mean, with a scale ``s`` (the field's spread, added in
quadrature to each star's error): heavy tails, so that halo stars and
binaries of the field do not inflate the disc's spread.

A star without a radial velocity (or without a finite, positive error) gets
a term of 0 for both components: it is fitted as before, neither flagged nor
dropped. The velocity of a member along its own line of sight differs from
``v_r`` by the perspective of the cluster's transverse motion (about
``A_V w pm . theta`` km/s, 0.4 km/s for 5 mas/yr at 1 kpc one degree from the
centre); the term leaves that out.

The column is ``radial_velocity`` (DR3), or ``dr2_radial_velocity`` as EDR3
tables carry it, each with its ``_error``. :meth:`RadialVelocities.simulate`
gives mock fields velocities for stars with ``G_RVS`` below
:data:`GRVS_LIMIT`, with DR3-like errors and, for a fraction of the members,
a binary's orbital velocity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np

from gaia_distances.core.blocks import Block
from gaia_distances.core.numerics import LOG_SQRT_2PI, Array
from gaia_distances.core.parameters import LogitBeta, Normal, Parameter, Quantity
from gaia_distances.core.term import Column, ModelLike, SimulatedColumn, Term

__all__ = [
    "BINARY_SD_KMS",
    "FIELD_DOF",
    "GRVS_LIMIT",
    "RadialVelocities",
    "RadialVelocityData",
    "RadialVelocityValues",
    "grvs_from_g",
    "radial_velocity_error_dr3",
]

#: Extra spread (km/s) of a binary member's mean radial velocity about the cluster's.
BINARY_SD_KMS = 20.0
#: Degrees of freedom of the field's Student t.
FIELD_DOF = 4.0
#: Gaia DR3 published radial velocities down to ``G_RVS = 14`` (Katz et al. 2023).
GRVS_LIMIT = 14.0


class RadialVelocityData(NamedTuple):
    """Per-star radial velocities (km/s): the value, its error and 1 where the star has one (else 0)."""

    rv: Array
    rv_error: Array
    has_rv: Array


class RadialVelocityValues(NamedTuple):
    """The term's population values: the cluster's mean and ln dispersion, the binaries' logit fraction,
    the field's mean and ln spread (km/s)."""

    v_r: Array
    log_sigma_v: Array
    logit_binary: Array
    field_mean: Array
    field_log_sd: Array


def _student_log_pdf(x: Array, scale: Array, dof: float) -> Array:
    t = x / scale
    norm = jsp.gammaln(0.5 * (dof + 1)) - jsp.gammaln(0.5 * dof) - 0.5 * math.log(dof * math.pi)
    return norm - jnp.log(scale) - 0.5 * (dof + 1) * jnp.log1p(t * t / dof)


def _field_fit(v: np.ndarray, e: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The field's Student t (mean, ln scale) by maximum likelihood over velocities ``v`` with errors ``e``,
    from ``start``; ``start`` itself where the optimiser fails."""
    from scipy.optimize import minimize
    from scipy.stats import t as student

    def nll(x: np.ndarray) -> float:
        return -float(np.sum(student.logpdf(v, FIELD_DOF, loc=x[0], scale=np.sqrt(np.exp(2 * x[1]) + e * e))))

    res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-4})
    return res.x if res.success and np.all(np.isfinite(res.x)) else start


def grvs_from_g(g: np.ndarray, bp_rp: np.ndarray) -> np.ndarray:
    """``G_RVS`` from ``G`` and ``BP - RP``: Sartoretti et al. (2023)'s cubic ``G_RVS - G = -0.0397 - 0.2852 x
    - 0.0330 x^2 - 0.0867 x^3`` for ``x = BP - RP`` in [-0.15, 1.2], continued linearly (with its slope at
    1.2) for redder stars (the simulator's approximation; there the relation is steeper still)."""
    x = np.clip(np.asarray(bp_rp, float), -0.15, None)
    xc = np.minimum(x, 1.2)
    cubic = -0.0397 - 0.2852 * xc - 0.0330 * xc**2 - 0.0867 * xc**3
    slope = -0.2852 - 2 * 0.0330 * 1.2 - 3 * 0.0867 * 1.2**2
    return np.asarray(g, float) + cubic + slope * (x - xc)


def radial_velocity_error_dr3(grvs: np.ndarray) -> np.ndarray:
    """A Gaia DR3-like radial-velocity error (km/s) at ``G_RVS``: 0.15 km/s for bright stars, rising to about
    6 km/s at ``G_RVS = 14`` (the shape of Katz et al. 2023's precision for solar-type stars)."""
    return 0.15 + 5.8 * np.exp(1.1 * (np.asarray(grvs, float) - GRVS_LIMIT))


class RadialVelocities(Term):
    """Gaia DR3 radial velocities: the members' common mean with binaries, and the field's distribution."""

    name = "radial_velocities"
    help = (
        "Gaia DR3 radial velocities (radial_velocity, or EDR3's dr2_radial_velocity): the members share the "
        "cluster's mean with its dispersion sigma_v, a fitted fraction of them are binaries."
    )
    columns = (
        Column("radial_velocity", ("dr2_radial_velocity",), "km / s"),
        Column("radial_velocity_error", ("dr2_radial_velocity_error",), "km / s"),
    )
    min_stars = 10
    needs_kinematics = True

    def block_quantities(self) -> tuple[Quantity, ...]:
        return (
            Quantity("rv", "km / s", "cluster mean radial velocity (members' Gaia radial velocities)", True),
            Quantity("rv_binary_fraction", "", "fraction of members whose radial velocity a binary spreads", False),
            Quantity("field_rv_mean", "km / s", "field stars' mean radial velocity", False),
            Quantity(
                "field_rv_scale",
                "km / s",
                f"scale of the field stars' radial velocities (Student t, {FIELD_DOF:g} dof: its sd is sqrt(2) x this)",
                False,
            ),
        )

    def block(self, model: ModelLike) -> Block:
        params: tuple[Parameter, ...] = ()
        if not model.perspective:  # with the perspective projection, its v_r is the members' mean
            params += (
                Parameter("v_r", Normal(0.0, model.priors.v_r_sd), True, "the cluster's radial velocity (km/s)"),
            )
        params += (
            Parameter("logit_rv_binary", LogitBeta(1.5, 3.5), True, "logit of the members' binary fraction"),
            Parameter("field_rv_mean", Normal(0.0, 100.0), False, "the field's mean radial velocity (km/s)"),
            Parameter(
                "field_log_rv_scale",
                Normal(math.log(30.0), 1.0),
                False,
                "ln of the scale of the field's radial velocities (km/s)",
            ),
        )
        return Block(params, (), self.block_quantities())

    def usable(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        v, e = values["radial_velocity"], values["radial_velocity_error"]
        return np.isfinite(v) & np.isfinite(e) & (e > 0) & (np.abs(v) < 1000.0)

    def prepare(self, values: Mapping[str, np.ndarray]) -> RadialVelocityData:
        ok = self.usable(values)
        v = np.where(ok, values["radial_velocity"], 0.0)
        e = np.where(ok, values["radial_velocity_error"], 1.0)
        return RadialVelocityData(v, e, ok.astype(float))

    def present(self, data: RadialVelocityData) -> Array:
        return data.has_rv

    def population(self, z: Array, model: ModelLike, xp: Any) -> RadialVelocityValues:
        def at(name: str) -> Array:
            return z[..., model.position(name)]

        v_r = at("v_r") if "v_r" in model.names else None  # None: integrated out by the sampler
        return RadialVelocityValues(
            v_r, at("log_sigma_v"), at("logit_rv_binary"), at("field_rv_mean"), at("field_log_rv_scale")
        )

    def integrable(self, model: ModelLike) -> str | None:
        # without the perspective projection the members' mean velocity enters this term alone
        return None if model.perspective else "v_r"

    #: A mean velocity known to better than 0.5 km/s rests on several members that agree: its posterior is
    #: Gaussian (NGC 2506's 33 velocities, 0.37 km/s); a looser one, from a handful of members of which one
    #: may be a binary, can be skewed or have several modes (NGC 2437, 2301: 1-3 km/s), which the grid
    #: integrates and NUTS explores slowly (benchmarks/RESULTS.md)
    integrate_above = 0.5

    def scanned(self, model: ModelLike) -> str | None:
        # a binary among a handful of members, or a field star near them, gives v_r's posterior a second
        # mode; with the perspective projection v_r is the projection's parameter, pulled the same way
        return "v_r"

    def at_nodes(self, values: RadialVelocityValues, nodes: Array) -> RadialVelocityValues:
        return values._replace(v_r=nodes)

    def log_terms(self, values: RadialVelocityValues, data: RadialVelocityData) -> tuple[Array, Array]:
        e2 = data.rv_error * data.rv_error
        scale = jnp.sqrt(jnp.exp(2.0 * values.field_log_sd) + e2)
        field = _student_log_pdf(data.rv - values.field_mean, scale, FIELD_DOF)
        if values.v_r is None:
            return jnp.zeros_like(field), data.has_rv * field
        var = jnp.exp(2.0 * values.log_sigma_v) + e2
        var_b = var + BINARY_SD_KMS**2
        # per star, then at each value of v_r (an array of nodes, when the sampler integrates it out)
        single = -jnp.logaddexp(0.0, values.logit_binary) - 0.5 * jnp.log(var) - LOG_SQRT_2PI
        binary = -jnp.logaddexp(0.0, -values.logit_binary) - 0.5 * jnp.log(var_b) - LOG_SQRT_2PI
        dv2 = jnp.square(data.rv - values.v_r)
        cluster = jnp.logaddexp(single - 0.5 * dv2 / var, binary - 0.5 * dv2 / var_b)
        return data.has_rv * cluster, data.has_rv * field

    def physical(self, values: RadialVelocityValues, model: ModelLike) -> dict[str, np.ndarray]:
        out = {} if values.v_r is None else {"rv": np.asarray(values.v_r)}
        return out | {
            "rv_binary_fraction": 1.0 / (1.0 + np.exp(-np.asarray(values.logit_binary))),
            "field_rv_mean": np.asarray(values.field_mean),
            "field_rv_scale": np.exp(np.asarray(values.field_log_sd)),
        }

    def start(self, z: np.ndarray, data: RadialVelocityData | None, model: ModelLike, near: np.ndarray | None) -> None:
        if data is None:
            return
        has = np.asarray(data.has_rv) > 0
        v = np.asarray(data.rv, float)
        if near is None:  # the field's distribution from every star; no cluster yet
            centre = float(np.median(v[has])) if has.any() else 0.0
            q = np.percentile(v[has], [16, 84]) if has.sum() > 2 else np.array([-30.0, 30.0])
            start = np.array([centre, math.log(max(0.5 * (q[1] - q[0]), 2.0))])
            if has.sum() > 2:  # its maximum likelihood: the search's optimiser then starts there
                start = _field_fit(v[has], np.asarray(data.rv_error, float)[has], start)
            z[model.position("field_rv_mean")], z[model.position("field_log_rv_scale")] = start
            if "v_r" in model.names:
                z[model.position("v_r")] = centre
            z[model.position("logit_rv_binary")] = math.log(0.3 / 0.7)
            return
        mine = has & np.asarray(near, bool)
        # the candidate's stars: their median velocity (robust to binaries and the field)
        if mine.sum() >= 3 and "v_r" in model.names:
            z[model.position("v_r")] = float(np.median(v[mine]))

    def simulate(self, rng: np.random.Generator, truth: Mapping[str, Any]) -> dict[str, SimulatedColumn]:
        """Radial velocities for the stars with ``G_RVS < 14`` (:func:`grvs_from_g`).

        ``truth`` holds per star ``radial_velocity_true`` (km/s), ``phot_g_mean_mag``, ``bp_rp``,
        ``is_member`` and the fraction of members that are binaries, ``binary_fraction``: each binary's
        velocity moves by its orbit's ``K sin(phase)``, with ``K`` log-uniform in 1-50 km/s.
        """
        g, bp_rp = np.asarray(truth["phot_g_mean_mag"], float), np.asarray(truth["bp_rp"], float)
        n = g.size
        grvs = grvs_from_g(g, bp_rp)
        err = radial_velocity_error_dr3(grvs) * np.exp(0.2 * rng.standard_normal(n))
        member = np.asarray(truth["is_member"], bool)
        binary = member & (rng.uniform(size=n) < float(truth.get("binary_fraction", 0.0)))
        orbit = np.exp(rng.uniform(math.log(1.0), math.log(50.0), n)) * np.sin(rng.uniform(0, 2 * np.pi, n))
        v = np.asarray(truth["radial_velocity_true"], float) + np.where(binary, orbit, 0.0)
        v = v + err * rng.standard_normal(n)
        seen = grvs < GRVS_LIMIT
        return {
            "radial_velocity": SimulatedColumn(np.where(seen, v, np.nan), "km / s", "Radial velocity (Gaia DR3-like)"),
            "radial_velocity_error": SimulatedColumn(np.where(seen, err, np.nan), "km / s", "Radial velocity error"),
            "is_binary": SimulatedColumn(binary, "", "Member whose radial velocity a binary orbit moves (simulation)"),
        }
