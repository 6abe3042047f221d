"""The staged sampler: its pilot's rescaling, its extension until the rule passes, and NUTS on the same posterior."""

from __future__ import annotations

import numpy as np
import pytest

from gaia_distances.core.diagnostics import convergence_problems, ess_rhat
from gaia_distances.core.sampling import NutsSettings, run_chains
from gaia_distances.core.staged import MAX_DRAWS_FACTOR, Convergence, rescaled_covariance, sample_staged

jnp = pytest.importorskip("jax.numpy")

SETTINGS = NutsSettings(num_warmup=150, num_samples=400, num_chains=2, target_accept_prob=0.65, max_tree_depth=8)


def _banana_gen(centre, chol, data):
    """A curved (non-Gaussian) density in z, with a scale per problem: ``z = centre + chol @ x``."""
    import jax

    def potential(x):
        z = centre + jnp.matmul(chol, x, precision=jax.lax.Precision.HIGHEST)
        a, b = z[0] / data["scale"], z[1] / data["scale"]
        return 0.5 * a**2 + 0.5 * (b - 0.5 * a**2) ** 2 + 0.5 * jnp.sum(z[2:] ** 2 / data["sd"] ** 2)

    return potential


def _check(z_names=None):
    def check(b, z):
        numbers = [ess_rhat(z[..., i]) for i in range(z.shape[-1])]
        r_hat = {str(i): v[2] for i, v in enumerate(numbers)}
        bulk = {str(i): v[0] for i, v in enumerate(numbers)}
        tail = {str(i): v[1] for i, v in enumerate(numbers)}
        ess = [e for v in numbers for e in v[:2]]
        return Convergence(tuple(convergence_problems(r_hat, bulk, 0, tail)), float(min(ess)), max(r_hat.values()))

    return check


def _data(scales, sds):
    return {"scale": jnp.asarray(scales, jnp.float32), "sd": jnp.asarray(sds, jnp.float32)}


def test_rescaled_covariance_fixes_only_clear_mismatches():
    cov = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    draws = np.random.default_rng(1).standard_normal((4000, 3)) * [1.0, 4.0, 1.2]
    new, factor = rescaled_covariance(cov, draws)
    assert factor[0] == 1.0 and factor[2] == 1.0  # within a factor 2: kept
    assert factor[1] == pytest.approx(16.0, rel=0.1)
    # the correlation is kept
    assert new[0, 1] / np.sqrt(new[0, 0] * new[1, 1]) == pytest.approx(0.5)


def test_a_misjudged_scale_is_rescaled_and_the_draws_match_the_density():
    """The start's covariance has one variance 25 times too small and one 25 times too large: the pilot
    rescales both, and the draws have the density's moments (known exactly for the banana)."""
    d = 4
    sd = np.array([2.0, 0.5])
    cov = np.diag([1.0, 1.0, (sd[0] / 5) ** 2, (sd[1] * 5) ** 2])
    res = sample_staged(
        _banana_gen,
        np.zeros((1, d)),
        cov[None],
        {"scale": jnp.ones(1), "sd": jnp.asarray(sd, jnp.float32)[None]},
        SETTINGS,
        seed=3,
        check=_check(),
        names=("a", "b", "c", "e"),
    )[0]
    assert any("rescaled" in s and "c: variance" in s and "e: variance" in s for s in res.stages)
    assert not res.convergence.problems
    z = res.z.reshape(-1, d)
    # banana: a ~ N(0, 1), b | a ~ N(a^2 / 2, 1): E[b] = 0.5, Var[b] = 1 + Var(a^2) / 4 = 1.5
    n_eff = 400
    se = np.sqrt(np.array([1.0, 1.5, 4.0, 0.25]) / n_eff)
    assert np.all(np.abs(z.mean(0) - [0.0, 0.5, 0.0, 0.0]) < 4 * se), (z.mean(0), se)
    np.testing.assert_allclose(z.std(0), [1.0, np.sqrt(1.5), 2.0, 0.5], rtol=0.12)


