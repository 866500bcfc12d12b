"""Collect and validate multi-orientation, multi-echo GRE (``MEGRE``) input from BIDS.

:func:`collect_subjects` is what the command line runs before any workflow is built: it finds
the ``MEGRE`` files with pybids, groups them into orientations, pairs magnitude and phase per
echo, reads and checks every sidecar and every image, and returns the typed data model of
:mod:`qsmprep.io.datamodel`.  Every problem raises one :class:`~qsmprep.io.errors.QsmprepError`
whose message names the file and the fix, with a BIDS-Apps exit code.

The rules, in order of checking:

Files
    ``sub-<s>/[ses-<x>/]anat/sub-<s>[_ses-<x>][_acq-][_ce-][_rec-][_run-]_echo-<i>
    [_part-<mag|phase>]_MEGRE.nii[.gz]``; a file without ``part-`` is a magnitude image.
    ``part-real``/``part-imag`` files are ignored (convert them to magnitude/phase).
Orientations
    Each distinct (``acq``, ``ce``, ``rec``, ``run``) within a subject and session is one head
    orientation, labelled by those entities (``acq-ori01``, ``acq-x_run-2``; ``default`` when
    none is present).
Echoes
    Sorted by the *numeric* ``echo`` index (``echo-10`` after ``echo-9``).  Every echo needs a
    magnitude and a phase file.  A single echo is accepted (with a warning): the thesis echo
    combination (average of per-echo fields) works with one echo; ``--echo-combination
    linear-fit`` needs two and is refused by the command line.
Sidecars (with BIDS inheritance, via pybids)
    ``EchoTime`` (s) on every file, positive, < 1 s (a larger value is taken as milliseconds
    and refused), equal for magnitude and phase, strictly increasing with the echo index.
    ``MagneticFieldStrength`` (T) within :data:`FIELD_STRENGTH_RANGE` (0.1-21.1 T: ``3000``
    is a field in mT and refused) and equal across the files of an orientation.
    ``Units`` of the phase: ``"rad"`` or ``"arbitrary"``, the same for all echoes.  BIDS
    requires it; when it is **missing**, qsmprep inspects the values: phase lying within
    [-2π, 2π] is taken as radians with a warning, anything else is an error asking for
    ``"Units"``.  Declared ``"rad"`` with values outside that range is an error
    too (hint: ``"arbitrary"``).  ``B0_dir`` (optional, non-standard, written by qsm-forward):
    three numbers, a unit vector within 1e-2 (then normalised), in the voxel-axis frame; the
    same for all echoes (magnitude sidecars, when they have it, must agree).  Without it, the
    B0 direction is computed from the affine
    (:func:`qsmprep.numerics.geometry.b0_direction_from_affine`).
Images
    3-D (trailing singleton axes allowed), real-valued (a complex NIfTI is refused rather than
    losing its imaginary part), with a finite, non-singular affine; at least
    :data:`~qsmprep.io.nifti.MIN_VOXELS` voxels and :data:`~qsmprep.io.nifti.MIN_EXTENT_MM` mm
    along every axis; magnitude and phase of all echoes on one grid (same shape, affines
    within :data:`~qsmprep.io.nifti.AFFINE_ATOL` mm); all values finite, no image all zeros.
    The values are checked by reading **every image once** during collection (slab by slab,
    see :func:`~qsmprep.io.nifti.scan_volume`), so errors appear before any node runs; for
    the 1 mm 12-orientation × 6-echo protocol that reads about 4 GB.
Links
    Files may be symbolic links (DataLad/git-annex clones, OpenNeuro downloads): they keep
    their dataset paths (links are not resolved); a link whose target is missing (content not
    fetched) is a :class:`~qsmprep.io.errors.MissingInputError` asking for ``datalad get``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from qsmprep.io.datamodel import (
    ENTITY_ORDER,
    EchoFiles,
    Orientation,
    SubjectData,
    select_reference,
)
from qsmprep.io.errors import (
    BIDSValidationError,
    DataError,
    MetadataError,
    MissingInputError,
    NoMatchingDataError,
    UsageError,
)
from qsmprep.io.nifti import (
    check_3d,
    check_affine,
    check_min_size,
    check_missing_content,
    check_real,
    describe_grid,
    load_image,
    read_volume,
    rescale_arbitrary_phase,
    same_grid,
    scan_volume,
    wrap_phase,
)
from qsmprep.numerics.geometry import b0_direction_from_affine, voxel_sizes

__all__ = [
    'B0_NORM_TOL',
    'BIDS_FILTER_KEYS',
    'FIELD_STRENGTH_RANGE',
    'PHASE_UNITS',
    'check_bids_filters',
    'check_json_files',
    'collect_subjects',
    'find_user_mask',
    'load_mask',
    'load_orientation',
    'normalize_labels',
    'read_bids_filters',
    'read_json',
]

LOGGER = logging.getLogger('qsmprep.io')

#: Phase units qsmprep accepts (the two BIDS allows for ``part-phase``).
PHASE_UNITS = ('rad', 'arbitrary')
#: Allowed deviation of ``|B0_dir|`` from 1 before it is refused.
B0_NORM_TOL = 1e-2
#: EchoTime values above this many seconds are taken as milliseconds and refused.
MAX_ECHO_TIME = 1.0
#: Plausible ``MagneticFieldStrength`` (T): from low-field systems to the strongest human MRI
#: (21.1 T); outside it the value is in the wrong unit (3000 for 3 T in mT).
FIELD_STRENGTH_RANGE = (0.1, 21.1)
#: Labels listed in an error message before "… and N more".
_MAX_LISTED = 10
#: Slack (rad) on the plausible range of radian phase.
_RAD_TOL = 1e-3
#: pybids' names of the orientation entities.
_PYBIDS = {'acq': 'acquisition', 'ce': 'ceagent', 'rec': 'reconstruction', 'run': 'run'}
#: Top-level folders of a raw dataset that hold no raw data (skipped when checking JSON).
_NOT_RAW = {'derivatives', 'sourcedata', 'code', 'models', 'stimuli'}
_LABEL = re.compile(r'^[A-Za-z0-9]+$')
_EXPECTED = ('sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_acq-<label>]'
             '_echo-<index>_part-<mag|phase>_MEGRE.nii[.gz] with JSON sidecars')


# --------------------------------------------------------------------------------------------
# Small helpers


def normalize_labels(labels: Iterable[str] | None, prefix: str = 'sub') -> list[str] | None:
    """Strip ``sub-``/``ses-`` prefixes and check labels are alphanumeric (BIDS labels).

    >>> normalize_labels(['sub-01', '02', '01'])
    ['01', '02']
    >>> normalize_labels(['ses-pre'], 'ses')
    ['pre']
    """
    if labels is None:
        return None
    out: list[str] = []
    for raw in labels:
        label = str(raw).strip()
        if label.startswith(f'{prefix}-'):
            label = label[len(prefix) + 1:]
        if not _LABEL.match(label):
            raise UsageError(
                f'invalid {prefix} label {raw!r}',
                hint=f'BIDS labels contain only letters and digits (e.g. {prefix}-01 or 01)',
            )
        if label not in out:
            out.append(label)
    return out


def _listing(items, limit: int = _MAX_LISTED) -> str:
    """Comma-separated items, the first ``limit`` only, then "… and N more".

    >>> _listing(['01', '02', '03'], limit=2)
    '01, 02, … and 1 more'
    """
    items = [str(x) for x in items]
    if len(items) <= limit:
        return ', '.join(items)
    return ', '.join(items[:limit]) + f', … and {len(items) - limit} more'


def _sidecar_of(path: Path) -> Path:
    name = path.name
    stem = name[:-7] if name.endswith('.nii.gz') else path.stem
    return path.with_name(stem + '.json')


def read_json(path) -> dict:
    """Read a JSON object; raise :class:`MetadataError` naming the file, line and column."""
    path = Path(path)
    check_missing_content(path)
    try:
        text = path.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as exc:
        raise MetadataError(f'cannot read JSON file ({exc})', path=path,
                            hint='make the file readable UTF-8 text') from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(
            f'malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}', path=path,
            hint='fix the JSON syntax (check commas, quotes and brackets; '
                 '`python -m json.tool FILE` shows the first problem)',
        ) from None
    if not isinstance(data, dict):
        raise MetadataError(f'JSON sidecar holds a {type(data).__name__}, not an object',
                            path=path, hint='a sidecar must be a JSON object: {"Key": value}')
    return data


def check_json_files(bids_dir) -> int:
    """Parse every JSON file of the raw dataset (skipping derivatives, sourcedata, code and
    hidden folders); raise :class:`MetadataError` at the first malformed one.  Returns the count.

    pybids would fail on such a file too, but without saying where the syntax error is.
    """
    root = Path(bids_dir)
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        top = Path(dirpath) == root
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith('.') and not (top and d in _NOT_RAW)
        )
        for name in sorted(filenames):
            if name.endswith('.json') and not name.startswith('.'):
                read_json(Path(dirpath) / name)
                n += 1
    return n


# --------------------------------------------------------------------------------------------
# Collection


def collect_subjects(
    bids_dir,
    participant_labels: Sequence[str] | None = None,
    *,
    session_labels: Sequence[str] | None = None,
    derivatives=None,
    reference: str | None = None,
    bids_filters: dict | None = None,
) -> list[SubjectData]:
    """Find, group and validate the MEGRE input of the selected participants.

    Parameters
    ----------
    bids_dir : path
        Raw BIDS dataset (pybids layout with ``validate=False``; the schema validator is run
        separately by the command line).
    participant_labels : sequence of str, optional
        ``'01'`` or ``'sub-01'``; default: every subject with MEGRE files.
    session_labels : sequence of str, optional
        ``'pre'`` or ``'ses-pre'``; default: every session.
    derivatives : path, optional
        Folder searched for user brain masks (:func:`find_user_mask`).
    reference : str, optional
        Label of the reference orientation (default rule:
        :func:`~qsmprep.io.datamodel.select_reference`).
    bids_filters : dict, optional
        ``{"megre": {entity: value or [values]}}`` (pybids entity names, as in fMRIPrep's
        ``--bids-filter-file``; :func:`check_bids_filters`): only the MEGRE files matching
        every entity are collected.

    Returns
    -------
    list of SubjectData
        One per (subject, session), sorted.

    Raises
    ------
    MissingInputError (66)
        ``bids_dir`` or ``derivatives`` missing, no MEGRE files, magnitude/phase missing for an
        echo.
    BIDSValidationError (16)
        Not a BIDS dataset (no ``dataset_description.json``), MEGRE file without ``echo-``.
    NoMatchingDataError (18)
        A participant or session label is not in the dataset; ``bids_filters`` match no
        MEGRE file.
    MetadataError / DataError (65)
        Sidecar or image problems (see the module docstring).
    UsageError (64)
        ``reference`` names no orientation; ``bids_filters`` is not a valid filter.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise MissingInputError('BIDS directory does not exist', path=bids_dir,
                                hint='pass the path of the raw BIDS dataset as bids_dir')
    if not (bids_dir / 'dataset_description.json').is_file():
        raise BIDSValidationError(
            'not a BIDS dataset: dataset_description.json is missing', path=bids_dir,
            hint='add dataset_description.json with at least "Name" and "BIDSVersion" '
                 '(or point bids_dir at the dataset root)',
        )
    check_json_files(bids_dir)
    layout = _layout(bids_dir)
    wanted = normalize_labels(participant_labels, 'sub')
    sessions_wanted = normalize_labels(session_labels, 'ses')
    megre_filter = check_bids_filters(bids_filters or {}).get('megre', {})

    available = sorted(layout.get_subjects())
    if wanted:
        missing = [s for s in wanted if s not in available]
        if missing:
            raise NoMatchingDataError(
                f'participant label(s) {_listing(missing)} not found in {bids_dir}; '
                f'available: {_listing(available) or "none"}',
                hint='use one of the available labels (with or without the sub- prefix)',
            )
    subjects = sorted(wanted) if wanted else available

    found: list[SubjectData] = []
    without: list[str] = []
    matched_session = sessions_wanted is None
    for sub in subjects:
        sessions = sorted(layout.get_sessions(subject=sub, suffix='MEGRE')) or [None]
        if sessions_wanted is not None:
            sessions = [s for s in sessions if s in sessions_wanted]
            matched_session = matched_session or bool(sessions)
        any_megre = False
        for ses in sessions:
            files = _megre_files(layout, sub, ses, megre_filter)
            if not files:
                continue
            any_megre = True
            orientations = _group_orientations(files, layout, sub, ses)
            if derivatives is not None:
                orientations = [
                    dataclasses.replace(o, user_mask=find_user_mask(derivatives, o))
                    for o in orientations
                ]
            found.append(_subject_data(sub, ses, orientations, reference))
        if not any_megre and (sessions_wanted is None or sessions):
            without.append(sub)

    if sessions_wanted is not None and not matched_session:
        all_ses = sorted(layout.get_sessions(suffix='MEGRE'))
        raise NoMatchingDataError(
            f'session label(s) {_listing(sessions_wanted)} not found for the selected '
            f'participants; sessions with MEGRE data: {_listing(all_ses) or "none"}',
            hint='use one of the available session labels or drop --session-label',
        )
    if not found and megre_filter and any(_megre_files(layout, s, ses, {})
                                          for s in subjects
                                          for ses in (layout.get_sessions(subject=s) or [None])):
        raise NoMatchingDataError(
            f'the BIDS filter {json.dumps({"megre": megre_filter})} matches no MEGRE file '
            f'of {_listing([f"sub-{s}" for s in subjects])}',
            hint='check the entity names (pybids names: acquisition, session, run, ...) and '
                 'the labels (without their acq-/ses- prefixes) of --bids-filter-file',
        )
    if not found:
        who = _listing([f'sub-{s}' for s in subjects]) or 'any subject'
        raise MissingInputError(
            f'no MEGRE files found for {who} in {bids_dir}', path=bids_dir,
            hint=f'qsmprep needs multi-echo GRE magnitude and phase images named {_EXPECTED}',
        )
    for sub in without:
        if megre_filter:
            LOGGER.warning('sub-%s has no MEGRE files matching the BIDS filter; skipping it',
                           sub)
            continue
        if wanted:
            raise MissingInputError(
                f'no MEGRE files found for sub-{sub}', path=bids_dir / f'sub-{sub}',
                hint=f'add its multi-echo GRE data ({_EXPECTED}) or leave it out of '
                     '--participant-label',
            )
        LOGGER.warning('sub-%s has no MEGRE files; skipping it', sub)
    if derivatives is not None and not any(
        o.user_mask for s in found for o in s.orientations
    ):
        LOGGER.warning('no user brain mask found under %s; masks will be computed', derivatives)
    return found


