"""Honest evaluation of single-orientation inversions: trained models next to TKD and iLSQR.

:func:`evaluate` scores every orientation of a dataset with known ground truth, for every
method on the **same inputs**, and :func:`format_table` prints the result
(``qsmprep-train evaluate``, ``benchmarks/bench_dl_eval.py``).  NumPy/nibabel only:
TensorFlow is imported only when a trained model is among the methods.

Data with ground truth
----------------------
``qsmprep-simulate``
    ``DATA/derivatives/qsmprep-simulate`` (or that folder itself).  Per orientation: the true
    local field ``*_acq-<ori>_desc-local_field`` (B0 from its ``B0_dir``), the true brain mask
    ``*_acq-<ori>_desc-brain_mask`` and the label, the true apparent susceptibility
    ``*_acq-<ori>_desc-apparent_Chimap`` (``b̂ᵀχb̂`` on that acquisition's grid).  The
    deep-grey-matter nuclei (``*_space-<ref>_desc-dgm_dseg``, every label of its ``.tsv``
    but ``background`` and ``veins``) are on the reference grid; they are carried to each
    acquisition's grid (nearest neighbour) with the head rotation of ``*_orientations.json``.
``qsm-forward``
    ``DATA/derivatives/qsm-forward``: ``<prefix>_Chimap``, ``_mask``, ``_dseg`` per
    acquisition, B0 from the raw sidecar's ``B0_dir`` (else the affine).  The local field is
    qsm-forward's own ``_fieldmap-local`` when it was saved (``save_field=True``), otherwise
    qsmprep's forward model of the masked χ (``field_source`` says which).  DGM labels 1-6
    (QSM-CI convention) when the segmentation has at least two of them.

Inputs (``inputs``)
-------------------
``'truth'``
    The true local field and the true brain mask; metrics inside the brain mask.
``'pipeline'``
    The local field and mask that qsmprep's participant level wrote for the same
    acquisition (``<derivatives>/sub-*/…/<prefix>_desc-local_field``,
    ``<prefix>_space-orig_desc-local_mask``, on the acquisition grid), scored against the
    same truth label inside the pipeline mask ∩ the true brain mask.

Methods
-------
``'tkd'``: :func:`qsmprep.numerics.inversion.tkd`, threshold 0.15, demeaned in the mask
(the participant level's ``desc-tkd_Chimap``).  ``'ilsqr'``:
:func:`qsmprep.numerics.inversion.ilsqr` with its defaults (``desc-ilsqr_Chimap``).  A model
folder (``model.json`` + ``model.keras``, as ``qsmprep-train fit`` writes): loaded once with
:func:`qsmprep.dl.infer.load_model`, predicted with :func:`qsmprep.dl.infer.predict_volume`.
A :class:`Method` wrapping any callable ``case -> χ`` (tests, oracles, external tools).

Metrics (per orientation and method; :mod:`qsmprep.numerics.metrics`)
----------------------------------------------------------------------
See :data:`METRICS`.  The summary gives the median over all orientations of the run; the
ranking orders the methods by their median NRMSE.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qsmprep.io.errors import CantCreateError, DataError, MissingInputError, UsageError

__all__ = ['BUILTIN_METHODS', 'METRICS', 'Case', 'CaseSpec', 'Method', 'check_writable',
           'discover', 'evaluate', 'format_table', 'iter_results', 'resolve_methods', 'score',
           'tilt_deg', 'write_json']

LOGGER = logging.getLogger('qsmprep.dl')

#: Pseudo-models scored without TensorFlow.
BUILTIN_METHODS = ('tkd', 'ilsqr')
#: Format tag of the JSON result.
FORMAT = 'qsmprep-evaluate/1'
#: Metric keys of a result, with what they are (all inside the evaluation mask).
METRICS = {
    'nrmse': 'NRMSE % (2016 challenge, not demeaned): 100·‖χ−χ_true‖/‖χ_true‖',
    'nrmse_demeaned': 'NRMSE % with both maps demeaned over the mask (QSM Challenge 2.0 / '
                      'QSM-CI "NRMSE")',
    'nrmse_detrended': 'detrended NRMSE % (error left after a linear recalibration)',
    'hfen': 'HFEN % (2016 challenge: 15³ LoG kernel, σ = 1.5 voxels, masked images)',
    'hfen_qsmci': 'HFEN % (QSM-CI port: scipy gaussian_laplace, norms inside the mask)',
    'xsim': 'XSIM (Milovic 2025, compute_xsim.m: Gaussian 7³ window, native ppm)',
    'xsim_qsmci': 'XSIM, QSM-CI port (5³ uniform window, truncated at the borders)',
    'dgm_slope': 'slope of the regression of the ROI means (method vs truth) over the '
                 'deep-grey-matter nuclei (1 = no bias; null when no segmentation)',
}
#: Columns of the terminal table: (metric, header, format).
TABLE_COLUMNS = (('nrmse', 'NRMSE %', '{:.1f}'), ('nrmse_demeaned', 'dNRMSE %', '{:.1f}'),
                 ('hfen', 'HFEN %', '{:.1f}'), ('xsim', 'XSIM', '{:.3f}'),
                 ('dgm_slope', 'DGM slope', '{:.2f}'))

_PREFIX = re.compile(r'^sub-(?P<sub>[A-Za-z0-9]+)(_ses-(?P<ses>[A-Za-z0-9]+))?'
                     r'(_acq-(?P<acq>[A-Za-z0-9]+))?(_run-(?P<run>[A-Za-z0-9]+))?$')


# --------------------------------------------------------------------------- geometry helpers

def tilt_deg(b0_direction) -> float:
    """Angle (degrees) between a B0 direction and the voxel z axis (0 = B0 along z).

    >>> round(tilt_deg([0.0, np.sin(np.deg2rad(25)), np.cos(np.deg2rad(25))]), 6)
    25.0
    >>> tilt_deg([0, 0, -1])
    0.0
    """
    b = np.asarray(b0_direction, dtype=np.float64)
    b = b / np.linalg.norm(b)
    return float(np.degrees(np.arccos(np.clip(abs(b[2]), 0.0, 1.0))))


def _head_to_scanner(rotation, centre):
    T = np.eye(4)
    R = np.asarray(rotation, dtype=np.float64)
    c = np.asarray(centre, dtype=np.float64)
    T[:3, :3] = R
    T[:3, 3] = c - R @ c
    return T


# --------------------------------------------------------------------------- cases

@dataclass
class Case:
    """One orientation, loaded: the inputs every method gets and the truth it is scored on.

    ``field`` (ppm, float32) is zero outside ``mask``; ``label`` is the true (apparent) χ in
    ppm; ``eval_mask`` is where the metrics are computed; ``dgm`` the nuclei segmentation on
    this grid (``None`` with ``dgm_note`` saying why).
    """

    key: str
    field: np.ndarray
    mask: np.ndarray
    label: np.ndarray
    eval_mask: np.ndarray
    b0_direction: tuple
    voxel_size: tuple
    affine: np.ndarray
    dgm: np.ndarray | None = None
    dgm_labels: tuple = ()
    dgm_note: str | None = None


@dataclass
class CaseSpec:
    """Where one orientation's inputs and truth are (nothing loaded); :meth:`load` reads them."""

    generator: str
    inputs: str
    subject: str
    session: str | None
    orientation: str
    prefix: str
    field: str | None
    mask: str
    truth_mask: str
    label: str
    b0_direction: tuple
    head_tilt_deg: float | None = None
    dgm: str | None = None
    dgm_labels: tuple = ()
    dgm_xfm: list | None = None  # world transform reference -> this acquisition (simulator)
    dgm_note: str | None = None
    field_source: str = 'file'

    @property
    def key(self) -> str:
        return self.prefix

    def describe(self) -> dict:
        d = {'key': self.key, 'subject': self.subject, 'session': self.session,
             'orientation': self.orientation, 'b0_direction': [float(v) for v in
                                                                self.b0_direction],
             'b0_tilt_deg': round(tilt_deg(self.b0_direction), 3),
             'head_tilt_deg': None if self.head_tilt_deg is None else round(
                 float(self.head_tilt_deg), 3),
             'field': self.field, 'mask': self.mask, 'label': self.label,
             'field_source': self.field_source}
        return d

    def load(self) -> Case:
        import nibabel as nb

        from qsmprep.numerics.geometry import voxel_sizes

        def read(path, what):
            try:
                img = nb.load(path)
                data = np.asarray(img.dataobj, dtype=np.float32)
            except Exception as exc:  # any unreadable file
                raise DataError(f'cannot read the {what}: {exc}', path=path,
                                hint='regenerate the file') from exc
            if data.ndim != 3:
                raise DataError(f'the {what} must be a 3-D image; got shape {data.shape}',
                                path=path)
            if not np.all(np.isfinite(data)):
                raise DataError(f'the {what} has NaN or Inf values', path=path)
            return img, data

        limg, label = read(self.label, 'truth label')
        _, tmask = read(self.truth_mask, 'true brain mask')
        _, mask = read(self.mask, 'input mask')
        for what, arr, path in (('true brain mask', tmask, self.truth_mask),
                                ('input mask', mask, self.mask)):
            if arr.shape != label.shape:
                raise DataError(f'the {what} has shape {arr.shape}, the truth label '
                                f'{label.shape}: they must be on one grid', path=path)
        tmask, mask = tmask > 0, mask > 0
        vs = tuple(float(v) for v in voxel_sizes(limg.affine))
        if self.field is None:  # qsm-forward without _fieldmap-local: forward model of χ
            from qsmprep.numerics.forward import dipole_forward

            fld = dipole_forward((label * tmask).astype(np.float64), vs, self.b0_direction,
                                 padding=16).astype(np.float32)
        else:
            _, fld = read(self.field, 'local field')
            if fld.shape != label.shape:
                raise DataError(f'the local field has shape {fld.shape}, the truth label '
                                f'{label.shape}: they must be on one grid', path=self.field)
        eval_mask = mask & tmask
        if not eval_mask.any():
            raise DataError('the input mask and the true brain mask do not overlap',
                            path=self.mask)
        dgm, note = None, self.dgm_note
        if self.dgm is not None:
            dimg = nb.load(self.dgm)
            dgm = np.rint(np.asarray(dimg.dataobj, dtype=np.float32)).astype(np.int16)
            if self.dgm_xfm is not None:
                from qsmprep.utils.images import resample

                dgm = np.rint(resample(dgm, dimg.affine, limg.affine, label.shape,
                                       world_xfm=np.asarray(self.dgm_xfm), order=0)
                              ).astype(np.int16)
            elif dgm.shape != label.shape:
                dgm, note = None, (f'segmentation {Path(self.dgm).name} is not on the grid of '
                                   'the label')
        return Case(key=self.key, field=(fld * mask).astype(np.float32), mask=mask,
                    label=(label * tmask).astype(np.float32), eval_mask=eval_mask,
                    b0_direction=tuple(self.b0_direction), voxel_size=vs,
                    affine=limg.affine, dgm=dgm, dgm_labels=tuple(self.dgm_labels),
                    dgm_note=note)


