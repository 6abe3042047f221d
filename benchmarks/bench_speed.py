"""Speed of the default fit, this tree against a baseline commit, side by side in one run.

Every measurement runs in a fresh Python process (``--worker``), with the
package imported from this tree or from a ``git worktree`` of ``--baseline``
(default: the last commit before the staged sampler, 92ac6fc). Cases
(``--cases``):

- ``cone``: the shared NGC 2437 cone (2 784 rows) with the default options:
  a cold process (an empty compilation cache), a warm one (the cache the
  cold one filled; for the baseline, JAX's own cache pointed at the same kind
  of folder, so that both get the same help), and a second fit of a field of
  similar size (NGC 2301, 2 549 rows) in the warm process, then the first
  fit again in that process (nothing left to load or trace: the floor of a
  warm fit);
- ``cone_no_terms``: the same without the model's terms (``radial_velocities=False``), which times
  the terms' machinery against a baseline without it;
- ``seeds``, ``seeds_no_terms``: the three cones, five seeds each, warm fits in one process (after a first
  fit of each), with and without the terms: the sampler's cost over seeds, and the ``rv`` quantiles;
- ``sparse``: the 1 % cluster in a 40 000-star G < 20 cone (``bench_kinematics
  --cases sparse``), precision and recall of ``membership_prob > 0.5``;
- ``deep``: an 8 600-star simulated cone as deep as the demo's (G < 20.7),
  two seeds, each fitted twice in one process (the second fit timed): the
  sampler's gradients and leapfrog steps where the field's far distance bins
  are weakly identified;
- ``demo``: ``gaia-distances demo`` end to end in a fresh process with an
  empty cache (a new user's first run);
- ``profile``: this tree's split of one warm fit of the cone into compile,
  search, warm-up and sampling, its gradients and the cost of one gradient
  per 1 000 stars.

    python benchmarks/bench_speed.py --cases cone profile
    python benchmarks/bench_speed.py --cases sparse demo --baseline 92ac6fc
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GAIA_DISTANCES_TEST_DATA", ROOT.parent / "shared" / "data"))
BASELINE = "92ac6fc"


# --------------------------------------------------------------------------- the worker (one fresh process)


def _quiet_load(gd: Any, name: str) -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gd.apply_zeropoint(gd.load_table(str(DATA / "cones" / f"{name}_edr3_box.csv")))


def _fit_record(gd: Any, t: Any, seed: int, **kw: Any) -> dict[str, Any]:
    import warnings

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = gd.fit_cluster(t, seed=seed, **kw)
    wall = time.perf_counter() - t0
    d = fit.diagnostics
    p = fit.posterior
    sampler = d.get("sampler") or {}
    return {
        "wall_s": round(wall, 2),
        "timings": {k: round(v, 2) for k, v in d.get("timings", {}).items()},
        "status": d["status"],
        "gradients_per_chain": sampler.get("gradients_per_chain"),
        "steps_per_draw": round(float(d["mean_steps_per_draw"]), 1),
        "draws": int(p["D"].size),
        "D": f"{p['D'].mean():.1f} +- {p['D'].std():.1f}",
        "pm": f"{p['pmra'].mean():.4f}, {p['pmdec'].mean():.4f}" if "pmra" in p else None,
        "rv": _quantiles(p["rv"]) if "rv" in p else None,
        "fit": fit,
    }


def _quantiles(x: Any) -> str:
    import numpy as np

    q = np.percentile(np.asarray(x), [16, 50, 84])
    return f"{q[1]:.2f} [{q[0]:.2f}, {q[2]:.2f}], sd {np.std(x):.2f}"


def worker(case: str) -> list[dict[str, Any]]:
    import gaia_distances as gd

    out = []
    if case in ("cone", "cone_no_terms"):
        import inspect

        # cone_no_terms: the model terms left out (a tree without terms: its default), to time the machinery
        terms = [n for n in inspect.signature(gd.fit_cluster).parameters if n == "radial_velocities"]
        kw = {n: False for n in terms} if case == "cone_no_terms" else {}
        t = _quiet_load(gd, "ngc2437")
        other = _quiet_load(gd, "ngc2301")
        first = _fit_record(gd, t, seed=0, **kw)
        second = _fit_record(gd, other, seed=1, **kw)
        repeat = _fit_record(gd, t, seed=0, **kw)  # nothing left to load or trace: the floor of a warm fit
        for name, rec in (
            ("first fit (NGC 2437)", first),
            ("second fit (NGC 2301)", second),
            ("the first fit again, same process (NGC 2437)", repeat),
        ):
            rec.pop("fit")
            out.append({"what": name, **rec})
    elif case in ("seeds", "seeds_no_terms"):
        import inspect

        terms = [n for n in inspect.signature(gd.fit_cluster).parameters if n == "radial_velocities"]
        kw = {n: False for n in terms} if case == "seeds_no_terms" else {}
        for name in ("ngc2437", "ngc2301", "ngc2506"):
            t = _quiet_load(gd, name)
            _fit_record(gd, t, seed=99, **kw)  # loads and compiles: the fits below are warm
            for seed in range(5):
                rec = _fit_record(gd, t, seed=seed, **kw)
                fit = rec.pop("fit")
                rec["sampling_s"] = rec["timings"].get("sampling_s")
                rec["last_stage"] = (fit.diagnostics.get("sampler") or {}).get("stages", [""])[-1][:120]
                out.append({"what": f"{name}, seed {seed}, warm", **rec})
    elif case == "sparse":
        import numpy as np

        t = gd.simulate_field(39600, n_cluster=400, cluster_distance=1200.0, magnitude_limit=20.0, seed=0)
        rec = _fit_record(gd, t, seed=0, zero_point="parallax_zeropoint_true")
        fit = rec.pop("fit")
        member = np.nan_to_num(np.asarray(fit.table["membership_prob"], float)) > 0.5
        truth = np.asarray(t["is_member"], bool)
        rec["precision"] = round(float((member & truth).sum() / max(member.sum(), 1)), 3)
        rec["recall"] = round(float((member & truth).sum() / truth.sum()), 3)
        rec["Q"] = f"{fit.posterior['Q'].mean():.4f} +- {fit.posterior['Q'].std():.4f} (true 0.0100)"
        out.append({"what": "1 % cluster in 40 000 stars, G < 20", **rec})
    elif case == "deep":
        # the demo's depth (G < 20.7) at a third of its size: many faint stars, few members, the field's
        # far distance bins weakly identified; two seeds, each fitted twice in the process (the second
        # fit is the sampler's own cost, without compiling)
        for seed in (0, 1):
            t = gd.simulate_field(8000, n_cluster=600, magnitude_limit=20.7, frac_2p=0.01, seed=seed)
            _fit_record(gd, t, seed=0, zero_point="parallax_zeropoint_true")
            rec = _fit_record(gd, t, seed=0, zero_point="parallax_zeropoint_true")
            fit = rec.pop("fit")
            rec["stages"] = fit.diagnostics.get("sampler", {}).get("stages")
            out.append({"what": f"8 600-star mock, G < 20.7, seed {seed}, second fit in the process", **rec})
    elif case == "profile":
        out.append(_profile(gd))
    return out


def _profile(gd: Any) -> dict[str, Any]:
    """One warm fit of the cone: its steps, and one gradient of its sampled posterior per 1 000 stars."""
    import jax
    import jax.numpy as jnp

    from gaia_distances.cluster.stars import prepare_data, select_stars
    from gaia_distances.core.likelihood import log_posterior, pad_star_data, padded_size

    t = _quiet_load(gd, "ngc2437")
    rec = _fit_record(gd, t, seed=0)
    fit = rec.pop("fit")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = select_stars(t, zero_point=None, parallax_limits=None, kinematics="auto", truncate=True)
    model = fit.model  # (with the model terms the fit used; their columns are selected below)
    sel = (
        sel
        if not model.terms
        else select_stars(
            t, zero_point=None, kinematics="auto", terms=tuple((n, n in model.terms) for n in model.terms)
        )
    )
    data = pad_star_data(prepare_data(sel.stars, model), padded_size(sel.stars.n_stars))
    z = jnp.asarray(fit.draws[0, -1], jnp.float32)
    grad = jax.jit(jax.grad(lambda z: log_posterior(z, data, model)))
    grad(z).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(200):
        g = grad(z)
    g.block_until_ready()
    ms = (time.perf_counter() - t0) / 200 * 1e3
    rec["ms_per_gradient_all_stars"] = round(ms, 3)
    rec["ms_per_gradient_per_1000_stars"] = round(ms / data.n_stars * 1e3, 3)
    rec["stages"] = fit.diagnostics.get("sampler", {}).get("stages")
    return {"what": "profile of a warm fit (NGC 2437)", **rec}


# --------------------------------------------------------------------------- the driver


def _tree(ref: str, workdir: Path) -> Path:
    path = workdir / f"baseline-{ref}"
    if not path.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True, capture_output=True
        )
    return path


def _run(tree: Path, case: str, cache: Path | None, env_extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"}
    env.pop("GAIA_DISTANCES_JAX_CACHE", None)
    if cache is not None:
        env["GAIA_DISTANCES_JAX_CACHE"] = str(cache)  # this tree's cache
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)  # JAX's own, which the baseline reads
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    else:
        env["GAIA_DISTANCES_JAX_CACHE"] = ""
    env.update(env_extra or {})
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, __file__, "--worker", case], cwd=tree, env=env, capture_output=True, text=True
    )
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    recs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    for r in recs:
        r["process_s"] = round(time.perf_counter() - t0, 1)
    return recs


def _demo(tree: Path, cache: Path) -> dict[str, Any]:
    out = cache.parent / f"demo-{tree.name}"
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore", "GAIA_DISTANCES_JAX_CACHE": str(cache)}
    code = "import sys; from gaia_distances.cli import main; sys.exit(main(sys.argv[1:]))"
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", code, "--quiet", "demo", "--output-dir", str(out)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    summary = json.loads((out / "demo_summary.json").read_text()) if res.returncode == 0 else {}
    return {
        "what": "gaia-distances demo, fresh process, empty cache",
        "wall_s": round(wall, 1),
        "rc": res.returncode,
        "cluster_distance_pc": summary.get("cluster_distance_pc"),
        "stderr": res.stderr[-500:] if res.returncode else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cases",
        nargs="+",
        default=["cone", "profile"],
        choices=["cone", "cone_no_terms", "seeds", "seeds_no_terms", "sparse", "deep", "demo", "profile"],
    )
    ap.add_argument("--baseline", default=BASELINE, help="git ref to compare with (none: skip it)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        for rec in worker(args.worker):
            print(json.dumps(rec))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_speed_"))
    trees = {"new": ROOT}
    if args.baseline != "none":
        trees = {f"baseline {args.baseline}": _tree(args.baseline, work), **trees}
    print(f"## bench_speed, {date.today().isoformat()}, {platform.node()}, {os.cpu_count()} CPUs\n")
    for label, tree in trees.items():
        cache = work / f"cache-{label.replace(' ', '-')}"
        for case in args.cases:
            # (a baseline without terms: its cone)
            if case in ("profile", "cone_no_terms", "seeds_no_terms") and label != "new":
                continue
            if case == "demo":
                print(label, json.dumps(_demo(tree, work / f"demo-cache-{label.replace(' ', '-')}")), flush=True)
                continue
            if case in ("cone", "cone_no_terms"):
                for when in ("cold", "warm"):
                    for rec in _run(tree, case, cache):
                        print(label, when, json.dumps(rec), flush=True)
                continue
            for rec in _run(tree, case, cache):
                print(label, json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
