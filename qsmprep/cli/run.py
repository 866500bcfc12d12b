"""``qsmprep`` console script: parse → validate → summary → participant/group workflow.

Nothing is written before the input has passed every check: the output and work directories
are created only after validation, just before the workflow hook runs, and never inside
``bids_dir``.  Every expected problem ends with one message on stderr and a BIDS-Apps exit code
(:mod:`qsmprep.io.errors`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from qsmprep.cli.config import Settings
from qsmprep.cli.parser import check_paths, load_plugin_file, parse_command_line
from qsmprep.io.errors import (
    BIDSValidationError,
    CantCreateError,
    MissingInputError,
    QsmprepError,
    UsageError,
)
from qsmprep.utils.logs import IMPORTANT, setup_console_logging

__all__ = [
    'VALIDATOR',
    'check_settings',
    'find_validator',
    'main',
    'run_bids_validator',
    'setup_logging',
]

LOGGER = logging.getLogger('qsmprep.cli')

#: The schema BIDS validator's executable (PyPI package ``bids-validator-deno``).
VALIDATOR = 'bids-validator-deno'


def setup_logging(verbosity: int = 0) -> int:
    """Log ``qsmprep.*`` to stderr: level 25 (IMPORTANT) by default, -v 20, -vv 15, -vvv 10
    (:func:`qsmprep.utils.logs.setup_console_logging`; Nipype's records: the run's log file)."""
    return setup_console_logging(verbosity)


def find_validator() -> str | None:
    """Path of ``bids-validator-deno`` (next to this Python first, then on ``PATH``)."""
    local = Path(sys.executable).parent / VALIDATOR
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(VALIDATOR)


def run_bids_validator(bids_dir, *, executable: str | None = None, max_errors: int = 5,
                       timeout: float = 1800) -> bool:
    """Run the schema validator on ``bids_dir``; raise :class:`BIDSValidationError` on errors.

    Warnings are ignored.  Returns False (after a warning) when the validator is not installed
    or could not run, True when it ran and found no error.
    """
    exe = executable or find_validator()
    if exe is None:
        LOGGER.warning('%s not found: skipping BIDS validation (pip install '
                       'bids-validator-deno, or pass --skip-bids-validation)', VALIDATOR)
        return False
    cmd = [exe, str(bids_dir), '--format', 'json', '--ignoreWarnings', '--no-color']
    LOGGER.info('BIDS validation: %s', ' '.join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        LOGGER.warning('the BIDS validator could not run (%s); continuing without it', exc)
        return False
    try:
        report = json.loads(proc.stdout)
        issues = report['issues']['issues']
    except (json.JSONDecodeError, KeyError, TypeError):
        LOGGER.warning('the BIDS validator failed (exit %s) without a report; continuing '
                       'without it. Its output ends with: %s', proc.returncode,
                       (proc.stderr or proc.stdout).strip()[-500:])
        return False
    errors = []  # one line per (code, subCode, location): several rules may report one issue
    for issue in issues:
        if issue.get('severity') != 'error':
            continue
        code = issue.get('code', '?') + (f" {issue['subCode']}" if issue.get('subCode') else '')
        text = f'{code} at {issue.get("location", "?")}'
        if text not in errors:
            errors.append(text)
    if errors:
        shown = errors[:max_errors]
        more = f' (+{len(errors) - max_errors} more)' if len(errors) > max_errors else ''
        hint = (f'fix the dataset (run `{VALIDATOR} {bids_dir}` for details) or pass '
                '--skip-bids-validation')
        if any(e.startswith('SIDECAR_KEY_REQUIRED Units ') for e in errors):
            hint += ('. Phase sidecars need "Units": "rad" or "arbitrary" (qsm-forward does not '
                     'write it; with --skip-bids-validation qsmprep accepts phase without '
                     'Units when its values are radians)')
        raise BIDSValidationError(
            f'BIDS validation failed with {len(errors)} error(s): ' + '; '.join(shown) + more,
            path=bids_dir, hint=hint,
        )
    LOGGER.info('BIDS validation passed')
    return True


def check_settings(subjects, settings: Settings) -> None:
    """Refuse options the data cannot support (:class:`UsageError`, 64)."""
    if settings.echo_combination == 'linear-fit':
        for subj in subjects:
            for o in subj.orientations:
                if o.n_echoes < 2:
                    raise UsageError(
                        f'--echo-combination linear-fit needs at least 2 echoes, but '
                        f'sub-{o.subject} {o.label} has 1', path=o.echoes[0].phase,
                        hint='use --echo-combination average (or weighted) for single-echo '
                             'data',
                    )


def _hook(module: str, name: str):
    """Import ``module.name`` lazily; None when the module/function does not exist yet."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + '.')):
            return None
        raise
    return getattr(mod, name, None)


def _make_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CantCreateError(f'cannot create the {what} ({exc.strerror or exc})', path=path,
                              hint='choose a writable location') from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CantCreateError(f'the {what} is not writable', path=path,
                              hint='choose a writable location or fix its permissions')