def _truth_root(data: Path) -> tuple[str, Path]:
    data = Path(data)
    if not data.is_dir():
        raise MissingInputError('the evaluation data folder does not exist', path=data,
                                hint='pass a dataset written by qsmprep-simulate or qsm-forward')
    for gen in ('qsmprep-simulate', 'qsm-forward'):
        if (data / 'derivatives' / gen).is_dir():
            return gen, data / 'derivatives' / gen
    for gen in ('qsmprep-simulate', 'qsm-forward'):  # the truth folder itself
        if data.name == gen and data.parent.name == 'derivatives':
            return gen, data
    raise MissingInputError(
        'no ground truth: neither derivatives/qsmprep-simulate nor derivatives/qsm-forward '
        'is there', path=data,
        hint='evaluate on a dataset made by qsmprep-simulate (with its truth, the default) or '
             'by qsm-forward; real data have no ground truth to score against')


def _entities(prefix):
    m = _PREFIX.match(prefix)
    if m is None:
        return None
    return m['sub'], m['ses'], m['acq'], m['run']


def _simulate_specs(truth: Path, keep) -> list[CaseSpec]:
    from qsmprep.dl.data import find_pairs

    specs = []
    tables: dict = {}
    for p in find_pairs(truth, source='simulate-truth', subjects=keep):
        anat = Path(p.field).parent
        sdir = anat.parent
        stem = f'sub-{p.subject}' + (f'_ses-{p.session}' if p.session else '')
        if stem not in tables:
            tpath = sdir / f'{stem}_orientations.json'
            tables[stem] = json.loads(tpath.read_text()) if tpath.is_file() else None
        table = tables[stem]
        prefix = Path(p.field).name[:-len('_desc-local_field.nii.gz')]
        head_tilt, dgm, labels, xfm, note = None, None, (), None, None
        if table is None:
            note = f'no {stem}_orientations.json: DGM labels cannot be placed on this grid'
        else:
            acqs = {a['acq']: a for a in table.get('Acquisitions', [])}
            ref = table.get('ReferenceAcquisition')
            a = acqs.get(p.orientation)
            if a is not None:
                head_tilt = float(a.get('tilt_deg', 0.0))
            seg = anat / f'{stem}_space-{ref}_desc-dgm_dseg.nii.gz'
            tsv = seg.with_name(seg.name.replace('.nii.gz', '.tsv'))
            if a is None or ref not in acqs:
                note = f'{p.orientation} or the reference is missing from {stem}_orientations'
            elif not seg.is_file():
                note = f'no deep-grey-matter segmentation ({seg.name})'
            else:
                labels = _simulator_nuclei(tsv)
                dgm = str(seg)
                c = table['Centre']
                xfm = (_head_to_scanner(a['rotation'], c)
                       @ np.linalg.inv(_head_to_scanner(acqs[ref]['rotation'], c))).tolist()
        specs.append(CaseSpec(generator='qsmprep-simulate', inputs='truth', subject=p.subject,
                              session=p.session, orientation=p.orientation, prefix=prefix,
                              field=p.field, mask=p.mask, truth_mask=p.mask, label=p.label,
                              b0_direction=p.b0_direction, head_tilt_deg=head_tilt, dgm=dgm,
                              dgm_labels=labels, dgm_xfm=xfm, dgm_note=note))
    return specs


