"""``--config-file``: a run's settings file (or the same keys by hand) repeats its options;
the command line wins; unknown keys and bad values are usage errors naming the key and the
file; per-run keys are not taken; paths are relative to the file.  Also ``command_line``."""

import dataclasses
import logging
import shlex
import sys
import types
from pathlib import Path

import pytest

from qsmprep.cli.config import PER_RUN, Settings, read_config_file
from qsmprep.cli.parser import build_parser, parse_command_line
from qsmprep.cli.run import main
from qsmprep.io.errors import MissingInputError, UsageError
from qsmprep.io.testing import make_megre_dataset

POS = ['/data/bids', '/data/out', 'participant']
#: Non-default values of (nearly) every kind of option.
OPTIONS = ['--participant-label', '01', '02', '--mem', '6G', '--nprocs', '3',
           '--omp-nthreads', '1', '--vsharp-radii', '10', '6', '--reference-orientation',
           'acq-ori02', '--derivatives', '/masks', '-vv', '--mask-method', 'python',
           '--mask-erosion', '3', '--mask-threshold', '0.1', '--bgremoval', 'pdf',
           '--tkd-threshold', '0.2', '--inversion', 'ilsqr', '--multi-solver', 'single-step',
           '--sti-regularization', '0.5', '--model', '/models/m', '--stop-on-first-crash',
           '--dl-model', 'swin', '--dl-model-params', '{"window": 4}', '--resume']


def _settings(cl: 'object', **kw) -> Settings:
    return Settings.from_namespace(cl.namespace, bids_filters=cl.from_file.get('bids_filters'),
                                   **kw)


def _options(s: Settings) -> dict:
    """The settings of ``s`` that a config file carries over."""
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)
            if f.name not in PER_RUN}


def test_settings_file_of_a_run_repeats_its_options(tmp_path):
    first = Settings.from_namespace(build_parser().parse_args([*POS, *OPTIONS]),
                                    bids_filters={'megre': {'acquisition': ['ori01']}},
                                    command_line=shlex.join(['qsmprep', *POS, *OPTIONS]))
    path = first.write_toml(tmp_path / 'log' / 'qsmprep_x.toml')
    cl = parse_command_line(['/other/bids', '/other/out', 'participant', '--config-file',
                             str(path)])
    again = _settings(cl)
    assert _options(again) == _options(first)
    # the positional arguments and the run's identity are this run's
    assert again.bids_dir == Path('/other/bids') and again.output_dir == Path('/other/out')
    assert again.run_uuid != first.run_uuid and again.command_line is None
    assert again.options() == first.options()
    assert again.options().multi_solver == 'single-step'


def test_command_line_wins_over_the_file(tmp_path):
    path = tmp_path / 'opts.toml'
    path.write_text('[settings]\nmask_erosion = 3\ninversions = ["ilsqr"]\n'
                    'skip_bids_validation = true\nverbosity = 2\nnprocs = 5\n')
    s = _settings(parse_command_line([*POS, '--config-file', str(path), '--mask-erosion', '1',
                                      '--inversion', 'tkd', '-v']))
    assert (s.mask_erosion, s.inversions, s.verbosity) == (1, ('tkd',), 1)
    assert s.skip_bids_validation and s.nprocs == 5  # not on the command line: the file's
    # the file's values beat the defaults, options not in the file keep them
    s = _settings(parse_command_line([*POS, '--config-file', str(path)]))
    assert (s.mask_erosion, s.inversions, s.verbosity) == (3, ('ilsqr',), 2)
    assert s.tkd_threshold == Settings(Path('/'), Path('/'), Path('/')).tkd_threshold


def test_top_level_keys_and_relative_paths(tmp_path):
    folder = tmp_path / 'conf'
    folder.mkdir()
    path = folder / 'qsmprep.toml'
    path.write_text('mask_erosion = 0\nderivatives = "masks"\nmodel = "/abs/model"\n'
                    'work_dir = "../scratch"\n\n[bids_filters.megre]\nrun = 1\n')
    cl = parse_command_line([*POS, '--config-file', str(path)])
    s = _settings(cl)
    assert s.mask_erosion == 0
    assert s.derivatives == folder / 'masks' and s.model == Path('/abs/model')
    assert s.work_dir == folder / '..' / 'scratch'
    assert s.bids_filters == {'megre': {'run': 1}}
    assert any('work directory' in m and 'pass -w' in m for _, m in cl.notes)
    # -w on the command line wins
    cl = parse_command_line([*POS, '--config-file', str(path), '-w', '/w'])
    assert _settings(cl).work_dir == Path('/w')


