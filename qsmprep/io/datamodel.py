"""Typed data model of the MEGRE input that :mod:`qsmprep.io.bids` found and validated.

Everything here is immutable and already validated: echo times in s (strictly increasing with
the echo number), field strength in T, the B0 direction as a unit vector in the voxel-axis frame
of the orientation's own grid, grids identical across the echoes and parts of an orientation.

The model is a three-level tree::

    SubjectData (one subject and session)
      └─ Orientation (one head orientation = one distinct acq/ce/rec/run group of MEGRE files)
           └─ EchoFiles (one echo: magnitude + phase file, TE, phase units)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qsmprep.numerics.geometry import superior_voxel_axis  # re-exported (public name)

__all__ = [
    'ENTITY_ORDER',
    'EchoFiles',
    'Orientation',
    'SubjectData',
    'format_summary',
    'reference_scores',
    'select_reference',
    'superior_voxel_axis',
]

#: BIDS entities that distinguish orientations within a session, in filename order.
ENTITY_ORDER = ('acq', 'ce', 'rec', 'run')


@dataclasses.dataclass(frozen=True)
class EchoFiles:
    """One echo of an orientation: its magnitude and phase files.

    Attributes
    ----------
    number : int
        The ``echo-<index>`` entity (1-based, as in the file name).
    echo_time : float
        ``EchoTime`` from the sidecar, in s.
    magnitude, phase : pathlib.Path
        The ``part-mag`` (or part-less) and ``part-phase`` NIfTI files.
    phase_units : {'rad', 'arbitrary'}
        Units of the phase file's values (sidecar ``Units``; see :mod:`qsmprep.io.bids` for
        what happens when it is missing).
    """

    number: int
    echo_time: float
    magnitude: Path
    phase: Path
    phase_units: str = 'rad'


@dataclasses.dataclass(frozen=True)
class Orientation:
    """One head orientation: the echoes of one distinct ``acq``/``ce``/``rec``/``run`` group.

    Attributes
    ----------
    subject, session : str, str or None
        Labels without the ``sub-``/``ses-`` prefixes.
    acq, run, ce, rec : str or None
        Entity values distinguishing this orientation (``run`` keeps its zero padding).
    label : str
        Unique label within the session built from those entities in BIDS order, e.g.
        ``'acq-ori01'`` or ``'acq-x_run-2'``; ``'default'`` when no entity distinguishes it.
    echoes : tuple of EchoFiles
        Sorted by echo number (numerically: echo-10 after echo-9).
    field_strength : float
        ``MagneticFieldStrength`` in T (identical across echoes).
    b0_direction : tuple of 3 floats
        Unit vector of B0 in the voxel-axis frame of this orientation's grid.
    b0_source : {'sidecar', 'affine'}
        Where ``b0_direction`` came from: the sidecar ``B0_dir`` (normalised) or the affine
        (``b̂ = R⁻¹ ẑ``, :func:`qsmprep.numerics.geometry.b0_direction_from_affine`).
    shape : tuple of 3 int
    voxel_size : tuple of 3 float
        In mm, from the affine (:func:`qsmprep.numerics.geometry.voxel_sizes`), as the
        interfaces compute them.
    affine : (4, 4) ndarray
        Voxel → world (mm) affine shared by all files of the orientation (read-only).
    phase_range : tuple of 2 float or None
        Minimum and maximum raw phase value over all echoes (used to rescale ``arbitrary``
        units to radians, see :func:`qsmprep.io.bids.load_orientation`).
    user_mask : pathlib.Path or None
        A brain mask supplied in a derivatives folder (``--derivatives``), validated to be on
        this orientation's grid.
    """

    subject: str
    session: str | None
    acq: str | None
    run: str | None
    label: str
    echoes: tuple[EchoFiles, ...]
    field_strength: float
    b0_direction: tuple[float, float, float]
    b0_source: str
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    affine: np.ndarray = dataclasses.field(compare=False, repr=False)
    ce: str | None = None
    rec: str | None = None
    phase_range: tuple[float, float] | None = None
    user_mask: Path | None = None

    @property
    def echo_times(self) -> tuple[float, ...]:
        """Echo times in s, in echo order."""
        return tuple(e.echo_time for e in self.echoes)

    @property
    def n_echoes(self) -> int:
        return len(self.echoes)

    @property
    def phase_units(self) -> str:
        """Units of the phase files (identical for all echoes after validation)."""
        return self.echoes[0].phase_units

    @property
    def entities(self) -> dict[str, str]:
        """BIDS entities identifying this orientation's files (``sub``, ``ses``, ``acq``, …)."""
        ent = {'sub': self.subject, 'ses': self.session}
        ent.update({k: getattr(self, k) for k in ENTITY_ORDER})
        return {k: v for k, v in ent.items() if v is not None}

    @property
    def prefix(self) -> str:
        """BIDS filename prefix for derivatives, e.g. ``'sub-01_ses-1_acq-ori01'``."""
        return '_'.join(f'{k}-{v}' for k, v in self.entities.items())

    @property
    def space_label(self) -> str:
        """Alphanumeric label usable as a BIDS ``space-`` value, e.g. ``'ori01'``, ``'xrun2'``.

        The acquisition value as is, other entities as key + value; ``'default'`` when none.
        """
        parts = [self.acq or '']
        parts += [f'{k}{getattr(self, k)}' for k in ENTITY_ORDER[1:] if getattr(self, k)]
        text = ''.join(parts)
        return ''.join(c for c in text if c.isalnum()) or 'default'


