"""Group level: build a training dataset from the participant derivatives and train a model.

``qsmprep bids_dir output_dir group`` calls :func:`run_group`.  The learning options are
the ``--resume`` and ``--dl-*`` options of :func:`qsmprep.cli.parser.build_parser` (the
fields ``resume`` and ``dl_*`` of :class:`qsmprep.cli.config.Settings`); they are read with
``getattr`` and these defaults, so any object with those attributes can drive a run:

=======================  ================  ============================================
setting                  default           meaning
=======================  ================  ============================================
``dl_model``             ``'modl'``        ``modl`` (3D patches), ``swin`` (2D slices),
                                           ``fcn`` (baseline, 3D patches)
``dl_source``            ``'derivatives'`` or ``'simulate-truth'`` (reads ``--derivatives``,
                                           the simulator's ``derivatives/qsmprep-simulate``)
``dl_epochs``            10
``dl_steps_per_epoch``   None              one pass over the training samples
``dl_batch_size``        2
``dl_learning_rate``     1e-3
``dl_lr_schedule``       ``'cosine'``
``dl_patch_size``        auto (3D) / 128   3D: :func:`auto_patch_size` (≈ 96 mm, 48 at 2 mm)
``dl_seed``              0
``dl_model_params``      ``{}``            builder keyword arguments (JSON)
``dl_validation``        0.2               fraction of subjects held out
``dl_checkpoint_every``  200               steps
``dl_mixed_precision``   ``'auto'``        on when training on a GPU
``resume``               False             continue from the last checkpoint (also
                                           ``dl_resume``; starts afresh when there is none)
``dl_name``              the model kind    model folder name under ``models/``
=======================  ================  ============================================

The dataset (shards) is written under ``<work_dir>/dl_dataset/<kind>`` and reused when its
settings match; the model goes to ``<derivatives>/models/<name>/`` (``model.keras``,
``model.weights.h5``, ``model.json``, logs, checkpoints).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from qsmprep.utils.logs import IMPORTANT

LOGGER = logging.getLogger('qsmprep')

__all__ = ['auto_patch_size', 'dataset_options', 'run_group', 'training_config']


def _get(settings, name, default=None):
    value = getattr(settings, name, None)
    return default if value is None else value


def auto_patch_size(voxel_size, brain_extent=None, *, target_mm: float = 96.0) -> int:
    """Edge (voxels) of the cubic 3D training patches when ``--dl-patch-size`` is not set.

    About ``target_mm`` of tissue (the dipole field of a source reaches that far), a multiple of
    8 (the U-Net halves it three times), between 16 and 64 voxels, and no larger than the
    smallest brain extent (``brain_extent``, voxels, e.g. the mask's bounding box).

    >>> auto_patch_size(2.0), auto_patch_size(1.0), auto_patch_size(4.0)
    (48, 64, 24)
    >>> auto_patch_size((1.0, 1.0, 2.0), brain_extent=(150, 180, 40))
    40
    """
    import numpy as np

    vs = float(np.max(np.broadcast_to(np.asarray(voxel_size, float), (3,))))
    n = round(target_mm / vs / 8.0) * 8
    if brain_extent is not None:
        n = min(n, int(min(brain_extent)) // 8 * 8)
    return int(min(64, max(16, n)))


def _brain_extent(mask_file):
    import numpy as np

    from qsmprep.utils.images import load

    m = load(mask_file)[0] > 0
    if not m.any():
        return None
    idx = np.argwhere(m)
    return tuple(int(v) for v in idx.max(0) - idx.min(0) + 1)


def dataset_options(settings, pairs=None) -> dict:
    """Keyword arguments of :func:`qsmprep.dl.data.build_dataset` from the settings.

    Without ``dl_patch_size``, 3D patches get :func:`auto_patch_size` of the first pair's
    voxel size and brain extent (48 when no pair is given).
    """
    model = _get(settings, 'dl_model', 'modl')
    kind = 'slice2d' if model == 'swin' else 'patch3d'
    size = _get(settings, 'dl_patch_size', None)
    if size is None:
        if kind == 'slice2d':
            size = 128
        elif pairs:
            size = auto_patch_size(pairs[0].voxel_size, _brain_extent(pairs[0].mask))
        else:
            size = 48
    opts = {'kind': kind, 'source': _get(settings, 'dl_source', 'derivatives'),
            'seed': int(_get(settings, 'dl_seed', 0)),
            'validation_fraction': float(_get(settings, 'dl_validation', 0.2)),
            'subjects': (list(settings.participant_labels)
                         if getattr(settings, 'participant_labels', None) else None)}
    if kind == 'patch3d':
        opts['patch_shape'] = [int(size)] * 3
        opts['channels'] = 2 if model == 'modl' else 1
    else:
        opts['crop'] = [int(size)] * 2
    return opts


def training_config(settings):
    """:class:`qsmprep.dl.config.TrainConfig` from the settings."""
    from qsmprep.dl.config import TrainConfig, check_model_params
    from qsmprep.io.errors import UsageError

    model = _get(settings, 'dl_model', 'modl')
    params = _get(settings, 'dl_model_params', {})
    if isinstance(params, str):
        params = json.loads(params)
    try:
        check_model_params(model, params)
    except ValueError as exc:
        message, _, known = str(exc).partition('; ')
        raise UsageError(f'--dl-model-params: {message}', hint=known) from None
    return TrainConfig(
        model=model, model_params=dict(params),
        mixed_precision=_get(settings, 'dl_mixed_precision', 'auto'),
        epochs=int(_get(settings, 'dl_epochs', 10)),
        steps_per_epoch=_get(settings, 'dl_steps_per_epoch', None),
        batch_size=int(_get(settings, 'dl_batch_size', 2)),
        learning_rate=float(_get(settings, 'dl_learning_rate', 1e-3)),
        lr_schedule=_get(settings, 'dl_lr_schedule', 'cosine'),
        seed=int(_get(settings, 'dl_seed', 0)),
        checkpoint_every=int(_get(settings, 'dl_checkpoint_every', 200)))


def _same_dataset(manifest_path: Path, opts: dict, pairs) -> bool:
    if not manifest_path.is_file():
        return False
    m = json.loads(manifest_path.read_text())
    geom = m.get('geometry', {})
    same = (m.get('kind') == opts['kind'] and m.get('seed') == opts['seed']
            and m.get('source') == opts['source']
            and [s['field'] for s in m.get('sources', [])] == [p.field for p in pairs]
            and m.get('split', {}).get('validation_fraction') == opts['validation_fraction'])
    if opts['kind'] == 'patch3d':
        same &= (geom.get('patch_shape') == opts['patch_shape']
                 and m.get('channels') == opts['channels'])
    else:
        same &= geom.get('crop') == opts['crop']
    return bool(same)


def run_group(settings) -> int:
    """Dataset → training → model folder under the derivatives; returns an exit code."""
    from qsmprep.dl import require_tensorflow
    from qsmprep.dl.data import build_dataset, find_pairs
    from qsmprep.io.errors import DataError, MissingInputError, UsageError
    from qsmprep.workflows.participant import derivatives_root

    require_tensorflow('the group level (model training)')
    deriv = derivatives_root(settings.output_dir)
    opts = dataset_options(settings)
    if opts['source'] == 'simulate-truth':
        root = getattr(settings, 'derivatives', None)
        if root is None:
            raise UsageError('--dl-source simulate-truth needs --derivatives pointing at the '
                             "simulator's derivatives/qsmprep-simulate folder")
    else:
        root = deriv
    try:
        pairs = find_pairs(root, source=opts['source'], subjects=opts['subjects'])
    except FileNotFoundError as exc:
        raise MissingInputError(str(exc), path=root,
                                hint='run the participant level first') from None
    if not pairs:
        raise MissingInputError(
            'no local field / apparent susceptibility pairs found', path=root,
            hint='the participant level writes the training labels (desc-apparent_Chimap) '
                 'only for subjects with >= 6 orientations')
    if _get(settings, 'dl_patch_size', None) is None and opts['kind'] == 'patch3d':
        opts = dataset_options(settings, pairs)
        LOGGER.log(IMPORTANT, 'patch size %d voxels (from the voxel size and brain extent; '
                   'set --dl-patch-size to choose)', opts['patch_shape'][0])
    cfg = training_config(settings)
    work = Path(settings.work_dir) / 'dl_dataset' / opts['kind']
    if _same_dataset(work / 'manifest.json', opts, pairs):
        LOGGER.log(IMPORTANT, 'reusing the training dataset in %s', work)
    else:
        LOGGER.log(IMPORTANT, 'building the %s training dataset from %d orientation(s) in %s',
                    opts['kind'], len(pairs), work)
        if work.exists():  # ours: an older or half-written dataset (e.g. killed job)
            shutil.rmtree(work)
        try:
            build_dataset(work, pairs=pairs,
                          **{k: v for k, v in opts.items() if k not in ('source', 'subjects')})
        except ValueError as exc:
            if 'no training sample' not in str(exc):
                raise
            shutil.rmtree(work, ignore_errors=True)  # nothing half-written left behind
            size = opts.get('patch_shape', opts.get('crop'))[0]
            raise DataError(
                f'no training sample passed the filters ({len(pairs)} orientation(s), '
                f'patch/crop size {size} voxels): the brain masks are too small or too '
                'fragmented for that size', path=root,
                hint='pass a smaller --dl-patch-size (e.g. 24), check the participant '
                     'masks (desc-local_mask), or train on more subjects') from None
    name = _get(settings, 'dl_name', cfg.model)
    out = deriv / 'models' / name
    bidsignore = deriv / '.bidsignore'
    if bidsignore.is_file() and 'models/' not in bidsignore.read_text().split():
        with open(bidsignore, 'a') as fh:
            fh.write('models/\n')

    from qsmprep.dl.train import TrainingInterrupted, train

    try:
        resume = bool(_get(settings, 'resume', False) or _get(settings, 'dl_resume', False))
        meta = train(work, out, cfg, resume=resume,
                     threads=getattr(settings, 'omp_nthreads', None))
    except TrainingInterrupted as exc:
        LOGGER.warning('%s', exc)
        return 128 + exc.signum if exc.signum else 75
    except FileExistsError as exc:
        raise UsageError(str(exc), path=out,
                         hint='pass --resume to continue, or --dl-name for a new model') \
            from None
    LOGGER.log(IMPORTANT, 'model written to %s (validation: %s)', out, meta.get('metrics'))
    return 0
