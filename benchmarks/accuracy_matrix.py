"""Accuracy matrix: simulated acquisitions × the participant pipeline, scored against the truth.

For every case (a dict of simulator settings) this script simulates a dataset with
:func:`qsmprep.simulate.simulate_dataset`, runs ``qsmprep BIDS OUT participant -w WORK
--nprocs 2`` with the pipeline defaults in a subprocess (wall time measured), and compares
the derivatives with the ground truth in ``BIDS/derivatives/qsmprep-simulate``:

* susceptibility maps (χ33, MMS, COSMOS; COSMOS against the true χ33) on the true brain ∩
  qsmprep's common mask: NRMSE after aligning the mean of ours to the truth's (χ is defined
  up to a constant), demeaned NRMSE, XSIM, deep-grey-matter regression slope, GP and SN
  means; MSA NRMSE and median ratio, principal-eigenvector angle in white matter;
* brain masks (Dice, coverage of the true brain) per orientation and the common mask;
* local fields per orientation (NRMSE, demeaned NRMSE, energy ratio);
* B0 direction errors; participant wall time;
* the **oracle**: the same multi-orientation solver on the true local fields (true tensor,
  true brain, every true B0 direction in the reference frame, no noise, no unwrapping, no
  background removal, no registration), and the gap of every map to it.

Writes ``benchmarks/results/accuracy_matrix.json`` and a Markdown table; ``--write-docs``
replaces the "Accuracy matrix" section of ``docs/benchmarks.md`` between its markers.

Usage::

    python benchmarks/accuracy_matrix.py                 # --quick set (2 mm cases)
    python benchmarks/accuracy_matrix.py --all --write-docs
    python benchmarks/accuracy_matrix.py --cases 3T_2mm_6ori --keep /tmp/am
    python benchmarks/accuracy_matrix.py --list
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / 'docs' / 'benchmarks.md'
RESULT = REPO / 'benchmarks' / 'results' / 'accuracy_matrix.json'
BEGIN = '<!-- accuracy-matrix:begin (written by benchmarks/accuracy_matrix.py --write-docs) -->'
END = '<!-- accuracy-matrix:end -->'

#: Settings every case starts from (``demo`` preset: 4 echoes 5-20 ms, 3 T, SNR 100).
BASE = {'preset': 'demo', 'seed': 0, 'voxel_size': 2.0, 'orientations': 6,
        'field_strength': 3.0, 'snr': 100.0}
TE_7T = (0.004, 0.008, 0.012, 0.016)   # echo times of the ``7t`` preset

#: name -> (what the case tests, simulator overrides on top of BASE).  One factor at a
#: time around the main case ``3T_2mm_6ori`` (not a full factorial design).
CASES = {
    '3T_2mm_6ori': ('main case: 3 T, 2 mm isotropic, 6 orientations, SNR 100, axis-aligned '
                    'RAS grids, no realism effects', {}),
    '3T_2mm_12ori': ('12 instead of 6 head orientations', {'orientations': 12}),
    '3T_2mm_6ori_snr50': ('SNR 50 instead of 100 (twice the noise)', {'snr': 50.0}),
    '7T_2mm_6ori': ('7 T with the 7t preset echo times (4-16 ms)',
                    {'field_strength': 7.0, 'echo_times': TE_7T}),
    '3T_2mm_6ori_oblique_LAS': ('oblique grid prescriptions (up to 15°) written with the '
                                'x axis flipped (LAS)',
                                {'oblique': 15.0, 'grid_orientation': 'LAS'}),
    '3T_2mm_6ori_realistic': ('every simulator realism effect on (extended air cavities, '
                              'body field, intravoxel dephasing, non-harmonic receiver and '
                              'coil phase, bias field, scanner-integer phase and int16 '
                              'magnitude)', {'realism': 'realistic'}),
    # ---- only with --all
    '3T_2mm_6ori_oblique': ('oblique grid prescriptions (up to 15°), RAS', {'oblique': 15.0}),
    '3T_2mm_6ori_LAS': ('axis-aligned grids with the x axis flipped (LAS)',
                        {'grid_orientation': 'LAS'}),
    '3T_2mm_12ori_snr50': ('12 orientations at SNR 50', {'orientations': 12, 'snr': 50.0}),
    '7T_2mm_6ori_realistic': ('7 T, every realism effect on (bias field 0.5)',
                              {'field_strength': 7.0, 'echo_times': TE_7T,
                               'realism': 'realistic'}),
    '3T_1.5mm_6ori': ('1.5 mm isotropic', {'voxel_size': 1.5}),
    '3T_1.5x1.5x2mm_6ori': ('anisotropic 1.5 × 1.5 × 2 mm voxels',
                            {'voxel_size': (1.5, 1.5, 2.0)}),
    '7T_1.5x1.5x2mm_6ori_oblique_LAS_realistic': (
        'the 7t preset: 7 T, 1.5 × 1.5 × 2 mm, oblique LAS grids, every realism effect on',
        {'field_strength': 7.0, 'echo_times': TE_7T, 'voxel_size': (1.5, 1.5, 2.0),
         'oblique': 15.0, 'grid_orientation': 'LAS', 'realism': 'realistic'}),
    '3T_1x1x2mm_6ori': ('anisotropic 1 × 1 × 2 mm voxels', {'voxel_size': (1.0, 1.0, 2.0)}),
    '3T_1mm_6ori': ('1 mm isotropic', {'voxel_size': 1.0}),
    '3T_1mm_12ori': ('1 mm isotropic, 12 orientations (as the full preset, float phase)',
                     {'voxel_size': 1.0, 'orientations': 12}),
}
QUICK = ['3T_2mm_6ori', '3T_2mm_12ori', '3T_2mm_6ori_snr50', '7T_2mm_6ori',
         '3T_2mm_6ori_oblique_LAS', '3T_2mm_6ori_realistic']
#: a case for the smoke test (tests/test_accuracy_matrix.py): 4 mm, 3 echoes, seconds
TINY = {'tiny': ('smoke test: the tiny preset (4 mm, 6 orientations, 3 echoes)',
                 {'preset': 'tiny', 'voxel_size': 4.0})}

MSA_WM = 0.01          # ppm: "white matter" = true MSA above this
MAPS = (('chi33', 'chi33'), ('mms', 'mms'), ('cosmos', 'chi33'))


# --------------------------------------------------------------------------- helpers

def _load(path):
    import nibabel as nb

    return np.asarray(nb.load(str(path)).dataobj, dtype=np.float64)


def _git(*args):
    try:
        return subprocess.run(['git', '-C', str(REPO), *args], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    from qsmprep.__about__ import __version__

    status = _git('status', '--porcelain', '--untracked-files=no', '--', 'qsmprep') or ''
    return {'qsmprep_version': __version__, 'git_commit': _git('rev-parse', 'HEAD'),
            'git_modified_package_files': [ln[3:] for ln in status.splitlines()],
            'python': platform.python_version(), 'cpu_count': os.cpu_count(),
            'machine': platform.machine(),
            'date_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}


def known_settings() -> set:
    """Settings the installed simulator accepts (it may be older or newer than this file)."""
    from qsmprep.simulate import presets

    known = getattr(presets, '_KNOWN', None)
    if known is None:
        known = set(presets.DEFAULTS) | {'voxel_size', 'orientations', 'echo_times',
                                         'echoes', 'subjects', 'seed', 'preset'}
    return set(known) | {'preset', 'seed'}


def case_settings(overrides: dict) -> tuple[dict, list]:
    """BASE + overrides, minus the settings this simulator does not know (with notes)."""
    s = {**BASE, **copy.deepcopy(overrides)}
    known = known_settings()
    notes = [f'setting {k}={s.pop(k)!r} skipped: the simulator does not know it'
             for k in sorted(set(s) - known)]
    return s, notes


def _jsonable(o):
    if hasattr(o, 'tolist'):
        return o.tolist()
    return str(o)


def _json_settings(s):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}


# --------------------------------------------------------------------------- solver

def solve(fields, b0, *, voxel_size, mask, reference_b0, **options):
    """The pipeline's multi-orientation solver on fields (X, Y, Z, N) ppm (reference grid).

    :func:`qsmprep.numerics.multiorientation.solve_multi_orientation` with its defaults
    (those of the pipeline's ``multi_orientation`` node) when it exists; with an older
    qsmprep, the steps the node did before it (COSMOS; STI with anisotropy penalty 0.3; the
    undefined isotropic mean removed).  Returns (dict of arrays, dict describing the solver).
    """
    try:
        from qsmprep.numerics.multiorientation import solve_multi_orientation
    except ImportError:
        return _solve_like_node(fields, b0, voxel_size=voxel_size, mask=mask,
                                reference_b0=reference_b0), {'solver': 'closed-form (copy of '
                                                             'the older pipeline node)'}
    out = solve_multi_orientation(fields, b0, voxel_size=voxel_size, mask=mask,
                                  reference_b0=reference_b0, **options)
    report = out.get('report', {}) if isinstance(out.get('report'), dict) else {}
    return {k: np.asarray(v) for k, v in out.items() if isinstance(v, np.ndarray)}, report


def _solve_like_node(fields, b0, *, voxel_size, mask, reference_b0, sti_regularization=0.3):
    import warnings

    from qsmprep.numerics.sti import cosmos, fit_sti

    fields = fields * mask[..., None]
    out = {'mask': mask}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        chi = cosmos(fields, b0, voxel_size=voxel_size, mask=mask)
        chi[mask] -= chi[mask].mean()
        out['cosmos'] = chi * mask
        if len(b0) >= 6:
            fit = fit_sti(fields, b0, voxel_size=voxel_size, mask=mask,
                          tikhonov=sti_regularization, regularizer='anisotropy')
    if len(b0) >= 6:
        tensor = fit.tensor * mask[..., None]
        iso = tensor[..., [0, 3, 5]].mean(-1)[mask].mean()
        tensor[..., [0, 3, 5]] -= iso
        out['tensor'] = tensor * mask[..., None]
        out['chi33'] = (fit.chi_along(reference_b0) - iso) * mask
        out['mms'] = (fit.mms - iso) * mask
        out['msa'] = fit.msa * mask
        out['pev'] = fit.pev * mask[..., None]
    return out


# --------------------------------------------------------------------------- metrics

def nrmse_aligned(x, y, m) -> float:
    """100‖x − y‖/‖y‖ over ``m`` after shifting x so that its mean equals y's."""
    xv, yv = x[m], y[m]
    return float(100.0 * np.linalg.norm(xv - xv.mean() + yv.mean() - yv) / np.linalg.norm(yv))


def map_metrics(x, y, m, labels, dgm_ids, rois) -> dict:
    """Metrics of one χ map ``x`` against the truth ``y`` in mask ``m``."""
    from qsmprep.numerics.metrics import nrmse, regional_regression, xsim

    x_c = np.where(m, x - x[m].mean(), 0.0)
    y_c = np.where(m, y - y[m].mean(), 0.0)
    out = {'nrmse': nrmse_aligned(x, y, m), 'nrmse_demeaned': nrmse(x, y, m, demean=True),
           'xsim': float(xsim(x_c, y_c, m))}
    try:
        reg = regional_regression(x, y, labels, dgm_ids, mask=m)
        out['dgm_slope'] = reg.slope
        out['dgm_labels'] = list(reg.label_ids)
    except ValueError as exc:
        out['dgm_slope'] = None
        out['dgm_note'] = str(exc)
    offset = y[m].mean() - x[m].mean()    # ours on the truth's offset (χ up to a constant)
    for name, ids in rois.items():
        r = np.isin(labels, ids) & m
        out[f'{name}_truth'] = float(y[r].mean()) if r.any() else None
        out[f'{name}_ours'] = float(x[r].mean() + offset) if r.any() else None
    return out


def tensor_metrics(msa, pev, msa_true, pev_true, m) -> dict:
    wm = m & (msa_true > MSA_WM)
    out = {'msa_nrmse': float(100 * np.linalg.norm(msa[m] - msa_true[m])
                              / np.linalg.norm(msa_true[m])),
           'wm_voxels': int(wm.sum())}
    if wm.any():
        out['msa_median_ratio_wm'] = float(np.median(msa[wm] / msa_true[wm]))
        u, v = pev[wm], pev_true[wm]
        c = np.abs(np.sum(u * v, -1)) / np.maximum(
            np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1), 1e-12)
        angle = np.degrees(np.arccos(np.clip(c, 0.0, 1.0)))
        out['pev_median_angle_deg_wm'] = float(np.median(angle))
    return out


