"""Writing the simulated BIDS raw dataset and its ground-truth derivatives dataset.

Raw dataset (BIDS 1.10, ``DatasetType: raw``)::

    dataset_description.json  README  participants.tsv  participants.json
    sub-01/[ses-01/]anat/sub-01[_ses-01]_acq-ori01_echo-1_part-mag_MEGRE.nii.gz   (+ .json)
    sub-01/[ses-01/]anat/sub-01[_ses-01]_acq-ori01_echo-1_part-phase_MEGRE.nii.gz (+ .json)

Sidecars: ``EchoTime`` (s), ``EchoNumber``, ``MagneticFieldStrength`` (T), ``Units`` on phase
(``'rad'`` or ``'arbitrary'``: int16 in [−4096, 4095], ``φ = value·π/4096``), and the
non-standard ``B0_dir`` (unit B0 vector in the image's voxel frame; qsm-forward/QSMxT
convention) when requested.

Ground truth, ``derivatives/qsmprep-simulate/`` (``DatasetType: derivative``)::

    sub-01/[ses-01/]anat/
      sub-01_space-ori01_chitensor.nii.gz          tensor (X,Y,Z,6) [χ11,χ12,χ13,χ22,χ23,χ33], ppm
      sub-01_space-ori01_desc-chi33_Chimap.nii.gz  χ33 (reference frame), ppm
      sub-01_space-ori01_desc-mms_Chimap.nii.gz    mean magnetic susceptibility tr(χ)/3, ppm
      sub-01_space-ori01_desc-brain_mask.nii.gz    brain mask (reference grid)
      sub-01_space-ori01_desc-dgm_dseg.nii.gz      deep grey matter + vein labels (+ _dseg.tsv)
      sub-01_acq-oriNN_desc-apparent_Chimap.nii.gz  b̂ᵀχb̂ on the acquisition grid, ppm
      sub-01_acq-oriNN_desc-brain_mask.nii.gz       brain mask on the acquisition grid
      sub-01_acq-oriNN_desc-local_field.nii.gz      field of the brain sources, ppm
      sub-01_acq-oriNN_desc-background_field.nii.gz field of everything outside the brain, ppm
    sub-01/[ses-01/]sub-01[_ses-01]_orientations.json / .tsv   rotations, B0 directions
    sub-01/sub-01_phantom.json                                 drawn tissue values, deformation
    sub-01/sub-01_cohort.json                                  cohorts: per-subject draws

The reference frame (``space-ori01``) is the voxel frame of the first acquisition's grid
(same grid and affine as ``acq-ori01``).  χ maps are brain-only (zero outside the mask) and
relative to CSF.  Fields and the tensor have no BIDS suffix: ``*_field.*``,
``*_chitensor.*``, ``*_orientations.*`` and ``*_phantom.json`` (and ``*_cohort.json`` in
cohorts) are listed in the dataset's ``.bidsignore``.

Every file is written deterministically: NIfTI headers are fully set from the data, gzip
streams have ``mtime = 0`` and no file name, JSON has sorted keys and no timestamps.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmprep.__about__ import __version__

__all__ = ['BIDS_VERSION', 'DERIVATIVES_NAME', 'bids_basename', 'write_derivatives_dataset_files',
           'write_json', 'write_nifti', 'write_raw_dataset_files', 'write_tsv']

#: BIDS version the files follow.
BIDS_VERSION = '1.10.0'
#: Name of the ground-truth derivatives pipeline (and folder under ``derivatives/``).
DERIVATIVES_NAME = 'qsmprep-simulate'
CODE_URL = 'https://github.com/qsmprep/qsmprep'

_ENTITY_ORDER = ('sub', 'ses', 'acq', 'echo', 'part', 'space', 'desc')


def bids_basename(suffix: str, **entities) -> str:
    """File stem from entities in BIDS order (``None`` values are left out).

    >>> bids_basename('MEGRE', sub='01', acq='ori02', echo=3, part='phase')
    'sub-01_acq-ori02_echo-3_part-phase_MEGRE'
    """
    unknown = set(entities) - set(_ENTITY_ORDER)
    if unknown:
        raise ValueError(f'unknown BIDS entities {sorted(unknown)}')
    parts = [f'{k}-{entities[k]}' for k in _ENTITY_ORDER if entities.get(k) is not None]
    return '_'.join([*parts, suffix])


def _header(data, affine):
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_xyzt_units('mm', 'sec')
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    hdr['descrip'] = f'qsmprep-simulate {__version__}'[:79].encode()
    hdr['cal_min'] = 0
    hdr['cal_max'] = 0
    return img


def _gzip(raw: bytes, level: int) -> bytes:
    """gzip stream with ``mtime = 0``; ISA-L (``isal``, several times faster) if installed."""
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - depends on the environment
        return gzip.compress(raw, compresslevel=level, mtime=0)
    return igzip.compress(raw, compresslevel=min(level, 3), mtime=0)


def write_nifti(path, data, affine, *, compresslevel: int = 1) -> Path:
    """Write ``data`` (its dtype as stored) to a NIfTI-1 file, byte-for-byte reproducibly.

    ``.nii.gz`` is gzip-compressed with ``mtime = 0`` and no embedded file name, so equal
    inputs give equal files (with ISA-L's ``isal`` when it is installed, else zlib; the
    compressed bytes depend on which, the decompressed content does not).

    >>> import tempfile, hashlib
    >>> d = tempfile.mkdtemp()
    >>> x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    >>> a = write_nifti(f'{d}/a.nii.gz', x, np.eye(4)).read_bytes()
    >>> a == write_nifti(f'{d}/b.nii.gz', x, np.eye(4)).read_bytes()
    True
    """
    path = Path(path)
    img = _header(np.asarray(data), np.asarray(affine, dtype=float))
    raw = img.to_bytes()
    if path.name.endswith('.gz'):
        raw = _gzip(raw, compresslevel)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.part')
    tmp.write_bytes(raw)
    os.replace(tmp, path)
    return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float):
        return float(repr(round(obj, 10)))  # stable text for the same value
    return obj


def write_json(path, obj) -> Path:
    """Write JSON with sorted keys, two-space indent and a final newline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True) + '\n')
    return path


