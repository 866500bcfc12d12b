"""Per-orientation phase processing: stacking echoes, unwrapping, echo combination,
background field removal."""

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

from qsmprep.options import CHOICES


def _out(name):
    return os.path.abspath(name)


class _StackEchoesInputSpec(BaseInterfaceInputSpec):
    magnitude_files = InputMultiObject(File(exists=True), mandatory=True,
                                       desc='part-mag NIfTI files, one per echo, in echo order')
    phase_files = InputMultiObject(File(exists=True), mandatory=True,
                                   desc='part-phase NIfTI files, one per echo, in echo order')
    phase_units = traits.Enum('rad', 'arbitrary', usedefault=True,
                              desc="sidecar Units of the phase files")
    phase_range = traits.Either(None, traits.Tuple(traits.Float, traits.Float),
                                default=None, usedefault=True,
                                desc='(min, max) raw phase over all echoes, for arbitrary units')


class _StackEchoesOutputSpec(TraitedSpec):
    magnitude = File(exists=True, desc='4-D magnitude (echoes last), float32')
    phase = File(exists=True, desc='4-D wrapped phase in rad (echoes last), float32')
    first_echo = File(exists=True, desc='3-D magnitude of the first echo')


class StackEchoes(SimpleInterface):
    """Stack per-echo files into 4-D arrays, phase converted to rad in [−π, π)."""

    input_spec = _StackEchoesInputSpec
    output_spec = _StackEchoesOutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from qsmprep.io.nifti import rescale_arbitrary_phase
        from qsmprep.numerics.unwrap import wrap_phase
        from qsmprep.utils.images import load, save

        mags, phases = [], []
        for mf, pf in zip(self.inputs.magnitude_files, self.inputs.phase_files, strict=True):
            m, affine, _ = load(mf)
            p, _, _ = load(pf, dtype=np.float64)
            mags.append(m)
            if self.inputs.phase_units == 'arbitrary':
                vmin, vmax = self.inputs.phase_range or (p.min(), p.max())
                p = rescale_arbitrary_phase(p, vmin, vmax, integer=bool(np.all(p == np.round(p))))
            # wrap again after the cast: a float64 value just below π rounds up to π in float32
            phases.append(wrap_phase(wrap_phase(p).astype(np.float32)))
        mag, phase = np.stack(mags, -1), np.stack(phases, -1)
        self._results['magnitude'] = save(mag, affine, _out('magnitude.nii'))
        self._results['phase'] = save(phase, affine, _out('phase.nii'))
        self._results['first_echo'] = save(mag[..., 0], affine, _out('first_echo.nii'))
        return runtime


class _UnwrapInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='4-D wrapped phase (rad), echoes last')
    in_mask = File(exists=True, desc='brain mask (unwrapping restricted to it)')
    method = traits.Enum('wrapped-difference', 'sin-cos', usedefault=True,
                         desc='Laplacian estimator')


class _UnwrapOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='4-D unwrapped phase (rad)')


class UnwrapPhase(SimpleInterface):
    """Laplacian unwrapping of every echo (:func:`qsmprep.numerics.unwrap.laplacian_unwrap`)."""

    input_spec = _UnwrapInputSpec
    output_spec = _UnwrapOutputSpec

    def _run_interface(self, runtime):
        import numpy as np
        from nipype.interfaces.base import isdefined

        from qsmprep.numerics.geometry import voxel_sizes
        from qsmprep.numerics.unwrap import laplacian_unwrap
        from qsmprep.utils.images import load, save

        phase, affine, _ = load(self.inputs.in_file)
        mask = load(self.inputs.in_mask)[0] > 0 if isdefined(self.inputs.in_mask) else None
        vs = voxel_sizes(affine)
        out = np.stack([laplacian_unwrap(phase[..., e], voxel_size=vs, mask=mask,
                                         method=self.inputs.method)
                        for e in range(phase.shape[-1])], -1)
        self._results['out_file'] = save(out, affine, _out('unwrapped.nii'))
        return runtime


