"""Benchmark the pure-Python brain mask on simulated ground truth, writing JSON.

For each simulated case (``qsmprep.simulate``; see :data:`CASES`), the mask is made exactly
as the participant workflow makes it when FSL is not installed
(:func:`qsmprep.workflows.orientation.init_brainmask_wf` with ``method='python'``, then
``ErodeMask``), on the first-echo magnitude of the reference orientation
(:attr:`qsmprep.io.datamodel.SubjectData.reference_orientation`, the only orientation that
is skull-stripped in a multi-orientation run), read as ``PythonBET`` reads it:

1. ``bet``: the BET port's surface mask (:func:`qsmprep.utils.masking.bet_surface_mask`,
   ``frac`` 0.5, 1000 iterations: the ``PythonBET`` defaults);
2. ``refined``: :func:`qsmprep.utils.masking.refine_mask` with
   ``DEFAULTS.mask_threshold`` (``PythonBET`` = 2 ∘ 1, the workflow's ``brain_mask``);
3. ``eroded``: :func:`qsmprep.numerics.bgremoval.erode_mask` by ``DEFAULTS.mask_erosion``
   voxels (the workflow's ``eroded_mask``, given to background removal).

Each is scored against the simulator's true brain mask of that acquisition
(``derivatives/qsmprep-simulate/sub-01/anat/sub-01_acq-<label>_desc-brain_mask.nii.gz``):
``dice``; ``coverage`` (fraction of the true brain inside the mask); ``extra`` (voxels
outside the true brain, as a fraction of the true brain's volume) and where they lie
(``extra_by_distance_mm``: counts by distance in mm from the true brain, bins
``[0, 2), [2, 4), [4, 6), [6, ∞)``; ``extra_median_rel_signal``: their median magnitude
over the median magnitude of the true brain deeper than 10 mm).  ``time_s`` is the median
wall time of ``--repeats`` calls per step (the machine is shared: compare within one run).

``erosion_variants`` scores the refined mask eroded by 1–3 voxels and by balls of 2, 3 and
4 mm (``erode_mask(radius_mm=...)``), next to the same erosion of the *true* brain mask
(``truth_coverage``: the best coverage any erosion of a perfect mask could have) — the
measurements behind the mm-vs-voxel erosion recommendation in ``docs/benchmarks.md``.

``vsharp_final_mask`` scores what the default background removal keeps of the eroded mask:
V-SHARP's output mask is its input eroded by its **smallest** radius
(:func:`qsmprep.numerics.bgremoval.vsharp`), i.e. ``min(vsharp_radii(voxel_size))``; the
same with a smallest radius of ``2·max(voxel)`` is given for comparison.

``--check-interface`` also runs the ``PythonBET`` and ``ErodeMask`` interfaces on the files
(as the workflow's nodes do) and records whether their masks equal the steps above.

Usage::

    python benchmarks/bench_masks.py --out benchmarks/results/masks.json \\
        [--cases demo 7t demo-realistic 7t-bias1.5 1mm] [--repeats 3] [--work /tmp/bench_masks] \\
        [--check-interface]

Datasets are simulated once into ``--work/<case>`` and reused.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

#: Simulated cases: simulate_dataset keyword arguments.
CASES = {
    # 3 T, 2 mm isotropic, RAS, no realism effects (the README demo)
    'demo': {'preset': 'demo', 'seed': 0},
    # 7 T, 1.5 × 1.5 × 2 mm, LAS, oblique, every realism effect (bias field 0.5: central
    # brightening × smooth random factor, int16 magnitude)
    '7t': {'preset': '7t', 'seed': 0},
    # 3 T, 2 mm, every realism effect (bias field 0.2)
    'demo-realistic': {'preset': 'demo', 'realism': 'realistic', 'seed': 0},
    # stress case: the 7 T preset with a 3x stronger bias field (1.5: centre/edge up to ~2.5)
    '7t-bias1.5': {'preset': '7t', 'orientations': 1, 'bias_field': 1.5, 'seed': 1},
    # 3 T, 1 mm isotropic (voxel-count erosion is 2 mm here)
    '1mm': {'preset': 'demo', 'voxel_size': 1.0, 'orientations': 1, 'seed': 2},
}
DEFAULT_CASES = ('demo', '7t', 'demo-realistic', '7t-bias1.5', '1mm')
ERODE_VOXELS = (1, 2, 3)
ERODE_MM = (2.0, 3.0, 4.0)
BINS_MM = (0.0, 2.0, 4.0, 6.0, float('inf'))


def pipeline_settings() -> dict:
    """The mask settings of a default participant run without FSL (read from the code)."""
    import inspect

    from qsmprep.interfaces.masking import PythonBET
    from qsmprep.options import DEFAULTS
    from qsmprep.workflows.orientation import init_brainmask_wf

    return {'bet_frac': inspect.signature(init_brainmask_wf).parameters['bet_frac'].default,
            'bet_iterations': PythonBET().inputs.iterations,
            'mask_threshold': DEFAULTS.mask_threshold,
            'mask_erosion_voxels': DEFAULTS.mask_erosion}


def _simulate(case, work):
    from qsmprep.simulate import simulate_dataset

    root = Path(work) / case
    if not (root / 'dataset_description.json').exists():
        simulate_dataset(root, overwrite=root.exists(), jobs=1, **CASES[case])
    return root


def _inputs(root):
    """First-echo magnitude of the reference orientation and its true brain mask."""
    from qsmprep.io.bids import collect_subjects
    from qsmprep.utils.images import load

    subject = collect_subjects(root)[0]
    ref = subject.reference_orientation
    mag, affine, _ = load(ref.echoes[0].magnitude)          # as PythonBET loads it
    acq = ref.label.removeprefix('acq-')
    truth_file = (root / 'derivatives' / 'qsmprep-simulate' / f'sub-{subject.subject}' /
                  'anat' / f'sub-{subject.subject}_acq-{acq}_desc-brain_mask.nii.gz')
    truth, t_aff, _ = load(truth_file)
    if truth.shape != mag.shape or not (abs(t_aff - affine) < 1e-3).all():
        raise RuntimeError(f'{truth_file} is not on the grid of {ref.echoes[0].magnitude}')
    return mag, affine, truth > 0, ref.label, ref.echoes[0].magnitude


def _timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, round(statistics.median(times), 3)


def _score(mask, truth, dist_out, mag, ref_signal):
    import numpy as np

    inter = int((mask & truth).sum())
    extra = mask & ~truth
    hist = np.histogram(dist_out[extra], bins=BINS_MM)[0] if extra.any() else [0] * 4
    return {
        'dice': round(2 * inter / (int(mask.sum()) + int(truth.sum())), 4),
        'coverage': round(inter / int(truth.sum()), 4),
        'extra': round(int(extra.sum()) / int(truth.sum()), 4),
        'extra_by_distance_mm': dict(zip(('0-2', '2-4', '4-6', '6+'),
                                         (int(h) for h in hist), strict=True)),
        'extra_median_rel_signal': (round(float(np.median(mag[extra])) / ref_signal, 3)
                                    if extra.any() else None),
        'voxels': int(mask.sum()),
    }


def _check_interfaces(first_echo, refined, eroded, opt, tmp):
    """The workflow's nodes on the files give the same masks as the steps."""
    import os

    from qsmprep.interfaces.masking import ErodeMask, PythonBET
    from qsmprep.utils.images import load

    tmp.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        bet = PythonBET(in_file=str(first_echo), frac=opt['bet_frac'],
                        iterations=opt['bet_iterations'], threshold=opt['mask_threshold']).run()
        ero = ErodeMask(in_file=bet.outputs.out_mask, voxels=opt['mask_erosion_voxels']).run()
    finally:
        os.chdir(cwd)
    return {'brain_mask_equal': bool(((load(bet.outputs.out_mask)[0] > 0) == refined).all()),
            'eroded_mask_equal': bool(((load(ero.outputs.out_mask)[0] > 0) == eroded).all())}


