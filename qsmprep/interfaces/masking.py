"""Brain masking: pure-Python brain extraction (BET port) and mask erosion."""

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


class _MaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc='binary brain mask')


class PythonBET(SimpleInterface):
    """Brain extraction without FSL (:func:`qsmprep.utils.masking.python_bet`)."""

    input_spec = _PythonBETInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.utils.images import load, save
        from qsmprep.utils.masking import python_bet

        data, affine, _ = load(self.inputs.in_file)
        mask = python_bet(data, affine, frac=self.inputs.frac,
                          iterations=self.inputs.iterations)
        self._results['out_mask'] = save(mask, affine, os.path.abspath('brain_mask.nii'))
        return runtime


class _ErodeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='binary mask')
    voxels = traits.Int(2, usedefault=True, desc='erosion in voxels (0: none)')


class ErodeMask(SimpleInterface):
    """Erode a mask by N voxels (:func:`qsmprep.numerics.bgremoval.erode_mask`)."""

    input_spec = _ErodeInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.numerics.bgremoval import erode_mask
        from qsmprep.utils.images import load, save

        mask, affine, _ = load(self.inputs.in_file)
        mask = mask > 0
        if self.inputs.voxels > 0:
            mask = erode_mask(mask, voxels=self.inputs.voxels)
        self._results['out_mask'] = save(mask, affine, os.path.abspath('eroded_mask.nii'))
        return runtime
