"""The terminal of a run: header, per-subject progress, summary; Nipype's records in the log.

:class:`~qsmprep.utils.progress.RunProgress` driven by synthetic node events and by real (tiny)
Nipype graphs; whole runs of ``qsmprep`` and ``qsmprep-demo`` are counted in
``tests/integration/test_terminal.py``.
"""

from __future__ import annotations

import logging
import math
import re
import time
from io import StringIO

import pytest

from qsmprep.utils import logs
from qsmprep.utils.progress import RunProgress, describe_node, node_totals

ANSI = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')
SUB = 'qsmprep_wf.single_subject_sub_01_wf.'


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.fixture
def clean_logging():
    yield
    logs.detach_log_file()
    logs.ConsoleHandler.live_sink = None
    for name in ('qsmprep', 'nipype'):
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if getattr(h, '_qsmprep_cli', False)]:
            logger.removeHandler(h)


# ------------------------------------------------------------------------------------------
def test_plain_lines_at_every_tenth_and_cached_nodes_count():
    out, clock, total = StringIO(), Clock(), 113
    p = RunProgress({'single_subject_sub_01_wf': ('sub-01', total)}, stream=out,
                    heartbeat=0, clock=clock)
    with p:
        for i in range(total):
            node = f'{SUB}orientation_acq_ori{i % 6 + 1:02d}_wf.n{i}'
            clock.t += 1.0
            if i % 3:  # every third node comes from the work directory: 'end' only
                p.status_callback(node, 'start')
                clock.t += 1.0
            p.status_callback(node, 'end')
    lines = out.getvalue().splitlines()
    # 'started', one line per completed tenth (10 % .. 90 %), 'done'
    assert len(lines) == 11
    assert 'started' in lines[0] and 'done in' in lines[-1] and f'{total}/{total}' in lines[-1]
    pcts = [int(re.search(r'(\d+)%', line).group(1)) for line in lines[1:-1]]
    assert pcts == [10 * k for k in range(1, 10)]
    for k, line in zip(range(1, 10), lines[1:-1]):
        done = int(re.search(r'(\d+)/113', line).group(1))
        assert done == math.ceil(total * k / 10)  # printed when the tenth is first reached
        assert 'left' in line and 'elapsed' in line
    assert p.counts() == {'sub-01': (total, total, 0)}
    assert not ANSI.search(out.getvalue())


def test_failed_node_is_reported_at_once():
    out = StringIO()
    p = RunProgress({'single_subject_sub_01_wf': ('sub-01', 10)}, stream=out, heartbeat=0)
    with p:
        p.status_callback(f'{SUB}orientation_acq_ori03_wf.vsharp', 'start')
        p.status_callback(f'{SUB}orientation_acq_ori03_wf.vsharp', 'exception')
        p.status_callback('some_other_wf.node', 'end')  # not a subject's node: ignored
    text = out.getvalue()
    assert 'FAILED: background field removal (vsharp, ori03)' in text
    assert p.counts() == {'sub-01': (1, 10, 1)}


def test_heartbeat_line_while_a_long_node_runs():
    out = StringIO()
    p = RunProgress({'single_subject_sub_01_wf': ('sub-01', 10)}, stream=out, heartbeat=0.2)
    with p:
        p.status_callback(f'{SUB}orientation_acq_ori01_wf.brainmask_wf.python_bet', 'start')
        time.sleep(0.6)
    assert 'still running' in out.getvalue() and 'brain mask (python_bet, ori01)' in out.getvalue()


def test_describe_node_names_stage_node_and_orientation():
    assert describe_node(f'{SUB}orientation_acq_ori02_wf.unwrap') == \
        'phase unwrapping (unwrap, ori02)'
    assert describe_node(f'{SUB}multi_orientation') == 'COSMOS and STI (multi_orientation)'
    assert describe_node(f'{SUB}some_new_node') == 'some_new_node'


