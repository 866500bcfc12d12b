"""Thin Nipype interfaces over :mod:`qsmprep.numerics` (load → compute → save)."""
