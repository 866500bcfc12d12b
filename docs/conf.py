"""Sphinx configuration for the qsmprep documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath('..'))
sys.path.insert(0, os.path.abspath('_ext'))  # qsmprep_graphs: workflow graphs as SVG

from qsmprep import __version__

project = 'qsmprep'
author = 'qsmprep developers'
copyright = '2026, qsmprep developers'
version = release = __version__

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinxarg.ext',
    'qsmprep_graphs',
]
myst_enable_extensions = ['dollarmath', 'colon_fence']
source_suffix = {'.md': 'markdown', '.rst': 'restructuredtext'}
exclude_patterns = ['_build', '_generated']
autodoc_member_order = 'bysource'
autodoc_mock_imports = ['tensorflow', 'keras']
napoleon_numpy_docstring = True
napoleon_google_docstring = False
html_theme = 'alabaster'
suppress_warnings = ['myst.header']
