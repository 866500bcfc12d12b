"""Brain masking: pure-Python brain extraction (BET port), refinement and erosion."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _PythonBETInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='magnitude image (first echo)')
    frac = traits.Float(0.5, usedefault=True, desc='BET fractional intensity threshold (0-1)')
    iterations = traits.Int(1000, usedefault=True, desc='surface deformation iterations')
    threshold = traits.Range(0.0, 1.0, 0.2, exclude_high=True, usedefault=True,
                             desc='refinement: remove edge voxels darker than this fraction of '
                                  'the typical brain magnitude (0: no removal)')


class _MaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc='binary brain mask')


class PythonBET(SimpleInterface):
    """Brain extraction without FSL (:func:`qsmprep.utils.masking.python_bet`), refined by
    :func:`qsmprep.utils.masking.refine_mask`."""

    input_spec = _PythonBETInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.utils.images import load, save
        from qsmprep.utils.masking import python_bet

        data, affine, _ = load(self.inputs.in_file)
        mask = python_bet(data, affine, frac=self.inputs.frac,
                          iterations=self.inputs.iterations, threshold=self.inputs.threshold)
        self._results['out_mask'] = save(mask, affine, os.path.abspath('brain_mask.nii'))
        return runtime


class _RefineInputSpec(BaseInterfaceInputSpec):
    in_mask = File(exists=True, mandatory=True, desc='binary brain mask (e.g. FSL BET)')
    in_file = File(exists=True, mandatory=True, desc='magnitude image (first echo)')
    threshold = traits.Range(0.0, 1.0, 0.2, exclude_high=True, usedefault=True,
                             desc='remove edge voxels darker than this fraction of the typical '
                                  'brain magnitude (0: largest component and hole filling only)')


class RefineMask(SimpleInterface):
    """Remove the low-signal rim of a brain mask (:func:`qsmprep.utils.masking.refine_mask`)."""

    input_spec = _RefineInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from qsmprep.utils.images import load, save
        from qsmprep.utils.masking import refine_mask

        mask, affine, _ = load(self.inputs.in_mask)
        mag, mag_affine, _ = load(self.inputs.in_file)
        if mask.shape[:3] != mag.shape[:3] or not np.allclose(affine, mag_affine, atol=1e-3):
            raise ValueError(
                f'brain mask {self.inputs.in_mask} (shape {mask.shape}) is not on the grid of '
                f'the magnitude {self.inputs.in_file} (shape {mag.shape}); both must share '
                'shape and affine')
        out = refine_mask(mask > 0, mag, threshold=self.inputs.threshold)
        self._results['out_mask'] = save(out, affine, os.path.abspath('brain_mask.nii'))
        return runtime


class _ErodeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='binary mask')
    voxels = traits.Int(2, usedefault=True, desc='erosion in voxels (0: none)')
    radius_mm = traits.Float(desc='erosion by a ball of this radius in mm (voxel sizes from '
                                  'the affine) instead of ``voxels``; 0: none')


class ErodeMask(SimpleInterface):
    """Erode a mask by N voxels, or by a ball of ``radius_mm`` when that is given
    (:func:`qsmprep.numerics.bgremoval.erode_mask`)."""

    input_spec = _ErodeInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        from nipype.interfaces.base import isdefined

        from qsmprep.numerics.bgremoval import erode_mask
        from qsmprep.numerics.geometry import voxel_sizes
        from qsmprep.utils.images import load, save

        mask, affine, _ = load(self.inputs.in_file)
        mask = mask > 0
        if isdefined(self.inputs.radius_mm):
            if self.inputs.radius_mm < 0:
                raise ValueError(f'radius_mm must be >= 0 (got {self.inputs.radius_mm})')
            if self.inputs.radius_mm > 0:
                mask = erode_mask(mask, radius_mm=self.inputs.radius_mm,
                                  voxel_size=voxel_sizes(affine))
        elif self.inputs.voxels > 0:
            mask = erode_mask(mask, voxels=self.inputs.voxels)
        self._results['out_mask'] = save(mask, affine, os.path.abspath('eroded_mask.nii'))
        return runtime
