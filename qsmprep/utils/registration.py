"""Rigid registration of magnitude images (SimpleITK) and FLIRT matrix conversion.

All results are *world transforms* ``M`` (4×4, RAS+ mm) mapping points of the moving image
onto the reference (fixed) image: ``x_ref = M x_mov``.
"""

from __future__ import annotations

import numpy as np

from qsmprep.numerics.geometry import direction_cosines, voxel_sizes

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)


def _to_sitk(data, affine):
    import SimpleITK as sitk

    A = _LPS @ np.asarray(affine, float)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).T))
    img.SetSpacing([float(s) for s in voxel_sizes(A)])
    img.SetOrigin([float(o) for o in A[:3, 3]])
    img.SetDirection([float(d) for d in direction_cosines(A).ravel()])
    return img


def _transform_to_matrix(tx) -> np.ndarray:
    """4×4 LPS matrix of a SimpleITK affine-like transform (fixed → moving points)."""
    M = np.eye(4)
    R = np.asarray(tx.GetMatrix(), float).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), float)
    t = np.asarray(tx.GetTranslation(), float)
    M[:3, :3] = R
    M[:3, 3] = t + c - R @ c
    return M


def dilate_mm(mask, affine, margin: float) -> np.ndarray:
    """``mask`` grown by ``margin`` mm (Euclidean distance with the voxel sizes of ``affine``).

    >>> m = np.zeros((9, 9, 9), bool); m[4, 4, 4] = True
    >>> int(dilate_mm(m, np.diag([2.0, 2.0, 2.0, 1.0]), 2.0).sum())  # the 6 face neighbours
    7
    """
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask
    return ndimage.distance_transform_edt(~mask, sampling=voxel_sizes(affine)) <= margin