def _simulator_nuclei(tsv: Path) -> tuple:
    """Label ids of the nuclei in a simulator ``dseg.tsv`` (all but background and veins)."""
    if tsv.is_file():
        ids = []
        for line in tsv.read_text().splitlines()[1:]:
            parts = line.split('\t')
            if len(parts) >= 2 and parts[1] not in ('background', 'veins'):
                ids.append(int(parts[0]))
        return tuple(ids)
    from qsmprep.simulate.phantom import LABELS, VEIN_LABEL

    return tuple(k for k in LABELS if k not in (0, VEIN_LABEL))


def _raw_b0(data: Path, rel_dir: Path, prefix: str, affine):
    from qsmprep.numerics._checks import as_direction
    from qsmprep.numerics.geometry import b0_direction_from_affine

    for side in sorted((data / rel_dir).glob(f'{prefix}_*.json')):
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            continue
        if 'B0_dir' in meta:
            return tuple(float(v) for v in as_direction(meta['B0_dir'], name='B0_dir'))
    return tuple(float(v) for v in b0_direction_from_affine(affine))


def _qsmforward_specs(data: Path, truth: Path, keep) -> list[CaseSpec]:
    import nibabel as nb

    specs = []
    for chi in sorted(list(truth.glob('sub-*/**/anat/*_Chimap.nii'))
                      + list(truth.glob('sub-*/**/anat/*_Chimap.nii.gz'))):
        ext = '.nii.gz' if chi.name.endswith('.gz') else '.nii'
        prefix = chi.name[:-len('_Chimap' + ext)]
        ent = _entities(prefix)
        if ent is None:
            continue
        sub, ses, acq, _run = ent
        if keep is not None and sub not in keep:
            continue
        mask = chi.with_name(f'{prefix}_mask{ext}')
        if not mask.is_file():
            continue
        local = chi.with_name(f'{prefix}_fieldmap-local{ext}')
        seg = chi.with_name(f'{prefix}_dseg{ext}')
        rel = chi.parent.relative_to(truth)
        b0 = _raw_b0(data, rel, prefix, nb.load(str(chi)).affine)
        dgm, labels, note = None, (), None
        if seg.is_file():
            present = set(np.unique(np.rint(np.asarray(nb.load(str(seg)).dataobj))).astype(int))
            labels = tuple(i for i in range(1, 7) if i in present)
            if len(labels) >= 2:
                dgm = str(seg)
            else:
                labels, note = (), (f'{seg.name} has fewer than two of the DGM labels 1-6 '
                                    '(a phantom without nuclei)')
        else:
            note = f'no segmentation ({seg.name})'
        specs.append(CaseSpec(generator='qsm-forward', inputs='truth', subject=sub,
                              session=ses, orientation=acq or 'none', prefix=prefix,
                              field=str(local) if local.is_file() else None, mask=str(mask),
                              truth_mask=str(mask), label=str(chi), b0_direction=b0,
                              head_tilt_deg=tilt_deg(b0), dgm=dgm, dgm_labels=labels,
                              dgm_note=note,
                              field_source='file' if local.is_file() else
                              'forward model of the true chi (no _fieldmap-local)'))
    return specs


