"""Accuracy of qsmprep derivatives against the simulator's ground truth.

Used by ``qsmprep-demo`` and the end-to-end tests.  All χ comparisons are demeaned NRMSE (%)
inside the evaluated mask (χ is defined up to a constant, ``docs/physics.md``) together with
XSIM; masks are compared by Dice; B0 directions by their angle (degrees, sign-free).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qsmprep.io import derivatives as contract


def _load(path):
    import nibabel as nb

    return np.asarray(nb.load(str(path)).dataobj, dtype=np.float64)


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def angle_deg(u, v) -> float:
    u, v = np.asarray(u, float), np.asarray(v, float)
    c = abs(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def evaluate_subject(bids_dir, deriv_dir, subject='01') -> dict:
    """Compare one subject's derivatives with ``derivatives/qsmprep-simulate`` truth.

    Returns a dict with per-orientation mask Dice and B0 angle errors, and for each
    multi-orientation map present (``cosmos``, ``chi33``, ``mms``) its NRMSE against the
    true χ33 (COSMOS is compared with the true χ33 too: it estimates the apparent
    susceptibility along the reference B0 for an anisotropic tissue) or MMS.
    """
    from qsmprep.numerics.metrics import nrmse, xsim

    truth = Path(bids_dir) / 'derivatives' / 'qsmprep-simulate' / f'sub-{subject}'
    ours = Path(deriv_dir) / f'sub-{subject}' / 'anat'
    info = json.loads((truth / f'sub-{subject}_orientations.json').read_text())
    ref = info['ReferenceAcquisition']
    out = {'subject': subject, 'orientations': {}, 'maps': {}}
    est = {}
    orient_files = sorted(ours.glob(contract.name('orientations', sub=f'sub-{subject}',
                                                  ref='*')))
    if orient_files:
        rep = json.loads(orient_files[0].read_text())
        est = dict(zip(sorted(a['acq'] for a in info['Acquisitions']),
                       rep['b0_directions'], strict=False))
        out['condition_number'] = rep.get('condition_number', {}).get('median')
        our_ref = orient_files[0].name.split('_space-')[1].split('_')[0]
        out['reference'] = our_ref
    for acq in info['Acquisitions']:
        a = acq['acq']
        row = {}
        t = truth / 'anat' / f'sub-{subject}_acq-{a}_desc-brain_mask.nii.gz'
        m = ours / contract.name('brain_mask', ori=f'sub-{subject}_acq-{a}')
        if t.exists() and m.exists():
            row['mask_dice'] = dice(_load(t), _load(m))
        if a in est and out.get('reference') == ref:
            row['b0_error_deg'] = angle_deg(est[a], acq['b0_reference'])
        out['orientations'][a] = row
    if out.get('reference') != ref:
        return out
    common = ours / contract.name('common_mask', sub=f'sub-{subject}', ref=ref)
    if not common.exists():
        return out
    mask = _load(common) > 0
    gt = {k: truth / 'anat' / f'sub-{subject}_space-{ref}_desc-{k}_Chimap.nii.gz'
          for k in ('chi33', 'mms')}
    for key, target in (('cosmos', 'chi33'), ('chi33', 'chi33'), ('mms', 'mms')):
        f = ours / contract.name(key, sub=f'sub-{subject}', ref=ref)
        if f.exists() and gt[target].exists():
            x, y = _load(f), _load(gt[target])
            y_c = np.where(mask, y - y[mask].mean(), 0.0)
            x_c = np.where(mask, x - x[mask].mean(), 0.0)
            out['maps'][key] = {'truth': target,
                                'nrmse_demeaned': nrmse(x, y, mask, demean=True),
                                'xsim': float(xsim(x_c, y_c, mask))}
    return out


def format_evaluation(ev: dict) -> str:
    """Plain-text table of :func:`evaluate_subject`."""
    lines = [f"sub-{ev['subject']}: reference {ev.get('reference', '?')}, "
             f"STI condition number {ev.get('condition_number')}"]
    for a, row in ev['orientations'].items():
        parts = [f'{k} {v:.3f}' for k, v in row.items()]
        lines.append(f'  {a}: ' + ', '.join(parts))
    for k, v in ev['maps'].items():
        lines.append(f"  {k:7s} vs true {v['truth']:6s}: NRMSE {v['nrmse_demeaned']:.1f} %, "
                     f"XSIM {v['xsim']:.3f}")
    return '\n'.join(lines)