def write_tsv(path, columns, rows) -> Path:
    """Write a tab-separated table (``n/a`` for None)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ['\t'.join(columns)]
    for r in rows:
        lines.append('\t'.join('n/a' if v is None else str(_jsonable(v)) for v in r))
    path.write_text('\n'.join(lines) + '\n')
    return path


def _generated_by():
    return [{'Name': DERIVATIVES_NAME, 'Version': __version__, 'CodeURL': CODE_URL,
             'Description': 'qsmprep multi-orientation, multi-echo GRE simulator'}]


def write_raw_dataset_files(root, *, subjects, config: dict) -> list[Path]:
    """``dataset_description.json``, ``README``, ``participants.tsv/json`` of the raw dataset.

    Parameters
    ----------
    root : path
    subjects : list of dict
        ``{'label': '01', 'seed': ..., 'sessions': [...]}`` per participant.
    config : dict
        Resolved simulation settings (recorded in the README).
    """
    root = Path(root)
    out = [write_json(root / 'dataset_description.json', {
        'Name': f'qsmprep-simulate {config["preset"]} phantom dataset',
        'BIDSVersion': BIDS_VERSION,
        'DatasetType': 'raw',
        'License': 'CC0',
        'Authors': ['qsmprep-simulate'],
        'GeneratedBy': _generated_by(),
        'HowToAcknowledge': 'Anatomy from the MNI ICBM152 2009c nonlinear symmetric template '
                            '(Fonov et al., NeuroImage 2011;54:313; copyright McConnell Brain '
                            'Imaging Centre); cite it when using these data.',
    })]
    te_ms = ', '.join(f'{1e3 * t:g}' for t in config['echo_times'])
    readme = f"""# qsmprep-simulate: {config['preset']} phantom dataset

Simulated multi-orientation, multi-echo gradient-echo (MEGRE) data of a numerical head
phantom with an anisotropic susceptibility tensor, written by qsmprep-simulate
{__version__} (seed {config['seed']}).

- {len(subjects)} participant(s), {config['orientations']} head orientation(s) per session
  (`acq-oriNN`; `ori01` is the reference orientation, the others are head tilts of
  {config['tilt_range'][0]:g}-{config['tilt_range'][1]:g} degrees), {len(config['echo_times'])}
  echoes (TE = {te_ms} ms), B0 = {config['field_strength']:g} T, voxel size
  {' x '.join(f'{v:g}' for v in config['voxel_size'])} mm, SNR {config['snr']}.
- Phase `Units`: `{config['phase_units']}`{' (int16, phase = value * pi / 4096)'
    if config['phase_units'] == 'arbitrary' else ''}.
- `B0_dir` (unit B0 vector in the voxel frame of each image) is
  {'written' if config['b0_dir_sidecar'] else 'not written'} to the sidecars.
- Ground truth (susceptibility tensor, chi33, mean susceptibility, apparent susceptibility,
  local and background fields, masks, labels, rotations): `derivatives/{DERIVATIVES_NAME}/`.