def _dice(a, b):
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _mask_row(true, ours):
    return {'dice': _dice(true, ours), 'coverage': float((true & ours).sum() / true.sum())}


def _read_labels(tsv: Path):
    """DGM label ids (caudate, putamen, pallidum, red nucleus, SN, dentate) and GP/SN ids."""
    rows = [ln.split('\t') for ln in tsv.read_text().splitlines()[1:] if ln.strip()]
    names = {int(i): n.lower() for i, n in rows}
    dgm = [i for i, n in names.items()
           if i != 0 and not any(w in n for w in ('background', 'thalam', 'vein'))]
    rois = {'gp': [i for i, n in names.items() if 'pallid' in n],
            'sn': [i for i, n in names.items() if 'nigra' in n]}
    return sorted(dgm), rois, names


def evaluate(bids: Path, out: Path, *, subject='01', multi_solver=None) -> dict:
    """All metrics of one participant run against the simulator truth (and the oracle)."""
    import nibabel as nb

    from qsmprep.numerics.forward import apparent_susceptibility
    from qsmprep.numerics.geometry import voxel_sizes
    from qsmprep.numerics.metrics import nrmse
    from qsmprep.numerics.sti import STIFit
    from qsmprep.reports.evaluation import evaluate_subject
    from qsmprep.simulate.acquisition import reference_fields

    tdir = bids / 'derivatives' / 'qsmprep-simulate' / f'sub-{subject}'
    ta, oa = tdir / 'anat', out / f'sub-{subject}' / 'anat'
    info = json.loads((tdir / f'sub-{subject}_orientations.json').read_text())
    ref = info['ReferenceAcquisition']
    acqs = [a['acq'] for a in info['Acquisitions']]
    b_ref = np.array([a['b0_reference'] for a in info['Acquisitions']], float)
    res = {'reference': ref, 'notes': []}

    ev = evaluate_subject(bids, out, subject)
    rep = sorted(oa.glob(f'sub-{subject}_space-*_desc-orientations_qsmprep.json'))
    if rep:
        r = json.loads(rep[0].read_text())
        res['pipeline_solver'] = r.get('solver', 'closed-form (no solver option yet)')
        res['pipeline_sti_regularization'] = r.get('sti_regularization')
    b0e = [r['b0_error_deg'] for r in ev['orientations'].values() if 'b0_error_deg' in r]
    res['b0_error_deg_max'] = max(b0e) if b0e else None
    res['b0_error_deg'] = b0e
    res['sti_condition_number'] = ev.get('condition_number')

    # per orientation: masks and local fields, on each acquisition's own grid
    per = {}
    for a in acqs:
        p = f'sub-{subject}_acq-{a}'
        tb = _load(ta / f'{p}_desc-brain_mask.nii.gz') > 0
        row = {}
        f_mask = oa / f'{p}_space-orig_desc-brain_mask.nii.gz'
        if f_mask.exists():
            row['mask'] = _mask_row(tb, _load(f_mask) > 0)
        f_loc, f_lm = oa / f'{p}_desc-local_field.nii.gz', \
            oa / f'{p}_space-orig_desc-local_mask.nii.gz'
        if f_loc.exists() and f_lm.exists():
            m = (_load(f_lm) > 0) & tb
            x, y = _load(f_loc), _load(ta / f'{p}_desc-local_field.nii.gz')
            row['local_field'] = {'nrmse': nrmse(x, y, m),
                                  'nrmse_demeaned': nrmse(x, y, m, demean=True),
                                  'energy_ratio': float((x[m] ** 2).sum() / (y[m] ** 2).sum()),
                                  'voxels': int(m.sum())}
        per[a] = row
    res['orientations'] = per

    # reference grid: truth
    sp = f'sub-{subject}_space-{ref}'
    img = nb.load(str(ta / f'{sp}_chitensor.nii.gz'))
    T = np.asarray(img.dataobj, dtype=np.float64)
    vs = voxel_sizes(img.affine)
    brain = _load(ta / f'{sp}_desc-brain_mask.nii.gz') > 0
    labels = np.rint(_load(ta / f'{sp}_desc-dgm_dseg.nii.gz')).astype(np.int64)
    dgm_ids, rois, names = _read_labels(ta / f'{sp}_desc-dgm_dseg.tsv')
    res['dgm_labels'] = {i: names[i] for i in dgm_ids}
    # χ33 is the susceptibility along the reference B0; the truth file holds the voxel-z
    # component, equal to it only when the reference B0 is the voxel z axis
    tilt = float(np.degrees(np.arccos(min(1.0, abs(b_ref[0, 2]) / np.linalg.norm(b_ref[0])))))
    truth = {'mms': _load(ta / f'{sp}_desc-mms_Chimap.nii.gz')}
    if tilt > 0.01:
        truth['chi33'] = apparent_susceptibility(T, b_ref[0], brain).astype(np.float64)
        res['notes'].append(f'reference B0 is {tilt:.2f} deg off the voxel z axis: true chi33 '
                            'computed along it from the true tensor (the desc-chi33 truth '
                            'file is the voxel-z component)')
    else:
        truth['chi33'] = _load(ta / f'{sp}_desc-chi33_Chimap.nii.gz')
    tfit = STIFit(tensor=T, mask=brain)
    msa_true, pev_true = tfit.msa, tfit.pev

    common_f = oa / f'{sp}_desc-common_mask.nii.gz'
    if not common_f.exists():
        res['notes'].append(f'no common mask on the grid of {ref}: no map metrics')
        return res
    common = _load(common_f) > 0
    m = common & brain
    res['common_mask'] = _mask_row(brain, common)
    res['eval_voxels'] = int(m.sum())

    # end to end
    e2e = {}
    for key, target in MAPS:
        f = oa / f'{sp}_desc-{key}_Chimap.nii.gz'
        if f.exists():
            e2e[key] = {'truth': target,
                        **map_metrics(_load(f), truth[target], m, labels, dgm_ids, rois)}
    f_msa, f_pev = oa / f'{sp}_desc-msa_Chimap.nii.gz', oa / f'{sp}_desc-pev_vector.nii.gz'
    if f_msa.exists() and f_pev.exists():
        e2e['tensor'] = tensor_metrics(_load(f_msa), _load(f_pev), msa_true, pev_true, m)
    res['end_to_end'] = e2e

    # oracle: the same solver on the true local fields and the true brain mask
    t0 = time.perf_counter()
    fields = reference_fields(T * brain[..., None], vs, b_ref, padding=16) * brain[..., None]
    solver_kw = {'solver': multi_solver} if multi_solver else {}
    sol, solver = solve(fields, b_ref, voxel_size=vs, mask=brain, reference_b0=b_ref[0],
                        **solver_kw)
    orc = {}
    for key, target in MAPS:
        if key in sol:
            orc[key] = {'truth': target, **map_metrics(np.asarray(sol[key], np.float64),
                                                       truth[target], m, labels, dgm_ids,
                                                       rois)}
    if 'msa' in sol and 'pev' in sol:
        orc['tensor'] = tensor_metrics(np.asarray(sol['msa'], np.float64),
                                       np.asarray(sol['pev'], np.float64), msa_true,
                                       pev_true, m)
    orc['solver'] = solver.get('solver', multi_solver or '?')
    orc['solver_report'] = {k: v for k, v in solver.items() if k != 'b0_directions'}
    orc['time_s'] = time.perf_counter() - t0
    res['oracle'] = orc
    other = 'closed-form' if str(orc['solver']).startswith('single') else 'single-step'
    if orc['solver'] != '?':
        # the other solver on the same exact fields: what the solver choice costs
        sol, _ = solve(fields, b_ref, voxel_size=vs, mask=brain, reference_b0=b_ref[0],
                       solver=other)
        res['oracle_other_solver'] = other
        res[f'oracle_{other.replace("-", "_")}'] = {
            k: {'truth': t, **map_metrics(np.asarray(sol[k], np.float64), truth[t], m,
                                          labels, dgm_ids, rois)}
            for k, t in MAPS if k in sol}
    res['gap_points'] = {k: e2e[k]['nrmse'] - orc[k]['nrmse']
                         for k, _ in MAPS if k in e2e and k in orc}
    if 'tensor' in e2e and 'tensor' in orc:
        res['gap_points']['msa'] = e2e['tensor']['msa_nrmse'] - orc['tensor']['msa_nrmse']
    return res