def _run(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cl = parse_command_line(argv)
    except SystemExit as exc:  # --help/--version (0) or a usage error (64)
        return int(exc.code or 0)
    ns = cl.namespace
    plugin, plugin_args = ('MultiProc', {})
    if {'plugin', 'plugin_args'} & set(cl.from_file):  # recorded in a --config-file
        plugin = cl.from_file.get('plugin', plugin)
        plugin_args = cl.from_file.get('plugin_args') or {}
    elif ns.use_plugin is not None:
        plugin, plugin_args = load_plugin_file(ns.use_plugin)
    from qsmprep.io.bids import check_bids_filters, read_bids_filters

    bids_filters = None
    if ns.bids_filter_file is not None:
        bids_filters = read_bids_filters(ns.bids_filter_file)
    elif cl.from_file.get('bids_filters') is not None:
        bids_filters = check_bids_filters(cl.from_file['bids_filters'], source=ns.config_file)
    settings = Settings.from_namespace(ns, plugin=plugin, plugin_args=plugin_args,
                                       bids_filters=bids_filters,
                                       command_line=shlex.join(['qsmprep', *argv]))
    setup_logging(settings.verbosity)
    try:  # the checks of qsmprep.options, before anything runs (the parser's are a subset)
        settings.options()
    except ValueError as exc:
        raise UsageError(f'invalid processing options: {exc}',
                         hint='see qsmprep --help for the allowed values') from None
    for level, message in cl.notes:
        LOGGER.log(level, '%s', message)
    if bids_filters:
        LOGGER.info('BIDS filter: %s', json.dumps(bids_filters))
    if settings.omp_nthreads > settings.nprocs:
        LOGGER.warning('--omp-nthreads %d exceeds --nprocs %d: processes will compete for CPUs',
                       settings.omp_nthreads, settings.nprocs)
    check_paths(settings.bids_dir, settings.output_dir, settings.work_dir,
                derivatives=settings.derivatives, model=settings.model)

    if settings.analysis_level == 'group':
        return _run_group(settings)

    if settings.skip_bids_validation:
        LOGGER.info('BIDS validation skipped (--skip-bids-validation)')
    else:
        run_bids_validator(settings.bids_dir)

    from qsmprep.io.bids import collect_subjects
    from qsmprep.io.datamodel import format_summary

    subjects = collect_subjects(
        settings.bids_dir, settings.participant_labels, session_labels=settings.session_labels,
        derivatives=settings.derivatives, reference=settings.reference_orientation,
        bids_filters=settings.bids_filters,
    )
    check_settings(subjects, settings)
    print(format_summary(subjects), flush=True)
    if settings.validate_only:
        LOGGER.log(IMPORTANT, 'input is valid (%d participant/session(s)); --validate-only: '
                   'nothing was written', len(subjects))
        return 0

    run_participant = _hook('qsmprep.workflows.participant', 'run_participant')
    if run_participant is None:
        print('qsmprep: participant workflow not available yet', file=sys.stderr)
        return 1
    _make_dir(settings.output_dir, 'output directory')
    _make_dir(settings.work_dir, 'work directory')
    return int(run_participant(subjects, settings) or 0)


def _run_group(settings: Settings) -> int:
    if not settings.output_dir.is_dir():
        raise MissingInputError(
            'output_dir does not exist: the group level needs the participant-level outputs',
            path=settings.output_dir, hint='run the participant level first',
        )
    if settings.validate_only:
        return 0
    run_group = _hook('qsmprep.workflows.group', 'run_group')
    if run_group is None:
        print('qsmprep: group workflow not available yet', file=sys.stderr)
        return 1
    _make_dir(settings.work_dir, 'work directory')
    return int(run_group(settings) or 0)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, like :class:`KeyboardInterrupt` on SIGINT, so that
    every ``finally`` runs (workers ended, temporary files removed); exit code 143."""


def _on_signal(signum, frame):
    # first signal: unwind; later ones are ignored so that the clean-up is not cut short
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)


def _install_signal_handlers():
    """SIGTERM/SIGINT → exception in the main thread; returns the previous handlers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup/background jobs keep SIG_IGN
            old[sig] = signal.signal(sig, _on_signal)
    return old


def main(argv=None) -> int:
    """Entry point of the ``qsmprep`` console script; returns the exit code.

    Expected problems (:class:`~qsmprep.io.errors.QsmprepError`) print one line on stderr and
    return their BIDS-Apps code; unexpected exceptions print a traceback and return 1.
    SIGINT (Ctrl-C) returns 130 and SIGTERM (``timeout``, SLURM preemption, ``docker stop``)
    143, without a traceback, after the workers have ended; ``output_dir`` keeps its earlier
    complete state.
    """
    old = _install_signal_handlers()
    try:
        return _run(argv)
    except QsmprepError as err:
        print(f'qsmprep: error: {err}', file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print('qsmprep: interrupted (SIGINT); no half-written output was left. Run the same '
              'command again to continue (finished nodes are reused)', file=sys.stderr)
        return 130
    except Terminated:
        print('qsmprep: terminated (SIGTERM); no half-written output was left. Run the same '
              'command again to continue (finished nodes are reused)', file=sys.stderr)
        return 143
    except Exception:
        LOGGER.exception('qsmprep failed with an unexpected error')
        return 1
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
