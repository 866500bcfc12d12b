"""Python API of the simulator: :func:`simulate_dataset` (files) and :func:`simulate_subject`.

Randomness: every draw comes from a generator seeded by a :class:`numpy.random.SeedSequence`
of ``[seed, subject index]`` (anatomy, tissue values), ``[seed, subject, session, 1]``
(head rotations, prescriptions), ``[seed, subject, session, 100 + i]`` (receiver phase and
noise of acquisition ``i``) and ``[seed, subject, session, 200 + i]`` (the signal realism
effects: non-harmonic receiver phase, coil-combination phase, bias field), so results do
not depend on the order in which acquisitions are computed or on the number of worker
processes, and with every effect off the files are those of earlier versions.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qsmprep.__about__ import __version__
from qsmprep.numerics.forward import TENSOR_COMPONENTS
from qsmprep.numerics.geometry import b0_world_to_voxel
from qsmprep.simulate import acquisition as acq
from qsmprep.simulate import bids, cohort
from qsmprep.simulate.phantom import LABELS, Phantom, make_phantom
from qsmprep.simulate.presets import resolve_config

__all__ = ['OutputExistsError', 'SimulationSummary', 'SubjectSimulation', 'simulate_dataset',
           'simulate_subject']

LOGGER = logging.getLogger('qsmprep.simulate')


class OutputExistsError(FileExistsError):
    """The output directory is not empty and may not be overwritten."""


@dataclass
class SimulationSummary:
    """What :func:`simulate_dataset` wrote."""

    out_dir: Path
    config: dict
    subjects: list = field(default_factory=list)
    files: int = 0
    elapsed_s: float = 0.0

    def as_dict(self):
        return {'out_dir': str(self.out_dir), 'config': self.config, 'subjects': self.subjects,
                'files': self.files, 'elapsed_s': self.elapsed_s}


@dataclass(eq=False)
class SubjectSimulation:
    """In-memory result of :func:`simulate_subject` (noise-free fields before phase/noise).

    Attributes
    ----------
    phantom : Phantom
    geometries : list of Geometry
    acquisitions : list of AcquisitionFields
        Per acquisition on its own grid: ``local``, ``background`` (ppm, full FOV,
        unwrapped, noise-free), ``brain``, ``apparent``, ``pd``, ``r2star``.
    tensor : (X, Y, Z, 6)
        Brain-masked tensor in the reference frame (grid of the first acquisition).
    b0_reference : (N, 3)
        B0 direction of every acquisition in the reference voxel frame.
    labels : (X, Y, Z) uint8
        Deep grey matter / vein (and lesion) labels on the reference grid.
    config : dict
        The subject's settings (with a cohort's drawn acquisition settings applied).
    cohort : dict or None
        The cohort draws (:func:`qsmprep.simulate.cohort.draw_subject`, lesion positions
        included); None without ``variation='cohort'``.
    """

    phantom: Phantom
    geometries: list
    acquisitions: list
    tensor: np.ndarray
    b0_reference: np.ndarray
    labels: np.ndarray
    config: dict
    cohort: dict | None = None

    @property
    def voxel_size(self):
        return self.geometries[0].voxel_size

    @property
    def reference_brain(self):
        return self.acquisitions[0].brain


def _rng(*key):
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _b0_reference(geoms):
    # head frame = scanner frame of the reference acquisition (R_0 = I): P_0⁻¹ R_iᵀ ẑ
    return np.array([b0_world_to_voxel(g.b0_head(), geoms[0].affine) for g in geoms])


def _subject_config(cfg, subject_index):
    """(settings, cohort draws) of one subject; the dataset settings without a cohort."""
    if cfg.get('variation', 'none') != 'cohort':
        return cfg, None
    draws = cohort.draw_subject(cfg, subject_index)
    return cohort.subject_config(cfg, draws), draws


def _phantom(cfg, subject_index, draws=None):
    variation = None if draws is None else {**draws['anatomy'], 'lesions': draws['lesions']}
    phantom = make_phantom(cfg['model_resolution'], rng=_rng(cfg['seed'], subject_index),
                           deformation=cfg['deformation'], air=cfg['air_cavities'],
                           variation=variation)
    if draws is not None:
        draws['lesions'] = phantom.lesions  # with their positions
    return phantom


def _label_names(cfg):
    return {**LABELS, **cohort.LESION_LABELS} if cfg.get('lesions', 'none') != 'none' \
        else LABELS


def _build(cfg, subject_index, session_index):
    cfg, draws = _subject_config(cfg, subject_index)
    phantom = _phantom(cfg, subject_index, draws)
    return cfg, draws, phantom, _geometries(cfg, phantom, subject_index, session_index)


def _geometries(cfg, phantom, subject_index, session_index):
    rng = _rng(cfg['seed'], subject_index, session_index, 1)
    n = cfg['orientations']
    R = acq.head_rotations(n, rng=rng, tilt_range=cfg['tilt_range'])
    P = acq.oblique_prescriptions(n, rng=rng, max_angle=cfg['oblique'])
    return acq.plan_geometries(phantom, R, P, cfg['voxel_size'], fov_margin=cfg['fov_margin'],
                               grid_orientation=cfg['grid_orientation'])


def simulate_subject(*, preset: str = 'tiny', seed: int = 0, subject_index: int = 1,
                     session_index: int = 0, **overrides) -> SubjectSimulation:
    """Simulate one subject/session in memory, without noise, phase or files.

    Returns the per-acquisition true local and background fields on each acquisition's
    full field of view (unwrapped, noise-free), the reference-frame tensor and B0
    directions, for closing the loop with the inversions.  Settings as in
    :func:`simulate_dataset`.
    """
    cfg = resolve_config(preset, seed=seed, **overrides)
    cfg, draws, phantom, geoms = _build(cfg, subject_index, session_index)
    fields = [acq.simulate_acquisition(phantom, g, padding=cfg['padding'], keep_tensor=(i == 0),
                                       body=cfg['body'])
              for i, g in enumerate(geoms)]
    return SubjectSimulation(phantom=phantom, geometries=geoms, acquisitions=fields,
                             tensor=fields[0].tensor, b0_reference=_b0_reference(geoms),
                             labels=acq.sample_labels(phantom, geoms[0]), config=cfg,
                             cohort=draws)


# ----------------------------------------------------------------------------------------
# dataset writing
# ----------------------------------------------------------------------------------------

def _prepare_out_dir(out_dir: Path, overwrite: bool):
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f'{out_dir} exists and is not a directory')
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f'output directory {out_dir} is not empty; choose an empty or new directory, '
                'or pass overwrite=True (--overwrite) to replace a dataset written by '
                'qsmprep-simulate')
        desc = out_dir / 'dataset_description.json'
        try:
            name = json.loads(desc.read_text())['GeneratedBy'][0]['Name']
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            name = None
        if name != bids.DERIVATIVES_NAME:
            raise OutputExistsError(
                f'refusing to overwrite {out_dir}: it is not empty and does not hold a dataset '
                f'written by qsmprep-simulate (no dataset_description.json with GeneratedBy '
                f'Name "{bids.DERIVATIVES_NAME}"); remove it yourself or choose another '
                'directory')
        for p in out_dir.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


# state shared with forked worker processes (set before the pool is created)
_STATE: dict = {}


def _entities(sub, ses):
    return {'sub': sub, 'ses': ses}


def _anat(root, sub, ses):
    p = Path(root) / f'sub-{sub}'
    if ses is not None:
        p = p / f'ses-{ses}'
    return p / 'anat'


def _raw_uri(sub, ses, acq_label):
    stem = bids.bids_basename('MEGRE', **_entities(sub, ses), acq=acq_label, echo=1, part='mag')
    rel = f'sub-{sub}/' + (f'ses-{ses}/' if ses else '') + f'anat/{stem}.nii.gz'
    return f'bids:raw:{rel}'


def _acquisition_task(index: int) -> dict:
    """Simulate acquisition ``index`` of the current subject/session and write its files."""
    st = _STATE
    cfg, phantom, geom = st['cfg'], st['phantom'], st['geoms'][index]
    sub, ses = st['sub'], st['ses']
    t0 = time.perf_counter()
    f = acq.simulate_acquisition(phantom, geom, padding=cfg['padding'],
                                 keep_tensor=(index == 0 and cfg['truth']), body=cfg['body'])
    t_fields = time.perf_counter() - t0
    rng = _rng(cfg['seed'], st['subject_index'], st['session_index'], 100 + index)
    phi0 = acq.receiver_phase(geom.shape, rng=rng)
    signal_fx = _signal_effects(cfg, geom, f, _rng(cfg['seed'], st['subject_index'],
                                                   st['session_index'], 200 + index))
    if cfg['receiver_nonharmonic'] > 0:
        phi0 += signal_fx.pop('receiver_nonharmonic')
    anat = _anat(st['root'], sub, ses)
    ent = {**_entities(sub, ses), 'acq': geom.label}
    b0v = [float(v) for v in geom.b0_voxel]
    written = []
    total = f.total
    if cfg['dephasing']:
        signal_fx['field_gradient'] = acq.field_gradient(total, geom.voxel_size)
        signal_fx['voxel_size'] = geom.voxel_size
    pd = f.pd * signal_fx.pop('bias') if 'bias' in signal_fx else f.pd
    for e, (mag, phase) in enumerate(acq.gre_signal(
            total, pd, f.r2star, echo_times=cfg['echo_times'],
            field_strength=cfg['field_strength'], phase_offset=phi0, snr=cfg['snr'],
            brain=f.brain, rng=rng, **signal_fx), start=1):
        te = cfg['echo_times'][e - 1]
        meta = {'EchoTime': te, 'EchoNumber': e, 'MagneticFieldStrength': cfg['field_strength'],
                'ImageType': ['ORIGINAL', 'PRIMARY', 'M'], 'Manufacturer': 'qsmprep-simulate',
                'SoftwareVersions': __version__, 'MRAcquisitionType': '3D',
                'ScanningSequence': 'GR', 'SequenceVariant': 'SP',
                'PulseSequenceType': 'Multi-echo spoiled gradient echo'}
        if cfg['b0_dir_sidecar']:
            meta['B0_dir'] = b0v
        if cfg['magnitude_dtype'] == 'int16':
            mag = np.clip(np.rint(mag * 2000.0), 0, 32767).astype(np.int16)
        stem = bids.bids_basename('MEGRE', **ent, echo=e, part='mag')
        written += [bids.write_nifti(anat / f'{stem}.nii.gz', mag, geom.affine),
                    bids.write_json(anat / f'{stem}.json', meta)]
        if cfg['phase_units'] == 'arbitrary':
            phase = acq.phase_to_arbitrary(phase)
        meta = {**meta, 'ImageType': ['ORIGINAL', 'PRIMARY', 'P'], 'Units': cfg['phase_units']}
        stem = bids.bids_basename('MEGRE', **ent, echo=e, part='phase')
        written += [bids.write_nifti(anat / f'{stem}.nii.gz', phase, geom.affine),
                    bids.write_json(anat / f'{stem}.json', meta)]
        del mag, phase
    del total
    if cfg['truth']:
        written += _write_truth(st, f, geom, index)
    return {'index': index, 'label': geom.label, 'files': len(written),
            'fields_s': t_fields, 'total_s': time.perf_counter() - t0,
            'sim_shape': list(f.sim_shape)}


def _signal_effects(cfg, geom, f, rng):
    """Signal-level realism effects of one acquisition, drawn from their own ``rng``.

    Returns the keyword arguments for :func:`~qsmprep.simulate.acquisition.gre_signal`
    (``echo_phase``) plus ``receiver_nonharmonic`` (rad, added to φ0) and ``bias``
    (multiplies the proton density), only for the effects that are on, so that with every
    effect off no random number is drawn and the files are those of earlier versions.
    """
    vs, shape, out = geom.voxel_size, geom.shape, {}
    if cfg['receiver_nonharmonic'] > 0:
        out['receiver_nonharmonic'] = np.float32(cfg['receiver_nonharmonic']) * \
            acq.smooth_random_field(shape, vs, rng=rng)
    if cfg['coil_phase'] > 0:
        out['echo_phase'] = [np.float32(cfg['coil_phase']) *
                             acq.smooth_random_field(shape, vs, rng=rng)
                             for _ in cfg['echo_times']]
    if cfg['bias_field'] > 0:
        out['bias'] = acq.bias_field(shape, vs, rng=rng, amplitude=cfg['bias_field'])
    return out


def _write_truth(st, f, geom, index):
    cfg, sub, ses = st['cfg'], st['sub'], st['ses']
    droot = Path(st['root']) / 'derivatives' / bids.DERIVATIVES_NAME
    anat = _anat(droot, sub, ses)
    ent = {**_entities(sub, ses), 'acq': geom.label}
    src = _raw_uri(sub, ses, geom.label)
    b0v = [float(v) for v in geom.b0_voxel]
    out = []

    def chimap(stem, data, desc, extra=None):
        meta = {'Units': 'ppm', 'SkullStripped': True, 'Description': desc, 'Sources': [src]}
        meta.update(extra or {})
        return [bids.write_nifti(anat / f'{stem}.nii.gz', data.astype(np.float32), geom.affine),
                bids.write_json(anat / f'{stem}.json', meta)]

    stem = bids.bids_basename('Chimap', **ent, desc='apparent')
    out += chimap(stem, f.apparent, 'True apparent susceptibility b^T chi b along B0 of this '
                  'acquisition (ppm, relative to CSF, brain only)', {'B0_dir': b0v})
    stem = bids.bids_basename('mask', **ent, desc='brain')
    out += [bids.write_nifti(anat / f'{stem}.nii.gz', f.brain.astype(np.uint8), geom.affine),
            bids.write_json(anat / f'{stem}.json', {'Type': 'Brain', 'Sources': [src],
                                                   'SpatialReference': src,
                                                   'Description': 'True brain mask'})]
    for kind, data, what in (('local', f.local, 'sources inside the brain mask'),
                             ('background', f.background, 'sources outside the brain mask '
                              '(CSF rim, skull, scalp, sinuses, air)')):
        stem = bids.bids_basename('field', **ent, desc=kind)
        out += [bids.write_nifti(anat / f'{stem}.nii.gz', data, geom.affine),
                bids.write_json(anat / f'{stem}.json', {
                    'Units': 'ppm', 'Description': f'True field shift of the {what}, full '
                    'field of view, noise-free and unwrapped', 'B0_dir': b0v,
                    'MagneticFieldStrength': cfg['field_strength'], 'Sources': [src]})]
    if index == 0:
        out += _write_reference(st, f, geom, anat)
    return out


def _write_reference(st, f, geom, anat):
    sub, ses = st['sub'], st['ses']
    ent = {**_entities(sub, ses), 'space': geom.label}
    src = _raw_uri(sub, ses, geom.label)
    base = {'SkullStripped': True, 'Sources': [src], 'SpatialReference': src}
    out = []
    stem = bids.bids_basename('chitensor', **ent)
    out += [bids.write_nifti(anat / f'{stem}.nii.gz', f.tensor, geom.affine),
            bids.write_json(anat / f'{stem}.json', {
                **base, 'Units': 'ppm', 'Components': list(TENSOR_COMPONENTS),
                'Description': 'True susceptibility tensor in the reference frame (voxel axes '
                               'of acq-' + geom.label + '), relative to CSF, brain only'})]
    for desc, data, text in (
            ('chi33', f.tensor[..., 5], 'chi33 of the true tensor in the reference frame'),
            ('mms', f.chi_mean, 'True mean magnetic susceptibility (trace/3)')):
        stem = bids.bids_basename('Chimap', **ent, desc=desc)
        out += [bids.write_nifti(anat / f'{stem}.nii.gz', np.ascontiguousarray(data),
                                 geom.affine),
                bids.write_json(anat / f'{stem}.json', {**base, 'Units': 'ppm',
                                                        'Description': text + ' (ppm, relative '
                                                        'to CSF)'})]
    stem = bids.bids_basename('mask', **ent, desc='brain')
    out += [bids.write_nifti(anat / f'{stem}.nii.gz', f.brain.astype(np.uint8), geom.affine),
            bids.write_json(anat / f'{stem}.json', {'Type': 'Brain', 'Sources': [src],
                                                   'SpatialReference': src,
                                                   'Description': 'True brain mask'})]
    labels = acq.sample_labels(st['phantom'], geom)
    stem = bids.bids_basename('dseg', **ent, desc='dgm')
    out += [bids.write_nifti(anat / f'{stem}.nii.gz', labels, geom.affine),
            bids.write_json(anat / f'{stem}.json', {
                'Sources': [src], 'SpatialReference': src,
                'Description': 'Deep grey matter nuclei (ellipsoids) and veins' +
                               (' and lesions' if st['cfg']['lesions'] != 'none' else '')}),
            bids.write_tsv(anat / f'{stem}.tsv', ['index', 'name'],
                           [[k, v] for k, v in _label_names(st['cfg']).items()])]
    return out


def _settings_record(cfg):
    # without a cohort the settings read as before the cohort options existed
    skip = {'subjects'} | ({'variation', 'lesions', 'variation_fixed'}
                           if cfg.get('variation', 'none') == 'none' else set())
    return {k: v for k, v in cfg.items() if k not in skip}


def _write_cohort_json(droot, s, scfg, draws, phantom):
    sub = s['label']
    nuclei = {t: phantom.tissue_values[t]['chi'] for t in draws['anatomy']['iron_factor']}
    return bids.write_json(droot / f'sub-{sub}' / f'sub-{sub}_cohort.json', {
        'Description': 'Per-subject draws of the qsmprep-simulate cohort (variation=cohort): '
                       'acquisition settings, anatomy (scale, pose rotation about the brain '
                       'centre, deformation, iron factors, MSA scale, fibre-tract weights, '
                       'veins) and lesions (centre in the head frame = world frame of the '
                       'reference acquisition before its grid prescription, mm; radii along '
                       'the columns of axes; chi relative to CSF)',
        'Seed': s['seed'], 'DrawSeed': [scfg['seed'], int(s['seed'][1]), 300],
        'Acquisition': {'voxel_size': scfg['voxel_size'],
                        'field_strength': scfg['field_strength'],
                        'echo_times': scfg['echo_times'], 'snr': scfg['snr'],
                        'tilt_range': scfg['tilt_range'],
                        'model_resolution': scfg['model_resolution'],
                        'drawn': sorted(draws['acquisition']),
                        'fixed': scfg.get('variation_fixed', [])},
        'Anatomy': {**draws['anatomy'], 'deformation_mm': scfg['deformation'],
                    'max_displacement_mm': phantom.deformation['max_displacement_mm'],
                    'min_jacobian_det_wm': phantom.deformation.get('min_jacobian_det_wm'),
                    'nucleus_chi_ppm': nuclei,
                    'wm_chi_ppm': phantom.tissue_values['wm']['chi'],
                    'wm_dchi_ppm': phantom.tissue_values['wm']['dchi']},
        'Lesions': draws['lesions'], 'LesionLabels': cohort.LESION_LABELS,
        'Ranges': {'cohort': cohort.COHORT, 'lesions': cohort.LESIONS},
        'Units': {'chi': 'ppm relative to CSF', 'radii_mm': 'mm', 'r2star': '1/s at 3 T'},
        'GeneratedBy': f'qsmprep-simulate {__version__}'})


def _orientation_tables(root, sub, ses, geoms, cfg):
    d = Path(root) / 'derivatives' / bids.DERIVATIVES_NAME / f'sub-{sub}'
    if ses is not None:
        d = d / f'ses-{ses}'
    stem = f'sub-{sub}' + (f'_ses-{ses}' if ses else '')
    b_ref = _b0_reference(geoms)
    rows, acqs = [], []
    for g, br in zip(geoms, b_ref, strict=True):
        bv = g.b0_voxel
        acqs.append({'acq': g.label, 'tilt_deg': g.tilt_deg, 'rotation': g.rotation,
                     'prescription': g.prescription, 'affine': g.affine, 'shape': g.shape,
                     'b0_voxel': bv, 'b0_reference': br, 'b0_head': g.b0_head()})
        rows.append([g.label, round(g.tilt_deg, 6), *np.round(bv, 9), *np.round(br, 9)])
    meta = {
        'Description': 'Head rotations R (head frame -> scanner frame, about Centre; B0 = '
                       'scanner +z), grid prescriptions P (voxel axes in the scanner frame), '
                       'B0 directions in each acquisition voxel frame (P^T z) and in the '
                       'reference frame (voxel frame of the first acquisition, '
                       'P0^T R^T z).',
        'Centre': geoms[0].centre, 'ReferenceAcquisition': geoms[0].label,
        'DesignConditionNumber': acq.design_condition(b_ref) if len(geoms) >= 6 else None,
        'Acquisitions': acqs}
    return [bids.write_json(d / f'{stem}_orientations.json', meta),
            bids.write_tsv(d / f'{stem}_orientations.tsv',
                           ['acq', 'tilt_deg', 'b0_voxel_x', 'b0_voxel_y', 'b0_voxel_z',
                            'b0_reference_x', 'b0_reference_y', 'b0_reference_z'], rows)]


def _run_session(root, cfg, phantom, geoms, sub, ses, subject_index, session_index, jobs):
    _STATE.clear()
    _STATE.update(root=str(root), cfg=cfg, phantom=phantom, geoms=geoms, sub=sub, ses=ses,
                  subject_index=subject_index, session_index=session_index)
    n = len(geoms)
    results = [None] * n
    tag = f'sub-{sub}' + (f' ses-{ses}' if ses else '')
    use_pool = jobs > 1 and n > 1 and 'fork' in mp.get_all_start_methods()
    phantom.warm_cache()  # computed once here, shared with forked workers
    if not use_pool:
        for i in range(n):
            results[i] = _acquisition_task(i)
            _log_acq(tag, geoms[i], results[i], i + 1, n)
        return results
    # worker processes inherit the phantom through fork (no copy); one FFT thread each
    old = os.environ.get('QSMPREP_FFT_WORKERS')
    os.environ['QSMPREP_FFT_WORKERS'] = '1'
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, n),
                                 mp_context=mp.get_context('fork')) as ex:
            futs = {ex.submit(_acquisition_task, i): i for i in range(n)}
            for k, fut in enumerate(as_completed(futs), start=1):
                i = futs[fut]
                results[i] = fut.result()
                _log_acq(tag, geoms[i], results[i], k, n)
    finally:
        if old is None:
            os.environ.pop('QSMPREP_FFT_WORKERS', None)
        else:
            os.environ['QSMPREP_FFT_WORKERS'] = old
    return results


def _log_acq(tag, geom, res, k, n):
    LOGGER.info('%s acq-%s (tilt %.1f deg): fields %.1f s, total %.1f s, %d files [%d/%d]',
                tag, geom.label, geom.tilt_deg, res['fields_s'], res['total_s'], res['files'],
                k, n)


def simulate_dataset(out_dir, *, preset: str = 'demo', subjects: int | None = None,
                     sessions: int | None = None, seed: int = 0, overwrite: bool = False,
                     jobs: int | None = None, **overrides) -> SimulationSummary:
    """Write a simulated multi-orientation, multi-echo BIDS dataset with ground truth.

    Parameters
    ----------
    out_dir : path
        Output BIDS root; must be empty or new (see ``overwrite``).
    preset : {'tiny', 'demo', 'full', 'cohort', '7t'}
        Named settings (:mod:`qsmprep.simulate.presets`).
    subjects : int, optional
        Number of participants (default: the preset's, 1 except ``cohort``).
    sessions : int, optional
        Sessions per participant (default: no session level).  Each session has new head
        rotations, receiver phases and noise; the anatomy is the participant's.
    seed : int
        Same seed and settings → bit-identical files.
    overwrite : bool
        Replace the contents of a non-empty ``out_dir`` — only if it holds a dataset written
        by qsmprep-simulate (anything else is refused).
    jobs : int, optional
        Worker processes for the acquisitions (default: available CPUs, at most 2 for
        1 mm grids to bound memory).  Results do not depend on it.
    **overrides
        Any setting of :func:`qsmprep.simulate.presets.resolve_config` (``voxel_size``,
        ``orientations``, ``echo_times``/``echoes``, ``field_strength``, ``snr``,
        ``phase_units``, ``magnitude_dtype``, ``b0_dir_sidecar``, ``oblique``,
        ``tilt_range``, ``deformation``, ``model_resolution``, ``padding``, ``fov_margin``,
        ``truth``, ``grid_orientation``, ``realism`` and the realism effects
        ``air_cavities``, ``body``, ``dephasing``, ``receiver_nonharmonic``, ``coil_phase``,
        ``bias_field``; the cohort settings ``variation`` and ``lesions``: with
        ``variation='cohort'`` each subject draws its own anatomy, lesions and, unless
        given, voxel size, field strength, echo times, SNR and deformation, recorded in
        ``derivatives/qsmprep-simulate/sub-XX/sub-XX_cohort.json``).

    Returns
    -------
    SimulationSummary

    Raises
    ------
    SimulationConfigError
        A setting has an invalid value.
    OutputExistsError
        ``out_dir`` is not empty (and may not be overwritten).
    """
    t0 = time.perf_counter()
    cfg = resolve_config(preset, subjects=subjects, sessions=sessions, seed=seed, **overrides)
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    if jobs is None:
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else \
            (os.cpu_count() or 1)
        jobs = max(1, min(ncpu, 2 if cfg['model_resolution'] < 1.5 else ncpu))
    n_sub, sessions = cfg['subjects'], cfg['sessions']
    width = max(2, len(str(n_sub)))
    subs = [{'label': f'{i:0{width}d}', 'seed': [cfg['seed'], i]} for i in range(1, n_sub + 1)]
    summary = SimulationSummary(out_dir=out_dir, config=cfg)
    files = bids.write_raw_dataset_files(out_dir, subjects=subs, config=cfg)
    droot = out_dir / 'derivatives' / bids.DERIVATIVES_NAME
    if cfg['truth']:
        files += bids.write_derivatives_dataset_files(droot, config=cfg)
    LOGGER.info('qsmprep-simulate %s: preset %s, %d subject(s), %d orientation(s), %d echo(es),'
                ' voxel %s mm -> %s', __version__, preset, n_sub, cfg['orientations'],
                len(cfg['echo_times']), 'x'.join(f'{v:g}' for v in cfg['voxel_size']), out_dir)
    n_files = len(files)
    for si, s in enumerate(subs, start=1):
        ts = time.perf_counter()
        scfg, draws = _subject_config(cfg, si)
        phantom = _phantom(scfg, si, draws)
        LOGGER.info('sub-%s: phantom %s at %g mm in %.1f s', s['label'],
                    'x'.join(map(str, phantom.shape)), cfg['model_resolution'],
                    time.perf_counter() - ts)
        entry = {'label': s['label'], 'sessions': []}
        if draws is not None:
            entry['cohort'] = draws
        if cfg['truth']:
            n_files += 1
            bids.write_json(droot / f'sub-{s["label"]}' / f'sub-{s["label"]}_phantom.json', {
                'TissueValues': phantom.tissue_values, 'Deformation': phantom.deformation,
                'Seed': s['seed'], 'Labels': _label_names(cfg),
                'Units': {'chi': 'ppm relative to CSF', 'pd': 'a.u. (CSF = 1)',
                          'r2star': '1/s at 3 T (scaled linearly with B0)',
                          'dchi': 'ppm (chi_parallel - chi_perpendicular)'},
                'Settings': _settings_record(scfg),
                'GeneratedBy': f'qsmprep-simulate {__version__}'})
            if draws is not None:
                n_files += 1
                _write_cohort_json(droot, s, scfg, draws, phantom)
        for ses_i in (range(1, sessions + 1) if sessions else [0]):
            ses = f'{ses_i:02d}' if sessions else None
            geoms = _geometries(scfg, phantom, si, ses_i)
            results = _run_session(out_dir, scfg, phantom, geoms, s['label'], ses, si, ses_i,
                                   jobs)
            n_files += sum(r['files'] for r in results)
            if cfg['truth']:
                n_files += len(_orientation_tables(out_dir, s['label'], ses, geoms, cfg))
            entry['sessions'].append({
                'session': ses, 'shape': list(geoms[0].shape),
                'acquisitions': [{'acq': g.label, 'tilt_deg': g.tilt_deg,
                                  'b0_voxel': g.b0_voxel.tolist(),
                                  'b0_reference': b.tolist()}
                                 for g, b in zip(geoms, _b0_reference(geoms), strict=True)]})
        LOGGER.info('sub-%s done in %.1f s', s['label'], time.perf_counter() - ts)
        summary.subjects.append(entry)
        del phantom
    _STATE.clear()
    summary.files = n_files
    summary.elapsed_s = time.perf_counter() - t0
    LOGGER.info('wrote %d files in %.1f s', n_files, summary.elapsed_s)
    return summary
