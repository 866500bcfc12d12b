"""Command-line parser: every option, BIDS-App conventions, exit code 64 on bad values."""

import argparse
import json
from pathlib import Path

import pytest

from qsmprep.__about__ import __version__
from qsmprep.cli.parser import (
    build_parser,
    check_paths,
    load_plugin_file,
    parse_memory,
)
from qsmprep.io.errors import CantCreateError, MissingInputError, UsageError

POS = ['/data/bids', '/data/bids/derivatives/qsmprep', 'participant']


def _parse(*opts):
    return build_parser().parse_args([*POS, *opts])


def test_defaults():
    ns = _parse()
    assert ns.bids_dir == Path('/data/bids') and ns.analysis_level == 'participant'
    assert ns.participant_label is None and ns.work_dir is None
    assert ns.mask_method == 'auto' and ns.mask_erosion == 2
    assert ns.echo_combination == 'auto' and ns.unwrapping == 'wrapped-difference'
    assert ns.vsharp_threshold == 0.05 and ns.tkd_threshold == 0.15
    assert ns.vsharp_radii is None and ns.registration == 'auto'
    assert ns.verbose == 0 and not ns.validate_only and not ns.skip_bids_validation


def test_every_option_parses():
    ns = _parse(
        '--participant-label', 'sub-01', '02', '--session-label', 'ses-pre', 'post',
        '--skip-bids-validation', '--derivatives', '/masks', '--nprocs', '4',
        '--omp-nthreads', '2', '--mem', '8000MB', '--use-plugin', '/p.yml', '-w', '/scratch/w',
        '--stop-on-first-crash', '--validate-only', '--boilerplate-only', '-vvv',
        '--reference-orientation', 'acq-ori02', '--mask-method', 'python',
        '--mask-erosion', '0', '--unwrapping', 'sin-cos', '--echo-combination', 'linear-fit',
        '--vsharp-radii', '12', '8', '4.5', '--vsharp-threshold', '0.02',
        '--tkd-threshold', '0.2', '--registration', 'sitk', '--model', '/m.keras',
    )
    assert ns.participant_label == ['01', '02'] and ns.session_label == ['pre', 'post']
    assert ns.skip_bids_validation and ns.derivatives == Path('/masks')
    assert (ns.nprocs, ns.omp_nthreads, ns.mem) == (4, 2, 8.0)
    assert ns.use_plugin == Path('/p.yml') and ns.work_dir == Path('/scratch/w')
    assert ns.stop_on_first_crash and ns.validate_only and ns.boilerplate_only
    assert ns.verbose == 3 and ns.reference_orientation == 'acq-ori02'
    assert (ns.mask_method, ns.mask_erosion, ns.unwrapping) == ('python', 0, 'sin-cos')
    assert ns.echo_combination == 'linear-fit' and ns.vsharp_radii == [12.0, 8.0, 4.5]
    assert (ns.vsharp_threshold, ns.tkd_threshold) == (0.02, 0.2)
    assert ns.registration == 'sitk' and ns.model == Path('/m.keras')


def test_aliases_and_group_level():
    ns = build_parser().parse_args(['/b', '/o', 'group', '--participant_label', '01',
                                    '--skip_bids_validation', '--nthreads', '3',
                                    '--work-dir', 'w'])
    assert ns.analysis_level == 'group' and ns.participant_label == ['01']
    assert ns.skip_bids_validation and ns.nprocs == 3 and ns.work_dir == Path('w')