# --------------------------------------------------------------------------- running

def run_case(name: str, settings: dict, base: Path, *, nprocs: int = 2,
             multi_solver: str | None = None) -> dict:
    from qsmprep.simulate import simulate_dataset
    from qsmprep.simulate.presets import resolve_config

    bids, out, work = base / 'bids', base / 'derivatives' / 'qsmprep', base / 'work'
    s = dict(settings)
    preset = s.pop('preset')
    rec = {'resolved': _json_settings(resolve_config(preset, **s))}
    t0 = time.perf_counter()
    simulate_dataset(bids, preset=preset, jobs=nprocs, overwrite=True, **s)
    rec['simulation_s'] = time.perf_counter() - t0
    # the truth is on the grid of the simulator's reference acquisition: ask for the same
    # reference (the default choice, the B0 closest to the head's superior axis, picks it
    # too unless the grids are oblique)
    info = json.loads((bids / 'derivatives' / 'qsmprep-simulate' / 'sub-01'
                       / 'sub-01_orientations.json').read_text())
    cmd = [sys.executable, '-m', 'qsmprep.cli.run', str(bids), str(out), 'participant',
           '-w', str(work), '--nprocs', str(nprocs), '--skip-bids-validation',
           '--reference-orientation', info['ReferenceAcquisition'],
           '--multi-solver', multi_solver or default_solver()]
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rec['participant_wall_s'] = time.perf_counter() - t1
    rec['returncode'] = proc.returncode
    rec['command'] = ' '.join(['qsmprep', *cmd[3:]])
    if proc.returncode != 0:
        rec['stderr_tail'] = (proc.stderr or proc.stdout)[-3000:]
        return rec
    t2 = time.perf_counter()
    rec['metrics'] = evaluate(bids, out, multi_solver=multi_solver or default_solver())
    rec['evaluation_s'] = time.perf_counter() - t2
    return rec


