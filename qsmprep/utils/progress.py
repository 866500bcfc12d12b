"""What a participant run shows on the terminal: header, one progress line per subject, summary.

Nipype's schedulers (``Linear``, ``MultiProc`` and the non-graph cluster plugins) call the
``status_callback`` of their ``plugin_args`` with ``(node, 'start'|'end'|'exception')``;
:class:`RunProgress` counts the ``end``/``exception`` calls of each subject's nodes against the
number of nodes in its workflow.  Nodes found in the work directory from an earlier run are
reported as ``end`` without a ``start``, so a re-run counts them too.

On a terminal (``sys.stdout`` is a TTY) the display is a live `rich`_ progress bar per subject
(stage and current node, nodes done/total, elapsed and estimated remaining time) that log
messages print above.  Otherwise (CI, SLURM logs, ``| tee``), and with ``-v`` (when Nipype's
own records are on the console), it prints plain lines: one when a subject starts, one at
every further 10 % of its nodes, one when a node fails, a ``still running`` line when nothing
was printed for :attr:`RunProgress.heartbeat` seconds, and one when the subject is done.

.. _rich: https://rich.readthedocs.io

>>> describe_node('qsmprep_wf.single_subject_sub_01_wf.orientation_acq_ori02_wf.'
...               'brainmask_wf.python_bet')
'brain mask (python_bet, ori02)'
>>> describe_node('qsmprep_wf.single_subject_sub_01_wf.registration_acq_ori03_wf.sitk_rigid')
'registration (sitk_rigid, ori03)'
>>> describe_node('qsmprep_wf.single_subject_sub_01_wf.ds_tkd_acq_ori04')
'writing outputs (ds_tkd, ori04)'
>>> format_duration(3725.2), format_duration(59.6), format_duration(None)
('1:02:05', '0:01:00', '-:--:--')
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from pathlib import Path

from qsmprep.utils import logs

__all__ = [
    'RunMonitor',
    'RunProgress',
    'describe_node',
    'error_summary',
    'format_duration',
    'node_totals',
]

LOGGER = logging.getLogger('qsmprep.progress')

#: Stage shown for a node, by the start of its name (first match wins).
STAGES = (
    ('stack_echoes', 'reading echoes'),
    ('python_bet', 'brain mask'), ('bet', 'brain mask'), ('refine_mask', 'brain mask'),
    ('erode_mask', 'brain mask'), ('mask_from_reference', 'brain mask'),
    ('unwrap', 'phase unwrapping'),
    ('combine_echoes', 'echo combination'),
    ('vsharp', 'background field removal'), ('bgremoval', 'background field removal'),
    ('invert', 'dipole inversion'),
    ('sitk_rigid', 'registration'), ('flirt', 'registration'),
    ('to_reference', 'resampling to the reference'),
    ('merge_', 'collecting orientations'),
    ('multi_orientation', 'COSMOS and STI'),
    ('apparent', 'apparent susceptibility'),
    ('predict', 'deep-learning prediction'),
    ('ds_', 'writing outputs'),
)

#: Plugins whose scheduler calls ``status_callback`` (nipype.pipeline.plugins.base).
CALLBACK_PLUGINS = ('Linear', 'MultiProc', 'LegacyMultiProc', 'SLURM', 'SGE', 'PBS', 'LSF',
                    'Condor', 'OAR', 'IPython')


def format_duration(seconds) -> str:
    """``H:MM:SS`` (``-:--:--`` when unknown)."""
    if seconds is None:
        return '-:--:--'
    s = round(float(seconds))
    return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}'


def error_summary(exc) -> str:
    """The last line of an exception's text: for the ``RuntimeError`` Nipype raises after a
    node crashed, the node's own error (its traceback is in the crash file and the log).

    >>> error_summary(RuntimeError('Traceback (most recent call last):\\n  File ...\\n'
    ...                            'ValueError: the mask is empty\\n\\n'))
    'ValueError: the mask is empty'
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else repr(exc)


