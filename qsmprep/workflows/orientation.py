"""Per-orientation processing: brain mask, unwrapping, echo combination, background field
removal (V-SHARP by default), TKD."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.interfaces.masking import ErodeMask, PythonBET, RefineMask
from qsmprep.interfaces.phase import BackgroundRemoval, CombineEchoes, StackEchoes, UnwrapPhase
from qsmprep.interfaces.qsm import DipoleInversion
from qsmprep.options import CHOICES

MASK_METHODS = ('bet', 'python', 'user')
#: ``--inversion`` choices: TKD and the iLSQR baseline (:func:`qsmprep.numerics.inversion.ilsqr`).
INVERSION_METHODS = ('tkd', 'ilsqr')
#: ``--bgremoval`` choices (:data:`qsmprep.numerics.bgremoval.METHODS`).
BGREMOVAL_METHODS = CHOICES['bgremoval']


def bgremoval_description(method='vsharp', *, vsharp_radii=None, vsharp_threshold=0.05):
    """``EstimationAlgorithm`` text of the local field for a ``--bgremoval`` method.

    >>> bgremoval_description('lbv')
    'LBV (Laplacian boundary value; Zhou 2014), CG tolerance 1e-06'
    >>> bgremoval_description('vsharp', vsharp_radii=[8, 4])
    'V-SHARP (radii 8.0, 4.0 mm, TSVD threshold 0.05)'
    """
    if method not in BGREMOVAL_METHODS:
        raise ValueError(f'background removal must be one of {BGREMOVAL_METHODS}; '
                         f'got {method!r}')
    if method == 'vsharp':
        radii = (', '.join(f'{float(r)}' for r in vsharp_radii) + ' mm' if vsharp_radii
                 else '18·min(voxel) to 2·max(voxel) mm')
        return f'V-SHARP (radii {radii}, TSVD threshold {vsharp_threshold})'
    if method == 'vsharp-ls':
        radii = (', '.join(f'{float(r)}' for r in vsharp_radii) + ' mm' if vsharp_radii
                 else '18·min(voxel) to 2·max(voxel) mm')
        import inspect

        from qsmprep.numerics.bgremoval import vsharp_ls

        d = inspect.signature(vsharp_ls).parameters
        return (f'V-SHARP with least-squares deconvolution (radii {radii}; conjugate '
                f'gradients, at most {d["maxit"].default} iterations, tolerance '
                f'{d["tol"].default})')
    import inspect

    from qsmprep.numerics.bgremoval import METHODS

    d = {k: v.default for k, v in inspect.signature(METHODS[method]).parameters.items()}
    if method == 'ismv':
        return (f'iSMV (iterative spherical mean value; Wen 2014), radius 2·max(voxel) mm, '
                f'{d["solver"]} solver, tolerance {d["tol"]}')
    if method == 'pdf':
        return (f'PDF (projection onto dipole fields; Liu 2011), padding {d["padding"]} '
                f'voxels, CG tolerance {d["tol"]}, at most {d["maxit"]} iterations')
    if method == 'lbv':
        return f'LBV (Laplacian boundary value; Zhou 2014), CG tolerance {d["tol"]}'
    return (f'RESHARP (Sun & Wilman 2014), radius round(6/max(voxel))·max(voxel) mm, '
            f'alpha {d["alpha"]}')


def init_brainmask_wf(*, method: str = 'python', bet_frac: float = 0.5,
                      mask_threshold: float = 0.2, name: str = 'brainmask_wf'):
    """Brain mask of the first-echo magnitude.

    Parameters
    ----------
    method : {'bet', 'python', 'user'}
        ``'bet'``: FSL BET (nipype interface; needs ``bet`` on PATH); ``'python'``: the
        pure-Python BET port (:class:`~qsmprep.interfaces.masking.PythonBET`); ``'user'``: a
        mask supplied in a derivatives folder is passed through.
    bet_frac : float
        BET fractional intensity threshold.
    mask_threshold : float
        Refinement of the BET mask (both BETs; never of user masks): voxels darker than this
        fraction of the typical brain magnitude that connect to the outside of the mask
        (skull, air, signal dropout) are removed, then the largest component is kept and
        holes are filled (:func:`~qsmprep.utils.masking.refine_mask`).  ``0``: no removal
        (FSL BET's mask is then used as is).

    Inputs: ``magnitude`` (first echo), ``user_mask``.  Outputs: ``brain_mask``.
    """
    if method not in MASK_METHODS:
        raise ValueError(f'mask method must be one of {MASK_METHODS}; got {method!r}')
    mask_threshold = float(mask_threshold)
    if not 0.0 <= mask_threshold < 1.0:
        raise ValueError('mask_threshold must be a fraction of the brain magnitude in [0, 1); '
                         f'got {mask_threshold!r}')
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(['magnitude', 'user_mask']), name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(['brain_mask']), name='outputnode')
    if method == 'user':
        wf.connect(inputnode, 'user_mask', outputnode, 'brain_mask')
        return wf
    if method == 'bet':
        from nipype.interfaces import fsl

        bet = pe.Node(fsl.BET(mask=True, frac=bet_frac, output_type='NIFTI_GZ'), name='bet')
        wf.connect(inputnode, 'magnitude', bet, 'in_file')
        if mask_threshold == 0:
            wf.connect(bet, 'mask_file', outputnode, 'brain_mask')
            return wf
        refine = pe.Node(RefineMask(threshold=mask_threshold), name='refine_mask')
        wf.connect([
            (inputnode, refine, [('magnitude', 'in_file')]),
            (bet, refine, [('mask_file', 'in_mask')]),
            (refine, outputnode, [('out_mask', 'brain_mask')]),
        ])  # fmt: skip
        return wf
    python_bet = pe.Node(PythonBET(frac=bet_frac, threshold=mask_threshold), name='python_bet')
    wf.connect([
        (inputnode, python_bet, [('magnitude', 'in_file')]),
        (python_bet, outputnode, [('out_mask', 'brain_mask')]),
    ])  # fmt: skip
    return wf


def init_orientation_wf(*, echo_times, field_strength, b0_direction, phase_units='rad',
                        phase_range=None, mask_method='python', mask_erosion=2,
                        mask_threshold=0.2, unwrapping='wrapped-difference',
                        echo_combination='average', vsharp_radii=None, vsharp_threshold=0.05,
                        inversions=INVERSION_METHODS,
                        tkd_threshold=0.15, bgremoval='vsharp', name='orientation_wf'):
    """Phase → local field → single-orientation χ for one head orientation.

    Steps: stack echoes (phase in rad) → brain mask of the first echo (BET, refined by
    ``mask_threshold``: :func:`init_brainmask_wf`) → erode by ``mask_erosion`` voxels →
    Laplacian unwrapping of every echo (inside the brain mask) → per-echo normalisation to
    ppm and echo combination → background field removal on the eroded mask (node
    ``bgremoval``: ``bgremoval`` = ``'vsharp'`` (default), ``'ismv'``, ``'pdf'``, ``'lbv'`` or
    ``'resharp'``, :mod:`qsmprep.numerics.bgremoval`) → TKD inversion.  Unwrapping and
    background removal are linear, so removing the background once after echo combination
    equals doing it per echo and combining (tested for V-SHARP), at 1/E the cost.

    Inputs: ``magnitude_files``, ``phase_files`` (lists, echo order), ``user_mask``.
    ``inversions``: one or more of :data:`INVERSION_METHODS`, each a node (``invert`` for TKD,
    ``invert_<method>`` otherwise) writing ``chimap_<method>``.

    Outputs: ``first_echo``, ``magnitude``, ``brain_mask``, ``eroded_mask``,
    ``total_field``, ``local_field``, ``local_mask``, ``chimap_<method>`` per inversion.
    """
    inversions = tuple(inversions)
    if not inversions or len(set(inversions)) != len(inversions) or not set(inversions) <= set(
            INVERSION_METHODS):
        raise ValueError(f'inversions must be distinct values of {INVERSION_METHODS}; '
                         f'got {inversions!r}')
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(['magnitude_files', 'phase_files', 'user_mask']),
                        name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(
        ['first_echo', 'magnitude', 'brain_mask', 'eroded_mask', 'total_field', 'local_field',
         'local_mask'] + [f'chimap_{m}' for m in inversions]), name='outputnode')

    stack = pe.Node(StackEchoes(phase_units=phase_units,
                                phase_range=tuple(phase_range) if phase_range else None),
                    name='stack_echoes')
    brainmask_wf = init_brainmask_wf(method=mask_method, mask_threshold=mask_threshold)
    erode = pe.Node(ErodeMask(voxels=int(mask_erosion)), name='erode_mask')
    unwrap = pe.Node(UnwrapPhase(method=unwrapping), name='unwrap')
    combine = pe.Node(CombineEchoes(echo_times=list(echo_times),
                                    field_strength=float(field_strength),
                                    method=echo_combination), name='combine_echoes')
    if bgremoval not in BGREMOVAL_METHODS:
        raise ValueError(f'background removal must be one of {BGREMOVAL_METHODS}; '
                         f'got {bgremoval!r}')
    bgrm = pe.Node(BackgroundRemoval(method=bgremoval,
                                     radii=list(vsharp_radii) if vsharp_radii else None,
                                     threshold=vsharp_threshold,
                                     b0_direction=[float(b) for b in b0_direction]),
                   name='bgremoval')
    inverts = {m: pe.Node(DipoleInversion(method=m, b0_direction=[float(b) for b in b0_direction],
                                          threshold=tkd_threshold),
                          name='invert' if m == 'tkd' else f'invert_{m}') for m in inversions}
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
        (combine, bgrm, [('out_file', 'in_file')]),
        (erode, bgrm, [('out_mask', 'in_mask')]),
        (stack, outputnode, [('first_echo', 'first_echo'), ('magnitude', 'magnitude')]),
        (brainmask_wf, outputnode, [('outputnode.brain_mask', 'brain_mask')]),
        (erode, outputnode, [('out_mask', 'eroded_mask')]),
        (combine, outputnode, [('out_file', 'total_field')]),
        (bgrm, outputnode, [('out_file', 'local_field'), ('out_mask', 'local_mask')]),
    ])  # fmt: skip
    for m, invert in inverts.items():
        wf.connect([
            (bgrm, invert, [('out_file', 'in_file'), ('out_mask', 'in_mask')]),
            (invert, outputnode, [('out_file', f'chimap_{m}')]),
        ])  # fmt: skip
    return wf