def _layout(bids_dir: Path):
    from bids import BIDSLayout

    try:
        return BIDSLayout(bids_dir, validate=False)
    except Exception as exc:  # pybids raises its own BIDSValidationError, ValueError, OSError
        raise BIDSValidationError(
            f'pybids cannot index the dataset ({type(exc).__name__}: {exc})', path=bids_dir,
            hint='check dataset_description.json and the folder structure '
                 '(run bids-validator-deno for details)',
        ) from None


def _megre_files(layout, sub: str, ses: str | None, megre_filter: dict):
    from bids.layout import Query

    query = dict(megre_filter)
    for entity, label in (('subject', sub), ('session', ses)):
        if entity in query:  # restricts the subject/session loop of collect_subjects
            allowed = query.pop(entity)
            allowed = allowed if isinstance(allowed, list) else [allowed]
            if label is None or label not in [str(a) for a in allowed]:
                return []
    return layout.get(
        **query, subject=sub, session=ses if ses is not None else Query.NONE,
        suffix='MEGRE', datatype='anat', extension=['.nii', '.nii.gz'],
    )


# --------------------------------------------------------------------------------------------
# BIDS filters (--bids-filter-file)

#: Top-level keys of a BIDS filter: the query each one restricts (MEGRE: the input images).
BIDS_FILTER_KEYS = ('megre',)
#: Entities qsmprep sets itself in its queries.
_FIXED_ENTITIES = ('suffix', 'datatype', 'extension')


