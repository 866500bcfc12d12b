"""``qsmprep`` end to end on bad inputs: one message naming the file and the fix, the right
BIDS-Apps exit code, and nothing written (no output/work directory, bids_dir untouched)."""

import os
import sys
import types

import nibabel as nib
import numpy as np
import pytest

from qsmprep.cli import run as cli_run
from qsmprep.cli.run import find_validator, main
from qsmprep.io.errors import DataError
from qsmprep.io.testing import edit_sidecar, make_megre_dataset, megre_path

TES = (0.004, 0.008, 0.012)


def _snapshot(root):
    """Every path under ``root`` with its size and modification time."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            st = os.stat(os.path.join(dirpath, name))
            out.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_size,
                        st.st_mtime_ns))
    return sorted(out)


def _nii(root, echo, part, **kw):
    return megre_path(root, echo=echo, part=part, orientation='ori01', **kw)


def _rewrite(path, data=None, affine=None):
    img = nib.load(path)
    data = np.asanyarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), path)


def _delete(path):
    path.unlink()
    path.with_name(path.name.replace('.nii.gz', '.json')).unlink()


# Each case builds its dataset under tmp/bids (possibly breaks it) and returns extra argv.
def case_missing_echotime(root):
    edit_sidecar(_nii(root, 2, 'phase'), EchoTime=None)


def case_missing_phase(root):
    _delete(_nii(root, 2, 'phase'))


def case_missing_magnitude(root):
    _delete(_nii(root, 3, 'mag'))


def case_grid_mismatch_between_echoes(root):
    for part in ('mag', 'phase'):
        path = _nii(root, 3, part)
        _rewrite(path, np.asanyarray(nib.load(path).dataobj)[:, :, :5])


def case_grid_mismatch_mag_phase(root):
    A = np.eye(4)
    A[0, 3] = 2.0
    _rewrite(_nii(root, 2, 'phase'), affine=A)


def case_nan_in_phase(root):
    path = _nii(root, 1, 'phase')
    data = np.asanyarray(nib.load(path).dataobj).copy()
    data[3, 3, 3] = np.nan
    _rewrite(path, data)


def case_unknown_units(root):
    edit_sidecar(_nii(root, 1, 'phase'), Units='degrees')


def case_units_differ_between_echoes(root):
    edit_sidecar(_nii(root, 3, 'phase'), Units='arbitrary')


def case_malformed_json(root):
    _nii(root, 2, 'mag', ext='.json').write_text('{"EchoTime": 0.008,\n "Units": rad}\n')


def case_no_megre_files(root):
    for p in (root / 'sub-01' / 'anat').iterdir():
        p.unlink()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)),
             root / 'sub-01' / 'anat' / 'sub-01_T1w.nii.gz')


def case_wrong_participant_label(root):
    return ['--participant-label', 'sub-05']


def case_wrong_session_label(root):
    return ['--session-label', 'ses-pre']


def case_non_increasing_echotime(root):
    for part in ('mag', 'phase'):
        edit_sidecar(_nii(root, 3, part), EchoTime=0.006)


def case_echotime_in_ms(root):
    for e, te in enumerate((4.0, 8.0, 12.0), start=1):
        for part in ('mag', 'phase'):
            edit_sidecar(_nii(root, e, part), EchoTime=te)


def case_echotime_mag_phase_differ(root):
    edit_sidecar(_nii(root, 2, 'mag'), EchoTime=0.0085)


def case_missing_field_strength(root):
    edit_sidecar(_nii(root, 1, 'phase'), MagneticFieldStrength=None)


def case_field_strength_differs(root):
    for part in ('mag', 'phase'):
        edit_sidecar(_nii(root, 2, part), MagneticFieldStrength=7)


def case_4d_phase(root):
    path = _nii(root, 2, 'phase')
    data = np.asanyarray(nib.load(path).dataobj)
    _rewrite(path, np.stack([data, data], axis=-1))


def case_b0_dir_not_unit(root):
    edit_sidecar(_nii(root, 1, 'phase'), B0_dir=[0, 0, 2])


def case_b0_dir_invalid(root):
    edit_sidecar(_nii(root, 1, 'phase'), B0_dir='up')


def case_b0_dir_on_some_echoes_only(root):
    edit_sidecar(_nii(root, 1, 'phase'), B0_dir=[0, 0, 1])


def case_missing_units_integer_phase(root):
    make_megre_dataset(root, units='arbitrary', echo_times=TES)
    for e in (1, 2, 3):
        edit_sidecar(_nii(root, e, 'phase'), Units=None)


def case_rad_units_on_integer_phase(root):
    make_megre_dataset(root, units='arbitrary', echo_times=TES)
    for e in (1, 2, 3):
        edit_sidecar(_nii(root, e, 'phase'), Units='rad')


def case_single_echo_linear_fit(root):
    for e in (2, 3):
        _delete(_nii(root, e, 'mag'))
        _delete(_nii(root, e, 'phase'))
    return ['--echo-combination', 'linear-fit']


def case_corrupt_nifti(root):
    _nii(root, 1, 'mag').write_bytes(b'not a nifti file at all')


def case_truncated_nifti(root):
    path = _nii(root, 2, 'phase')
    path.write_bytes(path.read_bytes()[:700])


def case_no_dataset_description(root):
    (root / 'dataset_description.json').unlink()


def case_unknown_reference(root):
    return ['--reference-orientation', 'ori09']


def case_missing_derivatives(root):
    return ['--derivatives', str(root.parent / 'masks')]


def case_bids_dir_missing(root):
    return {'bids': root.parent / 'nothing'}


def case_out_dir_is_bids_dir(root):
    return {'out': root}


def case_out_dir_inside_bids_dir(root):
    return {'out': root / 'results'}


def case_out_dir_is_a_file(root):
    (root.parent / 'out').write_text('x')
    return {'out': root.parent / 'out', 'keep_out': True}


def case_bad_option_value(root):
    return ['--tkd-threshold', '2']


# (case, exit code, substrings of stderr: file name, problem, fix)
CASES = [
    (case_missing_echotime, 65, ['echo-2_part-phase_MEGRE.json', 'no "EchoTime"',
                                 'add "EchoTime": <seconds>']),
    (case_missing_phase, 66, ['echo-2_part-mag_MEGRE.nii.gz', 'no phase image',
                              'add sub-01_acq-ori01_echo-2_part-phase_MEGRE.nii.gz']),
    (case_missing_magnitude, 66, ['echo-3_part-phase_MEGRE.nii.gz', 'no magnitude image',
                                  'add sub-01_acq-ori01_echo-3_part-mag_MEGRE.nii.gz']),
    (case_grid_mismatch_between_echoes, 65, ['echo-3_part-mag_MEGRE.nii.gz', 'shape 16x16x5',
                                             'echo-1_part-mag_MEGRE.nii.gz', 'one grid']),
    (case_grid_mismatch_mag_phase, 65, ['echo-2_part-phase_MEGRE.nii.gz', 'origin (2, 0, 0)',
                                        'one grid']),
    (case_nan_in_phase, 65, ['echo-1_part-phase_MEGRE.nii.gz', '1 non-finite',
                             'replace them']),
    (case_unknown_units, 65, ['echo-1_part-phase_MEGRE.json', '"degrees"',
                              '"Units": "rad"']),
    (case_units_differ_between_echoes, 65, ['echo-3_part-phase_MEGRE.json', 'differs',
                                            'same "Units"']),
    (case_malformed_json, 65, ['echo-2_part-mag_MEGRE.json', 'malformed JSON', 'line 2',
                               'fix the JSON syntax']),
    (case_no_megre_files, 66, ['no MEGRE files found for sub-01', '_part-<mag|phase>_MEGRE']),
    (case_wrong_participant_label, 18, ['participant label(s) 05 not found',
                                        'available: 01', 'use one of the available']),
    (case_wrong_session_label, 18, ['session label(s) pre', 'drop --session-label']),
    (case_non_increasing_echotime, 65, ['echo-3_part-phase_MEGRE.json', 'does not increase',
                                        'increasing EchoTime']),
    (case_echotime_in_ms, 65, ['echo-1_part-phase_MEGRE.json', 'must be in seconds',
                               '"EchoTime": 0.004']),
    (case_echotime_mag_phase_differ, 65, ['echo-2_part-mag_MEGRE.json', '0.0085',
                                          'share one EchoTime']),
    (case_missing_field_strength, 65, ['echo-1_part-phase_MEGRE.json',
                                       'no "MagneticFieldStrength"',
                                       '"MagneticFieldStrength": 3']),
    (case_field_strength_differs, 65, ['echo-2_part-phase_MEGRE.json', '7.0 T differs',
                                       'one field strength']),
    (case_4d_phase, 65, ['echo-2_part-phase_MEGRE.nii.gz', 'more than one volume',
                         'separate echo-<index> files']),
    (case_b0_dir_not_unit, 65, ['echo-1_part-phase_MEGRE.json', 'not a unit vector',
                                '"B0_dir": [0, 0, 1]']),
    (case_b0_dir_invalid, 65, ['echo-1_part-phase_MEGRE.json', 'must be 3 numbers',
                               'unit vector']),
    (case_b0_dir_on_some_echoes_only, 65, ['echo-1_part-phase_MEGRE.json', '1 of 3 echoes',
                                           'for every echo or for none']),
    (case_missing_units_integer_phase, 65, ['echo-1_part-phase_MEGRE.json', 'not radians',
                                            '"Units": "arbitrary"']),
    (case_rad_units_on_integer_phase, 65, ['echo-1_part-phase_MEGRE.json', 'outside',
                                           '"Units": "arbitrary"']),
    (case_single_echo_linear_fit, 64, ['echo-1_part-phase_MEGRE.nii.gz', 'at least 2 echoes',
                                       '--echo-combination average']),
    (case_corrupt_nifti, 65, ['echo-1_part-mag_MEGRE.nii.gz', 'cannot read NIfTI',
                              'uncorrupted']),
    (case_truncated_nifti, 65, ['echo-2_part-phase_MEGRE.nii.gz', 'cannot read',
                                'complete']),
    (case_no_dataset_description, 16, ['dataset_description.json is missing',
                                       '"BIDSVersion"']),
    (case_unknown_reference, 64, ["'ori09' matches no orientation", 'available: acq-ori01',
                                  '--reference-orientation']),
    (case_missing_derivatives, 66, ['masks', 'does not exist']),
    (case_bids_dir_missing, 66, ['nothing', 'BIDS directory does not exist']),
    (case_out_dir_is_bids_dir, 64, ['never writes into bids_dir', 'derivatives/qsmprep']),
    (case_out_dir_inside_bids_dir, 64, ['results', 'inside the BIDS directory',
                                        'derivatives/qsmprep']),
    (case_out_dir_is_a_file, 73, ['out', 'not a directory']),
    (case_bad_option_value, 64, ['--tkd-threshold', 'got']),
]


@pytest.mark.parametrize('case, code, expected', CASES, ids=[c[0].__name__[5:] for c in CASES])
def test_bad_input_message_and_exit_code(case, code, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids', echo_times=TES)
    extra = case(root) or []
    paths = extra if isinstance(extra, dict) else {}
    argv = [] if isinstance(extra, dict) else list(extra)
    bids = paths.get('bids', root)
    out = paths.get('out', tmp_path / 'out')
    before = _snapshot(root)
    capsys.readouterr()
    rc = main([str(bids), str(out), 'participant', '--skip-bids-validation', *argv])
    err = capsys.readouterr().err
    assert rc == code, err
    for text in expected:
        assert text in err, f'{text!r} not in {err!r}'
    assert len([ln for ln in err.splitlines() if 'error' in ln]) == 1  # one message
    assert _snapshot(root) == before  # bids_dir untouched
    if not paths.get('keep_out'):
        assert not (tmp_path / 'out').exists() and not (root / 'results').exists()
    assert not (tmp_path / 'work').exists()


def test_validate_only_prints_summary_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids', orientations=['ori01', 'ori02'],
                              echo_times=TES)
    before = _snapshot(tmp_path)
    out = root / 'derivatives' / 'qsmprep'
    rc = main([str(root), str(out), 'participant', '--validate-only', '--skip-bids-validation'])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert 'acq-ori01 *' in captured.out and 'acq-ori02' in captured.out
    assert '4, 8, 12' in captured.out
    assert _snapshot(tmp_path) == before and not out.exists()


def test_single_echo_is_valid_with_average(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids', echo_times=(0.01,))
    rc = main([str(root), str(tmp_path / 'out'), 'participant', '--validate-only',
               '--skip-bids-validation'])
    captured = capsys.readouterr()
    assert rc == 0 and 'only one echo' in captured.err


def _fake_module(monkeypatch, name, func_name, func):
    mod = types.ModuleType(name)
    setattr(mod, func_name, func)
    monkeypatch.setitem(sys.modules, name, mod)


def test_participant_hook_gets_subjects_and_settings(tmp_path, capsys, monkeypatch):
    root = make_megre_dataset(tmp_path / 'bids', subjects=['01', '02'], echo_times=TES)
    calls = []

    def run_participant(subjects, settings):
        assert settings.output_dir.is_dir() and settings.work_dir.is_dir()
        calls.append((subjects, settings))
        return 0

    _fake_module(monkeypatch, 'qsmprep.workflows.participant', 'run_participant', run_participant)
    out, work = tmp_path / 'out', tmp_path / 'scratch' / 'work'
    rc = main([str(root), str(out), 'participant', '--participant-label', '02', '-w', str(work),
               '--skip-bids-validation', '--nprocs', '2', '--mem', '3G',
               '--echo-combination', 'weighted'])
    assert rc == 0, capsys.readouterr().err
    ((subjects, settings),) = calls
    assert [s.subject for s in subjects] == ['02']
    assert settings.output_dir == out and settings.work_dir == work
    assert settings.nipype_plugin() == ('MultiProc', {'n_procs': 2, 'memory_gb': 3.0,
                                                      'raise_insufficient': False})
    assert settings.echo_combination == 'weighted'


def test_hook_errors_and_missing_workflow(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids', echo_times=TES)
    argv = [str(root), str(tmp_path / 'out'), 'participant', '--skip-bids-validation']
    monkeypatch.setitem(sys.modules, 'qsmprep.workflows.participant', None)  # not written yet
    assert main(argv) == 1
    assert 'participant workflow not available yet' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()

    def failing(subjects, settings):
        raise DataError('bad field', path='x.nii')

    _fake_module(monkeypatch, 'qsmprep.workflows.participant', 'run_participant', failing)
    assert main(argv) == 65
    assert 'x.nii: bad field' in capsys.readouterr().err

    def crashing(subjects, settings):
        raise RuntimeError('boom')

    _fake_module(monkeypatch, 'qsmprep.workflows.participant', 'run_participant', crashing)
    assert main(argv) == 1
    assert 'RuntimeError: boom' in capsys.readouterr().err


def test_group_level(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids', echo_times=TES)
    out = tmp_path / 'out'
    assert main([str(root), str(out), 'group']) == 66
    assert 'run the participant level first' in capsys.readouterr().err
    out.mkdir()
    seen = []
    _fake_module(monkeypatch, 'qsmprep.workflows.group', 'run_group',
                 lambda settings: seen.append(settings) or 0)
    assert main([str(root), str(out), 'group']) == 0
    assert seen[0].analysis_level == 'group' and seen[0].output_dir == out


needs_validator = pytest.mark.skipif(find_validator() is None,
                                     reason='bids-validator-deno not installed')


@needs_validator
def test_schema_validator_passes_valid_data_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids', orientations=['ori01', {'acq': 'x', 'run': 2}],
                              b0_dirs=[[0, 0, 1], [0, 0.6, 0.8]], echo_times=TES)
    before = _snapshot(tmp_path)
    rc = main([str(root), str(root / 'derivatives' / 'qsmprep'), 'participant',
               '--validate-only', '-v'])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert 'BIDS validation passed' in captured.err
    assert _snapshot(tmp_path) == before


@needs_validator
def test_schema_validator_errors_exit_16(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids', echo_times=TES)
    edit_sidecar(_nii(root, 2, 'phase'), EchoTime=None)
    rc = main([str(root), str(tmp_path / 'out'), 'participant'])
    err = capsys.readouterr().err
    assert rc == 16
    assert 'SIDECAR_KEY_REQUIRED EchoTime' in err
    assert 'echo-2_part-phase_MEGRE.nii.gz' in err and '--skip-bids-validation' in err
    assert not (tmp_path / 'out').exists()


@needs_validator
def test_schema_validator_missing_units_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids', echo_times=TES, units=None)
    argv = [str(root), str(tmp_path / 'out'), 'participant', '--validate-only']
    assert main(argv) == 16
    assert 'SIDECAR_KEY_REQUIRED Units' in capsys.readouterr().err
    assert main([*argv, '--skip-bids-validation']) == 0  # radian values: accepted, warned
    assert 'phase "Units" missing' in capsys.readouterr().err


def test_missing_validator_warns_and_continues(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_run, 'find_validator', lambda: None)
    root = make_megre_dataset(tmp_path / 'bids', echo_times=TES)
    assert main([str(root), str(tmp_path / 'out'), 'participant', '--validate-only']) == 0
    assert 'bids-validator-deno not found' in capsys.readouterr().err