def _with_pipeline(specs: list[CaseSpec], derivatives: Path) -> list[CaseSpec]:
    from qsmprep.dl.data import _b0_from
    from qsmprep.io import derivatives as contract

    out = []
    for s in specs:
        rel = Path(f'sub-{s.subject}') / (f'ses-{s.session}' if s.session else '') / 'anat'
        fld = derivatives / rel / contract.name('local_field', ori=s.prefix)
        msk = derivatives / rel / contract.name('local_mask', ori=s.prefix)
        if not (fld.is_file() and msk.is_file()):
            LOGGER.info('evaluate: %s has no pipeline local field/mask in %s; skipped',
                        s.key, derivatives)
            continue
        import nibabel as nb

        b0 = _b0_from(Path(str(fld).replace('.nii.gz', '.json')), nb.load(str(fld)).affine)
        out.append(CaseSpec(**{**s.__dict__, 'inputs': 'pipeline', 'field': str(fld),
                               'mask': str(msk), 'b0_direction': b0,
                               'field_source': 'qsmprep participant level'}))
    if not out:
        raise MissingInputError(
            'no qsmprep local field matches an orientation with ground truth (looked for '
            f'sub-*/anat/<prefix>{contract.suffix("local_field")} and '
            f'<prefix>{contract.suffix("local_mask")})', path=derivatives,
            hint='pass --derivatives the qsmprep output folder (the one holding sub-*) of a '
                 'participant run on this dataset, or use --inputs truth')
    return out


