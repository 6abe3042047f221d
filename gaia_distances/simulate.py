"""Mock Gaia DR3 fields with known true distances.

Field stars are drawn from an EDSD or generalized gamma prior, optional cluster
members from a Gaussian in ``ln r``. G magnitudes come from a simple
dwarf/giant luminosity function with extinction; parallax errors follow the
Gaia DR3 relation between G and parallax precision; the columns the
Lindegren et al. (2021) zero-point recipe reads are filled in, and the true zero
point is added to the simulated parallaxes.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import BarycentricTrueEcliptic, SkyCoord
from astropy.table import QTable

from gaia_distances.columns import add_column, update_provenance
from gaia_distances.core.astrometry import parallax_error_dr3
from gaia_distances.zeropoint import load_recipe, nu_eff_from_bp_rp

__all__ = ["parallax_error_dr3", "simulate_field"]


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
        sep = np.minimum(np.abs(rng.rayleigh(sigma.to_value(u.deg), n)), radius.to_value(u.deg)) * u.deg
    return centre.directional_offset_by(pa, sep)


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
        Fractions of 6-parameter and 2-parameter (no parallax) solutions.
    errors_independent_of_distance
        Shuffle the parallax errors across stars before drawing the parallaxes.
        Real errors grow with G and hence with distance, so the error itself
        carries information about r that a model conditioning on it ignores;
        calibration and recovery studies of such models need this ``True``.
    seed
        Random seed; equal seeds give equal tables.

    Returns
    -------
    QTable
        Gaia columns (source_id, ra, dec, parallax, parallax_error, pmra, pmdec,
        phot_g_mean_mag, bp_rp, nu_eff_used_in_astrometry, pseudocolour, ecl_lat,
        astrometric_params_solved, ruwe) and the truth: ``r_true`` [pc],
        ``is_member`` and ``parallax_zeropoint_true`` [mas].

    Examples
    --------
    >>> t = simulate_field(100, n_cluster=20, seed=3)
    >>> len(t), int(t["is_member"].sum())
    (120, 20)
    """
    from gaia_distances.priors import EDSD

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
    if not parts:
        raise ValueError("simulate_field needs n_field + n_cluster > 0")

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
    plx = 1000.0 / r + zp + err * rng.standard_normal(n)
    plx[~ok] = np.nan
    err[~ok] = np.nan

    pm_field = rng.normal(0, 6, (2, n))
    pm_cl = np.array([-11.0, -2.9])[:, None] + rng.normal(0, 0.15, (2, n))
    pm = np.where(member, pm_cl, pm_field)

    source_id = _source_ids(rng, sky)
    t = QTable(meta={"description": "simulated Gaia DR3 field (gaia_distances.simulate_field)"})
    t["source_id"] = source_id
    add_column(t, "ra", sky.ra.deg, unit=u.deg, description="Right ascension (ICRS, epoch 2016.0)")
    add_column(t, "dec", sky.dec.deg, unit=u.deg, description="Declination (ICRS, epoch 2016.0)")
    add_column(t, "parallax", plx, unit=u.mas, description="Simulated parallax, zero point included")
    add_column(t, "parallax_error", err, unit=u.mas, description="Parallax standard error")
    add_column(t, "pmra", pm[0], unit=u.mas / u.yr, description="Proper motion in RA*cos(dec)")
    add_column(t, "pmdec", pm[1], unit=u.mas / u.yr, description="Proper motion in Dec")
    add_column(t, "phot_g_mean_mag", g, unit=u.mag, description="G magnitude")
    add_column(t, "bp_rp", bp_rp, unit=u.mag, description="BP-RP colour")
    add_column(t, "nu_eff_used_in_astrometry", nu_col, unit=u.um**-1, description="Effective wavenumber (5p)")
    add_column(t, "pseudocolour", pc_col, unit=u.um**-1, description="Pseudocolour (6p)")
    add_column(t, "ecl_lat", ecl_lat, unit=u.deg, description="Ecliptic latitude")
    t["astrometric_params_solved"] = sol.astype(np.int16)
    add_column(t, "ruwe", np.exp(rng.normal(0.0, 0.08, n)) * 1.0, description="Renormalised unit weight error")
    add_column(t, "r_true", r, unit=u.pc, description="True distance (simulation)")
    t["is_member"] = member
    add_column(t, "parallax_zeropoint_true", zp, unit=u.mas, description="True zero point added (simulation)")
    order = rng.permutation(n)
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
            "seed": seed,
        },
    )
    return t


def _source_ids(rng: np.random.Generator, sky: SkyCoord) -> np.ndarray:
    """Gaia-like source_ids: HEALPix level-12 nested index * 2**35 + a serial."""
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=2**12, order="nested")
    pix = np.asarray(hp.lonlat_to_healpix(sky.ra, sky.dec), dtype=np.int64)
    serial = rng.choice(2**30, size=len(pix), replace=False).astype(np.int64)
    return pix * 2**35 + serial
