"""Calibration of the kinematic cluster model over many simulated magnitude-limited fields.

Two sets of mocks, both fitted with the defaults (proper motions, flexible
field; ``systematics=None``, since the mocks have no Gaia systematics):

- ``--set galaxy``: :func:`gaia_distances.simulate_field` fields (a Galactic
  disc for the field's distances and proper motions, Gaia-like errors and
  correlations, a G < 18 limit) with a random cluster: ``D ~ logU(500,
  4000)`` pc, ``sigma ~ logU(0.006, 0.03)`` in ln r, ``Q ~ U(0.05, 0.4)``
  (the member count is binomial), a random space velocity (so a random
  proper motion) and ``sigma_v ~ logU(0.3, 2)`` km/s. The field has no
  parameters of the model, so the truth is known for the cluster's
  ``D, sigma_log, Q, pmra, pmdec, sigma_v`` and, where the field has
  radial velocities (the radial-velocity term; ``--binary-fraction`` of the
  members in binaries), the members' mean radial velocity ``rv``. The parallax-only reference
  model (``kinematics=False, field="edsd"``) is fitted to the same fields
  in the same run: its ``Q`` bias on magnitude-limited fields, and both
  models' precision and recall of ``membership_prob > 0.5``.
- ``--set model``: fields drawn from the model itself, so that every
  population parameter has a truth: the flexible field's distances (a
  random smooth bin mixture; ``field_median`` is checked), its two-component
  proper-motion mixture with trend, dispersions (a constant part shared by
  the components, and each component's velocity dispersion) and weights,
  and the cluster, all random; each star's errors and correlations are those of a
  star of a simulated G < 18 field. The field's components are reported
  in order of their velocity dispersion (the colder first).

For N fits the binomial standard error of the 68 % coverage is
``sqrt(0.68 * 0.32 / N)`` (0.047 for N = 100)::

    python benchmarks/bench_kinematics_sbc.py --set galaxy --n-fits 100
    python benchmarks/bench_kinematics_sbc.py --set model --n-fits 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings
from datetime import date
from typing import Any

import numpy as np

import gaia_distances as gd
from gaia_distances.core.field_bins import SPACING, bin_centres
from gaia_distances.core.kinematics import A_V, sky_basis
from gaia_distances.core.population import field_distance_quantile

LEVELS = (15.865525, 84.134475, 5.0, 95.0)
CLUSTER = ("D", "sigma_log", "Q", "pmra", "pmdec", "sigma_v")
FIELD_PM = ("field_pmra", "field_pmdec", "field_sigma_v")  # per component; the constant part is shared


def _random_cluster(rng: np.random.Generator) -> dict[str, float]:
    return {
        "D": float(np.exp(rng.uniform(math.log(500.0), math.log(4000.0)))),
        "sigma_log": float(np.exp(rng.uniform(math.log(0.006), math.log(0.03)))),
        "Q": float(rng.uniform(0.05, 0.4)),
        "sigma_v": float(np.exp(rng.uniform(math.log(0.3), math.log(2.0)))),
    }


def _inside(draws: np.ndarray, truth: float) -> tuple[bool, bool]:
    lo68, hi68, lo90, hi90 = np.percentile(draws, LEVELS)
    return bool(lo68 <= truth <= hi68), bool(lo90 <= truth <= hi90)


def _membership(fit: Any, is_member: np.ndarray) -> tuple[float, float]:
    member = np.nan_to_num(np.asarray(fit.table["membership_prob"], float)) > 0.5
    tp = float((member & is_member).sum())
    return tp / max(member.sum(), 1), tp / max(is_member.sum(), 1)


def _fit(t: Any, seed: int, **kw: Any) -> tuple[Any, bool, float]:
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gd.GaiaDistancesWarning)
        fit = gd.fit_cluster(t, zero_point="parallax_zeropoint_true", seed=seed, systematics=None, **kw)
    warned = any(issubclass(w.category, gd.GaiaDistancesWarning) for w in caught)
    return fit, warned, time.perf_counter() - t0


def galaxy_mock(
    i: int, rng: np.random.Generator, n_stars: int, binary_fraction: float = 0.0
) -> tuple[Any, dict[str, float]]:
    truth = _random_cluster(rng)
    n_cl = int(rng.binomial(n_stars, truth["Q"]))
    velocity = tuple(float(v) for v in rng.normal(0.0, 25.0, 3))
    t = gd.simulate_field(
        n_stars - n_cl,
        n_cluster=n_cl,
        cluster_distance=truth["D"],
        cluster_sigma_log=truth["sigma_log"],
        cluster_velocity=velocity,
        cluster_velocity_dispersion=truth["sigma_v"],
        magnitude_limit=18.0,
        binary_fraction=binary_fraction,
        seed=5000 + i,
    )
    sim = t.meta["gaia_distances"]["simulation"]
    truth["pmra"], truth["pmdec"] = sim["cluster_pmra"], sim["cluster_pmdec"]
    # the members' mean radial velocity: their space velocity along the centre's line of sight
    truth["rv"] = float(np.sum(sky_basis(132.846, 11.814)[2] * np.asarray(velocity)))
    return t, truth


def model_mock(i: int, rng: np.random.Generator, n_stars: int, errors: Any) -> tuple[Any, dict[str, float]]:
    """A field drawn from the model: every population parameter is known."""
    from astropy.table import QTable

    truth = _random_cluster(rng)
    truth["pmra"], truth["pmdec"] = (float(x) for x in rng.normal(0.0, 5.0, 2))
    centres = bin_centres()
    # a smooth field: bins weighted by a random log-normal bump in distance, plus a floor
    med_u, width = rng.uniform(math.log(800.0), math.log(4000.0)), rng.uniform(0.4, 0.9)
    w_bins = np.exp(-0.5 * ((centres - med_u) / width) ** 2) + 1e-4
    w_bins /= w_bins.sum()
    truth["field_median"] = float(field_distance_quantile(np.log(w_bins), 0.5))
    comps = []
    for lo, hi in ((12.0, 25.0), (35.0, 70.0)):
        comps.append(
            {
                "field_pmra": float(rng.normal(0.0, 2.0)),
                "field_pmdec": float(rng.normal(0.0, 2.0)),
                "field_sigma_v": float(np.exp(rng.uniform(math.log(lo), math.log(hi)))),
                "field_pm_weight": 0.0,
            }
        )
    w2 = float(rng.uniform(0.1, 0.35))
    comps[0]["field_pm_weight"], comps[1]["field_pm_weight"] = 1.0 - w2, w2
    for m, c in enumerate(comps):
        truth.update({f"{k}_{m + 1}": v for k, v in c.items()})
    # the constant (distance-independent) part of the covariance, shared by the components
    truth["field_pm_sd_ra"] = float(np.exp(rng.uniform(math.log(0.3), math.log(1.5))))
    truth["field_pm_sd_dec"] = float(np.exp(rng.uniform(math.log(0.3), math.log(1.5))))
    truth["field_pm_corr"] = float(rng.uniform(-0.6, 0.6))
    trend = rng.normal(0.0, 3.0, 2)
    truth["field_pm_trend_ra"], truth["field_pm_trend_dec"] = float(trend[0]), float(trend[1])

    n = n_stars
    rows = rng.choice(len(errors), n, replace=True)
    e = {k: np.asarray(errors[k], float)[rows] for k in errors.colnames}
    member = rng.uniform(size=n) < truth["Q"]
    u = np.where(
        member,
        rng.normal(math.log(truth["D"]), truth["sigma_log"], n),
        centres[rng.choice(centres.size, n, p=w_bins)] + SPACING * rng.standard_normal(n),
    )
    w_t = 1000.0 * np.exp(-u)
    comp = (rng.uniform(size=n) < w2).astype(int)
    pm = np.empty((n, 2))
    sa, sd, rho = truth["field_pm_sd_ra"], truth["field_pm_sd_dec"], truth["field_pm_corr"]
    cov = np.array([[sa**2, rho * sa * sd], [rho * sa * sd, sd**2]])
    for m, c in enumerate(comps):
        sel = ~member & (comp == m)
        base = rng.multivariate_normal([c["field_pmra"], c["field_pmdec"]], cov, sel.sum())
        disp = (c["field_sigma_v"] * w_t[sel] / A_V)[:, None] * rng.standard_normal((sel.sum(), 2))
        pm[sel] = base + trend * w_t[sel, None] + disp
    disp = (truth["sigma_v"] * w_t[member] / A_V)[:, None] * rng.standard_normal((member.sum(), 2))
    scale = (truth["D"] * w_t[member] / 1000.0)[:, None]  # one tangential velocity: the mean scales as D / r
    pm[member] = np.array([truth["pmra"], truth["pmdec"]]) * scale + disp
    # Gaia errors with their full 3 x 3 correlations
    s = np.stack([e["parallax_error"], e["pmra_error"], e["pmdec_error"]], axis=1)
    r = np.stack([e["parallax_pmra_corr"], e["parallax_pmdec_corr"], e["pmra_pmdec_corr"]], axis=1)
    noise = np.empty((n, 3))
    for k in range(n):
        corr = np.array([[1.0, r[k, 0], r[k, 1]], [r[k, 0], 1.0, r[k, 2]], [r[k, 1], r[k, 2], 1.0]])
        noise[k] = np.linalg.cholesky(corr * np.outer(s[k], s[k])) @ rng.standard_normal(3)
    t = QTable()
    t["source_id"] = np.arange(n, dtype=np.int64)
    t["ra"], t["dec"] = e["ra"], e["dec"]
    t["parallax"] = w_t + noise[:, 0]
    t["pmra"], t["pmdec"] = pm[:, 0] + noise[:, 1], pm[:, 1] + noise[:, 2]
    for k in ("parallax_error", "pmra_error", "pmdec_error", "parallax_pmra_corr", "parallax_pmdec_corr"):
        t[k] = e[k]
    t["pmra_pmdec_corr"] = e["pmra_pmdec_corr"]
    t["parallax_zeropoint_true"] = np.zeros(n)
    t["is_member"] = member
    return t, truth


def _ordered_field(post: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The field's two proper-motion components per draw, colder first (labels are not identified)."""
    swap = post["field_sigma_v_1"] > post["field_sigma_v_2"]
    out = dict(post)
    for k in (*FIELD_PM, "field_pm_weight"):
        a, b = post[f"{k}_1"], post[f"{k}_2"]
        out[f"{k}_1"], out[f"{k}_2"] = np.where(swap, b, a), np.where(swap, a, b)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("galaxy", "model"), default="galaxy")
    ap.add_argument("--n-fits", type=int, default=100)
    ap.add_argument("--n-stars", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the per-fit records here (JSON lines)")
    ap.add_argument("--skip-reference", action="store_true", help="galaxy mocks: no parallax-only fit")
    ap.add_argument("--start", type=int, default=0, help="resume: draw the first mocks' truths without fitting them")
    ap.add_argument("--binary-fraction", type=float, default=0.0, help="galaxy mocks: members in binaries")
    ap.add_argument("--radial-velocities", choices=("auto", "off"), default="auto", help="fit the radial-velocity term")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    errors = None
    if args.set == "model":
        errors = gd.simulate_field(20000, magnitude_limit=18.0, seed=args.seed + 1)
    records = []
    t0 = time.perf_counter()
    for i in range(args.n_fits):
        if args.set == "galaxy":
            t, truth = galaxy_mock(i, rng, args.n_stars, args.binary_fraction)
        else:
            t, truth = model_mock(i, rng, args.n_stars, errors)
        if i < args.start:  # (the mock is drawn all the same: the truths that follow stay those of the seed)
            continue
        is_member = np.asarray(t["is_member"], bool)
        fit, warned, wall = _fit(t, seed=i, radial_velocities=False if args.radial_velocities == "off" else "auto")
        post = _ordered_field({k: np.asarray(v, float).ravel() for k, v in fit.posterior.items()})
        rec: dict[str, Any] = {"i": i, "truth": truth, "warned": warned, "wall_s": wall}
        rec["status"] = fit.diagnostics["status"]
        rec["steps_per_draw"] = float(fit.diagnostics["mean_steps_per_draw"])
        sampler = fit.diagnostics.get("sampler") or {}
        rec["gradients_per_chain"] = sampler.get("gradients_per_chain")
        # how v_r was sampled: on the grid, or in z after the grid failed its checks (core/collapse.py)
        rec["grid"] = next((s for s in sampler.get("stages", ()) if "on a grid" in s), None)
        rec["inside"] = {k: _inside(post[k], truth[k]) for k in truth if k in post}
        rec["z_score"] = {k: float((post[k].mean() - truth[k]) / post[k].std()) for k in truth if k in post}
        rec["precision_recall"] = _membership(fit, is_member)
        if args.set == "galaxy" and not args.skip_reference:
            ref, ref_warned, ref_wall = _fit(t, seed=i, kinematics=False, field="edsd")
            rq = np.asarray(ref.posterior["Q"], float).ravel()
            rd = np.asarray(ref.posterior["D"], float).ravel()
            rec["reference"] = {
                "inside": {"Q": _inside(rq, truth["Q"]), "D": _inside(rd, truth["D"])},
                "z_score": {
                    "Q": float((rq.mean() - truth["Q"]) / rq.std()),
                    "D": float((rd.mean() - truth["D"]) / rd.std()),
                },
                "precision_recall": _membership(ref, is_member),
                "warned": ref_warned,
                "wall_s": ref_wall,
            }
        records.append(rec)
        print(json.dumps(rec), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
    wall = time.perf_counter() - t0
    if args.out and args.start:  # the whole run, the earlier records included
        with open(args.out) as fh:
            records = [json.loads(line) for line in fh]
    report(records, args, wall)


def report(records: list[dict[str, Any]], args: Any, wall: float) -> None:
    n = len(records)
    print(
        f"\n### Kinematic model calibration ({args.set} mocks), {date.today().isoformat()}, {platform.node()}, "
        f"{os.cpu_count()} CPUs: {n} fits of {args.n_stars} stars, {wall:.0f} s in all (binary fraction "
        f"{args.binary_fraction:g}, radial velocities {args.radial_velocities}), "
        f"{sum(r['warned'] for r in records)} fits with a diagnostic warning\n"
    )
    print("| parameter | inside 68 % | inside 90 % | mean z (posterior mean - truth) / sd |")
    print("|---|---|---|---|")
    names = list(dict.fromkeys(k for r in records for k in r["inside"]))
    for k in names:  # a quantity some fits lack (rv: a field with too few velocities) over those that have it
        a = np.array([r["inside"][k] for r in records if k in r["inside"]], float)
        z = np.array([r["z_score"][k] for r in records if k in r["z_score"]])
        label = k if len(a) == n else f"{k} ({len(a)} fits)"
        print(f"| {label} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | {np.mean(z):+.2f} |")
    if all("reference" in r for r in records):
        for k in ("Q", "D"):
            a = np.array([r["reference"]["inside"][k] for r in records], float)
            z = np.array([r["reference"]["z_score"][k] for r in records])
            name = f"{k} (parallax-only reference model)"
            print(f"| {name} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | {z.mean():+.2f} |")
    pr = np.array([r["precision_recall"] for r in records])
    line = "\nmembership_prob > 0.5, median precision / recall: "
    line += f"kinematic {np.median(pr[:, 0]):.3f} / {np.median(pr[:, 1]):.3f}"
    if all("reference" in r for r in records):
        rp = np.array([r["reference"]["precision_recall"] for r in records])
        line += f"; parallax-only reference {np.median(rp[:, 0]):.3f} / {np.median(rp[:, 1]):.3f}"
    print(line)
    print(f"binomial s.e. of a 68 % coverage over {n} fits: {math.sqrt(0.6827 * 0.3173 / n):.3f}")
    grid = [r.get("grid") for r in records]
    fell_back = sum(1 for g in grid if g and "sampled instead" in g)
    print(
        f"v_r integrated out on the grid in {sum(1 for g in grid if g) - fell_back} fits, sampled after the grid "
        f"failed its checks in {fell_back}; median wall time {np.median([r['wall_s'] for r in records]):.1f} s"
    )


if __name__ == "__main__":
    main()
