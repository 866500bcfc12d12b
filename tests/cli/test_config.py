"""Settings: construction from the parser, TOML round trip, Nipype plugin arguments."""

import tomllib
from pathlib import Path

import pytest

from qsmprep.cli.config import Settings, default_nprocs
from qsmprep.cli.parser import build_parser


def test_from_namespace_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = build_parser().parse_args(['bids', 'out', 'participant'])
    s = Settings.from_namespace(ns)
    assert s.bids_dir == tmp_path / 'bids' and s.output_dir == tmp_path / 'out'
    assert s.work_dir == tmp_path / 'work'
    assert s.nprocs == default_nprocs() and s.omp_nthreads == min(s.nprocs, 8)
    assert s.participant_labels is None and s.vsharp_radii is None
    assert s.echo_combination == 'auto' and s.mask_erosion == 2


def test_toml_round_trip_with_all_fields(tmp_path):
    ns = build_parser().parse_args([
        '/b', '/o', 'participant', '--participant-label', '01', '02', '--mem', '6G',
        '--vsharp-radii', '10', '6', '--reference-orientation', 'acq-"odd"',
        '--derivatives', '/m', '-vv'])
    s = Settings.from_namespace(ns, plugin='SLURM', plugin_args={'sbatch_args': '-p x',
                                                                   'max_jobs': 4})
    text = s.to_toml()
    data = tomllib.loads(text)['settings']
    assert data['participant_labels'] == ['01', '02'] and data['mem_gb'] == 6.0
    assert data['plugin_args'] == {'sbatch_args': '-p x', 'max_jobs': 4}
    assert 'model' not in data  # None is omitted
    back = Settings.from_toml(text)
    assert back == s
    assert back.vsharp_radii == (10.0, 6.0) and back.derivatives == Path('/m')
    path = s.write_toml(tmp_path / 'log' / 'qsmprep.toml')
    assert Settings.from_toml(path.read_text()) == s
    with pytest.raises(ValueError, match='unknown settings: colour'):
        Settings.from_dict({**s.to_dict(), 'colour': 'red'})


def test_nipype_plugin_arguments():
    base = dict(bids_dir=Path('/b'), output_dir=Path('/o'), work_dir=Path('/w'))
    s = Settings(**base, nprocs=3, mem_gb=5.0)
    assert s.nipype_plugin() == ('MultiProc', {'n_procs': 3, 'memory_gb': 5.0,
                                               'raise_insufficient': False})
    s = Settings(**base, nprocs=3, plugin='MultiProc', plugin_args={'n_procs': 1})
    assert s.nipype_plugin()[1]['n_procs'] == 1  # the plugin file wins
    s = Settings(**base, plugin='SLURM', plugin_args={'sbatch_args': '-p q'})
    assert s.nipype_plugin() == ('SLURM', {'sbatch_args': '-p q'})
