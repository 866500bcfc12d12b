"""Validation of what used to slip through: complex phase, field strength in mT, singular
affines, empty magnitudes, grids too small to process, DataLad links, long label lists."""

import os

import nibabel as nib
import numpy as np
import pytest

from qsmprep.cli.run import main
from qsmprep.io.bids import FIELD_STRENGTH_RANGE, collect_subjects
from qsmprep.io.errors import DataError, MetadataError, MissingInputError, NoMatchingDataError
from qsmprep.io.nifti import MIN_EXTENT_MM, MIN_VOXELS
from qsmprep.io.testing import edit_sidecar, make_megre_dataset, megre_path

TES = (0.004, 0.008, 0.012)


def _nii(root, echo, part, orientation='ori01', **kw):
    return megre_path(root, echo=echo, part=part, orientation=orientation, **kw)


def _data(path):
    return np.asanyarray(nib.load(path).dataobj)


def _rewrite(path, data, affine=None):
    img = nib.load(path)
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), path)


@pytest.fixture
def ds(tmp_path):
    return make_megre_dataset(tmp_path / 'ds', echo_times=TES)


@pytest.mark.parametrize('part', ['phase', 'mag'])
def test_complex_image_is_refused_not_truncated(ds, part):
    path = _nii(ds, 2, part)
    z = (1.0 + _data(path)) * np.exp(1j * 0.3)  # a real value dropped its imaginary part
    _rewrite(path, z.astype(np.complex64))
    assert nib.load(path).get_data_dtype().kind == 'c'
    with pytest.raises(DataError) as info:
        collect_subjects(ds)
    msg = str(info.value)
    assert info.value.exit_code == 65 and str(path) in msg and 'complex' in msg
    assert 'complex64' in msg and 'imaginary part' in msg
    if part == 'phase':
        assert '"Units": "rad"' in msg and '"Units": "arbitrary"' in msg


@pytest.mark.parametrize('value, fix', [(3000, '"MagneticFieldStrength": 3 if 3000 is in mT'),
                                        (7000.0, '"MagneticFieldStrength": 7 if 7000 is in mT'),
                                        (0.003, '"MagneticFieldStrength": 3 for a 3 T')])
def test_field_strength_in_wrong_unit_is_refused(ds, value, fix):
    for e in range(1, len(TES) + 1):
        for part in ('mag', 'phase'):
            edit_sidecar(_nii(ds, e, part), MagneticFieldStrength=value)
    with pytest.raises(MetadataError) as info:
        collect_subjects(ds)
    msg = str(info.value)
    assert info.value.exit_code == 65
    assert str(_nii(ds, 1, 'phase', ext='.json')) in msg
    assert f'{value:g}' in msg and 'tesla expected, e.g. 3' in msg and fix in msg


def test_field_strength_range_ends_are_accepted(ds):
    lo, hi = FIELD_STRENGTH_RANGE
    assert lo <= 0.55 and hi >= 11.7  # low-field and the 11.7 T Iseult, for instance
    for value in (lo, hi):
        for e in range(1, len(TES) + 1):
            for part in ('mag', 'phase'):
                edit_sidecar(_nii(ds, e, part), MagneticFieldStrength=value)
        (o,) = collect_subjects(ds)[0].orientations
        assert o.field_strength == value


@pytest.mark.parametrize('echo, part', [(1, 'mag'), (2, 'phase')])
def test_singular_affine_is_refused(ds, echo, part):
    path = _nii(ds, echo, part)
    img = nib.load(path)
    bad = nib.Nifti1Image(np.asanyarray(img.dataobj), None, img.header)
    bad.set_sform(np.zeros((4, 4)), code=1)  # an empty sform wins over the qform
    bad.set_qform(None, code=0)
    nib.save(bad, path)
    assert abs(np.linalg.det(nib.load(path).affine[:3, :3])) == 0
    with pytest.raises(DataError) as info:
        collect_subjects(ds)
    msg = str(info.value)
    assert str(path) in msg and 'singular' in msg and 'sform/qform' in msg


def test_rank_deficient_affine_is_refused(ds):
    A = np.eye(4)
    A[:3, 2] = [1.0, 0.0, 0.0]  # third voxel axis parallel to the first
    for e in range(1, len(TES) + 1):
        for part in ('mag', 'phase'):
            _rewrite(_nii(ds, e, part), _data(_nii(ds, e, part)), affine=A)
    with pytest.raises(DataError, match='singular') as info:
        collect_subjects(ds)
    assert str(_nii(ds, 1, 'mag')) in str(info.value)


@pytest.mark.parametrize('orientation, echo', [('ori01', 1), ('ori02', 3)])
def test_all_zero_magnitude_is_refused(tmp_path, orientation, echo):
    root = make_megre_dataset(tmp_path / 'ds', orientations=['ori01', 'ori02'], echo_times=TES)
    path = _nii(root, echo, 'mag', orientation)
    _rewrite(path, np.zeros_like(_data(path)))
    with pytest.raises(DataError) as info:
        collect_subjects(root)
    assert info.value.exit_code == 65
    assert str(path) in str(info.value) and 'magnitude image is all zeros' in str(info.value)


