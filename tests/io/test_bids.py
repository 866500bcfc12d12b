"""BIDS collection: grouping, echo order, metadata, B0 direction, units, masks, loading."""

import logging

import nibabel as nib
import numpy as np
import pytest

from qsmprep.io.bids import (
    check_json_files,
    collect_subjects,
    find_user_mask,
    load_mask,
    load_orientation,
    normalize_labels,
)
from qsmprep.io.errors import (
    BIDSValidationError,
    DataError,
    MetadataError,
    MissingInputError,
    NoMatchingDataError,
    UsageError,
)
from qsmprep.io.testing import edit_sidecar, make_megre_dataset, megre_path, rotation_affine
from qsmprep.numerics.geometry import b0_direction_from_affine


def test_echo_10_sorts_after_echo_9(tmp_path):
    tes = [0.002 * (i + 1) for i in range(11)]
    root = make_megre_dataset(tmp_path / 'ds', echo_times=tes)
    (o,) = collect_subjects(root)[0].orientations
    assert [e.number for e in o.echoes] == list(range(1, 12))
    assert o.echo_times == tuple(tes)
    assert o.echoes[9].phase.name.endswith('echo-10_part-phase_MEGRE.nii.gz')


def test_orientations_grouped_by_acq_and_run(tmp_path):
    oris = ['ori01', {'acq': 'x', 'run': 1}, {'acq': 'x', 'run': 2}, {'run': 3}]
    root = make_megre_dataset(tmp_path / 'ds', orientations=oris, echo_times=(0.005, 0.01))
    (subj,) = collect_subjects(root)
    assert subj.labels == ('acq-ori01', 'acq-x_run-1', 'acq-x_run-2', 'run-3')
    for o in subj.orientations:
        assert o.n_echoes == 2
        names = {p.name for e in o.echoes for p in (e.magnitude, e.phase)}
        assert len(names) == 4 and all(o.label in n for n in names)
    assert subj.orientations[2].acq == 'x' and subj.orientations[2].run == '2'


def test_sessions_and_participant_prefix_stripping(tmp_path):
    root = make_megre_dataset(tmp_path / 'ds', subjects=['01', '02', '03'],
                              sessions=['pre', 'post'], echo_times=(0.005, 0.01))
    found = collect_subjects(root, ['sub-03', '01'])
    assert [(s.subject, s.session) for s in found] == [
        ('01', 'post'), ('01', 'pre'), ('03', 'post'), ('03', 'pre')]
    only = collect_subjects(root, ['02'], session_labels=['ses-pre'])
    assert [(s.subject, s.session) for s in only] == [('02', 'pre')]
    assert only[0].prefix == 'sub-02_ses-pre'
    assert only[0].orientations[0].prefix == 'sub-02_ses-pre_acq-ori01'
    with pytest.raises(NoMatchingDataError, match='session label') as info:
        collect_subjects(root, ['02'], session_labels=['baseline'])
    assert 'post, pre' in str(info.value)


def test_wrong_participant_label_lists_available(tmp_path):
    root = make_megre_dataset(tmp_path / 'ds', subjects=['01', '02'])
    with pytest.raises(NoMatchingDataError) as info:
        collect_subjects(root, ['sub-05'])
    assert info.value.exit_code == 18
    assert '05' in str(info.value) and 'available: 01, 02' in str(info.value)
    with pytest.raises(UsageError, match='invalid sub label'):
        normalize_labels(['sub_01'])


def test_b0_from_sidecar_is_normalised_and_from_affine_otherwise(tmp_path):
    A = rotation_affine(30, 'x')
    root = make_megre_dataset(tmp_path / 'ds', orientations=['side', 'aff'],
                              b0_dirs=[[0, 0.5, 0.8661], None], affines=[np.eye(4), A])
    side, aff = collect_subjects(root)[0].orientations[::-1]  # sorted: aff, side
    assert side.b0_source == 'sidecar' and aff.b0_source == 'affine'
    assert np.linalg.norm(side.b0_direction) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(side.b0_direction, np.array([0, 0.5, 0.8661]) / 1.00003, atol=1e-4)
    np.testing.assert_allclose(aff.b0_direction, b0_direction_from_affine(A), atol=1e-6)
    np.testing.assert_allclose(aff.b0_direction, [0, 0.5, np.sqrt(3) / 2], atol=1e-6)
    np.testing.assert_allclose(aff.affine, A, atol=1e-6)


def test_reference_defaults_to_most_upright_and_can_be_overridden(tmp_path):
    affines = [rotation_affine(a, 'x') for a in (25, 0, -15)]
    root = make_megre_dataset(tmp_path / 'ds', orientations=['r1', 'r2', 'r3'],
                              affines=affines, echo_times=(0.005,))
    (subj,) = collect_subjects(root)
    assert subj.reference_orientation.label == 'acq-r2'
    assert subj.reference_rule == 'most-superior-b0'
    (subj,) = collect_subjects(root, reference='r3')
    assert subj.reference_orientation.label == 'acq-r3' and subj.reference_rule == 'user'
    with pytest.raises(UsageError, match='available: acq-r1, acq-r2, acq-r3'):
        collect_subjects(root, reference='acq-r9')


