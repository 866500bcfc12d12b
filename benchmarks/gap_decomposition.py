"""Where the gap between the pipeline's multi-orientation maps and the oracle comes from.

Reads one case kept by ``benchmarks/accuracy_matrix.py --keep DIR`` (its simulated BIDS
dataset with the truth, and the participant run's work directory) and scores the closed-form
COSMOS/STI (``qsmprep.numerics.multiorientation.solve_multi_orientation``) on a ladder of
inputs, each one step further from the oracle, against the true χ33/MMS on the true brain ∩
the pipeline's common mask (the accuracy matrix's NRMSE: our mean aligned to the truth's):

1. the true local fields (forward model of the true tensor inside the true brain, on the
   reference grid, every true B0 direction) with the true brain mask: the *oracle*;
2. the same fields, zero outside the pipeline's common local mask (what cropping to the
   mask costs);
3. the same fields after V-SHARP (and after each other ``--bgremoval`` method given) on the
   true brain eroded by 2 voxels (``--erosions``: other depths), on that method's final mask
   (what background removal costs on perfect data); ``--single-step``: the single-step
   solver on the same eroded masks, no background removal;
4. the pipeline's own registered local fields and common mask (everything: noise,
   unwrapping, echo combination, registration, resampling); left out when the case has no
   participant work directory (then rows 2-3 are scored on the true brain eroded by 2).

Usage::

    python benchmarks/accuracy_matrix.py --cases 3T_2mm_6ori --keep /tmp/am
    python benchmarks/gap_decomposition.py /tmp/am/3T_2mm_6ori \\
        --methods vsharp vsharp-ls --out benchmarks/results/gap_decomposition.json
    python benchmarks/gap_decomposition.py /tmp/am/3T_2mm_6ori --methods vsharp vsharp-ls \\
        lbv ismv pdf --erosions 0 1 2 --single-step \\
        --out benchmarks/results/gap_decomposition_masks.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _load(path):
    import nibabel as nb

    img = nb.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float64), img.affine


def run(case: Path, methods, subject='01', erosions=(2,), single_step=False) -> dict:
    from accuracy_matrix import nrmse_aligned as _nrmse  # the matrix's NRMSE, same folder
    from nipype.utils.filemanip import loadpkl

    from qsmprep.numerics import bgremoval as bg
    from qsmprep.numerics.geometry import voxel_sizes
    from qsmprep.numerics.multiorientation import solve_multi_orientation
    from qsmprep.simulate.acquisition import reference_fields

    truth = case / 'bids' / 'derivatives' / 'qsmprep-simulate' / f'sub-{subject}'
    info = json.loads((truth / f'sub-{subject}_orientations.json').read_text())
    ref = info['ReferenceAcquisition']
    acqs = sorted(a['acq'] for a in info['Acquisitions'])
    b_true = np.array([a['b0_reference'] for a in sorted(info['Acquisitions'],
                                                        key=lambda a: a['acq'])])
    anat = truth / 'anat'
    sp = f'sub-{subject}_space-{ref}'
    tensor, aff = _load(anat / f'{sp}_chitensor.nii.gz')
    brain = _load(anat / f'{sp}_desc-brain_mask.nii.gz')[0] > 0
    chi33 = _load(anat / f'{sp}_desc-chi33_Chimap.nii.gz')[0]
    mms = _load(anat / f'{sp}_desc-mms_Chimap.nii.gz')[0]
    vs = voxel_sizes(aff)

    wf = case / 'work' / 'qsmprep_wf' / f'single_subject_sub_{subject}_wf'
    fields, masks, b_est = [], [], []
    if wf.is_dir():
        for a in acqs:
            res = loadpkl(wf / f'to_reference_acq_{a}_wf' / 'to_reference'
                          / 'result_to_reference.pklz')
            fields.append(_load(res.outputs.out_file)[0])
            masks.append(_load(res.outputs.out_mask)[0] > 0)
            b_est.append(res.outputs.b0_direction)
        ours = np.all(np.stack(masks, -1), -1)
    else:  # a simulated dataset without a participant run: the true brain eroded instead
        print(f'{wf} not found: no pipeline rows; scored on the true brain eroded by 2 voxels')
        ours = bg.erode_mask(brain, voxels=2)
    score_mask = ours & brain

    def solve(F, mask, b, solver='closed-form'):
        t0 = time.perf_counter()
        out = solve_multi_orientation(F, np.asarray(b), voxel_size=vs, mask=mask,
                                      reference_b0=np.asarray(b)[0], solver=solver)
        m = score_mask & mask
        return {'chi33': _nrmse(out['chi33'], chi33, m), 'mms': _nrmse(out['mms'], mms, m),
                'cosmos': _nrmse(out['cosmos'], chi33, m),
                'coverage': float((mask & brain).sum() / brain.sum()),
                'solve_s': time.perf_counter() - t0}

    true_fields = reference_fields(tensor * brain[..., None], vs, b_true, padding=16)
    true_fields *= brain[..., None]
    rows = {'oracle (true fields, true brain)': solve(true_fields, brain, b_true),
            'true fields, our common mask' if fields else 'true fields, true brain eroded':
                solve(true_fields, ours, b_true)}
    for erosion in erosions:
        eroded = bg.erode_mask(brain, voxels=erosion) if erosion else brain
        tag = '' if erosion == 2 else f', true brain eroded by {erosion}'
        for method in methods:
            t0 = time.perf_counter()
            out, fm = [], []
            for i in range(true_fields.shape[-1]):
                kw = {'b0_direction': b_true[i]} if method == 'pdf' else {}
                f, m = bg.METHODS[method](true_fields[..., i].astype(np.float32), eroded,
                                          voxel_size=vs, **kw)
                out.append(f)
                fm.append(m)
            final = np.all(np.stack(fm, -1), -1)
            took = time.perf_counter() - t0
            rows[f'true fields on the {method} mask{tag}'] = solve(true_fields, final, b_true)
            rows[f'{method}(true fields){tag}'] = {**solve(np.stack(out, -1), final, b_true),
                                                   'bgremoval_s': took}
        if single_step:  # no background removal: the SMV data term on the mask itself
            rows[f'single-step(true fields), true brain eroded by {erosion}'] = solve(
                true_fields * eroded[..., None], eroded, b_true, solver='single-step')
    if fields:
        rows['pipeline fields and mask'] = solve(np.stack(fields, -1), ours, b_est)
    return {'case': case.name, 'reference': ref, 'rows': rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('case', type=Path, help='a case folder of accuracy_matrix.py --keep')
    ap.add_argument('--methods', nargs='+', default=['vsharp', 'vsharp-ls'])
    ap.add_argument('--erosions', nargs='+', type=int, default=[2], metavar='VOXELS',
                    help='erode the true brain by these many voxels before background '
                         'removal (default 2, the pipeline\'s --mask-erosion)')
    ap.add_argument('--single-step', action='store_true',
                    help='also the single-step solver on the true fields on each eroded mask')
    ap.add_argument('--out', type=Path)
    args = ap.parse_args(argv)
    res = run(args.case, args.methods, erosions=args.erosions, single_step=args.single_step)
    res['erosions'], res['methods'] = args.erosions, args.methods
    for name, r in res['rows'].items():
        print(f'{name:40s} chi33 {r["chi33"]:5.1f}  mms {r["mms"]:5.1f}  cosmos '
              f'{r["cosmos"]:5.1f}  coverage {r["coverage"]:.3f}')
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
