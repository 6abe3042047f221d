"""Mock Gaia DR3 fields with known true distances.

Field stars are drawn from an EDSD or generalized gamma prior, optional cluster
members from a Gaussian in ``ln r``. G magnitudes come from a simple
dwarf/giant luminosity function with extinction; parallax errors follow the
Gaia DR3 relation between G and parallax precision; the columns the
Lindegren et al. (2021) zero-point recipe reads are filled in, and the true zero
point is added to the simulated parallaxes.

Proper motions: members share one space velocity plus an isotropic internal
dispersion; field stars move in a simple disc model (flat rotation curve,
asymmetric drift, velocity dispersions, Schönrich et al. 2010 solar motion),
seen from the Sun. The observed parallax and proper motions are drawn jointly
with Gaia-like errors and correlations.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import (
    ICRS,
    BarycentricTrueEcliptic,
    CartesianDifferential,
    CartesianRepresentation,
    Galactocentric,
    SkyCoord,
)
from astropy.table import QTable

from gaia_distances.columns import add_column, update_provenance
from gaia_distances.core.astrometry import (
    PM_ERROR_FACTORS_DR3,
    correlated_astrometric_noise,
    parallax_error_dr3,
    proper_motion_from_velocity,
)
from gaia_distances.core.kinematics import A_V, sky_basis
from gaia_distances.core.numerics import positive_definite_correlations
from gaia_distances.core.offset_field import draw_offset_field
from gaia_distances.core.sampling import checked_seed
from gaia_distances.core.terms import TERMS
from gaia_distances.systematics import SystematicsSpec, resolve_systematics
from gaia_distances.zeropoint import load_recipe, nu_eff_from_bp_rp

__all__ = ["parallax_error_dr3", "simulate_field"]

#: Barycentric ICRS Cartesian velocity (km/s) that gives M67's motion (pmra -10.97, pmdec -2.94
#: mas/yr, radial velocity 34 km/s) at its position and 850 pc: the default ``cluster_velocity``.
M67_VELOCITY_KMS = (8.13, 56.24, -4.63)

#: Field kinematics: flat rotation curve (km/s), solar motion (U, V, W) relative to the local standard
#: of rest (km/s; Schönrich, Binney & Dehnen 2010) and the astropy v4.0 Galactocentric geometry.
V_CIRC_KMS = 236.0
SOLAR_MOTION_KMS = (11.1, 12.24, 7.25)
R0_KPC, Z_SUN_PC = 8.122, 20.8
#: Disc populations: (fraction, (sigma_R, sigma_phi, sigma_z) in km/s); each lags the circular
#: velocity by the asymmetric drift sigma_R^2 / (80 km/s) (Strömberg relation, Dehnen & Binney 1998).
DISC_POPULATIONS = ((0.9, (35.0, 25.0, 18.0)), (0.1, (60.0, 45.0, 40.0)))


def _draw_distances(rng: np.random.Generator, n: int, prior: Any) -> np.ndarray:
    from gaia_distances.priors import EDSD, GGD

    if isinstance(prior, EDSD):
        return float(prior.length_scale) * rng.gamma(3.0, 1.0, n)  # type: ignore[arg-type]
    if isinstance(prior, GGD):
        a, b, L = float(prior.alpha), float(prior.beta), float(prior.length_scale)  # type: ignore[arg-type]
        return L * rng.gamma((b + 1.0) / a, 1.0, n) ** (1.0 / a)
    raise TypeError("simulate_field draws field distances from an EDSD or GGD prior with scalar parameters")


def _sky_positions(
    rng: np.random.Generator, centre: SkyCoord, n: int, radius: u.Quantity, sigma: u.Quantity | None = None
) -> SkyCoord:
    pa = rng.uniform(0, 360, n) * u.deg
    if sigma is None:
        # uniform on the spherical cap
        cosr = np.cos(radius.to_value(u.rad))
        sep = np.arccos(1 - rng.uniform(0, 1, n) * (1 - cosr)) * u.rad
    else:
        # a Rayleigh profile truncated at the cone's edge: each draw moved to the same quantile of the truncated
        # profile (the same random numbers as the untruncated draw; no star piles up on the edge)
        s, r = sigma.to_value(u.deg), radius.to_value(u.deg)
        x = rng.rayleigh(s, n)
        inside = -np.expm1(-0.5 * (r / s) ** 2)  # the profile's mass inside the cone
        sep = s * np.sqrt(-2.0 * np.log1p(np.expm1(-0.5 * (x / s) ** 2) * inside)) * u.deg
    return centre.directional_offset_by(pa, sep)


def _galactocentric_frame() -> Galactocentric:
    """The astropy v4.0 Galactocentric frame with the Sun moving at ``V_CIRC_KMS`` + ``SOLAR_MOTION_KMS``."""
    u_sun, v_sun, w_sun = SOLAR_MOTION_KMS
    return Galactocentric(
        galcen_coord=ICRS(ra=266.4051 * u.deg, dec=-28.936175 * u.deg),
        galcen_distance=R0_KPC * u.kpc,
        galcen_v_sun=CartesianDifferential([u_sun, V_CIRC_KMS + v_sun, w_sun] * (u.km / u.s)),
        z_sun=Z_SUN_PC * u.pc,
        roll=0 * u.deg,
    )


def _field_proper_motions(
    rng: np.random.Generator, ra: np.ndarray, dec: np.ndarray, r: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True (pmra, pmdec) in mas/yr and radial velocity in km/s of disc stars at (ra, dec) [deg] and r [pc],
    seen from the Sun."""
    frame = _galactocentric_frame()
    xyz = SkyCoord(ra * u.deg, dec * u.deg, distance=r * u.pc).transform_to(frame).cartesian.xyz.to_value(u.kpc)
    big_r = np.hypot(xyz[0], xyz[1])
    e_r = xyz[:2] / big_r
    e_phi = np.stack([e_r[1], -e_r[0]])  # direction of Galactic rotation (+y at the Sun)
    frac = np.array([f for f, _ in DISC_POPULATIONS])
    sig = np.array([s for _, s in DISC_POPULATIONS])[rng.choice(len(frac), size=r.size, p=frac / frac.sum())]
    dv = sig * rng.standard_normal((r.size, 3))
    v_r, v_phi = dv[:, 0], V_CIRC_KMS - sig[:, 0] ** 2 / 80.0 + dv[:, 1]
    vel = CartesianDifferential(np.concatenate([v_r * e_r + v_phi * e_phi, dv[None, :, 2]]) * (u.km / u.s))
    moving = SkyCoord(CartesianRepresentation(xyz * u.kpc, differentials=vel), frame=frame).transform_to(ICRS())
    rv = moving.radial_velocity.to_value(u.km / u.s)
    return moving.pm_ra_cosdec.to_value(u.mas / u.yr), moving.pm_dec.to_value(u.mas / u.yr), rv