def default_solver() -> str:
    """The pipeline's default ``--multi-solver`` (qsmprep.options)."""
    try:
        from qsmprep.options import DEFAULTS
    except ImportError:  # an older qsmprep
        return 'closed-form'
    return DEFAULTS.multi_solver


def run(names, *, keep=None, nprocs=2, log=print, on_case=None, multi_solver=None) -> dict:
    """Run the cases ``names``; ``on_case(result so far)`` after each (partial saves)."""
    table = {**CASES, **TINY}
    cases, seen = {}, {}
    result = {'provenance': provenance(), 'base_settings': _json_settings(BASE),
              'white_matter_msa_threshold_ppm': MSA_WM, 'cases': cases}
    for name in names:
        what, overrides = table[name]
        settings, notes = case_settings(overrides)
        key = json.dumps(_json_settings(settings), sort_keys=True)
        rec = {'description': what, 'settings': _json_settings(settings), 'notes': notes}
        if key in seen:
            rec['skipped'] = f'identical to {seen[key]} once unknown settings are dropped'
            log(f'[{name}] skipped: {rec["skipped"]}')
            cases[name] = rec
            continue
        seen[key] = name
        rec['provenance'] = result['provenance']
        base = Path(keep) / name if keep else Path(tempfile.mkdtemp(prefix=f'am-{name}-'))
        base.mkdir(parents=True, exist_ok=True)
        log(f'[{name}] {what}; data in {base}')
        try:
            rec.update(run_case(name, settings, base, nprocs=nprocs,
                                multi_solver=multi_solver))
        except Exception as exc:  # one failing case does not lose the others
            rec['error'] = f'{type(exc).__name__}: {exc}'
        finally:
            if not keep:
                shutil.rmtree(base, ignore_errors=True)
        log(f'[{name}] ' + summary_line(rec))
        cases[name] = rec
        if on_case is not None:
            on_case(result)
    return result