def test_live_display_fits_80_columns_and_prints_logs_above(clean_logging):
    from rich.console import Console

    buf = StringIO()
    console = Console(file=buf, force_terminal=True, width=80, color_system=None)
    logs.setup_console_logging(0)
    p = RunProgress({'single_subject_sub_01_wf': ('sub-01', 113),
                     'single_subject_sub_02_wf': ('sub-02', 113)}, live=True, console=console)
    with p:
        for i in range(113):
            node = f'{SUB}orientation_acq_ori01_wf.brainmask_wf.python_bet{i}'
            p.status_callback(node, 'start')
            p.status_callback(node, 'end')
        logging.getLogger('qsmprep').warning('a warning during the run')
        p.status_callback('qsmprep_wf.single_subject_sub_02_wf.multi_orientation', 'start')
    text = buf.getvalue()
    assert '\x1b[' in text  # cursor movements: one live region, redrawn
    plain = ANSI.sub('', text)
    frames = [f for f in re.split(r'[\r\n]', plain) if f.strip()]
    assert all(len(f) <= 80 for f in frames), max(frames, key=len)
    assert 'a warning during the run' in plain
    final = frames[-2:]
    assert '113/113' in final[0] and 'done' in final[0]
    assert final[1].startswith('sub-02') and '0/113' in final[1] and 'COSMOS' in final[1]
    assert logs.ConsoleHandler.live_sink is None  # handler back to plain stderr


@pytest.mark.parametrize('plugin', ['Linear', 'MultiProc'])
def test_node_totals_is_what_nipype_runs(plugin, tmp_path):
    """Every counted node gets exactly one 'end' (identity nodes are not run), also when a
    re-run finds them cached."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    def add(a, b):
        return a + b

    outer = pe.Workflow(name='qsmprep_wf', base_dir=str(tmp_path))
    outer.config['execution'] = {'poll_sleep_duration': 0.05, 'crashdump_dir': str(tmp_path)}
    for s in ('01', '02'):
        wf = pe.Workflow(name=f'single_subject_sub_{s}_wf')
        inp = pe.Node(niu.IdentityInterface(fields=['x']), name='inputnode')
        inp.inputs.x = 1
        n1 = pe.Node(niu.Function(function=add, input_names=['a', 'b']), name='n1')
        n1.inputs.b = 2
        n2 = pe.Node(niu.Function(function=add, input_names=['a', 'b']), name='n2')
        n2.inputs.b = 3
        wf.connect([(inp, n1, [('x', 'a')]), (n1, n2, [('out', 'a')])])
        outer.add_nodes([wf])
    totals = node_totals(outer)
    assert totals == {'single_subject_sub_01_wf': 2, 'single_subject_sub_02_wf': 2}
    for _ in range(2):  # second run: all cached
        ends = []

        def callback(node, status, ends=ends):
            if status == 'end':
                ends.append(node.fullname)

        args = {'status_callback': callback}
        if plugin == 'MultiProc':
            args['n_procs'] = 1
        outer.run(plugin=plugin, plugin_args=args)
        assert sorted(ends) == sorted(f'qsmprep_wf.single_subject_sub_{s}_wf.n{k}'
                                      for s in ('01', '02') for k in (1, 2))


def test_nipype_records_go_to_the_log_file_and_back_with_v(tmp_path, capsys, clean_logging):
    logs.setup_console_logging(0)
    logs.setup_nipype_logging(0)
    log = logs.attach_log_file(tmp_path / 'logs' / 'run.log')
    nlog = logging.getLogger('nipype.workflow')
    nlog.info('[Node] Finished "x", elapsed time 0.1s.')
    nlog.warning('a nipype warning')
    logging.getLogger('qsmprep').info('a qsmprep info record')
    logging.getLogger('qsmprep').info('file only', extra=logs.FILE_ONLY)
    cap = capsys.readouterr()
    assert '[Node] Finished' not in cap.out + cap.err
    assert 'a qsmprep info record' not in cap.err and 'a nipype warning' in cap.err
    text = log.read_text()
    for s in ('[Node] Finished', 'a nipype warning', 'a qsmprep info record', 'file only'):
        assert s in text
    logs.setup_console_logging(1)
    logs.setup_nipype_logging(1)
    nlog.info('[Node] Setting-up "y"')
    logging.getLogger('qsmprep').info('file only', extra=logs.FILE_ONLY)
    err = capsys.readouterr().err
    assert 'nipype.workflow INFO' in err and '[Node] Setting-up "y"' in err
    assert 'file only' not in err
    logs.detach_log_file()
    nlog.info('after detach')
    assert 'after detach' not in log.read_text()