def test_per_run_keys_are_ignored_with_a_note(tmp_path):
    path = tmp_path / 'old.toml'
    path.write_text('[settings]\nrun_uuid = "r"\ncreated = "2020-01-01"\nversion = "0.0.1"\n'
                    'bids_dir = "/elsewhere"\nanalysis_level = "group"\nmask_erosion = 4\n')
    values, notes = read_config_file(path)
    assert values == {'mask_erosion': 4}
    assert sorted(lv for lv, _ in notes) == [logging.INFO, logging.WARNING]
    info = next(m for lv, m in notes if lv == logging.INFO)
    for key in ('run_uuid', 'created', 'version', 'bids_dir', 'analysis_level'):
        assert key in info
    assert any('0.0.1' in m for lv, m in notes if lv == logging.WARNING)
    s = _settings(parse_command_line([*POS, '--config-file', str(path)]))
    assert s.analysis_level == 'participant' and s.bids_dir == Path('/data/bids')
    assert s.run_uuid != 'r' and s.mask_erosion == 4


@pytest.mark.parametrize('text, words', [
    ('colour = "red"\n', ['unknown setting(s)', 'colour', 'mask_erosion']),
    ('mask_erosin = 2\n', ['mask_erosin', 'did you mean mask_erosin -> mask_erosion']),
    ('[settings]\nmask_erosion = 2\n[other]\nx = 1\n', ['outside its [settings]', 'other']),
    ('mask_erosion = -1\n', ['mask_erosion = -1', '--mask-erosion']),
    ('mask_erosion = 1.5\n', ['mask_erosion = 1.5', 'an integer']),
    ('mask_method = "fsl"\n', ['mask_method = "fsl"', 'invalid choice']),
    ('tkd_threshold = 0.9\n', ['tkd_threshold = 0.9']),
    ('inversions = ["tkd", "nope"]\n', ['inversions', 'invalid choice']),
    ('skip_bids_validation = "yes"\n', ['skip_bids_validation', 'true or false']),
    ('mask_erosion = true\n', ['mask_erosion = true', 'not true/false']),
    ('vsharp_radii = []\n', ['vsharp_radii = []']),
    ('participant_labels = ["sub_01"]\n', ['participant_labels', 'invalid sub label']),
    ('plugin = 3\n', ['plugin = 3', 'string']),
    ('mask_erosion = \n', ['cannot parse configuration file']),
])
def test_bad_files_are_usage_errors_naming_key_and_file(tmp_path, text, words):
    path = tmp_path / 'bad.toml'
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        parse_command_line([*POS, '--config-file', str(path)])
    message = str(info.value)
    assert info.value.exit_code == 64 and str(path) in message
    for word in words:
        assert word in message, (word, message)


def test_missing_file_exit_66(tmp_path):
    with pytest.raises(MissingInputError, match='--config-file'):
        parse_command_line([*POS, '--config-file', str(tmp_path / 'none.toml')])


def test_old_settings_files_still_load():
    """A settings file written before ``command_line``/``bids_filters`` existed."""
    text = '''# qsmprep settings
[settings]
bids_dir = "/b"
output_dir = "/o"
work_dir = "/w"
analysis_level = "participant"
nprocs = 2
omp_nthreads = 2
plugin = "MultiProc"
skip_bids_validation = false
verbosity = 0
mask_method = "auto"
mask_erosion = 2
mask_threshold = 0.2
tkd_threshold = 0.15
inversions = ["tkd", "ilsqr"]
version = "0.1.0"
run_uuid = "20250101-000000_x"
created = "2025-01-01T00:00:00+00:00"

[settings.plugin_args]
'''
    s = Settings.from_toml(text)
    assert s.command_line is None and s.bids_filters is None and s.run_uuid.endswith('_x')
    assert s.options() == Settings(Path('/b'), Path('/o'), Path('/w')).options()


