"""Pure numerical core of gaia_distances.

Nothing in this sub-package imports astropy: it takes and returns JAX/NumPy
arrays, so it can run on a bare accelerator machine and inside Dask tasks.
"""

from gaia_distances.core.priors import (
    DistributionPrior,
    EDSDPrior,
    GGDPrior,
    UniformSpaceDensityPrior,
)
from gaia_distances.core.quadrature import DistanceFlag, summarize_posteriors

__all__ = [
    "DistanceFlag",
    "DistributionPrior",
    "EDSDPrior",
    "GGDPrior",
    "UniformSpaceDensityPrior",
    "summarize_posteriors",
]