def discover(data, *, inputs: str = 'truth', derivatives=None, subjects=None,
             orientations=None) -> tuple[str, list[CaseSpec], Path | None]:
    """``(generator, specs, derivatives)``: every orientation of ``data`` with ground truth
    (``derivatives``: the qsmprep folder used for ``inputs='pipeline'``, else ``None``).

    Parameters
    ----------
    data : path
        A dataset made by ``qsmprep-simulate`` or qsm-forward (the BIDS root), or the
        simulator's ``derivatives/qsmprep-simulate`` folder.
    inputs : {'truth', 'pipeline'}
        Module docstring.
    derivatives : path, optional
        ``inputs='pipeline'``: qsmprep's output folder (holding ``sub-*``); default
        ``DATA/derivatives/qsmprep``.
    subjects, orientations : iterable of str, optional
        Keep only these participant labels / ``acq-`` labels.

    Raises
    ------
    MissingInputError
        No truth, no orientation left, or (pipeline) no matching local field.
    UsageError
        An unknown ``inputs``.
    """
    if inputs not in ('truth', 'pipeline'):
        raise UsageError(f"inputs must be 'truth' or 'pipeline'; got {inputs!r}")
    data = Path(data)
    gen, truth = _truth_root(data)
    keep = None if subjects is None else {str(s).removeprefix('sub-') for s in subjects}
    if gen == 'qsmprep-simulate':
        specs = _simulate_specs(truth, keep)
    else:
        specs = _qsmforward_specs(data, truth, keep)
    if orientations is not None:
        want = {str(o).removeprefix('acq-') for o in orientations}
        specs = [s for s in specs if s.orientation in want]
    if not specs:
        raise MissingInputError(
            f'the {gen} truth folder has no orientation with a local field (or χ), mask and '
            'label' + (' for the selected participants/orientations' if keep or orientations
                       else ''), path=truth,
            hint='simulate the dataset with its truth (qsmprep-simulate writes it by default) '
                 'and check --participant-label / --orientation')
    if inputs == 'pipeline':
        if derivatives is None:
            root = truth.parent.parent if truth.parent.name == 'derivatives' else data
            derivatives = root / 'derivatives' / 'qsmprep'
        derivatives = Path(derivatives)
        if not derivatives.is_dir():
            raise MissingInputError(
                'the qsmprep derivatives folder for --inputs pipeline does not exist',
                path=derivatives, hint='pass --derivatives OUT/qsmprep of a participant run')
        specs = _with_pipeline(specs, derivatives)
    return gen, specs, (derivatives if inputs == 'pipeline' else None)


# --------------------------------------------------------------------------- methods

@dataclass
class Method:
    """A named inversion ``predict(case) -> (χ, info)`` or ``-> χ`` (``info``: a dict of
    extra per-orientation values for the JSON, e.g. iterations)."""

    name: str
    predict: Callable[[Case], tuple[np.ndarray, dict]]
    kind: str = 'callable'
    description: str = ''
    meta: dict = field(default_factory=dict)


def _tkd_method(threshold: float = 0.15) -> Method:
    from qsmprep.numerics.inversion import tkd

    def predict(case):
        chi = tkd(case.field, voxel_size=case.voxel_size, b0_direction=case.b0_direction,
                  threshold=threshold, mask=case.mask, demean=True)
        return chi * case.mask, {}

    return Method('tkd', predict, kind='classical',
                  description=f'TKD (threshold {threshold}), demeaned in the mask',
                  meta={'threshold': threshold})