def test_arbitrary_units_are_rescaled_to_radians(tmp_path):
    root = make_megre_dataset(tmp_path / 'ds', units='arbitrary', echo_times=(0.004, 0.008))
    (o,) = collect_subjects(root)[0].orientations
    assert o.phase_units == 'arbitrary'
    mag, phase = load_orientation(o)
    assert mag.shape == phase.shape == (16, 16, 16, 2)
    assert mag.dtype == phase.dtype == np.float32
    raw = np.stack([np.asanyarray(nib.load(e.phase).dataobj) for e in o.echoes], -1)
    assert raw.dtype == np.int16
    expected = np.pi * (raw - raw.min()) * 2 / (raw.max() - raw.min() + 1) - np.pi
    np.testing.assert_allclose(phase, expected, atol=2e-6)
    assert phase.min() >= -np.pi and phase.max() < np.pi


def test_radian_phase_is_wrapped_and_magnitude_kept(tmp_path):
    root = make_megre_dataset(tmp_path / 'ds', echo_times=(0.004, 0.008))
    (o,) = collect_subjects(root)[0].orientations
    path = o.echoes[1].phase
    img = nib.load(path)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[0, 0, 0] = 2 * np.pi - 0.5  # within [0, 2π): still radians, wrapped on loading
    nib.save(nib.Nifti1Image(data, img.affine), path)
    (o,) = collect_subjects(root)[0].orientations
    mag, phase = load_orientation(o)
    assert phase[0, 0, 0, 1] == pytest.approx(-0.5, abs=1e-6)
    np.testing.assert_array_equal(mag[..., 0], nib.load(o.echoes[0].magnitude).get_fdata())


def test_missing_units_accepted_for_radian_values_with_warning(tmp_path, caplog):
    root = make_megre_dataset(tmp_path / 'ds', units=None, echo_times=(0.004, 0.008))
    with caplog.at_level(logging.WARNING, logger='qsmprep'):
        (o,) = collect_subjects(root)[0].orientations
    assert o.phase_units == 'rad'
    assert 'Units' in caplog.text and '"Units": "rad"' in caplog.text


def test_missing_units_refused_for_integer_values(tmp_path):
    root = make_megre_dataset(tmp_path / 'ds', units='arbitrary', echo_times=(0.004, 0.008))
    for e in (1, 2):
        edit_sidecar(megre_path(root, echo=e, orientation='ori01', part='phase'), Units=None)
    with pytest.raises(MetadataError, match='"Units": "arbitrary"') as info:
        collect_subjects(root)
    assert 'echo-1_part-phase_MEGRE.json' in str(info.value)


def test_single_echo_accepted_with_warning(tmp_path, caplog):
    root = make_megre_dataset(tmp_path / 'ds', echo_times=(0.01,))
    with caplog.at_level(logging.WARNING, logger='qsmprep'):
        (o,) = collect_subjects(root)[0].orientations
    assert o.n_echoes == 1 and 'only one echo' in caplog.text


def test_part_less_file_is_magnitude_and_uncompressed_nifti(tmp_path):
    root = make_megre_dataset(tmp_path / 'ds', echo_times=(0.004, 0.008), compress=False)
    for e in (1, 2):
        src = megre_path(root, echo=e, orientation='ori01', part='mag', ext='.nii')
        dst = megre_path(root, echo=e, orientation='ori01', part=None, ext='.nii')
        src.rename(dst)
        src.with_suffix('.json').rename(dst.with_suffix('.json'))
    (o,) = collect_subjects(root)[0].orientations
    assert o.echoes[0].magnitude.name == 'sub-01_acq-ori01_echo-1_MEGRE.nii'


def test_malformed_json_reports_line_and_column(tmp_path):
    root = make_megre_dataset(tmp_path / 'ds')
    assert check_json_files(root) == 8  # 6 sidecars, dataset_description, participants
    bad = megre_path(root, echo=2, orientation='ori01', part='mag', ext='.json')
    good = bad.read_text()
    bad.write_text('{\n  "EchoTime": 0.008,\n  "MagneticFieldStrength": 3,\n}')
    with pytest.raises(MetadataError) as info:
        check_json_files(root)
    assert bad.name in str(info.value) and 'line 4' in str(info.value)
    # JSON under derivatives/ is not part of the raw dataset and is not checked
    bad.write_text(good)
    (root / 'derivatives' / 'x').mkdir(parents=True)
    (root / 'derivatives' / 'x' / 'broken.json').write_text('{')
    assert check_json_files(root) == 8
    assert collect_subjects(root)[0].orientations[0].n_echoes == 3