def summary_line(rec):
    if 'error' in rec or 'skipped' in rec or rec.get('returncode'):
        return rec.get('error') or rec.get('skipped') or f'participant rc {rec["returncode"]}'
    m = rec['metrics']
    e2e = m.get('end_to_end', {})
    parts = [f'wall {rec["participant_wall_s"]:.0f} s']
    parts += [f'{k} {e2e[k]["nrmse"]:.1f} % (gap {m["gap_points"].get(k, float("nan")):+.1f})'
              for k, _ in MAPS if k in e2e]
    return ', '.join(parts)


# --------------------------------------------------------------------------- Markdown

def _f(v, fmt='{:.1f}'):
    return '–' if v is None else fmt.format(v)


def _get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _median(vals):
    vals = [v for v in vals if v is not None]
    return float(np.median(vals)) if vals else None


def _min(vals):
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else None


#: (row label, function of a case record -> value, format) in stage order
def _rows():
    def m(rec, *p):
        return _get(rec, 'metrics', *p)

    def per(rec, *p):
        o = m(rec, 'orientations') or {}
        return [_get(r, *p) for r in o.values()]

    rows = [
        ('**Settings**', None, None),
        ('voxel (mm)', lambda r: '×'.join(f'{v:g}' for v in _get(r, 'resolved', 'voxel_size')),
         '{}'),
        ('field (T) / SNR / orientations', lambda r: '{:g} / {:g} / {}'.format(
            _get(r, 'resolved', 'field_strength'), _get(r, 'resolved', 'snr') or 0,
            _get(r, 'resolved', 'orientations')), '{}'),
        ('**Run**', None, None),
        ('participant wall (s)', lambda r: r.get('participant_wall_s'), '{:.0f}'),
        ('B0 error max (°)', lambda r: m(r, 'b0_error_deg_max'), '{:.3f}'),
        ('**Masks**', None, None),
        ('brain mask Dice, min over orientations', lambda r: _min(per(r, 'mask', 'dice')),
         '{:.3f}'),
        ('brain coverage, min over orientations', lambda r: _min(per(r, 'mask', 'coverage')),
         '{:.3f}'),
        ('common mask Dice / coverage', lambda r: '{:.3f} / {:.3f}'.format(
            m(r, 'common_mask', 'dice'), m(r, 'common_mask', 'coverage'))
         if m(r, 'common_mask') else None, '{}'),
        ('**Local field** (median over orientations)', None, None),
        ('NRMSE / demeaned (%)', lambda r: '{:.1f} / {:.1f}'.format(
            _median(per(r, 'local_field', 'nrmse')),
            _median(per(r, 'local_field', 'nrmse_demeaned')))
         if _median(per(r, 'local_field', 'nrmse')) is not None else None, '{}'),
        ('energy ratio ours/true', lambda r: _median(per(r, 'local_field', 'energy_ratio')),
         '{:.2f}'),
    ]
    for key, label in (('chi33', 'χ33'), ('mms', 'MMS'), ('cosmos', 'COSMOS (vs true χ33)')):
        rows += [
            (f'**{label}**', None, None),
            ('NRMSE (%) ours / oracle / gap', lambda r, k=key: '{:.1f} / {:.1f} / {:+.1f}'.format(
                m(r, 'end_to_end', k, 'nrmse'), m(r, 'oracle', k, 'nrmse'),
                m(r, 'gap_points', k)) if m(r, 'oracle', k) and m(r, 'end_to_end', k)
             else None, '{}'),
            ('NRMSE (%) oracle of the other solver', lambda r, k=key: '{:.1f} ({})'.format(
                m(r, 'oracle_' + m(r, 'oracle_other_solver').replace('-', '_'), k, 'nrmse'),
                m(r, 'oracle_other_solver')) if m(r, 'oracle_other_solver') else m(
                r, 'oracle_closed_form', k, 'nrmse'), '{}'),
            ('demeaned NRMSE (%) ours / oracle', lambda r, k=key: '{:.1f} / {:.1f}'.format(
                m(r, 'end_to_end', k, 'nrmse_demeaned'), m(r, 'oracle', k, 'nrmse_demeaned'))
             if m(r, 'oracle', k) and m(r, 'end_to_end', k) else None, '{}'),
            ('XSIM ours / oracle', lambda r, k=key: '{:.3f} / {:.3f}'.format(
                m(r, 'end_to_end', k, 'xsim'), m(r, 'oracle', k, 'xsim'))
             if m(r, 'oracle', k) and m(r, 'end_to_end', k) else None, '{}'),
            ('DGM slope ours / oracle', lambda r, k=key: '{} / {}'.format(
                _f(m(r, 'end_to_end', k, 'dgm_slope'), '{:.2f}'),
                _f(m(r, 'oracle', k, 'dgm_slope'), '{:.2f}'))
             if m(r, 'end_to_end', k) else None, '{}'),
            ('GP / SN mean (ppb) true → ours', lambda r, k=key: '{} → {} / {} → {}'.format(
                *(_f(None if v is None else 1e3 * v, '{:.0f}') for v in (
                    m(r, 'end_to_end', k, 'gp_truth'), m(r, 'end_to_end', k, 'gp_ours'),
                    m(r, 'end_to_end', k, 'sn_truth'), m(r, 'end_to_end', k, 'sn_ours'))))
             if m(r, 'end_to_end', k) else None, '{}'),
        ]
    rows += [
        ('**MSA / PEV** (white matter: true MSA > 0.01 ppm)', None, None),
        ('MSA NRMSE (%) ours / oracle', lambda r: '{:.0f} / {:.0f}'.format(
            m(r, 'end_to_end', 'tensor', 'msa_nrmse'), m(r, 'oracle', 'tensor', 'msa_nrmse'))
         if m(r, 'end_to_end', 'tensor') and m(r, 'oracle', 'tensor') else None, '{}'),
        ('MSA median ratio ours / oracle', lambda r: '{} / {}'.format(
            _f(m(r, 'end_to_end', 'tensor', 'msa_median_ratio_wm'), '{:.2f}'),
            _f(m(r, 'oracle', 'tensor', 'msa_median_ratio_wm'), '{:.2f}'))
         if m(r, 'end_to_end', 'tensor') else None, '{}'),
        ('PEV median angle (°) ours / oracle', lambda r: '{} / {}'.format(
            _f(m(r, 'end_to_end', 'tensor', 'pev_median_angle_deg_wm'), '{:.0f}'),
            _f(m(r, 'oracle', 'tensor', 'pev_median_angle_deg_wm'), '{:.0f}'))
         if m(r, 'end_to_end', 'tensor') else None, '{}'),
    ]
    return rows


