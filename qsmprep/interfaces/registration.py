"""Registration of each orientation to the reference, and resampling into reference space."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


def _store_registration(results, world, moving_file, reference_file):
    """Save a moving→reference world transform (4×4 text and ITK) and the moving image
    resampled onto the reference grid into the interface ``results``."""
    import numpy as np
    from nitransforms.linear import Affine

    from qsmprep.utils.images import load, resample, save

    txt = os.path.abspath('xfm_world.txt')
    np.savetxt(txt, world, fmt='%.10f', header='RAS+ world transform moving -> reference')
    itk = os.path.abspath('xfm_itk.txt')
    # nitransforms (like ITK) stores the pull transform: reference points -> moving points.
    Affine(np.linalg.inv(world), reference=reference_file).to_filename(itk, fmt='itk')
    fix, faff, _ = load(reference_file)
    mov, maff, _ = load(moving_file)
    results['out_xfm'], results['out_itk'] = txt, itk
    results['out_file'] = save(resample(mov, maff, faff, fix.shape, world_xfm=world), faff,
                               os.path.abspath('registered.nii'))


class _RegisterInputSpec(BaseInterfaceInputSpec):
    moving = File(exists=True, mandatory=True, desc='magnitude of the orientation to align')
    fixed = File(exists=True, mandatory=True, desc='magnitude of the reference orientation')
    fixed_mask = File(exists=True, desc='brain mask of the reference (restricts the metric)')
    identity = traits.Bool(False, usedefault=True,
                           desc='skip registration (moving is the reference itself)')


class _RegisterOutputSpec(TraitedSpec):
    out_xfm = File(exists=True, desc='4x4 RAS world transform moving -> reference (text)')
    out_itk = File(exists=True, desc='same transform in ITK text format')
    out_file = File(exists=True, desc='moving magnitude resampled onto the reference grid')


class SimpleITKRigid(SimpleInterface):
    """Rigid registration with SimpleITK (:func:`qsmprep.utils.registration.sitk_rigid`)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        import numpy as np
        from nipype.interfaces.base import isdefined

        from qsmprep.utils.images import load
        from qsmprep.utils.registration import sitk_rigid

        if self.inputs.identity:
            world = np.eye(4)
        else:
            fix, faff, _ = load(self.inputs.fixed)
            mov, maff, _ = load(self.inputs.moving)
            fmask = load(self.inputs.fixed_mask)[0] > 0 if isdefined(
                self.inputs.fixed_mask) else None
            world, _ = sitk_rigid(fix, faff, mov, maff, fixed_mask=fmask)
        _store_registration(self._results, world, self.inputs.moving, self.inputs.fixed)
        return runtime


class _FlirtWorldInputSpec(BaseInterfaceInputSpec):
    in_matrix = File(exists=True, mandatory=True, desc='FLIRT .mat (moving -> reference)')
    moving = File(exists=True, mandatory=True, desc='FLIRT -in image')
    fixed = File(exists=True, mandatory=True, desc='FLIRT -ref image')


class FlirtToWorld(SimpleInterface):
    """Convert a FLIRT matrix to a world transform with nitransforms."""

    input_spec = _FlirtWorldInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.utils.registration import flirt_to_world

        world = flirt_to_world(self.inputs.in_matrix, self.inputs.moving, self.inputs.fixed)
        _store_registration(self._results, world, self.inputs.moving, self.inputs.fixed)
        return runtime


class _ToRefInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='local field (ppm) on the native grid')
    in_mask = File(exists=True, mandatory=True, desc='its mask on the native grid')
    in_xfm = File(exists=True, mandatory=True, desc='world transform native -> reference')
    reference = File(exists=True, mandatory=True, desc='an image on the reference grid')
    b0_direction = traits.List(traits.Float, minlen=3, maxlen=3, mandatory=True,
                               desc='B0 unit vector in the native voxel frame')


class _ToRefOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='local field on the reference grid')
    out_mask = File(exists=True, desc='mask on the reference grid')
    b0_direction = traits.List(traits.Float, desc='B0 unit vector in the reference voxel frame')


class ResampleToReference(SimpleInterface):
    """Resample a local field and mask into the reference space; rotate its B0 direction."""

    input_spec = _ToRefInputSpec
    output_spec = _ToRefOutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from qsmprep.numerics.geometry import b0_in_grid
        from qsmprep.utils.images import load, resample, save

        field, naff, _ = load(self.inputs.in_file)
        mask = load(self.inputs.in_mask)[0] > 0
        _, raff, rhdr = load(self.inputs.reference)
        shape = rhdr.get_data_shape()[:3]
        world = np.loadtxt(self.inputs.in_xfm)
        # normalised interpolation: values next to the mask edge are not pulled towards 0
        out = resample(field * mask, naff, raff, shape, world_xfm=world, order=1)
        weight = resample(mask.astype(np.float32), naff, raff, shape, world_xfm=world, order=1)
        rmask = weight > 0.5
        out = np.divide(out, weight, out=np.zeros_like(out), where=rmask)
        self._results['out_file'] = save(out, raff, os.path.abspath('field_ref.nii'))
        self._results['out_mask'] = save(rmask, raff, os.path.abspath('mask_ref.nii'))
        self._results['b0_direction'] = b0_in_grid(
            self.inputs.b0_direction, naff, raff, world_xfm=world).tolist()
        return runtime


class _MaskFromRefInputSpec(BaseInterfaceInputSpec):
    in_mask = File(exists=True, mandatory=True, desc='brain mask on the reference grid')
    in_xfm = File(exists=True, mandatory=True, desc='world transform native -> reference')
    native = File(exists=True, mandatory=True, desc='an image on the native grid')


class _MaskFromRefOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc='the brain mask on the native grid')


class MaskFromReference(SimpleInterface):
    """Carry the reference orientation's brain mask onto another orientation's grid.

    One brain extraction per subject instead of one per orientation, and the same brain
    support in every orientation (what COSMOS/STI combine anyway).
    """

    input_spec = _MaskFromRefInputSpec
    output_spec = _MaskFromRefOutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from qsmprep.utils.images import load, resample_mask, save

        mask, raff, _ = load(self.inputs.in_mask)
        native, naff, _ = load(self.inputs.native)
        world = np.loadtxt(self.inputs.in_xfm)
        out = resample_mask(mask > 0, raff, naff, native.shape[:3], world_xfm=np.linalg.inv(world))
        self._results['out_mask'] = save(out, naff, os.path.abspath('brain_mask.nii'))
        return runtime
