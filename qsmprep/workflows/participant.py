"""Run the participant level: build the graph, run it, move outputs into place, report."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from qsmprep.utils.logs import IMPORTANT

LOGGER = logging.getLogger('qsmprep')


def _get(settings, name, default=None):
    return getattr(settings, name, default) if settings is not None else default


def derivatives_root(output_dir) -> Path:
    """The derivatives dataset folder: ``output_dir`` itself when its name contains
    ``qsmprep`` (BIDS: ``GeneratedBy[0].Name`` must be a substring of the folder name),
    else ``output_dir/qsmprep``."""
    out = Path(output_dir).absolute()
    return out if 'qsmprep' in out.name else out / 'qsmprep'


def workflow_options(settings) -> dict:
    """Keyword arguments of :func:`~qsmprep.workflows.base.init_single_subject_wf`."""
    mask = _get(settings, 'mask_method', 'auto')
    if mask in (None, 'auto'):
        mask = 'bet' if shutil.which('bet') else 'python'
    reg = _get(settings, 'registration', 'auto')
    if reg in (None, 'auto'):
        reg = 'flirt' if shutil.which('flirt') else 'sitk'
    return {
        'mask_method': mask,
        'mask_erosion': int(_get(settings, 'mask_erosion', 2)),
        'mask_threshold': float(_get(settings, 'mask_threshold', 0.2)),
        'registration': reg,
        'unwrapping': _get(settings, 'unwrapping', 'wrapped-difference'),
        'echo_combination': _get(settings, 'echo_combination', 'auto'),
        'vsharp_radii': _get(settings, 'vsharp_radii', None),
        'vsharp_threshold': float(_get(settings, 'vsharp_threshold', 0.05)),
        'tkd_threshold': float(_get(settings, 'tkd_threshold', 0.15)),
        'sti_regularization': float(_get(settings, 'sti_regularization', 0.3)),
        'model': str(_get(settings, 'model')) if _get(settings, 'model') else None,
    }


def init_qsmprep_wf(subjects, *, bids_dir, staging_dir, work_dir, options):
    """One workflow holding every subject's :func:`init_single_subject_wf`."""
    from nipype.pipeline import engine as pe

    from qsmprep.workflows.base import init_single_subject_wf

    wf = pe.Workflow(name='qsmprep_wf', base_dir=str(work_dir))
    for subject in subjects:
        wf.add_nodes([init_single_subject_wf(subject, output_dir=staging_dir,
                                             bids_dir=bids_dir, **options)])
    return wf


def _plugin(settings):
    """Nipype plugin and arguments from the settings (``--use-plugin``, ``--nprocs``)."""
    if hasattr(settings, 'nipype_plugin'):
        return settings.nipype_plugin()
    return 'Linear', {}


def finalize_outputs(subjects, *, staging_dir, deriv_root, bids_dir, options, settings=None):
    """Move each finished subject from staging into the derivatives dataset, write the
    dataset-level files (``dataset_description.json``, ``.bidsignore``, citation) and the
    per-subject HTML report."""
    from qsmprep.reports.boilerplate import write_citation
    from qsmprep.reports.core import generate_report
    from qsmprep.workflows.base import BIDSIGNORE, dataset_description

    deriv_root.mkdir(parents=True, exist_ok=True)
    desc = deriv_root / 'dataset_description.json'
    desc.write_text(json.dumps(dataset_description(bids_dir), indent=2) + '\n')
    (deriv_root / '.bidsignore').write_text(BIDSIGNORE)
    write_citation(deriv_root / 'logs' / 'CITATION.md', options)
    for subject in subjects:
        rel = Path(f'sub-{subject.subject}')
        if subject.session:
            rel = rel / f'ses-{subject.session}'
        src, dst = staging_dir / rel, deriv_root / rel
        if dst.exists():
            shutil.rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
        log = deriv_root / f'sub-{subject.subject}' / 'log'
        log.mkdir(parents=True, exist_ok=True)
        if settings is not None and hasattr(settings, 'write_toml'):
            settings.write_toml(log / f'qsmprep_{getattr(settings, "run_uuid", "run")}.toml')
        generate_report(deriv_root, subject, bids_dir=bids_dir, options=options)


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
    staging_dir = work_dir / 'staging'
    if staging_dir.exists():
        shutil.rmtree(staging_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
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
                         work_dir=work_dir, options=options)
    plugin, plugin_args = _plugin(settings)
    if plugin in ('SLURM', 'SLURMGraph', 'SGE', 'SGEGraph', 'PBS', 'PBSGraph'):
        import getpass

        os.environ.setdefault('LOGNAME', getpass.getuser())  # nipype's cluster plugins read it
    LOGGER.log(IMPORTANT, 'Running %d subject(s) with %s (work dir %s)', len(subjects), plugin,
               work_dir)
    t0 = time.time()
    try:
        wf.run(plugin=plugin, plugin_args=plugin_args)
    except Exception as exc:  # nipype raises RuntimeError listing crashed nodes
        LOGGER.error('qsmprep failed: %s\nCrash files: %s\nThe output directory was not '
                     'modified.', exc, work_dir / 'crash')
        return 1
    finalize_outputs(subjects, staging_dir=staging_dir, deriv_root=deriv_root,
                     bids_dir=bids_dir, options=options, settings=settings)
    LOGGER.log(IMPORTANT, 'Finished in %.1f s; derivatives in %s', time.time() - t0, deriv_root)
    return 0