def markdown(result: dict) -> str:
    cases = result['cases']
    ok = {n: r for n, r in cases.items() if 'metrics' in r}
    names = list(ok)
    prov = result['provenance']
    lines = [f'qsmprep {prov["qsmprep_version"]}, commit `{(prov["git_commit"] or "?")[:10]}`'
             + (' (with uncommitted changes to ' + ', '.join(
                 Path(p).name for p in prov['git_modified_package_files']) + ')'
                if prov['git_modified_package_files'] else '')
             + f', {prov["date_utc"]}, {prov["cpu_count"]} cores, `--nprocs 2`; '
             f'multi-orientation solver of the pipeline: {_solver(ok, "pipeline_solver")}, '
             f'of the oracle: {_solver(ok)}.', '']
    other = {n: _get(r, 'provenance', 'git_commit') for n, r in ok.items()}
    other = {n: c for n, c in other.items() if c and c != prov['git_commit']}
    if other:
        lines[0] += ' Run at other commits: ' + ', '.join(
            f'`{n}` at `{c[:10]}`' for n, c in other.items()) + '.'
    if names:
        lines += ['| | ' + ' | '.join(f'`{n}`' for n in names) + ' |',
                  '|---' * (len(names) + 1) + '|']
        for label, fn, fmt in _rows():
            if fn is None:
                lines.append(f'| {label} |' + ' |' * len(names))
                continue
            vals = []
            for n in names:
                try:
                    v = fn(ok[n])
                except (TypeError, KeyError, ValueError):
                    v = None
                vals.append('–' if v is None else fmt.format(v))
            lines.append(f'| {label} | ' + ' | '.join(vals) + ' |')
    lines += ['', 'Cases (one factor at a time around `3T_2mm_6ori`; base: the `demo` preset '
              'with 6 orientations, 4 echoes 5–20 ms, seed 0):', '']
    for n, r in cases.items():
        status = ''
        if 'skipped' in r:
            status = f' — *skipped: {r["skipped"]}*'
        elif 'error' in r or r.get('returncode'):
            status = f' — *failed: {r.get("error") or "participant rc " + str(r["returncode"])}*'
        notes = ''.join(f' ({x})' for x in
                        r.get('notes', []) + (_get(r, 'metrics', 'notes') or []))
        lines.append(f'- `{n}`: {r["description"]}.{notes}{status}')
    return '\n'.join(lines) + '\n'


