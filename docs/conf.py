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
]
autosummary_generate = True
napoleon_numpy_docstring = True
# every notebook runs at each build, and an error in a cell fails the build
nb_execution_mode = "force"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
html_theme = "sphinx_book_theme"
exclude_patterns = ["_build", "jupyter_execute", "build.sh"]
autodoc_typehints = "description"
html_title = "gaia_distances"