def run_case(case, work, repeats, check_interface=False):
    import numpy as np
    from scipy import ndimage

    from qsmprep.numerics.bgremoval import erode_mask, vsharp_radii
    from qsmprep.numerics.geometry import voxel_sizes
    from qsmprep.utils.masking import bet_surface_mask, refine_mask

    root = _simulate(case, work)
    mag, affine, truth, label, first_echo = _inputs(root)
    vs = voxel_sizes(affine)
    dist_out = ndimage.distance_transform_edt(~truth, sampling=vs)
    dist_in = ndimage.distance_transform_edt(truth, sampling=vs)
    ref_signal = float(np.median(mag[truth & (dist_in > 10.0)]))

    opt = pipeline_settings()
    bet, t_bet = _timed(lambda: bet_surface_mask(
        mag, affine, frac=opt['bet_frac'], iterations=opt['bet_iterations']), repeats)
    refined, t_ref = _timed(
        lambda: refine_mask(bet, mag, threshold=opt['mask_threshold']), repeats)
    eroded, t_ero = _timed(
        lambda: erode_mask(refined, voxels=opt['mask_erosion_voxels']), repeats)
    steps = {}
    for name, m, t in (('bet', bet, t_bet), ('refined', refined, t_ref),
                       ('eroded', eroded, t_ero)):
        steps[name] = {**_score(m, truth, dist_out, mag, ref_signal), 'time_s': t}
    variants = {}
    for v in ERODE_VOXELS:
        row = _score(erode_mask(refined, voxels=v), truth, dist_out, mag, ref_signal)
        row['truth_coverage'] = round(float(erode_mask(truth, voxels=v).sum() / truth.sum()), 4)
        variants[f'{v}vox'] = row
    for r in ERODE_MM:
        row = _score(erode_mask(refined, radius_mm=r, voxel_size=vs), truth, dist_out, mag,
                     ref_signal)
        row['truth_coverage'] = round(float(
            erode_mask(truth, radius_mm=r, voxel_size=vs).sum() / truth.sum()), 4)
        variants[f'{r:g}mm'] = row
    vsharp = {}
    for key, r in (('default', min(vsharp_radii(vs))), ('if_smallest_2max', 2 * max(vs))):
        m = erode_mask(eroded, radius_mm=r, voxel_size=vs)
        row = _score(m, truth, dist_out, mag, ref_signal)
        vsharp[key] = {'smallest_radius_mm': round(float(r), 3), 'dice': row['dice'],
                       'coverage': row['coverage']}
    for name, row in steps.items():
        print(f'{case:15s} {name:8s} Dice {row["dice"]:.3f} coverage {row["coverage"]:.3f} '
              f'extra {row["extra"]:.3f} {row["time_s"]:7.2f} s', flush=True)
    return {'simulation': CASES[case], 'reference': label, 'shape': list(mag.shape),
            'voxel_size_mm': [round(float(v), 4) for v in vs],
            'true_brain_voxels': int(truth.sum()),
            'total_time_s': round(t_bet + t_ref + t_ero, 3),
            'steps': steps, 'erosion_variants': variants, 'vsharp_final_mask': vsharp,
            **({'interfaces': _check_interfaces(first_echo, refined, eroded, opt,
                                                Path(work) / f'{case}-nodes')}
               if check_interface else {})}


def main(argv=None):
    import numpy as np
    import scipy

    import qsmprep

    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, default=Path('benchmarks/results/masks.json'))
    p.add_argument('--cases', nargs='+', choices=sorted(CASES), default=list(DEFAULT_CASES))
    p.add_argument('--repeats', type=int, default=1)
    p.add_argument('--work', type=Path, default=Path('/tmp/bench_masks'))
    p.add_argument('--check-interface', action='store_true',
                   help='also run the PythonBET/ErodeMask nodes and compare (one more BET)')
    a = p.parse_args(argv)
    result = {'benchmark': 'brain masks (pure-Python BET port + refinement + erosion)',
              'qsmprep': getattr(qsmprep, '__version__', None),
              'python': platform.python_version(),
              'numpy': np.__version__, 'scipy': scipy.__version__, 'repeats': a.repeats,
              'options': pipeline_settings(),
              'cases': {}}
    for case in a.cases:
        result['cases'][case] = run_case(case, a.work, a.repeats, a.check_interface)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + '\n')
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