def _solver(ok, key=None):
    s = {_get(r, 'metrics', key) if key else _get(r, 'metrics', 'oracle', 'solver')
         for r in ok.values()} - {None}
    return ', '.join(f'`{v}`' for v in sorted(s)) or '–'


DOC_TEXT = """\
`benchmarks/accuracy_matrix.py` simulates each case with `qsmprep.simulate.simulate_dataset`,
runs `qsmprep BIDS OUT participant -w WORK --nprocs 2 --skip-bids-validation
--reference-orientation ori01 --multi-solver S` with every other option at its default
(the reference is the simulator's, whose grid the truth is on; the default choice, the B0
closest to the head's superior axis, picks it too unless the grids are oblique; the wall
time is that command's), and scores the derivatives against `derivatives/qsmprep-simulate`.
`--quick` (default) runs the 2 mm cases below,
`--all` adds 1.5 mm, 1 mm and anisotropic voxels, `--cases NAME …` picks, `--keep DIR` keeps
the data, `--write-docs` rewrites this section.  Settings the installed simulator does not
know are dropped with a note (a case that becomes identical to another is skipped).  Full
numbers, per orientation, in `benchmarks/results/accuracy_matrix.json`.

What each row measures, stage by stage:

- *participant wall*: wall time of the whole `qsmprep … participant` process, one run
  (shared 2-core machine with other jobs running: an upper bound, not a benchmark; see
  `bench_participant.py` for timing).
- *B0 error max*: largest angle between the B0 direction qsmprep estimates for an
  orientation (registration to the reference) and the true one (sign-free): registration.
- *brain mask Dice / coverage*: qsmprep's brain mask of each orientation on its own grid
  against the simulator's true brain; coverage is the fraction of the true brain inside
  ours (below 1: brain lost at the edge, which no later stage can recover).
- *common mask*: the intersection of all registered orientation masks on the reference grid
  (where the maps are computed) against the true brain; every χ metric is computed on the
  true brain ∩ this mask.
- *local field*: each orientation's background-removed field (unwrapping, echo combination,
  V-SHARP; a per-orientation output; the single-step solver fits the maps to the total
  fields instead) against the true field of the sources inside the brain, in qsmprep's
  local mask ∩ the true brain; NRMSE = 100‖x − y‖/‖y‖, *demeaned* removes both means first, energy
  ratio ‖x‖²/‖y‖² below 1 means field lost (V-SHARP cannot return the part of the local field
  that is harmonic inside its eroded mask).
- *χ33, MMS, COSMOS*: the multi-orientation maps on the reference grid (COSMOS against the
  true χ33, the susceptibility along the reference B0, which is what it estimates in
  anisotropic tissue).  χ is defined only up to a constant (the k = 0 term of the dipole
  kernel is zero), so *NRMSE* aligns the mean of our map to that of the truth over the mask
  before 100‖x − y‖/‖y‖ (the truth keeps its mean, relative to CSF); *demeaned NRMSE* removes
  both means (QSM Challenge 2.0); XSIM as in Milovic 2025 on the demeaned maps.
- *oracle*: the same multi-orientation solver, with the pipeline's default settings, applied
  to the true local fields (true tensor inside the true brain, every true B0 direction, no
  noise, no unwrapping, background removal or registration) and the true brain mask; *gap* =
  ours − oracle in NRMSE points is what the stages before the solver cost (masking,
  unwrapping, echo combination, background removal or the single-step background term,
  registration, resampling, noise); the oracle's own error is what the solver leaves on
  exact data.  The pipeline and the oracle use the same `--multi-solver` (the script's
  `--multi-solver`, default the pipeline's default); *oracle of the other solver*: the other
  multi-orientation solver (closed form or single-step) on the same exact fields, so that the
  two solvers can be told apart.
- *DGM slope*: regression slope of the ROI means of our map on the true ROI means over the
  deep grey nuclei (caudate, putamen, pallidum, red nucleus, substantia nigra, dentate, left
  and right; thalamus and veins excluded); 1 is unbiased, below 1 underestimation.
- *GP / SN mean*: globus pallidus and substantia nigra means (L + R) in ppb, ours shifted by
  the same mean alignment as the NRMSE.
- *MSA*: anisotropy λ1 − (λ2 + λ3)/2 of our STI tensor against that of the true tensor
  (NRMSE over the evaluation mask, median of ours/true in white matter, here voxels whose true
  MSA exceeds 0.01 ppm); *PEV*: median angle between our and the true principal eigenvector
  there (sign-free, 0–90°; directions drawn at random would give a median of 60°).
"""


