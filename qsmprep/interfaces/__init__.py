"""Thin Nipype interfaces over :mod:`qsmprep.numerics` (load → compute → save).

Intermediate images in the work directory are written as uncompressed ``.nii``: gzip made
loading and saving the largest cost of a 1 mm run; derivatives are compressed by the sink.
"""
