"""Typed errors of qsmprep's input side, each carrying its BIDS-Apps exit code.

Every problem found before a workflow runs is raised as one of these exceptions with a single
message that names the offending file (or argument) and says how to fix it.  The command line
(:func:`qsmprep.cli.run.main`) catches :class:`QsmprepError`, prints the message on stderr and
returns :attr:`QsmprepError.exit_code`.

Exit codes (BIDS-Apps 1.0 / draft 2.0 table; 64-75 follow BSD ``sysexits.h``):

==== ============================== =========================================================
Code Exception                      Meaning
==== ============================== =========================================================
0    —                              success (also ``--validate-only`` on valid input)
1    :class:`QsmprepError`          failure (any other error; workflow not available)
16   :class:`BIDSValidationError`   ``bids_dir`` failed BIDS validation (schema validator
                                    errors, no ``dataset_description.json``, MEGRE file
                                    without ``echo-``)
18   :class:`NoMatchingDataError`   ``--participant-label``/``--session-label`` selected no
                                    data
64   :class:`UsageError`            command-line usage error: bad option value, ``output_dir``
                                    equal to or inside ``bids_dir``, an option the data cannot
                                    support (``linear-fit`` with one echo), unknown
                                    ``--reference-orientation``
65   :class:`DataError`,            input data incorrect: image values or geometry (NaN/Inf,
     :class:`MetadataError`         complex values, all zeros, 4-D echo files, mismatched
                                    grids, singular affine, grid under 16 voxels or 16 mm
                                    along an axis, unreadable NIfTI) or sidecar metadata
                                    (missing/invalid ``EchoTime``, ``Units``, ``B0_dir``,
                                    ``MagneticFieldStrength`` outside 0.1-21.1 T, malformed
                                    JSON)
66   :class:`MissingInputError`     valid BIDS, but required files missing: ``bids_dir``, no
                                    MEGRE files, phase without magnitude for an echo or vice
                                    versa, ``--derivatives``/``--model`` path absent, a
                                    DataLad/git-annex link whose content is not fetched
73   :class:`CantCreateError`       output or work directory cannot be created or written
74   :class:`DiskFullError`         input/output error: no space left (or quota exceeded) in
                                    ``output_dir`` or the work directory
==== ============================== =========================================================

Codes 17 (unknown analysis level) and 19 (CLI arguments plus an invocation file) of the draft
BIDS-Apps 2.0 table cannot occur: ``argparse`` rejects an unknown analysis level as a usage
error (64) and qsmprep has no invocation files.

>>> err = MissingInputError('no phase file for echo 2', path='sub-01/anat/x.nii.gz',
...                         hint='add the part-phase file')
>>> err.exit_code
66
>>> print(err)
sub-01/anat/x.nii.gz: no phase file for echo 2. Fix: add the part-phase file
"""

from __future__ import annotations

import os

__all__ = [
    'EXIT_CODES',
    'BIDSValidationError',
    'CantCreateError',
    'DataError',
    'DiskFullError',
    'MetadataError',
    'MissingInputError',
    'NoMatchingDataError',
    'QsmprepError',
    'UsageError',
]


class QsmprepError(Exception):
    """Base class: a problem reported to the user with one message and an exit code.

    Parameters
    ----------
    message : str
        What is wrong (one sentence, no trailing period needed).
    path : str or os.PathLike, optional
        The file or directory concerned; printed first.
    hint : str, optional
        What to do about it; printed after ``Fix:``.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 hint: str | None = None):
        self.message = message.rstrip('.')
        self.path = os.fspath(path) if path is not None else None
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f'{self.path}: {self.message}.' if self.path else f'{self.message}.'
        if self.hint:
            text += f' Fix: {self.hint}'
        return text


class UsageError(QsmprepError):
    """Command-line usage error (exit 64, ``EX_USAGE``)."""

    exit_code = 64


class BIDSValidationError(QsmprepError):
    """``bids_dir`` is not a valid BIDS dataset (exit 16)."""

    exit_code = 16


class NoMatchingDataError(QsmprepError):
    """The entity filters (participant/session labels) selected nothing (exit 18)."""

    exit_code = 18


class DataError(QsmprepError):
    """Input data incorrect: image values or geometry (exit 65, ``EX_DATAERR``)."""

    exit_code = 65


class MetadataError(DataError):
    """Input data incorrect: sidecar metadata missing, malformed or inconsistent (exit 65)."""


class MissingInputError(QsmprepError):
    """Valid BIDS, but required input files are missing (exit 66, ``EX_NOINPUT``)."""

    exit_code = 66


class CantCreateError(QsmprepError):
    """An output or work directory cannot be created or written (exit 73, ``EX_CANTCREAT``)."""

    exit_code = 73


class DiskFullError(QsmprepError):
    """No space left (or quota exceeded) while writing outputs (exit 74, ``EX_IOERR``)."""

    exit_code = 74


#: Exit code → (exception class, meaning); the table documented above, for docs and tests.
EXIT_CODES: dict[int, tuple[type[QsmprepError] | None, str]] = {
    0: (None, 'success'),
    1: (QsmprepError, 'failure'),
    16: (BIDSValidationError, 'input failed BIDS validation'),
    18: (NoMatchingDataError, 'entity filters selected no data'),
    64: (UsageError, 'command-line usage error'),
    65: (DataError, 'input data incorrect (values, geometry or sidecar metadata)'),
    66: (MissingInputError, 'valid BIDS, but required files missing'),
    73: (CantCreateError, 'cannot create output'),
    74: (DiskFullError, 'input/output error: no space left on the output or work disk'),
}
