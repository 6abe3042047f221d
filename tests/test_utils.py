"""Test oracles and helpers in one place: float64 references that share no code with the package.

- :func:`x64`: a context enabling JAX float64;
- :func:`reference_quantiles`: brute-force float64 posterior quantiles on a
  very fine global grid (NumPy only);
- :func:`edsd_mode_cubic`: the analytic posterior mode under the EDSD prior
  (the root of a cubic, Bailer-Jones 2015).

The tests at the bottom check the oracles themselves against closed forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from scipy import stats

#: The +-1 sigma percentiles, written out here rather than imported, so the
#: references do not depend on the package's constants.
ONE_SIGMA = (0.158655, 0.5, 0.841345)


def x64() -> Any:
    """Context manager enabling JAX float64 (works across JAX versions)."""
    import jax

    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:  # pragma: no cover - older JAX
        from jax.experimental import enable_x64 as ctx
    return ctx(True)


def reference_quantiles(
    parallax: float,
    parallax_error: float,
    log_prior_r: Callable[[np.ndarray], np.ndarray],
    quantiles: Sequence[float] = ONE_SIGMA,
    *,
    r_min: float = 1e-3,
    r_max: float = 1e7,
    n: int = 400_001,
) -> np.ndarray:
    """Brute-force float64 quantiles (pc) on a very fine global ``ln r`` grid (NumPy).

    ``log_prior_r(r)`` is the log prior in ``r`` (pc) up to a constant. The
    trapezoid rule on ``n`` nodes over ``[r_min, r_max]`` with linear CDF
    inversion: slow, simple and independent of the package's quadrature.
    """
    u = np.linspace(math.log(r_min), math.log(r_max), n)
    r = np.exp(u)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lp = log_prior_r(r) + u - 0.5 * ((1000.0 / r - parallax) / parallax_error) ** 2
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    f = np.exp(lp - lp.max())
    c = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]))])
    c /= c[-1]
    return np.exp(np.interp(np.asarray(quantiles), c, u))


def edsd_mode_cubic(parallax: Any, parallax_error: Any, length_scale: Any) -> np.ndarray:
    """Analytic posterior mode (pc) under the EDSD prior and a Gaussian parallax likelihood.

    The real root of ``r^3/L - 2 r^2 + (w/s^2) r - 1/s^2 = 0`` with ``w`` and
    ``s`` in arcsec (Bailer-Jones 2015, eq. 19), chosen as the root in
    ``r > 0`` with the highest posterior. Inputs (mas, mas, pc) broadcast.
    """
    L = np.asarray(length_scale, float)
    w = np.asarray(parallax, float) / 1e3
    s = np.asarray(parallax_error, float) / 1e3
    L, w, s = np.broadcast_arrays(L, w, s)
    out = np.empty(L.shape)
    for i in np.ndindex(L.shape):
        roots = np.roots(np.array([1.0 / L[i], -2.0, w[i] / s[i] ** 2, -1.0 / s[i] ** 2]))
        real = roots[np.abs(roots.imag) < 1e-9 * np.abs(roots)].real
        real = real[real > 0]
        logp = 2 * np.log(real) - real / L[i] - 0.5 * ((1.0 / real - w[i]) / s[i]) ** 2
        out[i] = real[np.argmax(logp)]
    return out


# --------------------------------------------------------------------------- the oracles themselves


def test_reference_quantiles_of_a_sharp_parallax():
    """A 0.01 % parallax makes the posterior Gaussian in 1/r: quantiles at 1000 / (w -+ z s)."""
    w, s = 2.0, 2e-4
    got = reference_quantiles(w, s, lambda r: 2 * np.log(r) - r / 1350.0, r_min=400.0, r_max=600.0)
    z = stats.norm.ppf(ONE_SIGMA[2])
    np.testing.assert_allclose(got, [1000 / (w + z * s), 1000 / w, 1000 / (w - z * s)], rtol=2e-6)


def test_reference_quantiles_of_the_prior_alone():
    """An uninformative parallax leaves the EDSD prior, a Gamma(3, L): its median is 2.674 L."""
    got = reference_quantiles(0.0, 1e6, lambda r: 2 * np.log(r) - r / 1000.0, (0.5,), r_max=1e6)
    assert got[0] == pytest.approx(stats.gamma.median(3.0, scale=1000.0), rel=1e-5)


def test_edsd_mode_solves_the_cubic_and_is_the_maximum():
    w, s, L = 0.8, 0.3, 1350.0
    r = float(edsd_mode_cubic(w, s, L))
    a, b = w / 1e3, s / 1e3
    assert r**3 / L - 2 * r**2 + a / b**2 * r - 1 / b**2 == pytest.approx(0.0, abs=1e-6 / b**2)
    grid = np.linspace(0.5 * r, 2 * r, 20001)
    logp = 2 * np.log(grid) - grid / L - 0.5 * ((1000 / grid - w) / s) ** 2
    assert grid[np.argmax(logp)] == pytest.approx(r, rel=1e-4)
