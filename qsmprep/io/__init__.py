"""Input side of qsmprep: BIDS collection, validation, typed data model, NIfTI loading.

The only package (besides the interfaces' file handling) that touches NIfTI, JSON and BIDS.
"""

from qsmprep.io.bids import collect_subjects, find_user_mask, load_mask, load_orientation
from qsmprep.io.datamodel import (
    EchoFiles,
    Orientation,
    SubjectData,
    format_summary,
    select_reference,
)
from qsmprep.io.errors import (
    EXIT_CODES,
    BIDSValidationError,
    CantCreateError,
    DataError,
    MetadataError,
    MissingInputError,
    NoMatchingDataError,
    QsmprepError,
    UsageError,
)

__all__ = [
    'EXIT_CODES',
    'BIDSValidationError',
    'CantCreateError',
    'DataError',
    'EchoFiles',
    'MetadataError',
    'MissingInputError',
    'NoMatchingDataError',
    'Orientation',
    'QsmprepError',
    'SubjectData',
    'UsageError',
    'collect_subjects',
    'find_user_mask',
    'format_summary',
    'load_mask',
    'load_orientation',
    'select_reference',
]
