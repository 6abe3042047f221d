"""Cluster fits: the user-facing edge over the cluster model in :mod:`gaia_distances.core`.

- :func:`fit_cluster` (:mod:`.fit`): a table in, a :class:`ClusterFit` out;
- :func:`fit_clusters` (:mod:`.batch`): many clusters in one vectorised program;
- :class:`ClusterFit`, :class:`ClusterFits` (:mod:`.result`): posteriors,
  per-star columns, diagnostics, plots and reports;
- :class:`ClusterFlag` (:mod:`.flags`), :class:`FittedStars` (:mod:`.stars`): which rows were
  fitted, and why the others were not.

The model: the cluster is a Gaussian in ``ln r`` (``D``, ``sigma``), the field
an exponentially decreasing space density with free length scale ``L``, and
``Q`` the cluster fraction. ``method="marginal"`` integrates every star's
distance out of the likelihood and samples the four population parameters
with NUTS; ``method="joint"`` samples one latent distance per star, as the
reference M67 analysis does, and is kept for validation. See the
architecture page of the documentation for how the layers fit together.
"""

from gaia_distances.cluster.batch import fit_clusters
from gaia_distances.cluster.fit import fit_cluster
from gaia_distances.cluster.flags import ClusterFlag
from gaia_distances.cluster.result import ClusterFit, ClusterFits
from gaia_distances.cluster.stars import FittedStars
from gaia_distances.core.population import ClusterPriors

__all__ = ["ClusterFit", "ClusterFits", "ClusterFlag", "ClusterPriors", "FittedStars", "fit_cluster", "fit_clusters"]