def _ilsqr_method() -> Method:
    from qsmprep.numerics.inversion import ILSQR_DEFAULTS, ilsqr, ilsqr_description

    def predict(case):
        chi, info = ilsqr(case.field, case.mask, voxel_size=case.voxel_size,
                          b0_direction=case.b0_direction)
        return chi, {'iterations': int(info['iterations']),
                     'converged': bool(info['converged'])}

    return Method('ilsqr', predict, kind='classical', description=ilsqr_description(),
                  meta=dict(ILSQR_DEFAULTS))


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open('rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def _model_meta_path(path: Path) -> Path:
    if not path.exists():
        raise MissingInputError('model not found', path=path,
                                hint="pass a model folder written by 'qsmprep-train fit', or "
                                     "'tkd' / 'ilsqr'")
    meta = path / 'model.json' if path.is_dir() else (
        path if path.suffix == '.json' else path.with_name('model.json'))
    if not meta.is_file():
        raise UsageError('this is not a qsmprep model: no model.json', path=path,
                         hint="pass the folder 'qsmprep-train fit' wrote (model.json + "
                              "model.keras), or 'tkd' / 'ilsqr'")
    try:
        info = json.loads(meta.read_text())
    except ValueError as exc:
        raise UsageError(f'model.json is not valid JSON ({exc})', path=meta) from exc
    weights = meta.parent / info.get('model_file', 'model.keras')
    if not weights.is_file():
        raise UsageError(f'this is not a complete qsmprep model: {weights.name} is missing',
                         path=meta.parent, hint='train it again or copy the whole folder')
    return meta


def _published_method(path: Path, *, threads=None) -> Method:
    """The published MoDL-QSM weights (a user's ``last.h5``, :mod:`qsmprep.dl.published`)."""
    from qsmprep.dl.published import DESC, description, find_norm_file

    find_norm_file(path)  # NormFactor.mat must be there: fail before any computing
    state: dict = {}

    def predict(case):
        from qsmprep.dl.infer import load_model, predict_volume

        if 'model' not in state:
            state['model'], state['meta'] = load_model(path, threads=threads)
        chi = predict_volume(state['model'], state['meta'], case.field, case.mask,
                             b0_direction=case.b0_direction, voxel_size=case.voxel_size)
        return chi, {}

    return Method(DESC, predict, kind='model', description=description(path),
                  meta={'path': str(path.absolute()), 'model_kind': 'published MoDL-QSM',
                        'sha256': _sha256(path)})


def _model_method(path: Path, *, threads=None, mode=None, batch_size=None) -> Method:
    if path.suffix == '.h5' and path.is_file():
        from qsmprep.dl.published import is_published

        if is_published(path):
            return _published_method(path, threads=threads)
    meta_path = _model_meta_path(path)
    info = json.loads(meta_path.read_text())
    state: dict = {}

    def predict(case):
        from qsmprep.dl.infer import load_model, predict_volume

        if 'model' not in state:
            state['model'], state['meta'] = load_model(meta_path, threads=threads)
        kw = {} if batch_size is None else {'batch_size': batch_size}
        chi = predict_volume(state['model'], state['meta'], case.field, case.mask,
                             b0_direction=case.b0_direction, voxel_size=case.voxel_size,
                             mode=mode, **kw)
        return chi, {}

    name = str(info.get('name') or meta_path.parent.name)
    weights = meta_path.parent / info.get('model_file', 'model.keras')
    return Method(name, predict, kind='model',
                  description=f"{info.get('kind', 'model')} ({name}), "
                              f"{mode or info.get('inference', {}).get('mode', 'patches')} "
                              'inference',
                  meta={'path': str(meta_path.parent.absolute()),
                        'model_kind': info.get('kind'),
                        'sha256': _sha256(weights), 'training': info.get('training'),
                        'versions': info.get('versions')})


def resolve_methods(specs: Iterable, *, threads=None, mode=None, batch_size=None
                    ) -> list[Method]:
    """:class:`Method` objects for ``'tkd'``, ``'ilsqr'``, model folders or ready Methods.

    Every model folder is checked (exists: else exit 66; has ``model.json`` and its weights:
    else 64) and TensorFlow is required (exit 69 with the install hint) **before** anything
    is computed.  Names must be unique (two models with the same ``model.json`` name are
    named after their folders).
    """
    out: list[Method] = []
    for s in specs:
        if isinstance(s, Method):
            out.append(s)
        elif str(s) == 'tkd':
            out.append(_tkd_method())
        elif str(s) == 'ilsqr':
            out.append(_ilsqr_method())
        else:
            out.append(_model_method(Path(s), threads=threads, mode=mode,
                                     batch_size=batch_size))
    if any(m.kind == 'model' for m in out):
        from qsmprep.dl import require_tensorflow

        require_tensorflow('qsmprep-train evaluate with a trained model')
    names = [m.name for m in out]
    for m in out:  # two models of one kind (same model.json name): use their folder names
        if m.kind == 'model' and names.count(m.name) > 1:
            m.name = Path(m.meta['path']).name
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f'two methods have the same name: {", ".join(dup)}',
                         hint='give each model its own folder/name, and list tkd and ilsqr '
                              'once')
    if not out:
        raise UsageError('no method to evaluate')
    return out