def test_the_staged_draws_agree_with_numpyro_nuts_on_the_same_posterior():
    """The same banana, whitened by the same (poor) covariance, sampled by the package's NUTS runner (numpyro):
    means and sds agree within Monte Carlo error."""
    d = 4
    sd = np.array([1.5, 0.7])
    cov = np.diag([0.5, 2.0, 1.0, 1.0])
    data = {"scale": jnp.float32(1.3), "sd": jnp.asarray(sd, jnp.float32)}
    staged = sample_staged(
        _banana_gen,
        np.zeros((1, d)),
        cov[None],
        {k: jnp.asarray(v)[None] for k, v in data.items()},
        SETTINGS,
        seed=5,
        check=_check(),
    )[0]
    chol = jnp.asarray(np.linalg.cholesky(cov), jnp.float32)
    ref_settings = NutsSettings(num_warmup=500, num_samples=2000, num_chains=2)
    ref = run_chains(
        _banana_gen, [jnp.zeros(d), jnp.zeros(d)], (jnp.zeros(d), chol, data), ref_settings, seed=5
    ).samples
    ref_z = np.asarray(ref, float).reshape(-1, d) @ np.asarray(chol).T
    got = staged.z.reshape(-1, d)
    # standard errors from the effective sample sizes of both runs
    se = np.sqrt(ref_z.var(0) / 1000 + got.var(0) / 400)
    assert np.all(np.abs(got.mean(0) - ref_z.mean(0)) < 4 * se)
    np.testing.assert_allclose(got.std(0), ref_z.std(0), rtol=0.15)


def test_draws_are_extended_until_the_rule_passes_then_rewhitened_once():
    """A check that passes only at 700 draws per chain: the first problem is extended to 700; a check that never
    passes extends the second to the cap, re-whitens it and draws again, and says so."""
    n = SETTINGS.num_samples

    def check(b, z):
        if b == 0 and z.shape[1] >= 700:
            return Convergence((), 500.0, 1.0)
        return Convergence(("tail ESS < 400 for x",), 300.0, 1.02)

    res = sample_staged(
        _banana_gen,
        np.zeros((2, 3)),
        np.stack([np.eye(3)] * 2),
        _data([1.0, 1.0], [[1.0], [1.0]]),
        SETTINGS,
        seed=1,
        check=check,
    )
    first, second = res
    assert 700 <= first.z.shape[1] < MAX_DRAWS_FACTOR * n and not first.convergence.problems
    assert any(s.startswith("extended to") for s in first.stages)
    assert not any("re-whitened" in s for s in first.stages)
    assert any("re-whitened" in s for s in second.stages) and second.convergence.problems
    assert second.z.shape[1] == MAX_DRAWS_FACTOR * n  # the second round is capped too
    assert first.gradients > 0 and second.gradients > first.gradients


def test_same_seed_same_draws_and_extend_false_stops_at_num_samples():
    args = (_banana_gen, np.zeros((1, 3)), np.eye(3)[None], _data([1.0], [[1.0]]), SETTINGS)
    never = lambda b, z: Convergence(("no",), 1.0, 2.0)  # noqa: E731
    a = sample_staged(*args, seed=4, check=never, extend=False)[0]
    b = sample_staged(*args, seed=4, check=never, extend=False)[0]
    np.testing.assert_array_equal(a.z, b.z)
    assert a.z.shape == (2, SETTINGS.num_samples, 3)
    c = sample_staged(*args, seed=4, check=never, extend=False, chain_method="sequential")[0]
    np.testing.assert_array_equal(a.z, c.z)