class _CombineInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='4-D unwrapped phase (rad)')
    magnitude = File(exists=True, desc='4-D magnitude (for weighted combinations)')
    in_mask = File(exists=True, desc='brain mask; output 0 outside')
    echo_times = traits.List(traits.Float, mandatory=True, desc='echo times (s)')
    field_strength = traits.Float(mandatory=True, desc='B0 (T)')
    method = traits.Enum('average', 'weighted', 'linear-fit', usedefault=True,
                         desc='echo combination method (average: the thesis default)')
    weights = traits.Enum('echo', 'voxel', usedefault=True,
                          desc="magnitude weights: one per echo (RMS over the mask; keeps the "
                               "per-echo harmonic offsets of Laplacian unwrapping harmonic) or "
                               "per voxel")


class _CombineOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='total field (ppm)')


class CombineEchoes(SimpleInterface):
    """Per-echo normalisation to ppm and combination (:mod:`qsmprep.numerics.echoes`)."""

    input_spec = _CombineInputSpec
    output_spec = _CombineOutputSpec

    def _run_interface(self, runtime):
        from nipype.interfaces.base import isdefined

        from qsmprep.numerics.echoes import combine_echoes
        from qsmprep.utils.images import load, save

        phase, affine, _ = load(self.inputs.in_file)
        mag = load(self.inputs.magnitude)[0] if isdefined(self.inputs.magnitude) else None
        mask = load(self.inputs.in_mask)[0] > 0 if isdefined(self.inputs.in_mask) else None
        field = combine_echoes(phase, self.inputs.echo_times, self.inputs.field_strength,
                               method=self.inputs.method, magnitude=mag, mask=mask,
                               weights=self.inputs.weights)
        self._results['out_file'] = save(field, affine, _out('total_field.nii'))
        return runtime


class _BackgroundRemovalInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='total field (ppm)')
    in_mask = File(exists=True, mandatory=True, desc='brain mask')
    method = traits.Enum(*CHOICES['bgremoval'], usedefault=True,
                         desc='background removal method (qsmprep.numerics.bgremoval)')
    radii = traits.Either(None, traits.List(traits.Float), default=None, usedefault=True,
                          desc='V-SHARP SMV radii in mm (None: 18·min(vsz) … 2·max(vsz))')
    threshold = traits.Float(0.05, usedefault=True, desc='V-SHARP TSVD threshold')
    b0_direction = traits.List(traits.Float, minlen=3, maxlen=3, value=[0.0, 0.0, 1.0],
                               usedefault=True,
                               desc='unit B0 vector in the voxel frame (PDF dipole kernel)')


class _BackgroundRemovalOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='local field (ppm)')
    out_mask = File(exists=True, desc='final mask (local field support)')


class BackgroundRemoval(SimpleInterface):
    """Background field removal (:data:`~qsmprep.numerics.bgremoval.METHODS`).

    ``vsharp`` uses ``radii``/``threshold``; ``pdf`` uses ``b0_direction``; every other
    setting is the method's documented default.
    """

    input_spec = _BackgroundRemovalInputSpec
    output_spec = _BackgroundRemovalOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.numerics.bgremoval import METHODS
        from qsmprep.numerics.geometry import voxel_sizes
        from qsmprep.utils.images import load, save

        field, affine, _ = load(self.inputs.in_file)
        mask = load(self.inputs.in_mask)[0] > 0
        method = self.inputs.method
        kwargs = {}
        if method == 'vsharp':
            kwargs = {'radii': self.inputs.radii, 'threshold': self.inputs.threshold}
        elif method == 'vsharp-ls':
            kwargs = {'radii': self.inputs.radii}
        elif method == 'pdf':
            kwargs = {'b0_direction': list(self.inputs.b0_direction)}
        local, final = METHODS[method](field, mask, voxel_size=voxel_sizes(affine), **kwargs)
        self._results['out_file'] = save(local, affine, _out('local_field.nii'))
        self._results['out_mask'] = save(final, affine, _out('local_mask.nii'))
        return runtime