# --------------------------------------------------------------------------- scoring

def score(chi, case: Case) -> dict:
    """All :data:`METRICS` of one χ map against the case's truth (inside ``eval_mask``)."""
    from qsmprep.numerics import metrics as M

    chi = np.asarray(chi, dtype=np.float64)
    if chi.shape != case.label.shape:
        raise DataError(f'{case.key}: the method returned shape {chi.shape}, expected '
                        f'{case.label.shape}')
    if not np.all(np.isfinite(chi)):
        raise DataError(f'{case.key}: the method returned NaN or Inf values')
    y, m = case.label, case.eval_mask
    out = {'nrmse': M.nrmse(chi, y, m), 'nrmse_demeaned': M.nrmse(chi, y, m, demean=True),
           'nrmse_detrended': M.nrmse_detrended(chi, y, m),
           'hfen': M.hfen(chi, y, m), 'hfen_qsmci': M.hfen(chi, y, m, variant='qsmci'),
           'xsim': M.xsim(chi, y, m), 'xsim_qsmci': M.xsim_qsmci(chi, y, m),
           'dgm_slope': None}
    if case.dgm is not None and case.dgm_labels:
        try:
            fit = M.regional_regression(chi, y, case.dgm, case.dgm_labels, mask=m)
        except ValueError as exc:
            LOGGER.debug('%s: no DGM slope (%s)', case.key, exc)
        else:
            out['dgm_slope'] = fit.slope
    return {k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in out.items()}


def _dgm_info(case: Case) -> dict:
    if case.dgm is None or not case.dgm_labels:
        return {'labels': [], 'note': case.dgm_note or 'no deep-grey-matter segmentation'}
    used = [int(i) for i in case.dgm_labels if np.any((case.dgm == i) & case.eval_mask)]
    note = None if len(used) >= 2 else 'fewer than two nuclei inside the mask on this grid'
    return {'labels': used, 'note': note}


