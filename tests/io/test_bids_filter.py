"""``--bids-filter-file``: the MEGRE query restricted by entities (pybids names), validated
with messages naming the file; exit codes 64 (bad filter), 66 (no file), 18 (no match)."""

import json

import pytest

from qsmprep.cli.run import main
from qsmprep.io.bids import check_bids_filters, collect_subjects, read_bids_filters
from qsmprep.io.errors import MissingInputError, NoMatchingDataError, UsageError
from qsmprep.io.testing import make_megre_dataset


def _labels(subjects):
    return [(s.subject, s.session, [o.label for o in s.orientations]) for s in subjects]


def test_two_acquisitions_of_the_tiny_dataset(tiny_dataset):
    root, summary = tiny_dataset
    acqs = [a['acq'] for a in summary.subjects[0]['sessions'][0]['acquisitions']]
    assert len(acqs) == 6
    chosen = [acqs[4], acqs[1]]
    (subject,) = collect_subjects(root, bids_filters={'megre': {'acquisition': chosen}})
    assert sorted(o.label for o in subject.orientations) == sorted(f'acq-{a}' for a in chosen)
    for o in subject.orientations:  # every echo of the chosen orientations, nothing else
        assert len(o.echoes) == 3
        assert all(f'acq-{o.acq}_' in p.name for e in o.echoes for p in (e.magnitude, e.phase))
    (full,) = collect_subjects(root)
    assert len(full.orientations) == 6


def test_filter_file_on_the_command_line(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, _ = tiny_dataset
    path = tmp_path / 'filter.json'
    path.write_text(json.dumps({'megre': {'acquisition': ['ori01', 'ori03']}}))
    rc = main([str(root), str(tmp_path / 'out'), 'participant', '--bids-filter-file',
               str(path), '--validate-only', '--skip-bids-validation'])
    out = capsys.readouterr().out
    assert rc == 0
    assert 'acq-ori01' in out and 'acq-ori03' in out
    assert not any(f'acq-ori0{i}' in out for i in (2, 4, 5, 6))


def test_session_run_and_echo_entities(tmp_path):
    root = make_megre_dataset(tmp_path / 'bids', subjects=['01', '02'], sessions=['a', 'b'],
                              orientations=[{'acq': 'x', 'run': 1}, {'acq': 'x', 'run': 2}])
    got = collect_subjects(root, bids_filters={'megre': {'session': 'b', 'run': 2}})
    assert _labels(got) == [('01', 'b', ['acq-x_run-2']), ('02', 'b', ['acq-x_run-2'])]
    got = collect_subjects(root, bids_filters={'megre': {'subject': '02', 'echo': [1, 2]}})
    assert [(s.subject, s.session) for s in got] == [('02', 'a'), ('02', 'b')]
    assert all(len(o.echoes) == 2 for s in got for o in s.orientations)
    # --session-label and the filter together: both apply
    got = collect_subjects(root, session_labels=['a'], bids_filters={'megre': {'run': 1}})
    assert _labels(got) == [('01', 'a', ['acq-x_run-1']), ('02', 'a', ['acq-x_run-1'])]


def test_a_filter_matching_nothing_exits_18(tmp_path, capsys):
    root = make_megre_dataset(tmp_path / 'bids', orientations=['ori01', 'ori02'])
    with pytest.raises(NoMatchingDataError, match='matches no MEGRE file'):
        collect_subjects(root, bids_filters={'megre': {'acquisition': 'ori09'}})
    path = tmp_path / 'f.json'
    path.write_text('{"megre": {"session": "01"}}')  # a dataset without sessions
    rc = main([str(root), str(tmp_path / 'out'), 'participant', '--skip-bids-validation',
               '--bids-filter-file', str(path)])
    err = capsys.readouterr().err
    assert rc == 18 and 'matches no MEGRE file of sub-01' in err and '--bids-filter-file' in err


@pytest.mark.parametrize('content, code, words', [
    ('{"megre": {"acquisition": "ori01",}}', 64, ['not valid JSON', 'line 1']),
    ('["megre"]', 64, ['must be a JSON object', 'list']),
    ('{"anat": {"acquisition": "ori01"}}', 64, ["unknown key(s) 'anat'", "'megre'"]),
    ('{"megre": "ori01"}', 64, ['"megre" must be an object']),
    ('{"megre": {"acq": "ori01"}}', 64, ["unknown entity 'acq'", "did you mean 'acquisition'"]),
    ('{"megre": {"colour": "red"}}', 64, ["unknown entity 'colour'", 'acquisition, ']),
    ('{"megre": {"suffix": "T1w"}}', 64, ['sets "suffix" itself']),
    ('{"megre": {"acquisition": "acq-ori01"}}', 64, ['without "acq-"']),
    ('{"megre": {"acquisition": null}}', 64, ['null and wildcards are not supported']),
    ('{"megre": {"run": []}}', 64, ['non-empty list']),
    ('{"megre": {"run": true}}', 64, ['run must be a label']),
    (None, 66, ['BIDS filter file (--bids-filter-file) does not exist']),
])
def test_bad_filter_files(tmp_path, capsys, monkeypatch, content, code, words):
    monkeypatch.chdir(tmp_path)
    root = make_megre_dataset(tmp_path / 'bids')
    path = tmp_path / 'my filter.json'
    if content is not None:
        path.write_text(content)
    error = UsageError if code == 64 else MissingInputError
    with pytest.raises(error):
        read_bids_filters(path)
    rc = main([str(root), str(tmp_path / 'out'), 'participant', '--skip-bids-validation',
               '--bids-filter-file', str(path)])
    err = capsys.readouterr().err
    assert rc == code, err
    assert f'qsmprep: error: {path}: ' in err  # the file comes first
    for word in words:
        assert word in err, (word, err)
    assert 'Fix: ' in err
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'work').exists()


def test_check_bids_filters_keeps_valid_filters():
    f = {'megre': {'acquisition': ['ori01', 'ori02'], 'run': 1, 'session': '01'}}
    assert check_bids_filters(f) == f and check_bids_filters(f) is not f
    assert check_bids_filters({}) == {}