def _pybids_entities() -> dict[str, str]:
    """pybids' entity names of the ``bids`` configuration → their file-name keys."""
    from bids.layout.models import Config

    out = {}
    for name, entity in Config.load('bids').entities.items():
        m = re.search(r'\]\+(\w+)-\(', entity.pattern or '')
        out[name] = m.group(1) if m else name
    return out


def check_bids_filters(filters, *, source=None) -> dict:
    """Validate a BIDS filter: ``{"megre": {entity: value or [values], ...}}``.

    Entities are pybids names (``subject``, ``session``, ``acquisition``, ``run``, ``echo``,
    …), values labels without their prefix (``"ori01"``, not ``"acq-ori01"``) or indices,
    one or a list.  ``suffix``, ``datatype`` and ``extension`` are qsmprep's.  Returns a copy
    with lists; raises :class:`~qsmprep.io.errors.UsageError` (64) naming ``source`` (the
    file) otherwise.

    >>> check_bids_filters({'megre': {'acquisition': ['ori01', 'ori02'], 'run': 1}})
    {'megre': {'acquisition': ['ori01', 'ori02'], 'run': 1}}
    >>> check_bids_filters({'megre': {'acq': 'ori01'}})
    Traceback (most recent call last):
    ...
    qsmprep.io.errors.UsageError: BIDS filter: "megre": unknown entity 'acq' (did you mean \
'acquisition'?). Fix: ...
    """
    example = '{"megre": {"session": "01", "acquisition": ["ori01", "ori02"], "run": 1}}'
    hint = (f'write a JSON object like {example}: "megre" restricts the MEGRE files, with '
            'pybids entity names and labels without their prefixes')

    def fail(message):
        raise UsageError(f'BIDS filter: {message}', path=source, hint=hint)

    if not isinstance(filters, dict):
        fail(f'must be a JSON object with the key "megre", not {type(filters).__name__}')
    unknown = sorted(set(filters) - set(BIDS_FILTER_KEYS))
    if unknown:
        fail(f'unknown key(s) {", ".join(map(repr, unknown))}; qsmprep reads '
             + ', '.join(map(repr, BIDS_FILTER_KEYS)))
    out: dict[str, dict] = {}
    entities = None
    for key, query in filters.items():
        if not isinstance(query, dict):
            fail(f'"{key}" must be an object of entities and values, not '
                 f'{type(query).__name__}')
        entities = entities or _pybids_entities()
        checked = {}
        for entity, value in query.items():
            if entity in _FIXED_ENTITIES:
                fail(f'"{key}": qsmprep sets "{entity}" itself; filter on the other entities')
            if entity not in entities:
                guess = [n for n, tag in entities.items() if tag == entity]
                known = ', '.join(sorted(set(entities) - set(_FIXED_ENTITIES)))
                fail(f'"{key}": unknown entity {entity!r}'
                     + (f' (did you mean {guess[0]!r}?)' if guess else
                        f'; pybids entities: {known}'))
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str | int) and not isinstance(v, bool)
                                     for v in values):
                fail(f'"{key}": {entity} must be a label, an index or a non-empty list of '
                     f'them, not {json.dumps(value)}' + (
                         ' (null and wildcards are not supported: leave the entity out to '
                         'accept any value)' if None in values else ''))
            tag = entities[entity]
            prefixed = [v for v in values if isinstance(v, str) and v.startswith(f'{tag}-')]
            if prefixed:
                fail(f'"{key}": {entity} {prefixed[0]!r}: write the label without "{tag}-"')
            checked[entity] = list(value) if isinstance(value, list) else value
        out[key] = checked
    return out