def simulate_field(
    n_field: int = 5000,
    *,
    n_cluster: int = 0,
    field_prior: Any = None,
    cluster_distance: float = 850.0,
    cluster_sigma_log: float = 0.015,
    cluster_radius_pc: float = 2.5,
    centre: SkyCoord | tuple[float, float] = (132.846, 11.814),
    radius: u.Quantity = 0.5 * u.deg,
    magnitude_limit: float | None = 21.0,
    frac_6p: float = 0.1,
    frac_2p: float = 0.0,
    errors_independent_of_distance: bool = False,
    cluster_velocity: tuple[float, float, float] | u.Quantity = M67_VELOCITY_KMS,
    cluster_velocity_dispersion: float = 0.7,
    parallax_systematics: SystematicsSpec = None,
    binary_fraction: float = 0.0,
    seed: int = 0,
) -> QTable:
    """Simulate a Gaia DR3 field, optionally with a cluster, with known truth.

    Parameters
    ----------
    n_field, n_cluster
        Numbers of field stars and cluster members.
    field_prior
        :class:`~gaia_distances.EDSD` (default ``L = 1350 pc``) or
        :class:`~gaia_distances.GGD` with scalar parameters.
    cluster_distance, cluster_sigma_log
        Members have ``ln r ~ Normal(ln D, sigma)``; D in pc.
    cluster_radius_pc
        Scale (pc) of the members' Gaussian spread on the sky.
    centre, radius
        Cone centre (SkyCoord or (ra, dec) in deg) and radius.
    magnitude_limit
        Keep only stars with G brighter than this (redrawing until the counts
        are met), as in Gaia's magnitude-limited catalogue (default G < 21).
        ``None`` keeps every star, so the true distances follow
        ``field_prior`` exactly: use it for calibration studies.
    frac_6p, frac_2p
        Fractions of 6-parameter and 2-parameter (no parallax, no proper
        motion) solutions.
    errors_independent_of_distance
        Shuffle the parallax errors across stars before drawing the parallaxes
        (the proper-motion errors follow each star's parallax error).
        Real errors grow with G and hence with distance, so the error itself
        carries information about r that a model conditioning on it ignores;
        calibration and recovery studies of such models need this ``True``.
    cluster_velocity
        The members' common space velocity, barycentric ICRS Cartesian
        ``(v_x, v_y, v_z)`` in km/s (or a Quantity). Each member's proper
        motion is this velocity plus its internal motion, projected at its own
        position and distance. The default, :data:`M67_VELOCITY_KMS`, gives
        M67's pmra = -10.97, pmdec = -2.94 mas/yr (and 34 km/s radial velocity)
        at the default centre and 850 pc.
    cluster_velocity_dispersion
        Isotropic internal velocity dispersion of the members, km/s per
        component (default 0.7).
    parallax_systematics
        ``None`` (default): none. Else a kernel name (``"lindegren2021"``,
        ``"vasiliev2021"``, ``"maiz-apellaniz2021"``) or a callable
        ``V(theta_deg) -> mas^2``: one realisation of Gaia's angularly
        correlated parallax offsets, a Gaussian field with covariance
        ``V(theta)`` over the stars' positions
        (:func:`~gaia_distances.core.offset_field.draw_offset_field`), is added
        to the observed parallaxes. It is drawn after every other column, so
        the other columns equal those of the same seed without it.
    binary_fraction
        The fraction of members in unresolved binaries, whose orbits move
        the model terms' observables (a radial velocity by ``K sin(phase)``,
        ``K`` log-uniform in 1-50 km/s); default 0.
    seed
        Random seed, a non-negative integer (``ValueError`` otherwise); equal
        seeds give equal tables.

    Returns
    -------
    QTable
        Gaia columns (source_id, ra, dec, parallax, parallax_error, pmra, pmdec,
        pmra_error, pmdec_error, parallax_pmra_corr, parallax_pmdec_corr,
        pmra_pmdec_corr, phot_g_mean_mag, bp_rp, nu_eff_used_in_astrometry,
        pseudocolour, ecl_lat, astrometric_params_solved, ruwe), each model
        term's columns (``radial_velocity`` and ``radial_velocity_error``
        [km/s] for stars with ``G_RVS < 14``, NaN for the others) and the truth:
        ``r_true`` [pc], ``is_member``, ``parallax_zeropoint_true`` [mas],
        ``pmra_true`` and ``pmdec_true`` [mas/yr], ``radial_velocity_true``
        [km/s], ``is_binary``, and with
        ``parallax_systematics`` the offset added to each star,
        ``true_parallax_offset`` [mas]. ``table.meta`` records the
        inputs and the cluster's true mean proper motion at ``centre`` and
        ``cluster_distance`` (``cluster_pmra``, ``cluster_pmdec``, mas/yr) and
        internal dispersion (``cluster_sigma_v`` in km/s, ``cluster_sigma_pm``
        in mas/yr at ``cluster_distance``), the systematics kernel
        (``parallax_systematics``) and the realised offsets' means over all
        stars and over the members (``parallax_offset_mean_mas``,
        ``parallax_offset_members_mean_mas``).

    Raises
    ------
    ValueError
        For a negative or non-integer ``n_field`` or ``n_cluster``, none at
        all, or an unknown ``parallax_systematics``.

    Notes
    -----
    The observed ``(parallax, pmra, pmdec)`` are the truth plus one draw from
    a 3-D Gaussian. The proper-motion errors are the star's parallax error
    times the Gaia (E)DR3 factors 1.03 (pmra) and 0.89 (pmdec) mas/yr per mas
    (:func:`~gaia_distances.core.astrometry.proper_motion_error_dr3`: 0.07
    mas/yr at G = 17, 0.5 at G = 20, 1.4 at G = 21; 6-parameter solutions are
    inflated by the same 1.3), with 5 % scatter of their own. The three
    correlations, set by the scanning law, have one value per field drawn
    from ``U(-0.4, 0.4)`` plus a per-star scatter of 0.05 (G < 13) to 0.15
    (G > 21), clipped to +-0.95 and shrunk until each 3x3 correlation matrix
    has eigenvalues >= 0.05. 2-parameter rows have NaN for all of these (their
    true proper motions are still given).

    Field stars move in a Galactic disc: a flat rotation curve
    (:data:`V_CIRC_KMS` = 236 km/s, ``R0`` = 8.122 kpc, ``z_sun`` = 20.8 pc,
    astropy's v4.0 Galactocentric geometry), 90 % thin disc with
    ``(sigma_R, sigma_phi, sigma_z)`` = (35, 25, 18) km/s and 10 % thick disc
    with (60, 45, 40) km/s, each lagging rotation by the asymmetric drift
    ``sigma_R^2 / 80 km/s`` (15 and 45 km/s). Each star's velocity at its true
    3-D position is seen from the Sun, which moves at ``V_CIRC_KMS`` plus the
    Schönrich et al. (2010) solar motion (U, V, W) = (11.1, 12.24, 7.25) km/s:
    the mean proper motion carries the solar reflex (~1/r) and differential
    rotation, the dispersion falls as 1/r.

    Examples
    --------
    >>> t = simulate_field(100, n_cluster=20, seed=3)
    >>> len(t), int(t["is_member"].sum())
    (120, 20)
    """
    from gaia_distances.priors import EDSD

    for name, size in (("n_field", n_field), ("n_cluster", n_cluster)):
        try:
            ok_size = not isinstance(size, bool) and operator.index(size) >= 0
        except TypeError:
            ok_size = False
        if not ok_size:
            raise ValueError(f"simulate_field: {name} must be an integer >= 0, got {size!r}")
    if n_field + n_cluster == 0:
        raise ValueError("simulate_field needs n_field + n_cluster > 0")
    seed = checked_seed(seed)
    if not 0.0 <= float(binary_fraction) <= 1.0:
        raise ValueError(f"simulate_field: binary_fraction must be between 0 and 1, got {binary_fraction!r}")
    kernel = resolve_systematics(parallax_systematics)
    rng = np.random.default_rng(seed)
    prior = EDSD() if field_prior is None else field_prior
    if not isinstance(centre, SkyCoord):
        centre = SkyCoord(centre[0] * u.deg, centre[1] * u.deg)
    parts: list[tuple[bool, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for n, is_member in ((n_field, False), (n_cluster, True)):
        need, got = n, []
        while need > 0:
            m = max(2 * need, 64)
            r = (
                np.exp(rng.normal(np.log(cluster_distance), cluster_sigma_log, m))
                if is_member
                else _draw_distances(rng, m, prior)
            )
            giant = rng.uniform(size=m) < 0.12
            mg = np.where(giant, rng.normal(0.8, 0.8, m), rng.normal(5.0, 2.2, m))
            g = mg + 5 * np.log10(r) - 5 + 0.7 * np.minimum(r, 4000.0) / 1000.0
            keep = np.ones(m, bool) if magnitude_limit is None else g < magnitude_limit
            idx = np.flatnonzero(keep)[:need]
            got.append((r[idx], mg[idx], g[idx], giant[idx]))
            need -= idx.size
        if n:
            cols = [np.concatenate(x) for x in zip(*got)]
            parts.append((is_member, cols[0], cols[1], cols[2], cols[3]))

    r = np.concatenate([p[1] for p in parts])
    mg = np.concatenate([p[2] for p in parts])
    g = np.concatenate([p[3] for p in parts])
    giant = np.concatenate([p[4] for p in parts])
    member = np.concatenate([np.full(len(p[1]), p[0]) for p in parts])
    n = len(r)

    sky = _sky_positions(rng, centre, n, radius)
    if n_cluster:
        sig = (cluster_radius_pc / cluster_distance) * u.rad
        sky_c = _sky_positions(rng, centre, int(member.sum()), radius, sigma=sig.to(u.deg))
        ra = np.where(member, 0.0, sky.ra.deg)
        dec = np.where(member, 0.0, sky.dec.deg)
        ra[member], dec[member] = sky_c.ra.deg, sky_c.dec.deg
        sky = SkyCoord(ra * u.deg, dec * u.deg)
    ra, dec = sky.ra.deg, sky.dec.deg

    bp_rp = np.where(giant, rng.normal(1.25, 0.15, n), 0.15 + 0.19 * mg + rng.normal(0, 0.08, n))
    bp_rp = np.clip(bp_rp + 0.35 * np.minimum(r, 4000.0) / 1000.0, -0.3, 4.5)
    sol = np.where(rng.uniform(size=n) < frac_6p + 0.5 * frac_6p * (g > 19), 95, 31)
    sol = np.where(rng.uniform(size=n) < frac_2p, 3, sol)
    nu_eff = np.clip(nu_eff_from_bp_rp(bp_rp) + rng.normal(0, 0.01, n), 1.1, 1.9)
    pseudo = np.clip(nu_eff + rng.normal(0, 0.04 + 0.05 * (g > 19), n), 1.0, 2.0)
    nu_col = np.where(sol == 31, nu_eff, np.nan)
    pc_col = np.where(sol == 95, pseudo, np.nan)
    ecl_lat = sky.transform_to(BarycentricTrueEcliptic()).lat.deg

    recipe = load_recipe()
    zp = np.full(n, np.nan)
    ok = sol != 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zp[ok] = recipe.get_zpt(np.clip(g[ok], 6, 21), nu_eff[ok], pseudo[ok], ecl_lat[ok], sol[ok], _warnings=True)
    err = parallax_error_dr3(g) * np.exp(rng.normal(0, 0.12, n)) * np.where(sol == 95, 1.3, 1.0)
    if errors_independent_of_distance:
        err = rng.permutation(err)
    # (parallax, pmra, pmdec) errors are one joint Gaussian draw whose parallax part is err * z[0], as before
    # proper motions were simulated; z takes as many main-stream draws as the old columns did and the other
    # kinematic draws come from a stream of their own, so every other column keeps its values for a seed
    z = rng.standard_normal((5, n))
    kin = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    # proper_motion_error_dr3(G) / parallax_error_dr3(G) times the star's own (scattered, 6p-inflated) error
    pm_err = np.array(PM_ERROR_FACTORS_DR3)[:, None] * err * np.exp(0.05 * z[3:])
    spread = 0.05 + 0.1 * np.clip((g - 13.0) / 8.0, 0.0, 1.0)  # per-star scatter about the field's values
    corr = kin.uniform(-0.4, 0.4, 3) + spread[:, None] * kin.standard_normal((n, 3))
    corr = positive_definite_correlations(np.clip(corr, -0.95, 0.95))
    noise = correlated_astrometric_noise(z[:3].T, np.stack([err, *pm_err], axis=1), corr)
    plx = 1000.0 / r + zp + noise[:, 0]
    plx[~ok] = err[~ok] = pm_err[:, ~ok] = corr[~ok] = np.nan
    pm_true = np.empty((2, n))
    rv_true = np.empty(n)
    v_cl = u.Quantity(cluster_velocity, u.km / u.s).to_value()
    if n_cluster:
        v = kin.normal(v_cl, cluster_velocity_dispersion, (int(member.sum()), 3))
        pm_true[:, member] = proper_motion_from_velocity(ra[member], dec[member], 1000.0 / r[member], v)
        rv_true[member] = np.sum(sky_basis(ra[member], dec[member])[2] * v, axis=-1)
    if n_field:
        *pm_field, rv_true[~member] = _field_proper_motions(kin, ra[~member], dec[~member], r[~member])
        pm_true[:, ~member] = pm_field
    pm = pm_true + noise[:, 1:].T
    pm[:, ~ok] = np.nan

    source_id = _source_ids(rng, sky)
    ruwe = np.exp(rng.normal(0.0, 0.08, n)) * 1.0
    order = rng.permutation(n)
    # drawn last from the main stream, so that every other column keeps its values for a seed
    offset = None if kernel is None else draw_offset_field(ra, dec, kernel, rng)
    if offset is not None:
        plx = plx + offset
    t = QTable(meta={"description": "simulated Gaia DR3 field (gaia_distances.simulate_field)"})
    t["source_id"] = source_id
    add_column(t, "ra", sky.ra.deg, unit=u.deg, description="Right ascension (ICRS, epoch 2016.0)")
    add_column(t, "dec", sky.dec.deg, unit=u.deg, description="Declination (ICRS, epoch 2016.0)")
    added = "zero point" if kernel is None else "zero point and correlated offset"
    plx_description = f"Simulated parallax, {added} included"
    add_column(t, "parallax", plx, unit=u.mas, description=plx_description)
    add_column(t, "parallax_error", err, unit=u.mas, description="Parallax standard error")
    add_column(t, "pmra", pm[0], unit=u.mas / u.yr, description="Proper motion in RA*cos(dec)")
    add_column(t, "pmdec", pm[1], unit=u.mas / u.yr, description="Proper motion in Dec")
    add_column(t, "pmra_error", pm_err[0], unit=u.mas / u.yr, description="Standard error of pmra")
    add_column(t, "pmdec_error", pm_err[1], unit=u.mas / u.yr, description="Standard error of pmdec")
    for k, name in enumerate(("parallax_pmra_corr", "parallax_pmdec_corr", "pmra_pmdec_corr")):
        add_column(t, name, corr[:, k], description=f"Correlation between {name[:-5].replace('_', ' and ')}")
    add_column(t, "phot_g_mean_mag", g, unit=u.mag, description="G magnitude")
    add_column(t, "bp_rp", bp_rp, unit=u.mag, description="BP-RP colour")
    add_column(t, "nu_eff_used_in_astrometry", nu_col, unit=u.um**-1, description="Effective wavenumber (5p)")
    add_column(t, "pseudocolour", pc_col, unit=u.um**-1, description="Pseudocolour (6p)")
    add_column(t, "ecl_lat", ecl_lat, unit=u.deg, description="Ecliptic latitude")
    t["astrometric_params_solved"] = sol.astype(np.int16)
    add_column(t, "ruwe", ruwe, description="Renormalised unit weight error")
    add_column(t, "r_true", r, unit=u.pc, description="True distance (simulation)")
    t["is_member"] = member
    add_column(t, "parallax_zeropoint_true", zp, unit=u.mas, description="True zero point added (simulation)")
    add_column(t, "pmra_true", pm_true[0], unit=u.mas / u.yr, description="True pmra (simulation)")
    add_column(t, "pmdec_true", pm_true[1], unit=u.mas / u.yr, description="True pmdec (simulation)")
    add_column(t, "radial_velocity_true", rv_true, unit=u.km / u.s, description="True radial velocity (simulation)")
    # each model term's observables, from a stream of its own (the other columns keep their values)
    truth = {"radial_velocity_true": rv_true, "phot_g_mean_mag": g, "bp_rp": bp_rp, "is_member": member}
    for k, term in enumerate(TERMS.values()):
        stream = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, k)))
        for name, col in term.simulate(stream, {**truth, "binary_fraction": binary_fraction}).items():
            add_column(t, name, col.values, unit=u.Unit(col.unit) if col.unit else None, description=col.description)
    if offset is not None:
        add_column(
            t, "true_parallax_offset", offset, unit=u.mas, description="Correlated parallax offset added (simulation)"
        )
    pm_cl = proper_motion_from_velocity(centre.ra.deg, centre.dec.deg, 1000.0 / cluster_distance, v_cl)
    t = t[order]
    update_provenance(
        t,
        "simulation",
        {
            "n_field": n_field,
            "n_cluster": n_cluster,
            "field_prior": prior.describe(),
            "cluster_distance_pc": cluster_distance,
            "cluster_sigma_log": cluster_sigma_log,
            "magnitude_limit": magnitude_limit,
            "cluster_velocity_kms": [float(x) for x in v_cl],
            "cluster_pmra": float(pm_cl.pmra),
            "cluster_pmdec": float(pm_cl.pmdec),
            "cluster_sigma_v": float(cluster_velocity_dispersion),
            "cluster_sigma_pm": float(cluster_velocity_dispersion * 1000.0 / cluster_distance / A_V),
            "field_kinematics": {
                "v_circ_kms": V_CIRC_KMS,
                "solar_motion_kms": list(SOLAR_MOTION_KMS),
                "r0_kpc": R0_KPC,
                "z_sun_pc": Z_SUN_PC,
                "populations": [{"fraction": f, "sigma_kms": list(sd)} for f, sd in DISC_POPULATIONS],
            },
            "parallax_systematics": None if kernel is None else kernel.name,
            **_offset_means(offset, member),
            "seed": seed,
        },
    )
    return t


def _offset_means(offset: np.ndarray | None, member: np.ndarray) -> dict[str, float | None]:
    """The realised parallax offsets' means over all stars and over the members (mas), for the truth meta."""
    if offset is None:
        return {}
    members = float(np.mean(offset[member])) if np.any(member) else None
    return {"parallax_offset_mean_mas": float(np.mean(offset)), "parallax_offset_members_mean_mas": members}


def _source_ids(rng: np.random.Generator, sky: SkyCoord) -> np.ndarray:
    """Gaia-like source_ids: HEALPix level-12 nested index * 2**35 + a serial."""
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=2**12, order="nested")
    pix = np.asarray(hp.lonlat_to_healpix(sky.ra, sky.dec), dtype=np.int64)
    serial = rng.choice(2**30, size=len(pix), replace=False).astype(np.int64)
    return pix * 2**35 + serial