The anatomy is derived from the MNI ICBM152 2009c nonlinear symmetric template (Fonov et al.,
NeuroImage 2011;54:313-327), as shipped with nilearn; skull, scalp, sinuses, deep grey
nuclei, veins and white-matter anisotropy are synthetic.
"""
    if config.get('variation') == 'cohort':
        readme += _COHORT_README.format(fixed=', '.join(config.get('variation_fixed', []))
                                        or 'none', lesions=config['lesions'])
    (root / 'README').write_text(readme)
    out.append(root / 'README')
    out.append(write_tsv(root / 'participants.tsv', ['participant_id', 'phantom_seed'],
                         [[f'sub-{s["label"]}', s['seed']] for s in subjects]))
    out.append(write_json(root / 'participants.json', {
        'phantom_seed': {'Description': 'Seed sequence [seed, subject index] of the phantom '
                                        '(anatomy deformation and tissue values)'}}))
    return out


_BIDSIGNORE = """# qsmprep-simulate ground truth without a BIDS suffix
*_field.nii.gz
*_field.json
*_chitensor.nii.gz
*_chitensor.json
*_orientations.json
*_orientations.tsv
*_phantom.json
"""


_COHORT_README = """
Cohort (variation=cohort): each participant has its own drawn head size, pose and
deformation, deep-grey-matter iron, white-matter anisotropy and fibre field, veins,
lesions ({lesions}), and — except the settings given explicitly ({fixed}) — voxel size,
field strength and echo times, SNR: the values above are the defaults before the draws.
Each participant's draws: `derivatives/qsmprep-simulate/sub-XX/sub-XX_cohort.json`.
"""


def write_derivatives_dataset_files(root, *, config: dict) -> list[Path]:
    """``dataset_description.json``, ``README``, ``.bidsignore`` and the label table."""
    root = Path(root)
    out = [write_json(root / 'dataset_description.json', {
        'Name': 'qsmprep-simulate ground truth',
        'BIDSVersion': BIDS_VERSION,
        'DatasetType': 'derivative',
        'GeneratedBy': _generated_by(),
        'SourceDatasets': [{'URL': 'bids::'}],
        'DatasetLinks': {'raw': '../../'},
    })]
    cohort = config.get('variation') == 'cohort'
    (root / '.bidsignore').write_text(_BIDSIGNORE + ('*_cohort.json\n' if cohort else ''))
    out.append(root / '.bidsignore')
    (root / 'README').write_text(_DERIV_README + (
        '\n`sub-XX/sub-XX_cohort.json`: the per-subject cohort draws (acquisition settings, '
        'anatomy, lesions with positions); lesion labels 16-21 in the dseg table.\n'
        if cohort else ''))
    out.append(root / 'README')
    return out


_DERIV_README = """# qsmprep-simulate ground truth

Ground truth of the simulated raw dataset two levels up (`bids:raw:` in sidecars).
Susceptibilities are in ppm relative to CSF; fields in ppm (dimensionless field shift
times 1e6).  `space-ori01`: the reference frame = the voxel grid and axes of the first
acquisition (`acq-ori01`).  Files with `acq-oriNN` lie on that acquisition's grid.

- `*_space-ori01_chitensor.nii.gz`: tensor, 4-D (X,Y,Z,6): chi11, chi12, chi13, chi22,
  chi23, chi33 in the reference voxel frame, brain only.
- `*_space-ori01_desc-chi33_Chimap`: chi33 of the tensor in the reference frame.
- `*_space-ori01_desc-mms_Chimap`: mean magnetic susceptibility (trace/3).
- `*_space-ori01_desc-brain_mask`: brain mask (sources of the local field).
- `*_space-ori01_desc-dgm_dseg` (+ `.tsv`): deep grey nuclei and veins.
- `*_acq-oriNN_desc-apparent_Chimap`: apparent susceptibility b^T chi b of that
  acquisition, on its grid.
- `*_acq-oriNN_desc-brain_mask`: brain mask on that acquisition's grid.
- `*_acq-oriNN_desc-local_field`: field of the sources inside the brain mask (ppm).
- `*_acq-oriNN_desc-background_field`: field of everything outside the brain mask (ppm).
- `*_orientations.json` / `.tsv`: head rotations, grid prescriptions, B0 directions in each
  acquisition's voxel frame and in the reference frame, tilts.
- `*_phantom.json`: drawn tissue values and deformation of the subject.

total field = local + background; phase = 2 pi gamma_bar B0 TE total 1e-6 + phi0 (wrapped,
plus noise).  Fields, the tensor and the orientation tables have no BIDS suffix and are
listed in `.bidsignore`.
"""
