"""Sphinx configuration for gaia_distances."""

from importlib.metadata import version as _version

project = "gaia_distances"
author = "gaia_distances developers"
release = _version("gaia-distances")
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
]
autosummary_generate = True
napoleon_numpy_docstring = True
nb_execution_mode = "cache"
nb_execution_timeout = 600
html_theme = "sphinx_book_theme"
exclude_patterns = ["_build"]
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "astropy": ("https://docs.astropy.org/en/stable/", None),
    "numpyro": ("https://num.pyro.ai/en/stable/", None),
}
