"""Nipype's MultiProc plugin made safe against signals and full disks.

Nipype 1.x's :class:`~nipype.pipeline.plugins.multiproc.MultiProcPlugin` has three problems
that qsmprep works around here:

* when a node cannot write its result file (work directory full), the worker's ``run_node``
  raises inside its own ``except`` block, the pool future fails, the done-callback raises
  and the task's result is never recorded: the scheduler waits for ever.  Here a failed
  future is recorded as a crashed node with its traceback;
* the pool workers inherit the parent's signal handlers: ``Ctrl-C`` (SIGINT to the whole
  process group) prints one traceback per worker, and a SIGTERM/SIGKILL to the parent only
  leaves the workers running, re-parented to PID 1.  Here workers ignore SIGINT, are sent
  SIGTERM by the kernel when the parent dies (Linux ``PR_SET_PDEATHSIG``) and
  :meth:`MultiProcPlugin.terminate` ends them explicitly;
* the tracebacks of crashed nodes are kept (:attr:`MultiProcPlugin.tracebacks`) so that a
  run that failed because a disk is full can say so (exit 74) even when no crash file could
  be written.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from traceback import format_exception

from nipype.pipeline.plugins.multiproc import MultiProcPlugin as _NipypeMultiProc
from nipype.pipeline.plugins.multiproc import process_initializer

__all__ = ['MultiProcPlugin']


def _die_with_parent():
    """Ask the kernel to SIGTERM this process when its parent ends (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _init_worker(cwd, parent):
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # not the parent's Python handler
    _die_with_parent()
    if os.getppid() != parent:                      # parent died before prctl took effect
        os._exit(1)
    process_initializer(cwd)


class MultiProcPlugin(_NipypeMultiProc):
    """:class:`nipype.pipeline.plugins.multiproc.MultiProcPlugin` with safe workers (see the
    module docstring); same ``plugin_args``."""

    def __init__(self, plugin_args=None):
        super().__init__(plugin_args=plugin_args)
        self.tracebacks: list[str] = []
        # no worker has started yet (they start on the first submit): replace the pool
        self.pool.shutdown(wait=False)
        self.pool = ProcessPoolExecutor(
            max_workers=self.processors, initializer=_init_worker,
            initargs=(self._cwd, os.getpid()),
            mp_context=mp.get_context(self.plugin_args.get('mp_context')))

    def _async_callback(self, args):
        try:
            result = args.result()
        except BaseException as exc:  # any failure must reach the scheduler
            taskid = next((t for t, f in list(self._task_obj.items()) if f is args), None)
            if taskid is None:
                return
            result = {'result': None, 'taskid': taskid,
                      'traceback': format_exception(type(exc), exc, exc.__traceback__)}
        self._taskresult[result['taskid']] = result

    def _clean_queue(self, jobid, graph, result=None):
        if result is not None and result.get('traceback'):
            self.tracebacks.append(''.join(result['traceback']))
        return super()._clean_queue(jobid, graph, result=result)

    def terminate(self):
        """End every worker now (SIGTERM, then SIGKILL after 5 s) and close the pool."""
        procs = list((getattr(self.pool, '_processes', None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(1)