@dataclasses.dataclass(frozen=True)
class SubjectData:
    """All orientations of one subject (and session), with the chosen reference orientation.

    Attributes
    ----------
    subject, session : str, str or None
    orientations : tuple of Orientation
        Sorted by label.
    reference : int
        Index into ``orientations`` of the registration/STI reference orientation.
    reference_rule : str
        How the reference was chosen (``'most-superior-b0'`` or ``'user'``).
    """

    subject: str
    session: str | None
    orientations: tuple[Orientation, ...]
    reference: int = 0
    reference_rule: str = 'most-superior-b0'

    def __post_init__(self):
        if not self.orientations:
            raise ValueError('SubjectData needs at least one orientation')
        if not 0 <= self.reference < len(self.orientations):
            raise ValueError(
                f'reference index {self.reference} out of range for '
                f'{len(self.orientations)} orientations'
            )

    @property
    def reference_orientation(self) -> Orientation:
        return self.orientations[self.reference]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(o.label for o in self.orientations)

    @property
    def n_orientations(self) -> int:
        return len(self.orientations)

    @property
    def prefix(self) -> str:
        """``'sub-01'`` or ``'sub-01_ses-1'``."""
        return f'sub-{self.subject}' + (f'_ses-{self.session}' if self.session else '')

    @property
    def b0_directions(self) -> np.ndarray:
        """``(n, 3)`` B0 directions, each in its *own* orientation's voxel frame.

        They are only comparable after registration to a common reference frame.
        """
        return np.array([o.b0_direction for o in self.orientations])


def reference_scores(orientations: Sequence[Orientation]) -> np.ndarray:
    """Alignment ``|b̂ · ŝ|`` of each orientation's B0 with its head-superior voxel axis.

    Rule (documented in :func:`select_reference`): ``ŝ`` is the unit voxel axis of
    :func:`superior_voxel_axis`, ``b̂`` the orientation's B0 direction in its voxel frame, so the
    score is ``|b̂[s]|`` (1 = B0 along the head's superior axis).
    """
    return np.array(
        [abs(o.b0_direction[superior_voxel_axis(o.affine)]) for o in orientations]
    )