@pytest.mark.parametrize("probe", [0.0, 0.2])
def test_progress_counts_every_iteration_and_divergent_draws_are_drawn_again(monkeypatch, probe):
    """The banana's curved tail makes some transitions diverge at a 0.65 target: those draws are replaced by
    draws after re-adapting at 0.85, which have none; progress counts the iterations of every stage. With a
    probe, the divergences of its first draws re-adapt at once (only the probe is drawn twice); without,
    every draw is drawn again."""
    from gaia_distances.core import staged

    monkeypatch.setattr(staged, "PROBE_FRACTION", probe)
    calls = []
    settings = SETTINGS._replace(num_warmup=90, num_samples=250)
    out = sample_staged(
        _banana_gen,
        np.zeros((1, 3)),
        np.eye(3)[None],
        _data([1.0], [[1.0]]),
        settings,
        seed=2,
        check=lambda b, z: Convergence((), 1000.0, 1.0),
        progress=calls.append,
    )[0]
    again = [s for s in out.stages if "divergent transitions" in s]
    assert len(again) == 1 and "0.85 acceptance target" in again[0]
    assert out.diverging.sum() == 0 and out.z.shape == (2, settings.num_samples, 3)
    adapt = settings.num_warmup - round(settings.num_warmup * 2 / 3)
    first = int(settings.num_samples * probe)
    assert (f"in the first {first} draws" in again[0]) == bool(probe)
    redrawn = first if probe else settings.num_samples
    per_chain = settings.num_warmup + settings.num_samples + adapt + redrawn
    assert sum(calls) == settings.num_chains * per_chain


def test_hopeless_draws_are_not_extended_and_crawling_ones_count_as_hopeless(monkeypatch):
    """Draws that more draws cannot fix (a verdict's ``hopeless``, or trajectories above CRAWL_STEPS) stop after
    the first round, and the stages say why."""
    from gaia_distances.core import staged

    args = (_banana_gen, np.zeros((1, 3)), np.eye(3)[None], _data([3.0], [[1.0]]), SETTINGS)
    hopeless = lambda b, z: Convergence(("R-hat > 1.01 for Q",), 10.0, 1.2, ("no cluster signal",))  # noqa: E731
    out = sample_staged(*args, seed=1, check=hopeless)[0]
    assert out.z.shape[1] == SETTINGS.num_samples
    assert any(s.startswith("not extended (more draws cannot help): no cluster signal") for s in out.stages)
    assert out.convergence.problems
    # the same rule for trajectories: every draw takes more leapfrog steps than a (lowered) threshold
    monkeypatch.setattr(staged, "CRAWL_STEPS", 0)
    failing = lambda b, z: Convergence(("bulk ESS < 400 for Q",), 10.0, 1.0)  # noqa: E731
    out = sample_staged(*args, seed=1, check=failing)[0]
    assert out.z.shape[1] == SETTINGS.num_samples
    assert any("leapfrog steps per draw" in s and s.startswith("not extended") for s in out.stages)


def test_the_chains_carry_their_log_density_and_gradient_through_a_new_whitening():
    """The segment program takes each chain's state instead of differentiating the model again at its
    start: the state it carries, also across a re-whitening, is the density and gradient at the chain's
    place, as the potential itself gives them."""
    import jax

    from gaia_distances.core.nuts_segments import Chains

    d = 4
    data = _data([1.5], [[1.0, 2.0]])
    cov = np.diag([1.0, 2.0, 0.5, 3.0])
    run = Chains(_banana_gen, np.zeros((1, d)), cov[None], data, SETTINGS, 0, "sequential", None)

    def expected(x_cb):
        one = {k: v[0] for k, v in data.items()}
        centre, chol = (jnp.asarray(a[0], jnp.float32) for a in (run.centre, run.chol))

        def f(x):
            return -_banana_gen(centre, chol, one)(x)

        value, grad = jax.value_and_grad(f)(jnp.asarray(x_cb, jnp.float32))
        return float(value), np.asarray(grad, float)

    def assert_carried():
        for c in range(2):
            value, grad = expected(run.x[c, 0])
            assert run.logp[c, 0] == pytest.approx(value, rel=1e-5, abs=1e-5)
            np.testing.assert_allclose(run.grad[c, 0], grad, rtol=1e-4, atol=1e-5)

    assert_carried()  # the start
    run.advance([15], adapt=True)
    assert_carried()  # after NUTS iterations
    rng = np.random.default_rng(3)
    a = rng.standard_normal((d, d))
    run.rewhiten(0, np.array([0.3, -0.2, 0.1, 0.0]), a @ a.T + np.eye(d))
    assert_carried()  # in the new coordinates