def _write_mask(path, shape=(16, 16, 16), affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros(shape, np.uint8)
    data[2:6, 2:6, 1:5] = 1
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def test_user_masks_from_derivatives(tmp_path):
    A = rotation_affine(20, 'x')
    root = make_megre_dataset(tmp_path / 'ds', orientations=['a', 'b'],
                              affines=[np.eye(4), A], echo_times=(0.005,))
    deriv = tmp_path / 'masks'
    ma = _write_mask(deriv / 'sub-01' / 'anat' / 'sub-01_acq-a_space-orig_desc-brain_mask.nii.gz')
    mb = _write_mask(deriv / 'pipe' / 'sub-01' / 'anat' / 'sub-01_acq-b_label-brain_mask.nii',
                     affine=A)
    _write_mask(deriv / 'sub-01' / 'anat' / 'sub-01_acq-a_desc-lesion_mask.nii.gz')  # ignored
    _write_mask(deriv / 'sub-01' / 'anat' / 'sub-01_acq-a_space-MNI_mask.nii.gz')  # ignored
    (subj,) = collect_subjects(root, derivatives=deriv)
    assert [o.user_mask for o in subj.orientations] == [ma, mb]
    m = load_mask(subj.orientations[0])
    assert m.dtype == bool and m.sum() == 64


def test_user_mask_on_wrong_grid_is_an_error(tmp_path):
    root = make_megre_dataset(tmp_path / 'ds', orientations=['a', 'b'],
                              affines=[np.eye(4), rotation_affine(20, 'x')], echo_times=(0.005,))
    deriv = tmp_path / 'masks'
    generic = _write_mask(deriv / 'sub-01' / 'anat' / 'sub-01_desc-brain_mask.nii.gz')
    o = collect_subjects(root)[0].orientations[0]
    assert find_user_mask(deriv, o) == generic  # a mask without acq- applies to all
    with pytest.raises(DataError, match='mask grid') as info:
        collect_subjects(root, derivatives=deriv)  # ... but does not fit the tilted one
    assert 'sub-01_desc-brain_mask.nii.gz' in str(info.value)
    assert 'sub-01_acq-b_desc-brain_mask.nii.gz' in str(info.value)
    with pytest.raises(MissingInputError, match='derivatives'):
        collect_subjects(root, derivatives=tmp_path / 'nowhere')


def test_subject_without_megre_skipped_unless_requested(tmp_path, caplog):
    root = make_megre_dataset(tmp_path / 'ds', subjects=['01', '02'])
    anat = root / 'sub-02' / 'anat'
    for p in anat.iterdir():
        p.unlink()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)),
             anat / 'sub-02_T1w.nii.gz')
    with caplog.at_level(logging.WARNING, logger='qsmprep'):
        assert [s.subject for s in collect_subjects(root)] == ['01']
    assert 'sub-02 has no MEGRE' in caplog.text
    with pytest.raises(MissingInputError, match='no MEGRE files found for sub-02'):
        collect_subjects(root, ['01', '02'])


def test_duplicate_files_and_missing_echo_entity(tmp_path):
    root = make_megre_dataset(tmp_path / 'ds', echo_times=(0.004, 0.008))
    gz = megre_path(root, echo=2, orientation='ori01', part='phase')
    nib.save(nib.load(gz), gz.with_name(gz.name.replace('.nii.gz', '.nii')))
    with pytest.raises(DataError, match='two files for echo 2 part-phase') as info:
        collect_subjects(root)
    assert 'not both' in str(info.value)
    gz.with_name(gz.name.replace('.nii.gz', '.nii')).unlink()
    for part in ('mag', 'phase'):
        src = megre_path(root, echo=2, orientation='ori01', part=part)
        dst = src.with_name(src.name.replace('_echo-2', ''))
        src.rename(dst)
        src.with_name(src.name.replace('.nii.gz', '.json')).rename(
            dst.with_name(dst.name.replace('.nii.gz', '.json')))
    with pytest.raises(BIDSValidationError, match='without an echo-<index>') as info:
        collect_subjects(root)
    assert info.value.exit_code == 16


def test_real_imag_parts_are_ignored(tmp_path, caplog):
    root = make_megre_dataset(tmp_path / 'ds', echo_times=(0.004,))
    src = megre_path(root, echo=1, orientation='ori01', part='mag')
    for part in ('real', 'imag'):
        nib.save(nib.load(src), megre_path(root, echo=1, orientation='ori01', part=part))
    with caplog.at_level(logging.WARNING, logger='qsmprep'):
        (o,) = collect_subjects(root)[0].orientations
    assert o.echoes[0].magnitude == src and 'part-real/part-imag' in caplog.text