def _median(values):
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def evaluate(data, methods: Sequence = BUILTIN_METHODS, *, inputs: str = 'truth',
             derivatives=None, subjects=None, orientations=None, threads=None, mode=None,
             batch_size=None) -> dict:
    """Score every method on every orientation of ``data`` with ground truth.

    Parameters
    ----------
    data : path
        Dataset with ground truth (see :func:`discover`).
    methods : sequence
        ``'tkd'``, ``'ilsqr'``, model folders or :class:`Method` objects
        (:func:`resolve_methods`); all get the same inputs.
    inputs, derivatives, subjects, orientations
        See :func:`discover`.
    threads, mode, batch_size
        TensorFlow threads and inference options of trained models.

    Returns
    -------
    dict
        JSON-ready: ``cases`` (per orientation: geometry, tilt angles, DGM labels used and
        ``results[method]`` with the :data:`METRICS`, seconds and, for iLSQR, iterations),
        ``summary[method]`` (median over orientations; ``n``), ``ranking`` (by median
        NRMSE) and ``relative_nrmse`` (each other method's NRMSE over the baselines', per
        orientation, and its maximum).
    """
    from qsmprep.__about__ import __version__

    t0 = time.perf_counter()
    mlist = resolve_methods(methods, threads=threads, mode=mode, batch_size=batch_size)
    gen, specs, deriv = discover(data, inputs=inputs, derivatives=derivatives, subjects=subjects,
                          orientations=orientations)
    cases = []
    for spec in specs:
        case = spec.load()
        row = spec.describe()
        row.update(voxel_size=[float(v) for v in case.voxel_size],
                   shape=[int(n) for n in case.label.shape],
                   eval_voxels=int(case.eval_mask.sum()), dgm=_dgm_info(case), results={})
        for meth in mlist:
            t = time.perf_counter()
            out = meth.predict(case)
            chi, info = out if isinstance(out, tuple) else (out, {})
            dt = time.perf_counter() - t
            res = score(chi, case)
            res.update(seconds=round(dt, 3), **(info or {}))
            row['results'][meth.name] = res
            LOGGER.info('evaluate: %s %-8s NRMSE %.1f %%  XSIM %.3f  (%.1f s)', spec.key,
                        meth.name, res['nrmse'], np.nan if res['xsim'] is None else
                        res['xsim'], dt)
        cases.append(row)
        del case
    names = [m.name for m in mlist]
    summary = {}
    for n in names:
        summary[n] = {'n': len(cases),
                      'median': {k: _median([c['results'][n][k] for c in cases])
                                 for k in METRICS},
                      'max_nrmse': max(c['results'][n]['nrmse'] for c in cases),
                      'seconds_median': _median([c['results'][n]['seconds'] for c in cases])}
    ranking = sorted(names, key=lambda n: summary[n]['median']['nrmse'])
    relative = {}
    for n in names:
        for b in (x for x in BUILTIN_METHODS if x in names and x != n):
            r = [c['results'][n]['nrmse'] / c['results'][b]['nrmse']
                 if c['results'][b]['nrmse'] else None for c in cases]
            relative.setdefault(n, {})[b] = {
                'per_orientation': r, 'max': max((v for v in r if v is not None), default=None)}
    notes = sorted({c['dgm']['note'] for c in cases if c['dgm']['note']})
    return {'format': FORMAT, 'qsmprep_version': __version__,
            'data': str(Path(data).absolute()), 'generator': gen, 'inputs': inputs,
            'derivatives': None if deriv is None else str(Path(deriv).absolute()),
            'metrics': METRICS,
            'evaluation_mask': ('true brain mask' if inputs == 'truth' else
                                'pipeline local mask ∩ true brain mask'),
            'methods': [{'name': m.name, 'kind': m.kind, 'description': m.description,
                         **m.meta} for m in mlist],
            'cases': cases, 'summary': summary, 'ranking': ranking,
            'relative_nrmse': relative, 'notes': notes,
            'seconds': round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------- output

def _fmt(value, spec):
    return '-' if value is None else spec.format(value)


def format_table(result: dict, *, markdown: bool = False) -> str:
    """A plain (or Markdown) table: one row per orientation and method, then the medians.

    Columns: B0 tilt from the voxel z axis (``B0_dir``), head tilt against B0 (simulator's
    orientation table; qsm-forward: = B0 tilt), then :data:`TABLE_COLUMNS`.
    """
    names = [m['name'] for m in result['methods']]
    head = ['orientation', 'B0 tilt°', 'head tilt°', 'method'] + [h for _, h, _ in
                                                                  TABLE_COLUMNS]
    rows = []
    multi = len({c['subject'] for c in result['cases']}) > 1 or any(
        c['session'] for c in result['cases'])
    for c in result['cases']:
        label = c['key'] if multi else c['orientation']
        for i, n in enumerate(names):
            r = c['results'][n]
            rows.append([label if i == 0 else '', _fmt(c['b0_tilt_deg'], '{:.1f}') if i == 0
                         else '', _fmt(c['head_tilt_deg'], '{:.1f}') if i == 0 else '', n]
                        + [_fmt(r[k], f) for k, _, f in TABLE_COLUMNS])
    for i, n in enumerate(names):
        med = result['summary'][n]['median']
        rows.append([f'median ({len(result["cases"])})' if i == 0 else '', '', '', n]
                    + [_fmt(med[k], f) for k, _, f in TABLE_COLUMNS])
    if markdown:
        lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    else:
        w = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
        lines = ['  '.join(h.ljust(n) if j < 4 else h.rjust(n)
                           for j, (h, n) in enumerate(zip(head, w, strict=True)))]
        lines.append('  '.join('-' * n for n in w))
        lines += ['  '.join(x.ljust(n) if j < 4 else x.rjust(n)
                            for j, (x, n) in enumerate(zip(r, w, strict=True))) for r in rows]
    foot = [f"inputs: {result['inputs']} ({result['generator']}); metrics inside the "
            f"{result['evaluation_mask']}; ranking by median NRMSE: "
            + ' < '.join(result['ranking'])]
    foot += [f'note: {n}' for n in result['notes']]
    return '\n'.join([*lines, '', *foot])


def write_json(result: dict, path) -> Path:
    """Write ``result`` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f'.{path.name}.tmp')
        tmp.write_text(json.dumps(result, indent=2) + '\n')
        tmp.replace(path)
    except OSError as exc:
        raise CantCreateError(f'cannot write the evaluation result ({exc.strerror})',
                              path=path, hint='choose a writable --out path') from exc
    return path


def check_writable(path) -> None:
    """Raise :class:`CantCreateError` now if ``path`` (a file to write later) cannot be made."""
    path = Path(path)
    if path.is_dir():
        raise CantCreateError('--out is a directory', path=path,
                              hint='pass a file name, e.g. eval.json')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f'.{path.name}.probe')
        probe.write_text('')
        probe.unlink()
    except OSError as exc:
        raise CantCreateError(f'cannot write there ({exc.strerror})', path=path,
                              hint='choose a writable --out path') from exc


def iter_results(result: dict) -> Iterator[tuple[str, str, dict]]:
    """``(case key, method, metrics)`` for every row of a result (for scripts)."""
    for c in result['cases']:
        for n, r in c['results'].items():
            yield c['key'], n, r
