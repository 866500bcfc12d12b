"""Run the participant level: build the graph, run it, move outputs into place, report."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from qsmprep.io.errors import QsmprepError
from qsmprep.utils.progress import RunMonitor, error_summary

LOGGER = logging.getLogger('qsmprep')


def _get(settings, name, default=None):
    return getattr(settings, name, default) if settings is not None else default


def derivatives_root(output_dir) -> Path:
    """The derivatives dataset folder: ``output_dir`` itself when its name contains
    ``qsmprep`` (BIDS: ``GeneratedBy[0].Name`` must be a substring of the folder name),
    else ``output_dir/qsmprep``."""
    out = Path(output_dir).absolute()
    return out if 'qsmprep' in out.name else out / 'qsmprep'


def workflow_options(settings):
    """The :class:`~qsmprep.options.PipelineOptions` of a run (``'auto'`` choices resolved
    for this machine): what :func:`~qsmprep.workflows.base.init_single_subject_wf` builds
    the graph from and the boilerplate describes."""
    from qsmprep.options import PipelineOptions

    return PipelineOptions.from_settings(settings).resolved()


def init_qsmprep_wf(subjects, *, bids_dir, staging_dir, work_dir, options, derivatives=None):
    """One workflow holding every subject's :func:`init_single_subject_wf`."""
    from nipype.pipeline import engine as pe

    from qsmprep.workflows.base import init_single_subject_wf

    wf = pe.Workflow(name='qsmprep_wf', base_dir=str(work_dir))
    for subject in subjects:
        wf.add_nodes([init_single_subject_wf(subject, output_dir=staging_dir,
                                             bids_dir=bids_dir, options=options,
                                             dataset_links={'masks': derivatives})])
    return wf


def _plugin(settings):
    """Nipype plugin and arguments from the settings (``--use-plugin``, ``--nprocs``)."""
    if hasattr(settings, 'nipype_plugin'):
        return settings.nipype_plugin()
    return 'Linear', {}


#: Free space the work directory must have before a run starts (bytes).
MIN_FREE_WORK = 64 * 2**20
#: Free space ``output_dir`` needs on top of the staged outputs (report, logs), bytes.
OUTPUT_MARGIN = 4 * 2**20
#: The dataset lock (``fcntl.flock``): held while a run writes into the derivatives dataset.
LOCK_NAME = Path('logs') / '.qsmprep.lock'


def _subject_rel(subject) -> Path:
    rel = Path(f'sub-{subject.subject}')
    return rel / f'ses-{subject.session}' if subject.session else rel


def _disk_full(where, path, exc):
    from qsmprep.io.errors import DiskFullError

    why = getattr(exc, 'strerror', None) or 'no space left on device'
    return DiskFullError(
        f'no space left in the {where} ({why})', path=path,
        hint='free some space (or raise the quota) and run the same command again: finished '
             'nodes in the work directory are reused, and earlier results in output_dir were '
             'not changed')


def _claim_staging(staging_root: Path, run_uuid: str):
    """This run's staging folder ``<work>/staging/<run_uuid>``, locked for the run; folders of
    earlier runs that no process holds any more (killed runs) are removed."""
    from qsmprep.utils.fsutils import try_lock

    staging_root.mkdir(parents=True, exist_ok=True)
    fd = try_lock(staging_root / f'{run_uuid}.lock')
    staging = staging_root / run_uuid
    for other in staging_root.iterdir():
        if other.name == run_uuid or not other.is_dir():
            continue
        lock = staging_root / f'{other.name}.lock'
        if not lock.exists():  # a folder of qsmprep < 0.2 (one shared staging folder)
            continue
        held = try_lock(lock)
        if held is not None:  # its run has ended: remove what it left
            shutil.rmtree(other, ignore_errors=True)
            lock.unlink(missing_ok=True)
            os.close(held)
    if staging.exists():
        shutil.rmtree(staging)
    return staging, fd


def _release_staging(staging: Path, fd) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    if fd is not None:
        (staging.parent / f'{staging.name}.lock').unlink(missing_ok=True)
        os.close(fd)


