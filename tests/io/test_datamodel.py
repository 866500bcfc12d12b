"""Data model: reference-orientation rule, labels, summary table, error classes."""

from pathlib import Path

import numpy as np
import pytest

from qsmprep.io import errors
from qsmprep.io.datamodel import (
    EchoFiles,
    Orientation,
    SubjectData,
    format_summary,
    reference_scores,
    select_reference,
    superior_voxel_axis,
)
from qsmprep.io.testing import rotation_affine
from qsmprep.numerics.geometry import b0_direction_from_affine


def _orientation(acq, b0, affine=None, run=None, n_echoes=2):
    echoes = tuple(EchoFiles(i + 1, 0.004 * (i + 1), Path(f'm{i}'), Path(f'p{i}'))
                   for i in range(n_echoes))
    label = '_'.join(f'{k}-{v}' for k, v in (('acq', acq), ('run', run)) if v) or 'default'
    return Orientation('01', None, acq, run, label, echoes, 3.0, tuple(b0), 'affine',
                       (8, 8, 6), (1.0, 1.0, 1.0), np.eye(4) if affine is None else affine)


def _tilted(angle, axis='x'):
    A = rotation_affine(angle, axis)
    return _orientation(f'{axis}{angle}', b0_direction_from_affine(A), A)


def test_reference_is_the_orientation_with_b0_along_the_head_axis():
    # head-following slices tilted by the angle: b = R^T z, score = cos(angle)
    oris = [_tilted(25), _tilted(-10, 'y'), _tilted(0, 'z'), _tilted(40)]
    scores = reference_scores(oris)
    np.testing.assert_allclose(scores, np.cos(np.deg2rad([25, 10, 0, 40])), atol=1e-12)
    assert select_reference(oris) == 2


def test_reference_uses_superior_voxel_axis_for_sagittal_slices():
    # voxel axes permuted (sagittal): voxel axis 1 points superior; B0 along it -> score 1
    A = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])
    assert superior_voxel_axis(A) == 1
    sag = _orientation('sag', b0_direction_from_affine(A), A)
    ax = _tilted(20)
    assert reference_scores([sag])[0] == pytest.approx(1.0)
    assert select_reference([ax, sag]) == 1


def test_reference_ties_go_to_first_and_override_by_label_or_value():
    oris = [_orientation('a', (0, 0, 1)), _orientation('b', (0, 0, 1)),
            _orientation('c', (0, 0.6, 0.8), run='2')]
    assert select_reference(oris) == 0
    assert select_reference(oris, 'acq-b') == 1
    assert select_reference(oris, 'b') == 1
    assert select_reference(oris, 'acq-c_run-2') == 2
    with pytest.raises(KeyError, match='available: acq-a, acq-b, acq-c_run-2'):
        select_reference(oris, 'ori09')


def test_orientation_labels_and_prefix():
    o = _orientation('x', (0, 0, 1), run='02')
    assert o.label == 'acq-x_run-02'
    assert o.entities == {'sub': '01', 'acq': 'x', 'run': '02'}
    assert o.prefix == 'sub-01_acq-x_run-02'
    assert o.space_label == 'xrun02'
    assert _orientation(None, (0, 0, 1)).space_label == 'default'
    assert o.echo_times == (0.004, 0.008) and o.n_echoes == 2


def test_subject_data_checks_reference_index():
    o = _orientation('a', (0, 0, 1))
    with pytest.raises(ValueError, match='out of range'):
        SubjectData('01', None, (o,), reference=1)
    with pytest.raises(ValueError, match='at least one'):
        SubjectData('01', None, ())


def test_summary_table_rows_and_reference_marker():
    oris = (_orientation('a', (0, 0, 1)), _orientation('b', (0.6, 0, 0.8)))
    text = format_summary([SubjectData('07', 'pre', oris, reference=1)])
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].split()[:3] == ['sub', 'ses', 'orientation']
    assert 'acq-b *' in lines[3] and 'acq-a *' not in lines[2]
    assert '07' in lines[2] and 'pre' in lines[2] and '4, 8' in lines[2]
    assert '(0.6, 0, 0.8)' in lines[3]


def test_error_exit_codes_match_the_table():
    expected = {errors.QsmprepError: 1, errors.BIDSValidationError: 16,
                errors.NoMatchingDataError: 18, errors.UsageError: 64, errors.DataError: 65,
                errors.MetadataError: 65, errors.MissingInputError: 66,
                errors.CantCreateError: 73}
    for cls, code in expected.items():
        assert cls('x').exit_code == code
        if cls is not errors.MetadataError:
            assert errors.EXIT_CODES[code][0] is cls
    assert issubclass(errors.MetadataError, errors.DataError)
    e = errors.DataError('bad values.', path='/a/b.nii', hint='fix it')
    assert str(e) == '/a/b.nii: bad values. Fix: fix it'