def write_docs(md: str, docs: Path = DOCS) -> None:
    text = docs.read_text()
    section = f'{BEGIN}\n\n{DOC_TEXT}\n{md}\n{END}'
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip('\n') + '\n\n## Accuracy matrix (`benchmarks/accuracy_matrix.py`)' \
            '\n\n' + section + '\n'
    docs.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--quick', action='store_true', help='the 2 mm cases (default)')
    g.add_argument('--all', action='store_true', help='every case (1.5 mm, 1 mm: hours)')
    g.add_argument('--cases', nargs='+', metavar='NAME', help='these cases (see --list)')
    g.add_argument('--list', action='store_true', help='list the cases and exit')
    ap.add_argument('--keep', metavar='DIR', help='keep each case\'s data under DIR/<case>')
    ap.add_argument('--out', type=Path, default=RESULT, help=f'JSON (default {RESULT})')
    ap.add_argument('--markdown', type=Path, help='also write the table to this file')
    ap.add_argument('--write-docs', action='store_true',
                    help='replace the "Accuracy matrix" section of docs/benchmarks.md')
    ap.add_argument('--nprocs', type=int, default=2)
    ap.add_argument('--multi-solver', choices=['closed-form', 'single-step'],
                    help="the pipeline's --multi-solver, also used for the oracle (default: "
                         "the pipeline's default)")
    ap.add_argument('--update', action='store_true',
                    help='add/replace these cases in the existing --out JSON')
    ap.add_argument('--render', type=Path, metavar='JSON',
                    help='only rebuild the table (and --write-docs) from an earlier JSON')
    args = ap.parse_args(argv)
    if args.render:
        md = markdown(json.loads(args.render.read_text()))
        print(md)
        if args.markdown:
            args.markdown.write_text(md)
        if args.write_docs:
            write_docs(md)
        return 0
    table = {**CASES, **TINY}
    if args.list:
        for n, (what, ov) in table.items():
            print(f'{n:45s} {"quick" if n in QUICK else "":6s} {what}  {ov}')
        return 0
    names = list(CASES) if args.all else args.cases or QUICK
    bad = [n for n in names if n not in table]
    if bad:
        ap.error(f'unknown case(s) {", ".join(bad)}; see --list')

    earlier = {}
    if args.update and args.out.exists():
        old = json.loads(args.out.read_text())
        earlier = old['cases']
        for rec in earlier.values():
            rec.setdefault('provenance', old['provenance'])

    def save(result):  # after every case, so that an interrupted run keeps what it did
        if earlier:
            result = {**result, 'cases': {**earlier, **result['cases']}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=_jsonable) + '\n')
        md = markdown(result)
        if args.markdown:
            args.markdown.write_text(md)
        if args.write_docs:
            write_docs(md)
        return md

    result = run(names, keep=args.keep, nprocs=args.nprocs,
                 log=lambda s: print(s, flush=True), on_case=save,
                 multi_solver=args.multi_solver)
    print(save(result))
    failed = [n for n, r in result['cases'].items() if 'error' in r or r.get('returncode')]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