def _recover(deriv_root: Path) -> None:
    """Undo what a killed run left in the derivatives dataset (call under the lock):
    half-built subject folders (``.sub-XX.<uuid>.partial``) and temporary files are removed,
    a subject folder moved aside (``.sub-XX.<uuid>.old``) is put back when no folder replaced
    it, else removed."""
    from qsmprep.utils.fsutils import remove_stale_temporaries

    parents = [deriv_root, *(p for p in deriv_root.glob('sub-*') if p.is_dir())]
    for parent in parents:
        for p in list(parent.glob('.*.partial')) + list(parent.glob('.*.old')):
            if not p.is_dir():
                continue
            target = parent / p.name[1:].split('.')[0]
            if p.suffix == '.old' and not target.exists():
                os.rename(p, target)
                LOGGER.warning('restored %s, left aside by an interrupted run', target)
            else:
                shutil.rmtree(p, ignore_errors=True)
    remove_stale_temporaries(deriv_root)


def _owned(log_dir: Path) -> set[str]:
    """Paths (relative to the dataset) that earlier qsmprep runs wrote, from their lists."""
    owned = set()
    for f in log_dir.glob('qsmprep_*_files.txt'):
        owned.update(line.strip() for line in f.read_text().splitlines() if line.strip())
    return owned


def _carry_over(old: Path, new: Path, owned: set[str], deriv_root: Path) -> list[str]:
    """Hard-link (or copy) into ``new`` every file of ``old`` that this run did not write
    and that no earlier qsmprep run wrote: the user's own files and the earlier logs."""
    kept = []
    for dirpath, dirnames, filenames in os.walk(old):
        d = Path(dirpath)
        target_dir = new / d.relative_to(old)
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in filenames + [n for n in dirnames if (d / n).is_symlink()]:
            src, dst = d / name, target_dir / name
            rel = src.relative_to(deriv_root).as_posix()
            if dst.exists() or dst.is_symlink() or rel in owned:
                continue  # replaced by this run, or an earlier run's output it did not redo
            try:
                os.link(src, dst, follow_symlinks=False)
            except OSError:
                if src.is_symlink():
                    os.symlink(os.readlink(src), dst)
                else:
                    shutil.copy2(src, dst)
            kept.append(rel)
    return kept


def _same_device(a, b) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _install_subject(subject, *, staging_dir, deriv_root, run_uuid, settings):
    """Build ``sub-XX[/ses-YY]`` next to the old one (``.sub-XX.<uuid>.partial``), keep the
    files qsmprep did not write, then swap the two folders with signals held off."""
    from qsmprep.utils.fsutils import signals_deferred, write_text

    rel = _subject_rel(subject)
    src, dst = staging_dir / rel, deriv_root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    new = dst.parent / f'.{dst.name}.{run_uuid}.partial'
    old = dst.parent / f'.{dst.name}.{run_uuid}.old'
    try:
        if _same_device(src, dst.parent):
            os.rename(src, new)           # same file system: instant
        else:                             # a failure (full disk) leaves only the .partial
            shutil.copytree(src, new, copy_function=shutil.copy2)
        written = sorted(p.relative_to(new).as_posix() for p in new.rglob('*') if p.is_file())
        written = [(rel / w).as_posix() for w in written]
        log_dir = (new if not subject.session else deriv_root / rel.parts[0]) / 'log'
        if dst.is_dir():
            _carry_over(dst, new, _owned(dst / 'log' if not subject.session else log_dir),
                        deriv_root)
        if settings is not None and hasattr(settings, 'to_toml'):
            write_text(log_dir / f'qsmprep_{run_uuid}.toml', settings.to_toml())
        write_text(log_dir / f'qsmprep_{run_uuid}_files.txt', '\n'.join(written) + '\n')
        with signals_deferred():          # both renames, or neither
            moved = dst.exists()
            if moved:
                os.rename(dst, old)
            try:
                os.rename(new, dst)
            except OSError:
                if moved:
                    os.rename(old, dst)
                raise
    finally:
        shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _write_dataset_files(deriv_root: Path, bids_dir, options, derivatives=None) -> None:
    """``dataset_description.json``, ``.bidsignore`` (lines of other tools kept) and
    ``logs/CITATION.md``, each written atomically."""
    from qsmprep.reports.boilerplate import write_citation
    from qsmprep.utils.fsutils import write_text
    from qsmprep.workflows.base import BIDSIGNORE, dataset_description

    desc = deriv_root / 'dataset_description.json'
    text = json.dumps(dataset_description(bids_dir, derivatives), indent=2) + '\n'
    if not desc.is_file() or desc.read_text() != text:
        write_text(desc, text)
    ignore = deriv_root / '.bidsignore'
    current = ignore.read_text() if ignore.is_file() else ''
    extra = [line for line in current.splitlines() if line and line not in BIDSIGNORE.split('\n')]
    text = BIDSIGNORE + ''.join(f'{line}\n' for line in extra)
    if current != text:
        write_text(ignore, text)
    write_citation(deriv_root / 'logs' / 'CITATION.md', options)
    from qsmprep.io.derivatives import descriptions_tsv

    tsv = deriv_root / 'descriptions.tsv'  # the desc- labels (BIDS >= 1.10)
    current = tsv.read_text() if tsv.is_file() else ''
    models = [line.split('\t')[0].removeprefix('desc-')  # labels of earlier --model runs
              for line in current.splitlines()[1:] if line]
    model = _get(options, 'model')
    if model:
        from qsmprep.interfaces.dl import model_description

        models.append(model_description(model)[0])
    text = descriptions_tsv(models)
    if text != current:
        write_text(tsv, text)
    from qsmprep import __version__
    from qsmprep.io.derivatives import DESCRIPTIONS_SIDECAR, readme

    side = deriv_root / 'descriptions.json'
    text = json.dumps(DESCRIPTIONS_SIDECAR, indent=2) + '\n'
    if not side.is_file() or side.read_text() != text:
        write_text(side, text)
    if not (deriv_root / 'README.md').exists() and not (deriv_root / 'README').exists():
        write_text(deriv_root / 'README.md', readme(__version__))


