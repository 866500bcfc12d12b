"""Dipole inversions: single orientation (TKD), COSMOS and STI across orientations."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _InvertInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='local field (ppm)')
    in_mask = File(exists=True, mandatory=True, desc='mask of the local field')
    b0_direction = traits.List(traits.Float, minlen=3, maxlen=3, mandatory=True,
                               desc='B0 unit vector in the voxel frame of in_file')
    threshold = traits.Float(0.15, usedefault=True, desc='TKD threshold δ')


class _InvertOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='susceptibility map (ppm), demeaned in the mask')


class DipoleInversion(SimpleInterface):
    """Single-orientation TKD inversion (:func:`qsmprep.numerics.inversion.tkd`)."""

    input_spec = _InvertInputSpec
    output_spec = _InvertOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.numerics.inversion import tkd
        from qsmprep.utils.images import load, save, voxel_sizes

        field, affine, _ = load(self.inputs.in_file)
        mask = load(self.inputs.in_mask)[0] > 0
        chi = tkd(field, voxel_size=voxel_sizes(affine), b0_direction=self.inputs.b0_direction,
                  threshold=self.inputs.threshold, mask=mask)
        chi[mask] -= chi[mask].mean()
        self._results['out_file'] = save(chi * mask, affine, os.path.abspath('chi_tkd.nii'))
        return runtime


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
    sti_regularization = traits.Float(0.3, usedefault=True,
                                      desc='weight of the per-k anisotropy penalty of STI '
                                           '(0: unregularised least squares)')


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
        import warnings

        import numpy as np

        from qsmprep.numerics.sti import cosmos, fit_sti, sti_condition_number
        from qsmprep.utils.images import load, save, voxel_sizes

        fields, masks = [], []
        for f, m in zip(self.inputs.in_files, self.inputs.in_masks, strict=True):
            data, affine, _ = load(f)
            fields.append(data)
            masks.append(load(m)[0] > 0)
        fields = np.stack(fields, -1)
        mask = np.all(np.stack(masks, -1), -1)
        fields *= mask[..., None]
        b0 = np.asarray(self.inputs.b0_directions, float).reshape(-1, 3)
        vs = voxel_sizes(affine)
        n = b0.shape[0]
        report = {'n_orientations': int(n), 'b0_directions': b0.tolist(),
                  'reference_b0': list(self.inputs.reference_b0), 'warnings': []}

        def out(name):
            return os.path.abspath(name)

        self._results['out_mask'] = save(mask, affine, out('common_mask.nii'))
        if n >= 2:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                chi = cosmos(fields, b0, voxel_size=vs, mask=mask)
            report['warnings'] += [str(w.message) for w in caught]
            chi[mask] -= chi[mask].mean()
            self._results['cosmos'] = save(chi * mask, affine, out('cosmos.nii'))
        if n >= 6:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                cond = sti_condition_number(b0)
                fit = fit_sti(fields, b0, voxel_size=vs, mask=mask,
                              tikhonov=self.inputs.sti_regularization,
                              regularizer='anisotropy')
            report['sti_regularization'] = {'weight': self.inputs.sti_regularization,
                                            'penalty': 'anisotropy (deviatoric norm)'}
            report['warnings'] += [str(w.message) for w in caught]
            report['condition_number'] = {
                'definition': 'cond(A(k)) over unit k directions (qsmprep.numerics.sti)',
                **{k: float(getattr(cond, k)) for k in ('median', 'p5', 'p95', 'minimum',
                                                         'maximum')}}
            tensor = fit.tensor * mask[..., None]
            iso = tensor[..., [0, 3, 5]].mean(-1)[mask].mean()  # remove the undefined mean
            tensor[..., [0, 3, 5]] -= iso
            tensor *= mask[..., None]
            self._results['tensor'] = save(tensor, affine, out('tensor.nii'))
            chi33 = fit.chi_along(self.inputs.reference_b0) - iso
            self._results['chi33'] = save(chi33 * mask, affine, out('chi33.nii'))
            self._results['mms'] = save((fit.mms - iso) * mask, affine, out('mms.nii'))
            self._results['msa'] = save(fit.msa * mask, affine, out('msa.nii'))
            self._results['pev'] = save(fit.pev * mask[..., None], affine, out('pev.nii'))
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