def describe_node(fullname: str) -> str:
    """Stage and node of a Nipype node's full name, e.g. ``'brain mask (python_bet, ori02)'``."""
    parts = fullname.split('.')
    name = parts[-1]
    orientation = next((p.rsplit('_acq_', 1)[1][:-3] for p in parts[:-1]
                        if '_acq_' in p and p.endswith('_wf')), None)
    if orientation is None:  # node names of the subject level end with the orientation tag
        tail = name.rsplit('_acq_', 1)
        orientation = tail[1] if len(tail) == 2 else None
        name = tail[0] if len(tail) == 2 else name
    stage = next((label for prefix, label in STAGES if name.startswith(prefix)), None)
    detail = ', '.join(x for x in (name, orientation) if x)
    return f'{stage} ({detail})' if stage else detail


def node_totals(wf) -> dict[str, int]:
    """Executable nodes per top-level sub-workflow of ``wf`` (one per subject).

    Nipype removes ``IdentityInterface`` nodes before running a graph
    (``generate_expanded_graph``): they are not counted.
    """
    from nipype.interfaces.utility import IdentityInterface

    totals: dict[str, int] = {}
    for name in wf.list_node_names():
        if isinstance(wf.get_node(name).interface, IdentityInterface):
            continue
        key = name.split('.')[0]
        totals[key] = totals.get(key, 0) + 1
    return totals


@dataclasses.dataclass
class _Subject:
    label: str
    total: int
    done: int = 0
    failed: int = 0
    started: float | None = None
    finished: float | None = None
    running: dict = dataclasses.field(default_factory=dict)  # fullname -> start time
    last: str = ''
    decile: int = 0
    task: int | None = None

    def current(self) -> str:
        if self.running:
            return describe_node(max(self.running, key=self.running.get))
        return describe_node(self.last) if self.last else ''