def finalize_outputs(subjects, *, staging_dir, deriv_root, bids_dir, options, settings=None):
    """Install each finished subject from staging into the derivatives dataset, write the
    dataset-level files (``dataset_description.json``, ``.bidsignore``, citation) and the
    per-subject HTML report.

    Everything happens under the dataset lock (``logs/.qsmprep.lock``), so runs of several
    participants into one ``output_dir`` at the same time wait for each other here.  Every
    file is written under a temporary name and renamed when complete; a subject folder is
    built next to the old one and swapped in only when complete, keeping the files qsmprep
    did not write (earlier logs, the user's own files).  A full disk raises
    :class:`~qsmprep.io.errors.DiskFullError` (exit 74) and leaves earlier results as they were.
    """
    from qsmprep.reports.core import generate_report
    from qsmprep.utils.fsutils import file_lock, free_bytes, is_disk_full, tree_bytes

    run_uuid = _get(settings, 'run_uuid') or Path(staging_dir).name
    deriv_root = Path(deriv_root)
    try:
        deriv_root.mkdir(parents=True, exist_ok=True)
        with file_lock(deriv_root / LOCK_NAME):
            _recover(deriv_root)
            need = OUTPUT_MARGIN
            if (Path(staging_dir).exists()
                    and os.stat(staging_dir).st_dev != os.stat(deriv_root).st_dev):
                need += tree_bytes(staging_dir)
            free = free_bytes(deriv_root)
            if free < need:
                from qsmprep.io.errors import DiskFullError

                raise DiskFullError(
                    f'not enough free space in the output directory: {free / 2**20:.1f} MiB '
                    f'free, {need / 2**20:.1f} MiB needed', path=deriv_root,
                    hint='free some space and run the same command again (finished nodes '
                         'are reused); nothing was written')
            _write_dataset_files(deriv_root, bids_dir, options,
                                 derivatives=_get(settings, 'derivatives'))
            for subject in subjects:
                _install_subject(subject, staging_dir=Path(staging_dir), deriv_root=deriv_root,
                                 run_uuid=run_uuid, settings=settings)
                generate_report(deriv_root, subject, bids_dir=bids_dir, options=options,
                                settings=settings)
    except OSError as exc:
        if is_disk_full(exc):
            raise _disk_full('output directory', deriv_root, exc) from None
        raise


def _check_work_space(work_dir: Path) -> None:
    from qsmprep.io.errors import DiskFullError
    from qsmprep.utils.fsutils import free_bytes

    free = free_bytes(work_dir)
    if free < MIN_FREE_WORK:
        raise DiskFullError(
            f'not enough free space in the work directory: {free / 2**20:.1f} MiB free, at '
            f'least {MIN_FREE_WORK / 2**20:.0f} MiB needed', path=work_dir,
            hint='free some space or pass -w/--work-dir on a larger disk (e.g. scratch)')


def _runner(plugin, plugin_args):
    """The Nipype plugin to run: MultiProc as :mod:`qsmprep.workflows.multiproc`'s safe
    version (no hang on a full work disk, workers end with the run), others by name."""
    if plugin == 'MultiProc':
        from qsmprep.workflows.multiproc import MultiProcPlugin

        return MultiProcPlugin(plugin_args=plugin_args)
    return plugin


