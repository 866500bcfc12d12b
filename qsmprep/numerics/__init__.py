"""Pure numerical core of qsmprep.

Every function in this subpackage takes arrays and physical parameters and returns arrays:
no file paths, no nibabel, no nipype, no global state.  Units follow ``docs/physics.md``:
phase in rad, fields in ppm, susceptibility in ppm (SI), echo times in s, B0 in T,
voxel sizes in mm, B0 directions as unit vectors in the image (voxel-axis) frame.
"""
