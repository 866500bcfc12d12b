"""``qsmprep-simulate`` command line: help, exit codes, refusal to overwrite."""

import json
import subprocess
import sys

import pytest

from qsmprep.simulate import cli


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(['--help'])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    parser = cli.build_parser()
    for action in parser._actions:
        for opt in action.option_strings:
            assert opt in text, opt
        if action.option_strings and action.help is not argparse_suppress():
            assert action.help, action.option_strings  # every option has a description
    for preset in ('tiny', 'demo', 'full', 'cohort', '7t'):
        assert preset in text
    assert '64' in text and '73' in text


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


@pytest.mark.parametrize('argv', [
    ['--voxel-size', '-1'],
    ['--voxel-size', '1', '2'],
    ['--orientations', '0'],
    ['--phase-units', 'deg'],
    ['--preset', 'huge'],
    ['--echo-times', '0.02', '0.01'],
    ['--snr', 'abc'],
    ['--tilt-range', '40', '10'],
    ['--jobs', '0'],
    ['--no-such-option'],
    ['--air-cavities', 'huge'],
    ['--grid-orientation', 'XYZ'],
    ['--coil-phase', '-1'],
    ['--realism', 'max'],
])
def test_bad_values_exit_64(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([str(tmp_path / 'out'), *argv])
    assert exc.value.code == cli.EX_USAGE == 64
    err = capsys.readouterr().err
    assert 'error' in err
    assert not (tmp_path / 'out').exists()


def test_non_empty_dir_exit_73(tmp_path, capsys):
    out = tmp_path / 'full'
    out.mkdir()
    (out / 'x.txt').write_text('x')
    assert cli.main([str(out), '--preset', 'tiny']) == cli.EX_CANTCREAT == 73
    err = capsys.readouterr().err
    assert 'not empty' in err and '--overwrite' in err
    assert cli.main([str(out), '--preset', 'tiny', '--overwrite']) == 73
    assert (out / 'x.txt').exists()


def test_dry_run_prints_resolved_settings(tmp_path, capsys):
    assert cli.main([str(tmp_path / 'o'), '--preset', 'demo', '--echoes', '5', '--snr', 'inf',
                     '--voxel-size', '2.5', '--no-b0-dir', '--dry-run']) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg['voxel_size'] == [2.5, 2.5, 2.5] and len(cfg['echo_times']) == 5
    assert cfg['snr'] is None and cfg['b0_dir_sidecar'] is False
    assert not (tmp_path / 'o').exists()


def test_dry_run_realism_switch_and_overrides(tmp_path, capsys):
    assert cli.main([str(tmp_path / 'o'), '--preset', 'demo', '--realistic', '--no-dephasing',
                     '--coil-phase', '0.2', '--grid-orientation', 'las', '--dry-run']) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg['realism'] == 'realistic' and cfg['body'] is True
    assert cfg['dephasing'] is False and cfg['coil_phase'] == 0.2
    assert cfg['grid_orientation'] == 'LAS' and cfg['phase_units'] == 'arbitrary'
    assert cli.main([str(tmp_path / 'o'), '--preset', '7t', '--dry-run']) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg['field_strength'] == 7.0 and cfg['voxel_size'] == [1.5, 1.5, 2.0]
    assert cfg['bias_field'] == 0.5


def test_cli_writes_dataset(tmp_path, capsys):
    out = tmp_path / 'ds'
    rc = cli.main([str(out), '--preset', 'tiny', '--orientations', '2', '--echoes', '1',
                   '--seed', '3', '--jobs', '1', '--quiet'])
    assert rc == 0
    assert len(list((out / 'sub-01' / 'anat').glob('*_MEGRE.nii.gz'))) == 4
    assert (out / 'derivatives' / 'qsmprep-simulate' / 'dataset_description.json').exists()


def test_python_m_entry_point():
    res = subprocess.run([sys.executable, '-m', 'qsmprep.simulate', '--help'],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and '--preset' in res.stdout
    res = subprocess.run([sys.executable, '-m', 'qsmprep.simulate', 'x', '--orientations',
                          'many'], capture_output=True, text=True, timeout=60)
    assert res.returncode == 64