def _failed_disk_full(exc, runner) -> bool:
    from qsmprep.utils.fsutils import is_disk_full

    tracebacks = getattr(runner, 'tracebacks', [])
    return is_disk_full(exc) or any(is_disk_full(RuntimeError(t)) for t in tracebacks)


def run_participant(subjects, settings) -> int:
    """Build and run the participant workflow for validated ``subjects``; return an exit code.

    Outputs are written under the work directory first and moved into the derivatives
    dataset only when every node of the run succeeded: a failed run leaves the output
    directory as it was.
    """
    from nipype import config as ncfg
    from nipype import logging as nlogging

    bids_dir = Path(_get(settings, 'bids_dir')).absolute()
    deriv_root = derivatives_root(_get(settings, 'output_dir'))
    work_dir = Path(_get(settings, 'work_dir') or (Path.cwd() / 'work')).absolute()
    options = workflow_options(settings)
    if _get(settings, 'boilerplate_only', False):
        from qsmprep.reports.boilerplate import write_citation

        write_citation(deriv_root / 'logs' / 'CITATION.md', options)
        LOGGER.info('Wrote %s', deriv_root / 'logs' / 'CITATION.md')
        return 0
    work_dir.mkdir(parents=True, exist_ok=True)
    _check_work_space(work_dir)
    # per-run staging (<work>/staging/<run_uuid>): runs sharing a work dir never touch
    # each other's outputs (SLURM arrays, several participants at once)
    run_uuid = _get(settings, 'run_uuid') or f'{time.strftime("%Y%m%d-%H%M%S")}_{os.getpid()}'
    staging_dir, staging_lock = _claim_staging(work_dir / 'staging', run_uuid)
    omp = _get(settings, 'omp_nthreads')
    if omp:
        os.environ['OMP_NUM_THREADS'] = str(omp)
        os.environ['QSMPREP_FFT_WORKERS'] = str(omp)
    ncfg.update_config({
        'execution': {'crashdump_dir': str(work_dir / 'crash'), 'crashfile_format': 'txt',
                      'remove_unnecessary_outputs': False, 'poll_sleep_duration': 0.05,
                      'stop_on_first_crash': bool(_get(settings, 'stop_on_first_crash', True))},
        'monitoring': {'enabled': False},
    })
    nlogging.update_logging(ncfg)
    wf = init_qsmprep_wf(subjects, bids_dir=bids_dir, staging_dir=staging_dir,
                         work_dir=work_dir, options=options,
                         derivatives=_get(settings, 'derivatives'))
    plugin, plugin_args = _plugin(settings)
    if plugin in ('SLURM', 'SLURMGraph', 'SGE', 'SGEGraph', 'PBS', 'PBSGraph'):
        import getpass

        os.environ.setdefault('LOGNAME', getpass.getuser())  # nipype's cluster plugins read it
    # header, log file, per-subject progress (status_callback) and summary
    monitor = RunMonitor(subjects, settings, work_dir=work_dir, deriv_root=deriv_root,
                         plugin=plugin, plugin_args=plugin_args)
    plugin_args = monitor.start(wf)
    LOGGER.info('Running %d subject(s) with %s (work dir %s)', len(subjects), plugin, work_dir)
    t0 = time.time()
    runner = _runner(plugin, plugin_args)
    try:
        with monitor:
            wf.run(plugin=runner, plugin_args=plugin_args)
    except Exception as exc:  # nipype raises RuntimeError listing crashed nodes
        _release_staging(staging_dir, staging_lock)
        if _failed_disk_full(exc, runner):
            monitor.finish(74)
            raise _disk_full('work directory', work_dir, exc) from None
        LOGGER.error('qsmprep failed: %s\nCrash files: %s\nThe output directory was not '
                     'modified.', error_summary(exc), work_dir / 'crash')
        return monitor.finish(1)
    finally:
        if hasattr(runner, 'terminate'):  # workers end with the run (also on signals)
            runner.terminate()
    try:
        finalize_outputs(subjects, staging_dir=staging_dir, deriv_root=deriv_root,
                         bids_dir=bids_dir, options=options, settings=settings)
    except QsmprepError as err:
        monitor.finish(err.exit_code)
        raise
    finally:
        _release_staging(staging_dir, staging_lock)
    LOGGER.info('Finished in %.1f s; derivatives in %s', time.time() - t0, deriv_root)
    return monitor.finish(0)