def read_bids_filters(path) -> dict:
    """Read and validate a ``--bids-filter-file`` (JSON, :func:`check_bids_filters`).

    Raises :class:`~qsmprep.io.errors.MissingInputError` (66) when the file is absent,
    :class:`~qsmprep.io.errors.UsageError` (64) when it is not valid JSON or not a filter.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError('BIDS filter file (--bids-filter-file) does not exist',
                                path=path, hint='pass a JSON file such as '
                                '{"megre": {"acquisition": ["ori01", "ori02"]}}')
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = (f' at line {exc.lineno} column {exc.colno}'
                 if isinstance(exc, json.JSONDecodeError) else '')
        raise UsageError(f'BIDS filter file is not valid JSON ({getattr(exc, "msg", exc)}'
                         f'{where})', path=path,
                         hint='fix the JSON syntax (double quotes, no trailing commas)') from None
    return check_bids_filters(data, source=path)


def _subject_data(sub, ses, orientations, reference) -> SubjectData:
    orientations = sorted(orientations, key=lambda o: _natural_key(o.label))
    try:
        ref = select_reference(orientations, reference)
    except KeyError as exc:
        where = f'sub-{sub}' + (f' ses-{ses}' if ses else '')
        raise UsageError(f'{where}: {exc.args[0]}',
                         hint='pass one of the available labels to --reference-orientation '
                              'or omit it') from None
    if len(orientations) > 1:
        LOGGER.info('sub-%s%s: reference orientation %s (%s)', sub,
                    f' ses-{ses}' if ses else '', orientations[ref].label,
                    'user' if reference else 'B0 closest to the head superior axis')
    return SubjectData(sub, ses, tuple(orientations), ref,
                       'user' if reference is not None else 'most-superior-b0')


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', text)]


@dataclasses.dataclass
class _File:
    path: Path
    echo: int
    part: str
    meta: dict


def _group_orientations(files, layout, sub, ses) -> list[Orientation]:
    groups: dict[tuple, list[_File]] = defaultdict(list)
    for f in files:
        ent = f.get_entities()
        path = Path(f.path)
        key = tuple(
            None if ent.get(_PYBIDS[k]) is None else str(ent.get(_PYBIDS[k]))
            for k in ENTITY_ORDER
        )
        if ent.get('echo') is None:
            raise BIDSValidationError(
                'MEGRE file without an echo-<index> entity', path=path,
                hint='BIDS requires echo-<index> in MEGRE file names '
                     '(e.g. ..._echo-1_part-phase_MEGRE.nii.gz)',
            )
        part = ent.get('part') or 'mag'
        groups[key].append(_File(path, int(ent['echo']), part, layout.get_metadata(f.path)))
    return [_build_orientation(sub, ses, key, members) for key, members in groups.items()]


def _label(key) -> str:
    label = '_'.join(f'{k}-{v}' for k, v in zip(ENTITY_ORDER, key) if v is not None)
    return label or 'default'


def _expected_name(path: Path, part: str) -> str:
    name = path.name
    if '_part-' in name:
        return re.sub(r'_part-[a-z]+_', f'_part-{part}_', name)
    return name.replace('_MEGRE', f'_part-{part}_MEGRE')


def _build_orientation(sub, ses, key, members: list[_File]) -> Orientation:
    label = _label(key)
    by_part: dict[str, dict[int, _File]] = {'mag': {}, 'phase': {}, 'real': {}, 'imag': {}}
    for f in sorted(members, key=lambda f: (f.echo, f.part, f.path.name)):
        if f.part not in by_part:
            raise DataError(f'unknown part-{f.part}', path=f.path,
                            hint='use part-mag and part-phase for MEGRE images')
        other = by_part[f.part].get(f.echo)
        if other is not None:
            raise DataError(
                f'two files for echo {f.echo} part-{f.part}: {other.path.name} and '
                f'{f.path.name}', path=f.path.parent,
                hint='keep exactly one file per echo and part (.nii or .nii.gz, not both)',
            )
        by_part[f.part][f.echo] = f
    mags, phases = by_part['mag'], by_part['phase']
    if by_part['real'] or by_part['imag']:
        LOGGER.warning('sub-%s %s: part-real/part-imag files are ignored', sub, label)
    for n, f in sorted(mags.items()):
        if n not in phases:
            hint = f'add {_expected_name(f.path, "phase")} (and its JSON sidecar)'
            if n in by_part['real']:
                hint = ('qsmprep reads magnitude/phase pairs: convert the real/imaginary '
                        f'images to {_expected_name(f.path, "phase")}')
            raise MissingInputError(
                f'echo {n} has a magnitude image but no phase image', path=f.path,
                hint=hint + ', or remove this echo from all parts',
            )
    for n, f in sorted(phases.items()):
        if n not in mags:
            raise MissingInputError(
                f'echo {n} has a phase image but no magnitude image', path=f.path,
                hint=f'add {_expected_name(f.path, "mag")} (and its JSON sidecar), '
                     'or remove this echo from all parts',
            )
    if not phases:  # only real/imag
        f = next(iter({**by_part['imag'], **by_part['real']}.values()))
        raise MissingInputError('no magnitude/phase MEGRE images', path=f.path,
                                hint='convert the real/imaginary images to part-mag/part-phase')
    numbers = sorted(phases)  # numeric sort: echo-10 after echo-9
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        LOGGER.warning('sub-%s %s: echo indices %s are not consecutive', sub, label, numbers)

    echoes = []
    field, field_file = None, None
    units = None
    b0, b0_file, b0_files = None, None, 0
    prev = None
    for n in numbers:
        mag, ph = mags[n], phases[n]
        te = _echo_time(ph)
        te_mag = _echo_time(mag)
        if abs(te - te_mag) > 1e-6:
            raise MetadataError(
                f'EchoTime {te_mag} s of the magnitude differs from {te} s of the phase '
                f'({ph.path.name})', path=_sidecar_of(mag.path),
                hint='magnitude and phase of one echo share one EchoTime; correct the sidecar',
            )
        if prev is not None and te <= prev[1]:
            raise MetadataError(
                f'EchoTime does not increase with the echo number: echo-{prev[0]} has '
                f'{prev[1]} s but echo-{n} has {te} s', path=_sidecar_of(ph.path),
                hint='number the echoes (echo-<index>) in order of increasing EchoTime and '
                     'check the EchoTime values',
            )
        prev = (n, te)
        for f in (ph, mag):
            B0 = _field_strength(f, required=f is ph)
            if B0 is None:
                continue
            if field is None:
                field, field_file = B0, f.path
            elif abs(B0 - field) > 1e-6:
                raise MetadataError(
                    f'MagneticFieldStrength {B0} T differs from {field} T in '
                    f'{_sidecar_of(field_file).name}', path=_sidecar_of(f.path),
                    hint='all echoes and parts of one acquisition share one field strength; '
                         'correct the sidecars',
                )
        u = _phase_units(ph)
        if n == numbers[0]:
            units, units_file = u, ph.path
        elif u != units:
            raise MetadataError(
                f'phase "Units" {_show(u)} differs from {_show(units)} in '
                f'{_sidecar_of(units_file).name}',
                path=_sidecar_of(ph.path),
                hint='give the same "Units" ("rad" or "arbitrary") to every phase echo',
            )
        b_ph = _b0_dir(ph)
        b_mag = _b0_dir(mag)
        if b_ph is not None and b_mag is not None and not np.allclose(b_ph, b_mag, atol=1e-6):
            raise MetadataError(
                f'B0_dir {b_mag.tolist()} differs from {b_ph.tolist()} of the phase '
                f'({ph.path.name})', path=_sidecar_of(mag.path),
                hint='give one B0_dir per acquisition (or remove it from the magnitude)',
            )
        b = b_ph if b_ph is not None else b_mag
        if b is not None:
            b0_files += 1
            if b0 is None:
                b0, b0_file = b, ph.path
            elif not np.allclose(b, b0, atol=1e-6):
                raise MetadataError(
                    f'B0_dir {b.tolist()} differs from {b0.tolist()} in '
                    f'{_sidecar_of(b0_file).name}',
                    path=_sidecar_of(ph.path),
                    hint='all echoes of one orientation share one B0 direction',
                )
        echoes.append(EchoFiles(n, te, mag.path, ph.path, units or 'rad'))
    if 0 < b0_files < len(numbers):
        raise MetadataError(
            f'B0_dir is given for {b0_files} of {len(numbers)} echoes of {label}',
            path=_sidecar_of(phases[numbers[0]].path),
            hint='give B0_dir for every echo or for none (then it comes from the affine)',
        )

    shape, affine, voxel_size, prange = _check_images(echoes)
    if units is None:
        units = _resolve_missing_units(echoes[0].phase, prange)
    elif units == 'rad' and not _plausible_radians(prange):
        raise DataError(
            f'phase Units is "rad" but the values span [{prange[0]:.6g}, {prange[1]:.6g}], '
            'far outside [-2π, 2π]', path=_sidecar_of(echoes[0].phase),
            hint='set "Units": "arbitrary" for scanner integer phase (it is rescaled to '
                 '[-π, π)) or convert the phase to radians',
        )
    elif units == 'arbitrary' and not prange[1] > prange[0]:
        raise DataError(
            f'phase in arbitrary units is constant ({prange[0]:.6g}): cannot rescale it to '
            'radians', path=echoes[0].phase, hint='check that the phase images are not empty',
        )
    echoes = [dataclasses.replace(e, phase_units=units) for e in echoes]
    if len(echoes) == 1:
        LOGGER.warning('sub-%s %s: only one echo (%s); the echo combination has nothing to '
                       'combine', sub, label, echoes[0].phase.name)

    if b0 is not None:
        direction, source = b0, 'sidecar'
    else:
        direction, source = b0_direction_from_affine(affine), 'affine'
    ent = dict(zip(ENTITY_ORDER, key))
    return Orientation(
        subject=sub, session=ses, acq=ent['acq'], run=ent['run'], label=label,
        echoes=tuple(echoes), field_strength=float(field),
        b0_direction=tuple(float(x) for x in direction), b0_source=source, shape=shape,
        voxel_size=voxel_size, affine=affine, ce=ent['ce'], rec=ent['rec'],
        phase_range=prange,
    )


def _show(units) -> str:
    return 'missing' if units is None else json.dumps(units)


def _echo_time(f: _File) -> float:
    sidecar = _sidecar_of(f.path)
    if 'EchoTime' not in f.meta:
        raise MetadataError(
            'no "EchoTime" in the JSON sidecar (required for MEGRE)', path=sidecar,
            hint='add "EchoTime": <seconds>, e.g. "EchoTime": 0.004 for 4 ms',
        )
    value = f.meta['EchoTime']
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise MetadataError(f'"EchoTime" must be a number in seconds; got {value!r}',
                            path=sidecar, hint='write one number, e.g. "EchoTime": 0.004')
    if value <= 0:
        raise MetadataError(f'"EchoTime" must be positive; got {value}', path=sidecar,
                            hint='write the echo time in seconds, e.g. "EchoTime": 0.004')
    if value > MAX_ECHO_TIME:
        raise MetadataError(
            f'"EchoTime" is {value}, which would be more than {MAX_ECHO_TIME:g} s: '
            'EchoTime must be in seconds (BIDS), not milliseconds', path=sidecar,
            hint=f'divide by 1000, e.g. "EchoTime": {value / 1000:g}',
        )
    return float(value)


def _field_strength(f: _File, *, required: bool) -> float | None:
    sidecar = _sidecar_of(f.path)
    value = f.meta.get('MagneticFieldStrength')
    if value is None:
        if not required:
            return None
        raise MetadataError(
            'no "MagneticFieldStrength" in the JSON sidecar', path=sidecar,
            hint='add the nominal field strength in tesla, e.g. "MagneticFieldStrength": 3',
        )
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not np.isfinite(value) or value <= 0):
        raise MetadataError(
            f'"MagneticFieldStrength" must be a positive number in tesla; got {value!r}',
            path=sidecar, hint='e.g. "MagneticFieldStrength": 3',
        )
    lo, hi = FIELD_STRENGTH_RANGE
    if not lo <= value <= hi:
        fix = (f'"MagneticFieldStrength": {value / 1000:g} if {value:g} is in mT'
               if value > hi else '"MagneticFieldStrength": 3 for a 3 T scanner')
        raise MetadataError(
            f'"MagneticFieldStrength" is {value:g}, outside the plausible {lo:g}-{hi:g} T: '
            'it must be the nominal field in tesla (BIDS)', path=sidecar,
            hint=f'tesla expected, e.g. 3 or 7: write {fix}',
        )
    return float(value)


def _phase_units(f: _File) -> str | None:
    if 'Units' not in f.meta:
        return None
    u = f.meta['Units']
    if u not in PHASE_UNITS:
        raise MetadataError(
            f'phase "Units" is {json.dumps(u)}; BIDS allows "rad" or "arbitrary"',
            path=_sidecar_of(f.path),
            hint='set "Units": "rad" (radians) or "Units": "arbitrary" (scanner units, '
                 'rescaled to [-π, π))',
        )
    return u


def _b0_dir(f: _File) -> np.ndarray | None:
    if 'B0_dir' not in f.meta:
        return None
    value = f.meta['B0_dir']
    sidecar = _sidecar_of(f.path)
    hint = ('write the B0 direction in voxel coordinates as a unit vector, e.g. '
            '"B0_dir": [0, 0, 1], or remove the key to compute it from the affine')
    try:
        b = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        b = np.array([np.nan])
    if b.shape != (3,) or not np.all(np.isfinite(b)):
        raise MetadataError(f'"B0_dir" must be 3 numbers; got {value!r}', path=sidecar,
                            hint=hint)
    norm = float(np.linalg.norm(b))
    if abs(norm - 1.0) > B0_NORM_TOL:
        raise MetadataError(
            f'"B0_dir" {b.tolist()} is not a unit vector (norm {norm:.4g})', path=sidecar,
            hint=hint,
        )
    return b / norm


def _scan_workers() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(1, min(8, os.cpu_count() or 1))


def _check_images(echoes: list[EchoFiles]):
    """Check 3-D, one grid, finite values; return grid and the phase value range.

    Headers first (cheap, in order), then the values of all files with a thread pool
    (decompression and NumPy release the GIL); errors are reported in file order.
    """
    ref_path = ref_shape = ref_affine = None
    voxel_size = None
    images = []
    for e in echoes:
        for path, is_phase in ((e.magnitude, False), (e.phase, True)):
            img = load_image(path)
            shape = check_3d(img, path)
            check_real(img, path, 'phase' if is_phase else 'mag')
            affine = check_affine(img, path)
            if ref_path is None:
                check_min_size(shape, affine, path)
                ref_path, ref_shape, ref_affine = path, shape, affine
                # from the affine, as every interface computes them (pixdim may disagree)
                voxel_size = tuple(float(z) for z in voxel_sizes(affine))
                if not all(np.isfinite(z) and z > 0 for z in voxel_size):
                    raise DataError(f'voxel sizes {voxel_size} are not positive', path=path,
                                    hint='fix the NIfTI header (pixdim)')
            elif not same_grid(shape, affine, ref_shape, ref_affine):
                raise DataError(
                    f'grid ({describe_grid(shape, affine)}) differs from that of '
                    f'{ref_path.name} ({describe_grid(ref_shape, ref_affine)})', path=path,
                    hint='all echoes and both parts (mag, phase) of an orientation must share '
                         'one grid (shape and affine); re-export the series (a missing slice '
                         'is a common cause)',
                )
            images.append((path, is_phase, img))
    with ThreadPoolExecutor(max_workers=min(_scan_workers(), len(images))) as pool:
        stats = list(pool.map(lambda item: _scan(*item[::2]), images))
    lo, hi = np.inf, -np.inf
    for (path, is_phase, _), st in zip(images, stats):
        if st.n_nonfinite:
            raise DataError(
                f'{st.n_nonfinite} non-finite values (NaN/Inf) in the image', path=path,
                hint='replace them (e.g. with 0 outside the head) or re-export the image',
            )
        if st.n_nonzero == 0:
            what = 'phase' if is_phase else 'magnitude'
            raise DataError(
                f'{what} image is all zeros', path=path,
                hint='re-export the series (an empty or failed conversion): every echo needs '
                     'a magnitude (brain mask, echo weights, registration) and a phase image',
            )
        if is_phase:
            lo, hi = min(lo, st.minimum), max(hi, st.maximum)
    ref_affine.setflags(write=False)
    return ref_shape, ref_affine, voxel_size, (float(lo), float(hi))


def _scan(path, img):
    try:
        return scan_volume(img)
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # truncated/corrupt data
        raise DataError(
            f'cannot read the image data ({type(exc).__name__}: {exc})', path=path,
            hint='check that the file is complete (re-run the DICOM to NIfTI conversion)',
        ) from None


def _plausible_radians(prange) -> bool:
    lo, hi = prange
    two_pi = 2 * np.pi + _RAD_TOL
    return lo >= -two_pi and hi <= two_pi


def _resolve_missing_units(phase_path: Path, prange) -> str:
    if _plausible_radians(prange):
        LOGGER.warning(
            '%s: phase "Units" missing (BIDS requires it); the values lie in [%.4g, %.4g], '
            'so they are taken as radians. Add "Units": "rad" to silence this warning.',
            _sidecar_of(phase_path), *prange,
        )
        return 'rad'
    raise MetadataError(
        f'phase "Units" missing (BIDS requires it) and the values span '
        f'[{prange[0]:.6g}, {prange[1]:.6g}], not radians', path=_sidecar_of(phase_path),
        hint='add "Units": "arbitrary" to the phase sidecars for scanner integer phase '
             '(rescaled to [-π, π)), or "Units": "rad" for radians',
    )


# --------------------------------------------------------------------------------------------
# User masks


def find_user_mask(derivatives, orientation: Orientation) -> Path | None:
    """Find and validate a user brain mask for ``orientation`` in a derivatives folder.

    Searched recursively under ``derivatives`` (so both ``DERIV/sub-01/anat/...`` and
    ``DERIV/<pipeline>/sub-01/...`` work) for
    ``sub-<s>[_ses-<x>][_acq-][_ce-][_rec-][_run-][_space-orig][_label-brain][_desc-brain]
    _mask.nii[.gz]``.  Every entity present in the name must equal the orientation's (a mask
    without ``acq-``/``run-`` applies to every orientation of the subject); ``space`` may only
    be ``orig``, ``label`` and ``desc`` only ``brain``.  The most specific name wins, then the
    alphabetically first.  The mask must be 3-D, finite, non-empty and on the orientation's
    grid (:class:`DataError` otherwise).  Returns ``None`` when nothing matches.
    """
    from bids.layout import parse_file_entities

    root = Path(derivatives)
    if not root.is_dir():
        raise MissingInputError('derivatives folder (--derivatives) does not exist', path=root,
                                hint='pass the folder holding the user brain masks')
    o = orientation
    want = {'subject': o.subject, 'session': o.session}
    want.update({_PYBIDS[k]: getattr(o, k) for k in ENTITY_ORDER})
    candidates = []
    for path in sorted(root.rglob(f'sub-{o.subject}_*mask.nii*')):
        if not path.name.endswith(('_mask.nii', '_mask.nii.gz')):
            continue
        ent = parse_file_entities(str(path))
        if ent.get('space', 'orig') != 'orig' or ent.get('label', 'brain') != 'brain':
            continue
        if ent.get('desc', 'brain') != 'brain':
            continue
        score, ok = 0, True
        for key, value in want.items():
            if ent.get(key) is None:
                continue
            if value is None or str(ent[key]) != str(value):
                ok = False
                break
            score += 1
        if ok:
            candidates.append((-score, path.name, path))
    if not candidates:
        LOGGER.info('no user mask for sub-%s %s under %s', o.subject, o.label, root)
        return None
    candidates.sort()
    best = candidates[0][2]
    if len(candidates) > 1 and candidates[1][0] == candidates[0][0]:
        LOGGER.warning('several user masks match sub-%s %s; using %s', o.subject, o.label,
                       best.name)
    img = load_image(best)
    shape = check_3d(img, best)
    if not same_grid(shape, img.affine, o.shape, o.affine):
        raise DataError(
            f'mask grid ({describe_grid(shape, img.affine)}) differs from that of '
            f'{o.label} ({describe_grid(o.shape, o.affine)})', path=best,
            hint='give each orientation its own mask in its native space (space-orig), named '
                 f'with its entities, e.g. {o.prefix}_desc-brain_mask.nii.gz',
        )
    stats = scan_volume(img)
    if stats.n_nonfinite or stats.n_nonzero == 0:
        problem = (f'{stats.n_nonfinite} non-finite values' if stats.n_nonfinite
                   else 'no non-zero voxel')
        raise DataError(f'mask has {problem}', path=best,
                        hint='a brain mask is 1 inside the brain and 0 elsewhere')
    LOGGER.info('user mask for sub-%s %s: %s', o.subject, o.label, best)
    return best


# --------------------------------------------------------------------------------------------
# Loading


def load_orientation(orientation: Orientation, *, dtype=np.float32):
    """Load an orientation's echoes as ``(magnitude, phase)`` arrays of shape ``(X, Y, Z, E)``.

    Phase is returned in radians in ``[-π, π)``: ``rad`` values outside it are wrapped
    (:func:`~qsmprep.io.nifti.wrap_phase`), ``arbitrary`` values are rescaled by
    :func:`~qsmprep.io.nifti.rescale_arbitrary_phase` using the range observed over **all**
    echoes (integer data: ``[min, max]`` holds ``max - min + 1`` levels covering 2π, so
    [-4096, 4095] maps to ``x·π/4096``).  Echoes are in echo order (``orientation.echo_times``).
    """
    shape = (*orientation.shape, orientation.n_echoes)
    mag = np.empty(shape, dtype=dtype)
    phase = np.empty(shape, dtype=dtype)
    for i, e in enumerate(orientation.echoes):
        mag[..., i] = read_volume(e.magnitude, dtype=dtype)
        phase[..., i] = read_volume(e.phase, dtype=dtype)
    if orientation.phase_units == 'arbitrary':
        # whole numbers are exact in float32 up to 2**24, far above scanner ranges
        integer = bool(np.all(phase == np.round(phase)))
        return mag, rescale_arbitrary_phase(phase, phase.min(), phase.max(), integer=integer)
    outside = (phase < -np.pi) | (phase >= np.pi)  # e.g. phase stored in [0, 2π)
    if outside.any():
        phase[outside] = wrap_phase(phase[outside])
    return mag, phase


def load_mask(orientation_or_path, *, shape=None) -> np.ndarray:
    """Load a brain mask (an orientation's ``user_mask`` or a path) as a boolean array."""
    path = getattr(orientation_or_path, 'user_mask', orientation_or_path)
    if path is None:
        raise MissingInputError('orientation has no user mask',
                                hint='pass --derivatives with the masks')
    data = read_volume(path, dtype=np.float32)
    if shape is None and isinstance(orientation_or_path, Orientation):
        shape = orientation_or_path.shape
    if shape is not None and data.shape != tuple(shape):
        raise DataError(f'mask shape {data.shape} differs from {tuple(shape)}', path=path,
                        hint='give the mask on the image grid')
    return data > 0.5
