"""The MAP search's Newton algebra: the saddle-free inverse of the Hessian (dense float64 references)."""

import numpy as np

from gaia_distances.core.initialisation import NEWTON_FLOOR, soft_inverse


def _badly_scaled(seed: int = 0) -> np.ndarray:
    """A positive-definite matrix whose diagonal spans 1e-2 to 2e5, with correlations up to about 0.6."""
    rng = np.random.default_rng(seed)
    n = 12
    a = rng.standard_normal((n, 3 * n))
    corr = a @ a.T / (3 * n)
    d = np.sqrt(np.logspace(-2, np.log10(2.4e5), n))
    return corr * np.outer(d, d)


def test_soft_inverse_of_a_definite_matrix_is_its_inverse_across_seven_decades_of_curvature():
    a = _badly_scaled()
    np.testing.assert_allclose(soft_inverse(a), np.linalg.inv(a), rtol=1e-8, atol=0)


def test_a_floor_relative_to_the_largest_raw_curvature_would_cut_the_weak_directions():
    """NGC 2437: the cluster's distance curves at 2.3e5, the field's mean radial velocity at 0.034; a floor of
    1e-6 of the largest raw eigenvalue gave that velocity a Laplace sd of 2.1 km/s for a posterior sd of 5.4."""
    a = np.diag([2.3e5, 0.034])
    lam, vec = np.linalg.eigh(a)
    old = (vec / np.maximum(lam, NEWTON_FLOOR * lam.max())) @ vec.T
    assert np.sqrt(old[1, 1]) < 2.1  # the old rule
    np.testing.assert_allclose(np.sqrt(soft_inverse(a)[1, 1]), 1 / np.sqrt(0.034), rtol=1e-12)


def test_soft_inverse_turns_a_saddle_uphill_and_stays_positive_definite():
    np.testing.assert_allclose(soft_inverse(np.diag([-2.0, 8.0])), np.diag([0.5, 0.125]), rtol=1e-12)
    a = _badly_scaled(1)
    lam, vec = np.linalg.eigh(a)
    saddle = (vec * np.where(np.arange(lam.size) == 0, -lam, lam)) @ vec.T  # one curvature of the wrong sign
    inv = soft_inverse(saddle)
    np.testing.assert_allclose(inv, inv.T, rtol=1e-10, atol=0)
    assert np.all(np.linalg.eigvalsh(inv) > 0)
    # along the direction of the wrong sign the plain inverse is negative (a Newton step would descend
    # there); the soft inverse is positive (its step climbs)
    up = vec[:, 0]
    assert up @ np.linalg.inv(saddle) @ up < 0 < up @ inv @ up