def _fake_participant(monkeypatch):
    calls = []
    mod = types.ModuleType('qsmprep.workflows.participant')
    mod.run_participant = lambda subjects, settings: calls.append((subjects, settings)) or 0
    monkeypatch.setitem(sys.modules, 'qsmprep.workflows.participant', mod)
    return calls


def test_main_records_the_command_line_and_reads_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids', orientations=['ori01', 'ori02'])
    calls = _fake_participant(monkeypatch)
    config = tmp_path / 'my options.toml'
    config.write_text('mask_erosion = 4\nskip_bids_validation = true\n'
                      'bids_filters = {megre = {acquisition = "ori02"}}\n')
    argv = [str(root), str(tmp_path / 'out'), 'participant', '--config-file', str(config),
            '-v']
    assert main(argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    ((subjects, settings),) = calls
    assert settings.command_line == shlex.join(['qsmprep', *argv])
    assert shlex.split(settings.command_line)[1:] == argv  # the path with a space survives
    assert settings.mask_erosion == 4 and settings.skip_bids_validation
    assert [o.label for o in subjects[0].orientations] == ['acq-ori02']
    assert 'options from' in err and 'mask_erosion' in err
    assert 'BIDS validation skipped' in err


def test_main_reports_a_bad_config_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids')
    config = tmp_path / 'c.toml'
    config.write_text('[settings]\nmask_erosin = 4\n')
    rc = main([str(root), str(tmp_path / 'out'), 'participant', '--config-file', str(config)])
    err = capsys.readouterr().err
    assert rc == 64
    assert f'{config}: unknown setting(s) in the configuration file: mask_erosin' in err
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'work').exists()
    # a filter in the file is checked like a --bids-filter-file
    config.write_text('[settings.bids_filters.megre]\nacq = "ori01"\n')
    rc = main([str(root), str(tmp_path / 'out'), 'participant', '--config-file', str(config)])
    err = capsys.readouterr().err
    assert rc == 64 and str(config) in err and "did you mean 'acquisition'" in err


def test_options_refused_by_the_pipeline_options_exit_64(tmp_path, monkeypatch, capsys):
    """Whatever the parser lets through, qsmprep.options' checks run before anything else."""
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids')

    def refuse(self):
        raise ValueError('tkd_threshold must lie in (0, 1) (got 1.5)')

    monkeypatch.setattr(Settings, 'options', refuse)
    rc = main([str(root), str(tmp_path / 'out'), 'participant', '--skip-bids-validation'])
    err = capsys.readouterr().err
    assert rc == 64 and 'invalid processing options: tkd_threshold must lie' in err
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'work').exists()


def test_large_memory_from_a_settings_file(tmp_path):
    path = tmp_path / 'big.toml'
    path.write_text('mem_gb = 6000.0\n')  # GB, above the bare-number limit of --mem
    assert parse_command_line([*POS, '--config-file', str(path)]).namespace.mem == 6000.0


def test_plugin_of_a_settings_file_and_use_plugin(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids')
    calls = _fake_participant(monkeypatch)
    config = tmp_path / 'c.toml'
    config.write_text('[settings]\nplugin = "Linear"\nplugin_file = "gone.yml"\n'
                      'skip_bids_validation = true\n\n[settings.plugin_args]\n"x" = 1\n')
    argv = [str(root), str(tmp_path / 'out'), 'participant', '--config-file', str(config)]
    assert main(argv) == 0, capsys.readouterr().err  # the recorded plugin, not the file
    settings = calls[-1][1]
    assert settings.nipype_plugin() == ('Linear', {'x': 1})
    assert settings.plugin_file == tmp_path / 'gone.yml'
    plugin = tmp_path / 'p.json'
    plugin.write_text('{"plugin": "MultiProc", "plugin_args": {"n_procs": 1}}')
    assert main([*argv, '--use-plugin', str(plugin)]) == 0, capsys.readouterr().err
    settings = calls[-1][1]
    assert settings.plugin == 'MultiProc' and settings.plugin_args == {'n_procs': 1}
    assert settings.plugin_file == plugin