def select_reference(orientations: Sequence[Orientation], override: str | None = None) -> int:
    """Choose the reference orientation; return its index.

    Default rule (``override=None``): the orientation whose B0 is closest to the head's
    superior axis, i.e. the largest :func:`reference_scores` ``|b̂ · ŝ|``.  The scanner does
    not know how the head lies in the bore, so the head's superior axis is approximated by the
    voxel axis closest to world superior: multi-orientation protocols plan the slices on the
    head, so the voxel axes follow the head while B0 stays world ``+z``.  For an untilted axial
    acquisition ``ŝ`` is the slice axis and the score is ``|b̂_z|``.  Ties (within 1e-6, e.g.
    scanner-aligned slices with no ``B0_dir``) go to the first orientation in label order.

    ``override`` selects an orientation by its :attr:`Orientation.label` (``'acq-ori02'``) or,
    when unambiguous, by a bare entity value (``'ori02'``); raises :class:`KeyError` listing
    the labels when nothing matches.
    """
    if not orientations:
        raise ValueError('no orientations to choose a reference from')
    if override is not None:
        want = override.strip()
        hits = [i for i, o in enumerate(orientations) if o.label == want]
        if not hits:
            hits = [
                i for i, o in enumerate(orientations)
                if want in {o.space_label, *(getattr(o, k) for k in ENTITY_ORDER)}
            ]
        if len(hits) != 1:
            labels = ', '.join(o.label for o in orientations)
            what = 'matches no' if not hits else 'matches several'
            raise KeyError(f'reference orientation {override!r} {what} orientation; '
                           f'available: {labels}')
        return hits[0]
    scores = reference_scores(orientations)
    return int(np.flatnonzero(scores >= scores.max() - 1e-6)[0])


def _fmt_vec(v, fmt='{:.3g}') -> str:
    return '(' + ', '.join(fmt.format(x) for x in v) + ')'


def format_summary(subjects: Sequence[SubjectData]) -> str:
    """Plain-text table of what was found, one row per orientation.

    The reference orientation of each subject is marked with ``*``.

    >>> from pathlib import Path
    >>> e = (EchoFiles(1, 0.004, Path('m1'), Path('p1')),
    ...      EchoFiles(2, 0.008, Path('m2'), Path('p2')))
    >>> o = Orientation('01', None, 'ori01', None, 'acq-ori01', e, 3.0, (0.0, 0.0, 1.0),
    ...                 'sidecar', (8, 8, 6), (1.0, 1.0, 2.0), np.eye(4))
    >>> print(format_summary([SubjectData('01', None, (o,))]))
    sub  ses  orientation  echoes  TE [ms]  B0 [T]  grid   voxel [mm]  B0 dir     B0 from  mask
    ---  ---  -----------  ------  -------  ------  -----  ----------  ---------  -------  ----
    01   -    acq-ori01 *  2       4, 8     3       8x8x6  1x1x2       (0, 0, 1)  sidecar  -
    """
    header = ('sub', 'ses', 'orientation', 'echoes', 'TE [ms]', 'B0 [T]', 'grid',
              'voxel [mm]', 'B0 dir', 'B0 from', 'mask')
    rows = []
    for subj in subjects:
        for i, o in enumerate(subj.orientations):
            rows.append((
                subj.subject,
                subj.session or '-',
                o.label + (' *' if i == subj.reference else ''),
                str(o.n_echoes),
                ', '.join(f'{1e3 * t:.4g}' for t in o.echo_times),
                f'{o.field_strength:.4g}',
                'x'.join(str(n) for n in o.shape),
                'x'.join(f'{v:.3g}' for v in o.voxel_size),
                _fmt_vec(np.round(o.b0_direction, 3) + 0.0),
                o.b0_source,
                o.user_mask.name if o.user_mask else '-',
            ))
    widths = [max(len(h), *(len(r[j]) for r in rows)) if rows else len(h)
              for j, h in enumerate(header)]
    lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in (header, tuple('-' * w for w in widths), *rows)]
    return '\n'.join(lines)