def sitk_rigid(fixed, fixed_affine, moving, moving_affine, *, fixed_mask=None,
               mask_margin: float = 8.0, seed: int = 1, search_angles=(0.0, -30.0, 30.0),
               iterations: int = 200, refine: int = 2):
    """Rigid (6-dof) registration of ``moving`` onto ``fixed`` with SimpleITK.

    Mattes mutual information, 3-level pyramid (shrink 4/2/1), regular-step gradient
    descent, centred on the image moments.  Head tilts of up to ~40° are common in
    multi-orientation QSM, beyond the capture range of a plain gradient descent, so the
    optimisation starts from every combination of ``search_angles`` (degrees) about the x
    and y axes, refines the ``refine`` best at full resolution and keeps the best final
    metric.  It runs single-threaded, so that the result is reproducible.  ``fixed_mask`` (a
    brain mask) restricts the metric after dilation by ``mask_margin`` mm: the contrast at
    the brain surface (cortex, CSF, skull) is what constrains small rotations, and a tight
    brain mask leaves it out (a refined mask without that margin gave a 1.2° error on one
    orientation of the simulated ``full`` dataset).

    Returns
    -------
    world_xfm : (4, 4) ndarray
        RAS+ world transform moving → fixed.
    metric : float
        Final metric value (lower is better).
    """
    import SimpleITK as sitk

    # one thread: ITK's multi-threaded metric sums are not reproducible, and a different
    # rounding can send the optimiser into another minimum; Nipype parallelises across nodes
    if fixed_mask is not None and mask_margin > 0:
        fixed_mask = dilate_mm(fixed_mask, fixed_affine, mask_margin)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        return _sitk_rigid(sitk, fixed, fixed_affine, moving, moving_affine, fixed_mask,
                           seed, search_angles, iterations, refine)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _sitk_rigid(sitk, fixed, fixed_affine, moving, moving_affine, fixed_mask, seed,
                search_angles, iterations, refine):
    # magnitudes are non-negative, as the moment-based initialisation needs (a z-scored
    # image has a meaningless centre of mass); mutual information needs no normalisation
    f = _to_sitk(np.clip(fixed, 0, None), fixed_affine)
    m = _to_sitk(np.clip(moving, 0, None), moving_affine)
    base = sitk.CenteredTransformInitializer(
        f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    base = sitk.Euler3DTransform(base)

    mask_img = None if fixed_mask is None else (
        _to_sitk(np.asarray(fixed_mask, np.uint8), fixed_affine) != 0)

    # work on ~2 mm images: smoothing and shrinking full 1 mm volumes again at every level of
    # every start dominated the run time, and the finest useful level is ~2 mm anyway
    def coarsen(img, smooth=True):
        sp = np.asarray(img.GetSpacing())
        factors = [max(1, round(2.0 / s)) for s in sp]
        if max(factors) == 1:
            return img
        if smooth:
            img = sitk.SmoothingRecursiveGaussian(img, 1.0)
        return sitk.Shrink(img, factors)

    f, m = coarsen(f), coarsen(m)
    if mask_img is not None:
        mask_img = coarsen(mask_img, smooth=False)

    def run(init, levels):
        reg = sitk.ImageRegistrationMethod()
        reg.SetNumberOfThreads(1)
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        # at most ~30 000 random samples per level: enough for a 6-parameter fit, and the
        # cost no longer grows with the image size (seed 0 would mean "wall clock")
        n_vox = float(np.prod(f.GetSize()))
        reg.SetMetricSamplingPercentagePerLevel(
            [min(0.25, 3e4 * s**3 / n_vox) for s in levels[0]], seed)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
            relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
        reg.SetOptimizerScalesFromPhysicalShift()
        shrink, smooth = levels
        reg.SetShrinkFactorsPerLevel(shrink)
        reg.SetSmoothingSigmasPerLevel(smooth)
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        if mask_img is not None:
            reg.SetMetricFixedMask(mask_img)
        tx = sitk.Euler3DTransform(init)
        reg.SetInitialTransform(tx, inPlace=True)
        reg.Execute(f, m)
        return tx, reg.GetMetricValue()

    # pyramid in physical terms: rank the starts at ~8 mm, refine at ~4 then ~2 mm (or the
    # native voxel size if coarser); finer levels add run time, not useful accuracy, for a
    # rigid transform of a whole head (sub-0.1° on the simulated data)
    vs = float(min(f.GetSpacing()))

    def shrink(mm):
        return max(1, round(mm / vs))

    coarse = ([shrink(8.0)], [shrink(8.0) / 2.0])
    levels = sorted({shrink(4.0), shrink(2.0)}, reverse=True)
    fine = (levels, [lv / 2.0 if lv > 1 else 0.0 for lv in levels])
    candidates = []
    for ax in search_angles:
        for ay in search_angles:
            init = sitk.Euler3DTransform(base)
            init.SetRotation(np.deg2rad(ax), np.deg2rad(ay), 0.0)
            tx, metric = run(init, coarse)  # coarse level only, to rank the starts
            candidates.append((metric, tx))
    candidates.sort(key=lambda c: c[0])
    # refine the best `refine` starts at full resolution and keep the best final metric:
    # a single refinement occasionally diverges into a wrong minimum
    finals = [run(c[1], fine) for c in candidates[:refine]]
    tx, metric = min(finals, key=lambda f: f[1])
    fixed_to_moving_lps = _transform_to_matrix(tx)
    world = _LPS @ np.linalg.inv(fixed_to_moving_lps) @ _LPS
    return world, float(metric)


def flirt_to_world(mat, moving_file, reference_file) -> np.ndarray:
    """Convert a FLIRT ``.mat`` (FSL scaled-voxel coordinates) to a world transform.

    Uses nitransforms (whose RAS matrix maps reference points to moving points) and inverts
    it, so that the result maps moving → reference, as everywhere in qsmprep.
    """
    from nitransforms.io.fsl import FSLLinearTransform

    text = open(mat).read() if not isinstance(mat, np.ndarray) else '\n'.join(
        ' '.join(f'{v:.10f}' for v in row) for row in mat)
    ras_ref_to_mov = FSLLinearTransform.from_string(text).to_ras(
        moving=str(moving_file), reference=str(reference_file))
    return np.linalg.inv(ras_ref_to_mov)


def world_to_flirt(world_xfm, moving_file, reference_file) -> np.ndarray:
    """Inverse of :func:`flirt_to_world` (for tests and for writing FSL-compatible files)."""
    from nitransforms.io.fsl import FSLLinearTransform

    tf = FSLLinearTransform.from_ras(np.linalg.inv(world_xfm), moving=str(moving_file),
                                     reference=str(reference_file))
    return np.asarray(tf.structarr['parameters'].T).T
