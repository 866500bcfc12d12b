"""Per-orientation processing: brain mask, unwrapping, echo combination, V-SHARP, TKD."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.interfaces.masking import ErodeMask, PythonBET
from qsmprep.interfaces.phase import CombineEchoes, StackEchoes, UnwrapPhase, VSharp
from qsmprep.interfaces.qsm import DipoleInversion

MASK_METHODS = ('bet', 'python', 'user')


def init_brainmask_wf(*, method: str = 'python', bet_frac: float = 0.5,
                      name: str = 'brainmask_wf'):
    """Brain mask of the first-echo magnitude.

    Parameters
    ----------
    method : {'bet', 'python', 'user'}
        ``'bet'``: FSL BET (nipype interface; needs ``bet`` on PATH); ``'python'``: the
        pure-Python BET port (:class:`~qsmprep.interfaces.masking.PythonBET`); ``'user'``: a
        mask supplied in a derivatives folder is passed through.

    Inputs: ``magnitude`` (first echo), ``user_mask``.  Outputs: ``brain_mask``.
    """
    if method not in MASK_METHODS:
        raise ValueError(f'mask method must be one of {MASK_METHODS}; got {method!r}')
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(['magnitude', 'user_mask']), name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(['brain_mask']), name='outputnode')
    if method == 'user':
        wf.connect(inputnode, 'user_mask', outputnode, 'brain_mask')
        return wf
    if method == 'bet':
        from nipype.interfaces import fsl

        bet = pe.Node(fsl.BET(mask=True, frac=bet_frac, output_type='NIFTI_GZ'), name='bet')
        wf.connect([
            (inputnode, bet, [('magnitude', 'in_file')]),
            (bet, outputnode, [('mask_file', 'brain_mask')]),
        ])  # fmt: skip
        return wf
    python_bet = pe.Node(PythonBET(frac=bet_frac), name='python_bet')
    wf.connect([
        (inputnode, python_bet, [('magnitude', 'in_file')]),
        (python_bet, outputnode, [('out_mask', 'brain_mask')]),
    ])  # fmt: skip
    return wf


def init_orientation_wf(*, echo_times, field_strength, b0_direction, phase_units='rad',
                        phase_range=None, mask_method='python', mask_erosion=2,
                        unwrapping='wrapped-difference', echo_combination='average',
                        vsharp_radii=None, vsharp_threshold=0.05, tkd_threshold=0.15,
                        name='orientation_wf'):
    """Phase → local field → single-orientation χ for one head orientation.

    Steps: stack echoes (phase in rad) → brain mask of the first echo → erode by
    ``mask_erosion`` voxels → Laplacian unwrapping of every echo (inside the brain mask) →
    per-echo normalisation to ppm and echo combination → V-SHARP on the eroded mask →
    TKD inversion.  Unwrapping and V-SHARP are linear, so removing the background once
    after echo combination equals doing it per echo and combining (tested), at 1/E the
    cost.

    Inputs: ``magnitude_files``, ``phase_files`` (lists, echo order), ``user_mask``.
    Outputs: ``first_echo``, ``magnitude``, ``brain_mask``, ``eroded_mask``,
    ``total_field``, ``local_field``, ``local_mask``, ``chimap``.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(['magnitude_files', 'phase_files', 'user_mask']),
                        name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(
        ['first_echo', 'magnitude', 'brain_mask', 'eroded_mask', 'total_field', 'local_field',
         'local_mask', 'chimap']), name='outputnode')

    stack = pe.Node(StackEchoes(phase_units=phase_units,
                                phase_range=tuple(phase_range) if phase_range else None),
                    name='stack_echoes')
    brainmask_wf = init_brainmask_wf(method=mask_method)
    erode = pe.Node(ErodeMask(voxels=int(mask_erosion)), name='erode_mask')
    unwrap = pe.Node(UnwrapPhase(method=unwrapping), name='unwrap')
    combine = pe.Node(CombineEchoes(echo_times=list(echo_times),
                                    field_strength=float(field_strength),
                                    method=echo_combination), name='combine_echoes')
    vsharp = pe.Node(VSharp(radii=list(vsharp_radii) if vsharp_radii else None,
                            threshold=vsharp_threshold), name='vsharp')
    invert = pe.Node(DipoleInversion(b0_direction=[float(b) for b in b0_direction],
                                     threshold=tkd_threshold), name='invert')
    wf.connect([
        (inputnode, stack, [('magnitude_files', 'magnitude_files'),
                            ('phase_files', 'phase_files')]),
        (inputnode, brainmask_wf, [('user_mask', 'inputnode.user_mask')]),
        (stack, brainmask_wf, [('first_echo', 'inputnode.magnitude')]),
        (brainmask_wf, erode, [('outputnode.brain_mask', 'in_file')]),
        (stack, unwrap, [('phase', 'in_file')]),
        (brainmask_wf, unwrap, [('outputnode.brain_mask', 'in_mask')]),
        (unwrap, combine, [('out_file', 'in_file')]),
        (stack, combine, [('magnitude', 'magnitude')]),
        (brainmask_wf, combine, [('outputnode.brain_mask', 'in_mask')]),
        (combine, vsharp, [('out_file', 'in_file')]),
        (erode, vsharp, [('out_mask', 'in_mask')]),
        (vsharp, invert, [('out_file', 'in_file'), ('out_mask', 'in_mask')]),
        (stack, outputnode, [('first_echo', 'first_echo'), ('magnitude', 'magnitude')]),
        (brainmask_wf, outputnode, [('outputnode.brain_mask', 'brain_mask')]),
        (erode, outputnode, [('out_mask', 'eroded_mask')]),
        (combine, outputnode, [('out_file', 'total_field')]),
        (vsharp, outputnode, [('out_file', 'local_field'), ('out_mask', 'local_mask')]),
        (invert, outputnode, [('out_file', 'chimap')]),
    ])  # fmt: skip
    return wf