@pytest.mark.parametrize('argv', [
    [],
    ['/b', '/o'],
    ['/b', '/o', 'session'],  # unknown analysis level
    [*POS, '--participant-label'],
    [*POS, '--participant-label', 'sub_01'],
    [*POS, '--nprocs', '0'],
    [*POS, '--nprocs', 'two'],
    [*POS, '--omp-nthreads', '-1'],
    [*POS, '--mem', 'lots'],
    [*POS, '--mem', '-8G'],
    [*POS, '--mem', '16000'],  # bare number > 4096 GB: missing unit
    [*POS, '--mask-method', 'synthstrip'],
    [*POS, '--mask-erosion', '-1'],
    [*POS, '--mask-erosion', '1.5'],
    [*POS, '--echo-combination', 'median'],
    [*POS, '--unwrapping', 'romeo'],
    [*POS, '--vsharp-radii', '0'],
    [*POS, '--vsharp-radii'],
    [*POS, '--vsharp-threshold', '1.5'],
    [*POS, '--tkd-threshold', '0'],
    [*POS, '--tkd-threshold', '0.7'],
    [*POS, '--registration', 'ants'],
    [*POS, '--no-such-option'],
])
def test_bad_arguments_exit_64(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 64
    assert 'error:' in capsys.readouterr().err


def test_version_and_help_exit_0(capsys):
    for flag in ('--version', '--help'):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args([flag])
        assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize('text, gb', [('8', 8.0), ('8G', 8.0), ('8GB', 8.0), ('8gb', 8.0),
                                      ('8000MB', 8.0), ('8000M', 8.0), ('0.5T', 500.0),
                                      ('2048K', 0.002048), ('4096', 4096.0), ('2GiB', 2.0)])
def test_parse_memory(text, gb):
    assert parse_memory(text) == pytest.approx(gb)


def test_parse_memory_errors():
    for bad in ('', 'G', '8X', '1e3G', '0'):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_memory(bad)


def test_plugin_file_yaml_and_json(tmp_path):
    y = tmp_path / 'plugin.yml'
    y.write_text('plugin: SLURM\nplugin_args:\n  sbatch_args: "-p short"\n  max_jobs: 10\n')
    assert load_plugin_file(y) == ('SLURM', {'sbatch_args': '-p short', 'max_jobs': 10})
    j = tmp_path / 'plugin.json'
    j.write_text(json.dumps({'plugin': 'Linear'}))
    assert load_plugin_file(j) == ('Linear', {})
    j.write_text('{"plugin_args": {}}')
    with pytest.raises(UsageError, match='no "plugin"'):
        load_plugin_file(j)
    j.write_text('{"plugin": "SGE",')
    with pytest.raises(UsageError, match='cannot parse') as info:
        load_plugin_file(j)
    assert 'plugin.json' in str(info.value)
    with pytest.raises(MissingInputError):
        load_plugin_file(tmp_path / 'missing.yml')


def test_check_paths(tmp_path):
    bids = tmp_path / 'bids'
    bids.mkdir()
    ok = [bids / 'derivatives' / 'qsmprep', tmp_path / 'out', bids / 'derivatives' / 'a' / 'b']
    for out in ok:
        check_paths(bids, out, tmp_path / 'work')
    with pytest.raises(MissingInputError, match='does not exist'):
        check_paths(tmp_path / 'nope', tmp_path / 'out')
    for out in (bids, bids / 'sub-01', bids / 'derivatives', bids / 'out', tmp_path):
        with pytest.raises(UsageError) as info:
            check_paths(bids, out)
        assert 'derivatives/qsmprep' in info.value.hint
    # the same folder spelled differently
    with pytest.raises(UsageError, match='is the BIDS directory'):
        check_paths(bids, tmp_path / 'x' / '..' / 'bids')
    for work in (bids / 'work', tmp_path / 'out' / 'work', bids):
        with pytest.raises(UsageError, match='work directory'):
            check_paths(bids, tmp_path / 'out', work)
    (tmp_path / 'file').write_text('')
    with pytest.raises(CantCreateError):
        check_paths(bids, tmp_path / 'file')
    with pytest.raises(MissingInputError, match='--derivatives'):
        check_paths(bids, tmp_path / 'out', derivatives=tmp_path / 'masks')
    with pytest.raises(MissingInputError, match='--model'):
        check_paths(bids, tmp_path / 'out', model=tmp_path / 'model.keras')