class RunProgress:
    """Counts finished nodes per subject from Nipype's ``status_callback`` and shows them.

    Parameters
    ----------
    subjects : dict
        ``{workflow key: (label, number of nodes)}``; the key is a component of the node's
        full name (``single_subject_sub_01_wf``), the label what is shown (``sub-01``).
    live : bool
        A live `rich` display (a terminal) instead of plain lines.
    stream : file, optional
        Where plain lines go (default: the ``sys.stdout`` of the moment).
    heartbeat : float
        Plain mode: seconds without a printed line after which a ``still running`` line is
        printed (0: never).

    >>> import io, re
    >>> out, now = io.StringIO(), [0.0]
    >>> p = RunProgress({'single_subject_sub_01_wf': ('sub-01', 2)}, live=False, stream=out,
    ...                 heartbeat=0, clock=lambda: now[0])
    >>> wf = 'qsmprep_wf.single_subject_sub_01_wf.'
    >>> with p:
    ...     p.status_callback(wf + 'orientation_acq_ori01_wf.unwrap', 'start')
    ...     now[0] = 30.0
    ...     p.status_callback(wf + 'orientation_acq_ori01_wf.unwrap', 'end')
    ...     now[0] = 45.0
    ...     p.status_callback(wf + 'ds_cosmos', 'end')
    >>> print(re.sub(r'(?m)^[0-9:]{8} ', '', out.getvalue()).rstrip())
    sub-01  0/2 nodes  started
    sub-01  1/2 nodes   50%  elapsed 0:00:30  ~0:00:30 left  phase unwrapping (unwrap, ori01)
    sub-01  2/2 nodes  done in 0:00:45
    >>> p.counts()
    {'sub-01': (2, 2, 0)}
    """

    def __init__(self, subjects: dict, *, live: bool = False, stream=None,
                 heartbeat: float = 120.0, console=None, clock=time.monotonic):
        self._subjects = {key: _Subject(label, int(total))
                          for key, (label, total) in subjects.items()}
        self.live = bool(live)
        self.heartbeat = float(heartbeat)
        self._stream = stream
        self._console = console
        self._clock = clock
        self._lock = threading.RLock()
        self._progress = None
        self._last_print = None
        self._stop = threading.Event()
        self._thread = None

    # ---------------------------------------------------------------------------------------
    def counts(self) -> dict[str, tuple[int, int, int]]:
        """``{label: (done, total, failed)}``."""
        return {s.label: (s.done, s.total, s.failed) for s in self._subjects.values()}

    def _find(self, fullname: str) -> _Subject | None:
        for part in fullname.split('.'):
            if part in self._subjects:
                return self._subjects[part]
        return None

    def status_callback(self, node, status: str) -> None:
        """Nipype's hook: ``node`` started (``'start'``), finished or was found cached
        (``'end'``) or failed (``'exception'``).  Never raises."""
        try:
            self._update(str(getattr(node, 'fullname', node)), status)
        except Exception:  # pragma: no cover - a display problem must not stop the run
            LOGGER.debug('progress display failed', exc_info=True)

    def _update(self, fullname: str, status: str) -> None:
        with self._lock:
            subj = self._find(fullname)
            if subj is None:
                return
            now = self._clock()
            if subj.started is None:
                subj.started = now
                self._started(subj)
            if status == 'start':
                subj.running[fullname] = now
                self._refresh(subj)
                return
            subj.running.pop(fullname, None)
            subj.last = fullname
            if status == 'exception':
                subj.failed += 1
                self._emit(subj, f'FAILED: {describe_node(fullname)}')
            subj.done = min(subj.done + 1, subj.total)
            if subj.done >= subj.total and subj.finished is None:
                subj.finished = now
            self._refresh(subj)

    # ---------------------------------------------------------------------------------------
    def _elapsed(self, subj: _Subject):
        if subj.started is None:
            return None
        return (subj.finished if subj.finished is not None else self._clock()) - subj.started

    def _remaining(self, subj: _Subject):
        elapsed = self._elapsed(subj)
        if not subj.done or elapsed is None:
            return None
        return elapsed / subj.done * (subj.total - subj.done)

    def _prefix(self, subj: _Subject) -> str:
        width = len(str(subj.total))
        return (f'{time.strftime("%H:%M:%S")} {subj.label}  {subj.done:>{width}}/{subj.total}'
                ' nodes')

    def _emit(self, subj: _Subject, text: str) -> None:
        if self.live:
            self._progress.console.print(f'{subj.label}: {text}', markup=False,
                                         highlight=False)
            return
        stream = self._stream or sys.stdout
        stream.write(f'{self._prefix(subj)}  {text}\n')
        stream.flush()
        self._last_print = self._clock()

    def _started(self, subj: _Subject) -> None:
        if self.live:
            self._progress.start_task(subj.task)
        else:
            self._emit(subj, 'started')

    def _status_text(self, subj: _Subject) -> str:
        pct = 100 * subj.done // max(subj.total, 1)
        return (f'{pct:3d}%  elapsed {format_duration(self._elapsed(subj))}  '
                f'~{format_duration(self._remaining(subj))} left  {subj.current()}')

    def _refresh(self, subj: _Subject) -> None:
        if self.live:
            self._progress.update(subj.task, completed=subj.done, current=self._live_text(subj))
            return
        if subj.finished is not None:
            if subj.decile < 10:
                subj.decile = 10
                what = 'FAILED' if subj.failed else 'done'
                self._emit(subj, f'{what} in {format_duration(self._elapsed(subj))}'
                           + (f' ({subj.failed} node(s) failed)' if subj.failed else ''))
            return
        decile = 10 * subj.done // max(subj.total, 1)
        if decile > subj.decile:
            subj.decile = decile
            self._emit(subj, self._status_text(subj))

    def _live_text(self, subj: _Subject) -> str:
        if subj.failed:
            return f'FAILED ({subj.failed} node(s))'
        return 'done' if subj.finished is not None else subj.current()

    def _beat(self) -> None:
        while not self._stop.wait(min(self.heartbeat, 5.0)):
            with self._lock:
                if self._last_print is None or self._clock() - self._last_print < self.heartbeat:
                    continue
                for subj in self._subjects.values():
                    if subj.started is not None and subj.finished is None:
                        self._emit(subj, 'still running: ' + self._status_text(subj))

    # ---------------------------------------------------------------------------------------
    def __enter__(self):
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.table import Column

            def fixed():
                return Column(no_wrap=True)

            console = self._console or Console(file=self._stream or sys.stdout)
            # fits 80 columns: only the stage/node text is cut (with an ellipsis)
            self._progress = Progress(
                TextColumn('[bold]{task.description}', table_column=fixed()),
                BarColumn(bar_width=12, table_column=fixed()),
                TextColumn('{task.completed}/{task.total} nodes', table_column=fixed()),
                TimeElapsedColumn(table_column=fixed()),
                _remaining_column(table_column=fixed()),
                TextColumn('{task.fields[current]}', markup=False,
                           table_column=Column(ratio=1, no_wrap=True, overflow='ellipsis')),
                console=console, refresh_per_second=2, redirect_stdout=False,
                redirect_stderr=False, expand=True,
            )
            for subj in self._subjects.values():
                subj.task = self._progress.add_task(subj.label, total=subj.total, start=False,
                                                    current='waiting')
            self._progress.start()
            logs.ConsoleHandler.live_sink = self._print_above
            logs.ConsoleHandler.live_pid = os.getpid()
        elif self.heartbeat > 0:
            self._stop.clear()
            self._last_print = self._clock()
            self._thread = threading.Thread(target=self._beat, name='qsmprep-progress',
                                            daemon=True)
            self._thread.start()
        return self

    def _print_above(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
        if self._progress is not None:
            with self._lock:
                for subj in self._subjects.values():
                    self._progress.update(subj.task, current=self._live_text(subj)
                                          if subj.started is not None else 'not run')
            logs.ConsoleHandler.live_sink = None
            logs.ConsoleHandler.live_pid = None
            self._progress.stop()
            self._progress = None
        return False


def _remaining_column(**kwargs):
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RemainingColumn(ProgressColumn):
        """``~H:MM:SS left`` from the subject's average time per node so far."""

        def render(self, task):
            if task.finished or not task.completed or task.elapsed is None:
                return Text(' ' * 14)
            left = task.elapsed / task.completed * (task.total - task.completed)
            return Text(f'~{format_duration(left)} left', style='progress.remaining')

    return RemainingColumn(**kwargs)


# ------------------------------------------------------------------------------------------
def _count_files(path: Path) -> int:
    return sum(1 for p in path.rglob('*') if p.is_file()) if path.is_dir() else 0


class RunMonitor:
    """The terminal side of one participant run: log file, header, progress and summary.

    The run's log file is ``<work_dir>/logs/qsmprep_<run_uuid>.log`` (the work directory is
    the only place written before the run succeeded); once a subject's outputs are in place,
    :meth:`finish` copies it to ``<output>/sub-<label>/log/`` next to the settings TOML.
    """

    def __init__(self, subjects, settings, *, work_dir, deriv_root, plugin: str,
                 plugin_args: dict | None = None, stream=None):
        self.subjects = list(subjects)
        self.settings = settings
        self.work_dir = Path(work_dir)
        self.deriv_root = Path(deriv_root)
        self.plugin = plugin
        self.plugin_args = dict(plugin_args or {})
        self.verbosity = int(getattr(settings, 'verbosity', 0) or 0)
        run_id = getattr(settings, 'run_uuid', None) or time.strftime('%Y%m%d-%H%M%S')
        self.log_file = self.work_dir / 'logs' / f'qsmprep_{run_id}.log'
        self._stream = stream
        self.progress: RunProgress | None = None
        self.t0 = time.monotonic()

    @property
    def stream(self):
        return self._stream or sys.stdout

    def _print(self, text: str = '') -> None:
        self.stream.write(text + '\n')
        self.stream.flush()

    def start(self, wf) -> dict:
        """Open the log file, print the header, prepare the progress display; return the
        ``plugin_args`` to run ``wf`` with (``status_callback`` added where supported)."""
        from qsmprep.__about__ import __version__
        from qsmprep.workflows.base import _safe

        logs.attach_log_file(self.log_file, self.verbosity)
        logs.setup_nipype_logging(self.verbosity)
        totals = node_totals(wf)
        labels = {}
        for subject in self.subjects:
            key = f'single_subject_{_safe(subject.prefix)}_wf'  # init_single_subject_wf's name
            if key in totals:
                labels[key] = (subject.prefix, totals[key])
        n_ori = sum(len(s.orientations) for s in self.subjects)
        procs = self.plugin_args.get('n_procs')
        plugin = self.plugin + (f', {procs} processes' if procs else '')
        omp = getattr(self.settings, 'omp_nthreads', None)
        lines = [
            f'qsmprep {__version__}: participant level, {len(self.subjects)} subject(s), '
            f'{n_ori} orientation(s), {sum(totals.values())} nodes',
            f'  input     {getattr(self.settings, "bids_dir", "?")}',
            f'  output    {self.deriv_root}',
            f'  work dir  {self.work_dir}',
            f'  log file  {self.log_file}',
            f'  plugin    {plugin}' + (f'; {omp} FFT thread(s) per node' if omp else ''),
        ]
        self._print('\n'.join(lines))
        LOGGER.info('\n'.join(lines), extra=logs.FILE_ONLY)
        callbacks = self.plugin in CALLBACK_PLUGINS
        live = (callbacks and self.verbosity == 0 and _is_terminal(self.stream))
        self.progress = RunProgress(labels if callbacks else {}, live=live,
                                    stream=self._stream)
        args = dict(self.plugin_args)
        if callbacks:
            args['status_callback'] = self.progress.status_callback
        else:
            self._print(f'  ({self.plugin} runs the graph as one submission: no per-node '
                        'progress; see the log file)')
        return args

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def finish(self, rc: int) -> int:
        """Print the summary, copy the log into each finished subject's ``log/`` folder,
        close the log file; return ``rc``."""
        elapsed = time.monotonic() - self.t0
        counts = self.progress.counts() if self.progress is not None else {}
        lines = []
        for subject in self.subjects:
            done, total, failed = counts.get(subject.prefix, (None, None, 0))
            nodes = f'{done}/{total} nodes' if total else 'nodes not counted'
            if rc == 0:
                out = self.deriv_root / f'sub-{subject.subject}'
                if subject.session:
                    out = out / f'ses-{subject.session}'
                report = self.deriv_root / f'{subject.prefix}.html'
                lines.append(f'{subject.prefix}: {nodes}, {_count_files(out)} files in {out}')
                lines.append(f'  report  {report}')
            else:
                what = f', {failed} failed' if failed else ''
                lines.append(f'{subject.prefix}: {nodes}{what}')
        if rc == 0:
            self._copy_log()
            lines.append(f'qsmprep finished in {format_duration(elapsed)}: exit code 0 '
                         f'(success).  Log: {self.log_file}')
        else:
            lines.append(f'qsmprep failed after {format_duration(elapsed)}: exit code {rc}; '
                         f'the output directory was not modified.  Crash files: '
                         f'{self.work_dir / "crash"}  Log: {self.log_file}')
        self._print('\n'.join(lines))
        LOGGER.info('\n'.join(lines), extra=logs.FILE_ONLY)
        logs.detach_log_file()
        return rc

    def _copy_log(self) -> None:
        from qsmprep.utils.fsutils import copy_file  # atomic: no half-written file in output

        for subject in self.subjects:
            dest = self.deriv_root / f'sub-{subject.subject}' / 'log'
            if dest.parent.is_dir() and self.log_file.is_file():
                dest.mkdir(exist_ok=True)
                try:
                    copy_file(self.log_file, dest / self.log_file.name)
                except OSError as exc:  # the outputs are in place: say so, do not fail
                    LOGGER.warning('could not copy the log file to %s (%s)', dest, exc)


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, 'isatty', None)
    try:
        tty = bool(isatty and isatty())
    except ValueError:  # closed stream
        return False
    return tty and os.environ.get('TERM', '') != 'dumb'
