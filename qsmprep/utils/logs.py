"""Log levels, the console handler and the run's log file.

``qsmprep`` shows ``IMPORTANT`` (25) messages by default, ``INFO`` with ``-v``, ``VERBOSE`` (15)
with ``-vv`` and ``DEBUG`` with ``-vvv``.  Progress of long steps that users wait for (dataset
building, training epochs, checkpoints) is logged at ``IMPORTANT``.

Nipype's own records (loggers ``nipype.workflow``, ``nipype.interface``, ``nipype.utils``)
go to the run's log file (:func:`attach_log_file`) and, on the console, only from ``WARNING``
up by default; ``-v`` brings their ``INFO`` records back to the console, ``-vvv`` their
``DEBUG`` records (in the file too).

>>> console_level(0) == IMPORTANT, console_level(1), console_level(2) == VERBOSE
(True, 20, True)
>>> nipype_console_level(0), nipype_console_level(1), nipype_console_level(3)
(30, 20, 10)
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

IMPORTANT = 25
VERBOSE = 15
#: ``extra=`` of records meant for the log file only (what the terminal already printed).
FILE_ONLY = {'file_only': True}

#: Format of qsmprep's records on the console and in the log file.
QSMPREP_FORMAT = '%(asctime)s | %(levelname)-8s | %(message)s'
#: Nipype's own record format (``nipype.utils.logger.Logging.fmt``), kept so its records read
#: as in any other Nipype application.
NIPYPE_FORMAT = '%(asctime)s,%(msecs)d %(name)-2s %(levelname)-2s:\n\t %(message)s'

__all__ = [
    'FILE_ONLY',
    'IMPORTANT',
    'VERBOSE',
    'ConsoleHandler',
    'attach_log_file',
    'console_level',
    'detach_log_file',
    'nipype_console_level',
    'setup_console_logging',
    'setup_nipype_logging',
]


def console_level(verbosity: int = 0) -> int:
    """Level of ``qsmprep.*`` records on the console for ``-v`` × ``verbosity``."""
    return max(IMPORTANT - 5 * int(verbosity), logging.DEBUG)


def nipype_console_level(verbosity: int = 0) -> int:
    """Level of Nipype's records on the console: warnings by default, INFO with ``-v``/``-vv``,
    DEBUG with ``-vvv``."""
    if verbosity >= 3:
        return logging.DEBUG
    return logging.INFO if verbosity >= 1 else logging.WARNING


class ConsoleHandler(logging.Handler):
    """Writes records to the *current* ``sys.stderr`` (so tests capturing it see them), or,
    while a live progress display runs in this process, above that display.

    :mod:`qsmprep.utils.progress` sets :attr:`live_sink` (a callable taking the text) and
    :attr:`live_pid` for the duration of its live display; Nipype's worker processes, forked
    from this one, inherit the handler but write plainly to their stderr.
    """

    live_sink = None
    live_pid: int | None = None

    def __init__(self, level=logging.NOTSET, fmt: str = QSMPREP_FORMAT):
        super().__init__(level)
        self.setFormatter(logging.Formatter(fmt, '%H:%M:%S'))
        self._qsmprep_cli = True  # the tag qsmprep.cli.train uses too: one CLI handler

    def filter(self, record):
        return not getattr(record, 'file_only', False) and super().filter(record)

    def emit(self, record):
        try:
            text = self.format(record)
            sink = ConsoleHandler.live_sink
            if sink is not None and ConsoleHandler.live_pid == os.getpid():
                sink(text)
                return
            stream = sys.stderr
            stream.write(text + '\n')
            stream.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _replace(logger: logging.Logger, tag: str, handler: logging.Handler | None) -> None:
    for h in list(logger.handlers):
        if getattr(h, tag, False):
            logger.removeHandler(h)
            if isinstance(h, logging.FileHandler):
                try:
                    h.close()
                except OSError:  # a full disk fails the flush: the run's exit code says so
                    pass
    if handler is not None:
        setattr(handler, tag, True)
        logger.addHandler(handler)


def setup_console_logging(verbosity: int = 0) -> int:
    """Log ``qsmprep.*`` to the console at :func:`console_level`; return that level."""
    logging.addLevelName(IMPORTANT, 'IMPORTANT')
    logging.addLevelName(VERBOSE, 'VERBOSE')
    level = console_level(verbosity)
    logger = logging.getLogger('qsmprep')
    _replace(logger, '_qsmprep_cli', ConsoleHandler(level))
    # the logger lets INFO through for the log file; the console handler filters
    logger.setLevel(min(level, logging.INFO))
    return level


def setup_nipype_logging(verbosity: int = 0) -> None:
    """Replace Nipype's own stdout handler by a :class:`ConsoleHandler` at
    :func:`nipype_console_level`; with ``-vvv`` Nipype logs DEBUG records."""
    from nipype import config as ncfg
    from nipype import logging as nlogging

    if verbosity >= 3:
        for key in ('workflow_level', 'interface_level', 'utils_level'):
            ncfg.set('logging', key, 'DEBUG')
        nlogging.update_logging(ncfg)
    root = logging.getLogger('nipype')
    for h in list(root.handlers):  # the StreamHandler(sys.stdout) nipype adds on import
        if type(h) is logging.StreamHandler:
            root.removeHandler(h)
    _replace(root, '_qsmprep_cli', ConsoleHandler(nipype_console_level(verbosity),
                                                   fmt=NIPYPE_FORMAT))


def attach_log_file(path, verbosity: int = 0) -> Path:
    """Write Nipype's and qsmprep's records (INFO and up; DEBUG with ``-vvv``) to ``path``.

    Nipype's MultiProc workers are forked from this process and inherit the handler, so
    their node records ("[Node] Setting-up …", "[Node] Finished …") land in the same file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    level = logging.DEBUG if verbosity >= 3 else logging.INFO
    handlers = []
    for name, fmt in (('nipype', NIPYPE_FORMAT), ('qsmprep', QSMPREP_FORMAT)):
        h = logging.FileHandler(path, mode='a', encoding='utf-8')
        h.setLevel(level)
        h.setFormatter(logging.Formatter(fmt, '%y%m%d-%H:%M:%S' if name == 'nipype'
                                         else '%Y-%m-%d %H:%M:%S'))
        _replace(logging.getLogger(name), '_qsmprep_file', h)
        handlers.append(h)
    qlog = logging.getLogger('qsmprep')
    qlog.setLevel(min(qlog.getEffectiveLevel(), level))
    return path


def detach_log_file() -> None:
    """Close and remove the handlers of :func:`attach_log_file`."""
    for name in ('nipype', 'qsmprep'):
        _replace(logging.getLogger(name), '_qsmprep_file', None)
