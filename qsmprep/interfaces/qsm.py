"""Dipole inversions: single orientation (TKD, iLSQR), COSMOS and STI across orientations."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _InvertInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='local field (ppm)')
    in_mask = File(exists=True, mandatory=True, desc='mask of the local field')
    b0_direction = traits.List(traits.Float, minlen=3, maxlen=3, mandatory=True,
                               desc='B0 unit vector in the voxel frame of in_file')
    threshold = traits.Float(0.15, usedefault=True, desc='TKD threshold δ')
    method = traits.Enum('tkd', 'ilsqr', usedefault=True,
                         desc="'tkd' (thresholded k-space division, demeaned in the mask) or "
                              "'ilsqr' (masked gradient-regularised least squares)")
    lam = traits.Float(0.01, usedefault=True, desc='ilsqr: λ on ‖∇χ‖² (∇ in 1/mm)')
    tol = traits.Float(1e-3, usedefault=True,
                       desc='ilsqr: stop at this relative normal-equation residual')
    maxiter = traits.Int(100, usedefault=True, desc='ilsqr: iteration cap')


class _InvertOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='susceptibility map (ppm), 0 outside the mask')
    iterations = traits.Int(desc='ilsqr: iterations run (0 for tkd)')
    converged = traits.Bool(desc='ilsqr: whether the tolerance was reached (True for tkd)')


class DipoleInversion(SimpleInterface):
    """Single-orientation inversion: TKD or the iLSQR baseline.

    ``method='tkd'``: :func:`qsmprep.numerics.inversion.tkd`, then demeaned in the mask;
    ``method='ilsqr'``: :func:`qsmprep.numerics.inversion.ilsqr` (not demeaned: its level is
    set by the gradient penalty across the mask border).
    """

    input_spec = _InvertInputSpec
    output_spec = _InvertOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.numerics.geometry import voxel_sizes
        from qsmprep.numerics.inversion import ilsqr, tkd
        from qsmprep.utils.images import load, save

        field, affine, _ = load(self.inputs.in_file)
        mask = load(self.inputs.in_mask)[0] > 0
        vs, b0 = voxel_sizes(affine), self.inputs.b0_direction
        method = self.inputs.method
        if method == 'ilsqr':
            chi, info = ilsqr(field, mask, voxel_size=vs, b0_direction=b0, lam=self.inputs.lam,
                              tol=self.inputs.tol, maxiter=self.inputs.maxiter)
            self._results['iterations'] = int(info['iterations'])
            self._results['converged'] = bool(info['converged'])
        else:
            chi = tkd(field, voxel_size=vs, b0_direction=b0, threshold=self.inputs.threshold,
                      mask=mask, demean=True)
            self._results['iterations'], self._results['converged'] = 0, True
        self._results['out_file'] = save(chi * mask, affine,
                                         os.path.abspath(f'chi_{method}.nii'))
        return runtime


def inversion_description(method: str = 'tkd', *, tkd_threshold: float = 0.15) -> str:
    """``EstimationAlgorithm`` text of a single-orientation inversion (``--inversion``).

    >>> inversion_description('tkd')
    'TKD (threshold 0.15), demeaned in mask'
    >>> inversion_description('ilsqr').split(' (')[0]
    'iLSQR-like baseline: Masked gradient-regularised least squares'
    """
    if method == 'tkd':
        return f'TKD (threshold {tkd_threshold}), demeaned in mask'
    if method == 'ilsqr':
        from qsmprep.numerics.inversion import ILSQR_DEFAULTS, ilsqr_description

        return 'iLSQR-like baseline: ' + ilsqr_description(**ILSQR_DEFAULTS)
    raise ValueError(f"inversion must be 'tkd' or 'ilsqr'; got {method!r}")


class _MultiInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc='local fields (ppm) on the reference grid')
    in_masks = InputMultiObject(File(exists=True), mandatory=True,
                                desc='their masks on the reference grid')
    b0_directions = traits.List(traits.Float, mandatory=True,
                                desc='B0 unit vectors in the reference voxel frame, '
                                     'flattened (3 values per orientation)')
    reference_b0 = traits.List(traits.Float, minlen=3, maxlen=3, mandatory=True,
                               desc='B0 of the reference orientation (defines χ33)')
    sti_regularization = traits.Float(desc='weight of the anisotropy penalty of STI '
                                           '(default: 0.1 single-step, 0.3 closed form)')
    solver = traits.Enum('closed-form', 'single-step', usedefault=True,
                         desc='single-step: COSMOS/STI fitted to the total fields through an '
                              'SMV data term; closed-form: per-k closed forms on the local '
                              'fields (qsmprep.numerics.multiorientation)')
    in_total_files = InputMultiObject(File(exists=True),
                                      desc='total fields (ppm) on the reference grid '
                                           '(single-step solver)')
    in_total_masks = InputMultiObject(File(exists=True),
                                      desc='their (eroded brain) masks on the reference grid')


class _MultiOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc='common mask (voxels inside every orientation mask)')
    cosmos = File(desc='COSMOS χ (ppm), when >= 2 orientations')
    tensor = File(desc='STI tensor (4-D, 6 components), when >= 6 orientations')
    chi33 = File(desc='STI χ33 (ppm)')
    mms = File(desc='STI mean magnetic susceptibility (ppm)')
    msa = File(desc='STI magnetic susceptibility anisotropy (ppm)')
    pev = File(desc='STI principal eigenvector (4-D, 3 components)')
    out_report = File(exists=True, desc='JSON with condition number and orientation set')


class MultiOrientation(SimpleInterface):
    """COSMOS (>= 2 orientations) and STI (>= 6) on registered local fields."""

    input_spec = _MultiInputSpec
    output_spec = _MultiOutputSpec

    def _run_interface(self, runtime):
        import json

        import numpy as np

        from qsmprep.numerics.geometry import voxel_sizes
        from qsmprep.numerics.multiorientation import solve_multi_orientation
        from qsmprep.utils.images import load, save

        single = self.inputs.solver == 'single-step'
        if single and not (isdefined(self.inputs.in_total_files)
                           and isdefined(self.inputs.in_total_masks)):
            raise ValueError('the single-step solver needs in_total_files and in_total_masks')
        files = self.inputs.in_total_files if single else self.inputs.in_files
        mfiles = self.inputs.in_total_masks if single else self.inputs.in_masks
        fields, masks = [], []
        for f, m in zip(files, mfiles, strict=True):
            data, affine, _ = load(f)
            fields.append(data)
            masks.append(load(m)[0] > 0)
        fields = np.stack(fields, -1)
        mask = np.all(np.stack(masks, -1), -1)
        b0 = np.asarray(self.inputs.b0_directions, float).reshape(-1, 3)
        reg = (self.inputs.sti_regularization if isdefined(self.inputs.sti_regularization)
               else None)
        res = solve_multi_orientation(fields, b0, voxel_size=voxel_sizes(affine), mask=mask,
                                      reference_b0=self.inputs.reference_b0,
                                      solver=self.inputs.solver, sti_regularization=reg)
        report = res['report']

        def out(name):
            return os.path.abspath(name)

        self._results['out_mask'] = save(mask, affine, out('common_mask.nii'))
        for key in ('cosmos', 'tensor', 'chi33', 'mms', 'msa', 'pev'):
            if key in res:
                self._results[key] = save(res[key], affine, out(f'{key}.nii'))
        report_file = out('multi_orientation.json')
        with open(report_file, 'w') as fh:
            json.dump(report, fh, indent=2)
        self._results['out_report'] = report_file
        return runtime


class _ApparentInputSpec(BaseInterfaceInputSpec):
    tensor = File(exists=True, mandatory=True, desc='STI tensor on the reference grid')
    reference_mask = File(exists=True, mandatory=True, desc='common mask on the reference grid')
    b0_direction = traits.List(traits.Float, minlen=3, maxlen=3, mandatory=True,
                               desc="the orientation's B0 in the reference voxel frame")
    in_xfm = File(exists=True, mandatory=True, desc='world transform native -> reference')
    native = File(exists=True, mandatory=True, desc='an image on the native grid')
    native_mask = File(exists=True, mandatory=True, desc='native local-field mask')


class _ApparentOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='apparent susceptibility bᵀχb (ppm) on the native grid')


class ApparentSusceptibility(SimpleInterface):
    """Training label bᵢᵀχbᵢ of one orientation, mapped back to its native grid."""

    input_spec = _ApparentInputSpec
    output_spec = _ApparentOutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from qsmprep.numerics.forward import apparent_susceptibility
        from qsmprep.utils.images import load, resample, save

        tensor, raff, _ = load(self.inputs.tensor)
        rmask = load(self.inputs.reference_mask)[0] > 0
        chi = apparent_susceptibility(tensor, self.inputs.b0_direction, mask=rmask)
        native, naff, _ = load(self.inputs.native)
        nmask = load(self.inputs.native_mask)[0] > 0
        world = np.loadtxt(self.inputs.in_xfm)
        # pull from reference into native: native world -> reference world is `world`
        out = resample(chi, raff, naff, native.shape[:3], world_xfm=np.linalg.inv(world))
        self._results['out_file'] = save(out * nmask, naff, os.path.abspath('apparent.nii'))
        return runtime