def test_all_zero_phase_is_refused(ds):
    path = _nii(ds, 2, 'phase')
    _rewrite(path, np.zeros_like(_data(path)))
    with pytest.raises(DataError, match='phase image is all zeros') as info:
        collect_subjects(ds)
    assert str(path) in str(info.value)


@pytest.mark.parametrize('shape', [(4, 4, 4), (64, 64, MIN_VOXELS - 1)])
def test_grid_with_too_few_voxels_is_refused(tmp_path, shape):
    root = make_megre_dataset(tmp_path / 'ds', echo_times=TES[:1], shape=shape)
    with pytest.raises(DataError) as info:
        collect_subjects(root)
    msg = str(info.value)
    assert str(_nii(root, 1, 'mag')) in msg
    assert 'x'.join(map(str, shape)) in msg and f'at least {MIN_VOXELS} voxels' in msg


def test_field_of_view_too_small_is_refused(tmp_path):
    vs = MIN_EXTENT_MM / MIN_VOXELS / 2  # enough voxels, half the extent
    root = make_megre_dataset(tmp_path / 'ds', echo_times=TES[:1], voxel_size=(vs,) * 3)
    with pytest.raises(DataError) as info:
        collect_subjects(root)
    msg = str(info.value)
    assert str(_nii(root, 1, 'mag')) in msg
    assert f'{MIN_EXTENT_MM / 2:g} x ' in msg and f'at least {MIN_EXTENT_MM:g} mm' in msg
    # the smallest accepted grid: MIN_VOXELS voxels spanning MIN_EXTENT_MM
    root = make_megre_dataset(tmp_path / 'ok', echo_times=TES[:1],
                              shape=(MIN_VOXELS,) * 3,
                              voxel_size=(MIN_EXTENT_MM / MIN_VOXELS,) * 3)
    assert collect_subjects(root)[0].orientations[0].shape == (MIN_VOXELS,) * 3


def test_long_participant_list_is_abbreviated(tmp_path):
    root = make_megre_dataset(tmp_path / 'ds', subjects=['01', '02'], echo_times=TES[:1])
    wanted = [f'x{i:04d}' for i in range(3000)]
    with pytest.raises(NoMatchingDataError) as info:
        collect_subjects(root, wanted)
    msg = str(info.value)
    assert 'x0000, x0001' in msg and 'x0009' in msg and 'x0010' not in msg
    assert '… and 2990 more' in msg and 'available: 01, 02' in msg
    assert len(msg) < 400


def test_dangling_annex_link_asks_for_datalad_get(ds):
    path = _nii(ds, 2, 'phase')
    store = ds.parent / 'store' / 'MD5E-s1234--abc.nii.gz'  # never fetched
    path.unlink()
    path.symlink_to(store)
    with pytest.raises(MissingInputError) as info:
        collect_subjects(ds)
    msg = str(info.value)
    assert info.value.exit_code == 66 and str(path) in msg
    assert 'not present' in msg and 'datalad get' in msg


def test_dangling_sidecar_link_asks_for_datalad_get(ds):
    path = _nii(ds, 1, 'mag', ext='.json')
    path.unlink()
    path.symlink_to(ds.parent / 'store' / 'missing.json')
    with pytest.raises(MissingInputError, match='datalad get') as info:
        collect_subjects(ds)
    assert str(path) in str(info.value)


def test_symlinked_files_keep_their_dataset_paths(ds, tmp_path):
    store = tmp_path / 'store'
    store.mkdir()
    for i, path in enumerate(sorted((ds / 'sub-01' / 'anat').iterdir())):
        target = store / f'key{i}'
        path.rename(target)
        path.symlink_to(os.path.relpath(target, path.parent))  # relative, as git-annex does
    (o,) = collect_subjects(ds)[0].orientations
    assert o.n_echoes == len(TES) and o.echo_times == TES
    for e in o.echoes:
        for p in (e.magnitude, e.phase):
            assert p.is_symlink() and p.parent == ds / 'sub-01' / 'anat'


# the command line reports them with one message and the documented exit code
def _mT(root):
    for e in range(1, len(TES) + 1):
        for part in ('mag', 'phase'):
            edit_sidecar(_nii(root, e, part), MagneticFieldStrength=3000)


def _tiny_grid(root):
    for e in range(1, len(TES) + 1):
        for part in ('mag', 'phase'):
            path = _nii(root, e, part)
            _rewrite(path, _data(path)[:4, :4, :4])


def _dangling(root):
    path = _nii(root, 3, 'mag')
    path.unlink()
    path.symlink_to(root.parent / 'annex' / 'missing')


@pytest.mark.parametrize('case, code, expected', [
    (_mT, 65, ['echo-1_part-phase_MEGRE.json', 'tesla expected, e.g. 3']),
    (_tiny_grid, 65, ['echo-1_part-mag_MEGRE.nii.gz', 'too small to process']),
    (_dangling, 66, ['echo-3_part-mag_MEGRE.nii.gz', 'datalad get']),
])
def test_command_line_exit_codes(case, code, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids', echo_times=TES)
    case(root)
    rc = main([str(root), str(tmp_path / 'out'), 'participant', '--skip-bids-validation'])
    err = capsys.readouterr().err
    assert rc == code, err
    assert all(text in err for text in expected), err
    assert 'Traceback' not in err
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'work').exists()
