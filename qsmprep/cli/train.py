"""``qsmprep-train``: training datasets, model training and inference from the command line.

Subcommands::

    qsmprep-train dataset DERIVATIVES OUT_DIR [--source derivatives|simulate-truth]
                          [--kind patch3d|slice2d] [geometry and split options]
    qsmprep-train fit DATASET MODEL_DIR [--model modl|swin|fcn] [--epochs N] [--resume] ...
    qsmprep-train predict MODEL FIELD OUT [--mask MASK] [--b0-dir X Y Z] [--mode ...]
    qsmprep-train evaluate MODEL DATA [--out JSON] [--inputs truth|pipeline] ...

TensorFlow is imported only by ``fit``, ``predict`` and ``evaluate`` with a trained model,
after the arguments are parsed (``evaluate tkd DATA`` / ``evaluate ilsqr DATA`` need none).
Exit codes: 0 success, 64 usage error, 65 bad data, 66 missing input, 69 TensorFlow missing,
73 output not writable, 1 failure, ``128 + signal`` when a training run was interrupted
(SIGTERM/SIGINT) after writing its checkpoint (continue with ``--resume``), 75 when
``--stop-after`` ended it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from qsmprep.io.errors import QsmprepError

__all__ = ['build_parser', 'main']

LOGGER = logging.getLogger('qsmprep.dl')
EX_USAGE, EX_NOINPUT, EX_TEMPFAIL = 64, 66, 75


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f'{self.prog}: error: {message}\n')


def build_parser() -> argparse.ArgumentParser:
    """The ``qsmprep-train`` argument parser (four subcommands)."""
    p = _Parser(prog='qsmprep-train', description=__doc__.split('\n\n')[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-v', '--verbose', action='count', default=0, help='more log output')
    sub = p.add_subparsers(dest='command', required=True, parser_class=_Parser)

    d = sub.add_parser('dataset', help='extract patches/slices into shards + manifest')
    d.add_argument('derivatives', type=Path,
                   help='qsmprep derivatives folder (or the simulator\'s '
                        'derivatives/qsmprep-simulate with --source simulate-truth)')
    d.add_argument('out_dir', type=Path, help='new dataset folder')
    d.add_argument('--source', choices=['derivatives', 'simulate-truth'],
                   default='derivatives',
                   help='derivatives: V-SHARP local field -> STI apparent susceptibility; '
                        'simulate-truth: true local field -> true apparent susceptibility')
    d.add_argument('--kind', choices=['patch3d', 'slice2d'], default='patch3d',
                   help='3D patches (MoDL-QSM) or 2D slices (Swin-UNet)')
    d.add_argument('--patch-size', type=int, nargs='+', default=[48], metavar='N',
                   help='3D patch size in voxels (1 or 3 values; default 48)')
    d.add_argument('--stride', type=int, nargs='+', default=None, metavar='N',
                   help='3D patch stride (default half the patch)')
    d.add_argument('--min-inside', type=float, default=0.2,
                   help='minimum fraction of a 3D patch inside the mask (default 0.2)')
    d.add_argument('--crop', type=int, nargs='+', default=[128], metavar='N',
                   help='2D crop size (default 128)')
    d.add_argument('--max-outside', type=float, default=0.75,
                   help='2D: discard slices with more than this fraction outside the mask '
                        '(default 0.75)')
    d.add_argument('--min-gap', type=int, default=4,
                   help='2D: slices left between two picks along an axis (default 4)')
    d.add_argument('--slices-per-axis', type=int, default=None,
                   help='2D: at most this many slices per axis and volume')
    d.add_argument('--flip-prob', type=float, default=None,
                   help='flip probability (default 0.4 in 2D, 0 in 3D)')
    d.add_argument('--channels', type=int, choices=[1, 2], default=None,
                   help='label channels (3D default 2: chi and the complementary field)')
    d.add_argument('--validation-fraction', type=float, default=0.2)
    d.add_argument('--validation-subjects', nargs='+', default=None, metavar='LABEL')
    d.add_argument('--participant-label', nargs='+', default=None, metavar='LABEL',
                   help='use only these participants')
    d.add_argument('--seed', type=int, default=0)
    d.add_argument('--overwrite', action='store_true',
                   help='replace an existing dataset in out_dir')

    f = sub.add_parser('fit', help='train a model on a dataset')
    f.add_argument('dataset', type=Path, help='dataset folder (with manifest.json)')
    f.add_argument('out_dir', type=Path, help='model folder')
    f.add_argument('--model', choices=['modl', 'swin', 'fcn'], default=None,
                   help='default: modl for 3D datasets, swin for 2D')
    f.add_argument('--model-params', type=json.loads, default={}, metavar='JSON',
                   help='builder keyword arguments, e.g. \'{"width": 32, "denoiser": '
                        '"resnet"}\'')
    f.add_argument('--epochs', type=int, default=10)
    f.add_argument('--steps-per-epoch', type=int, default=None)
    f.add_argument('--batch-size', type=int, default=2)
    f.add_argument('--learning-rate', type=float, default=1e-3)
    f.add_argument('--lr-schedule', choices=['cosine', 'constant', 'step', 'plateau'],
                   default='cosine')
    f.add_argument('--warmup-steps', type=int, default=0)
    f.add_argument('--early-stopping', type=int, default=None, metavar='EPOCHS')
    f.add_argument('--ssim-weight', type=float, default=None,
                   help='weight of 1-SSIM in the loss (default 0.05 for swin, else 0)')
    f.add_argument('--seed', type=int, default=0)
    f.add_argument('--checkpoint-every', type=int, default=200, metavar='STEPS')
    f.add_argument('--keep-checkpoints', type=int, default=2)
    f.add_argument('--mixed-precision', choices=['auto', 'on', 'off'], default='auto')
    f.add_argument('--validation-batches', type=int, default=None)
    f.add_argument('--resume', action='store_true',
                   help='continue from the newest checkpoint in out_dir')
    f.add_argument('--stop-after', type=int, default=None, metavar='STEP',
                   help='checkpoint and stop at this global step (exit 75)')
    f.add_argument('--threads', type=int, default=None, help='TensorFlow intra-op threads')

    r = sub.add_parser('predict', help='predict a chi map from a local-field NIfTI')
    r.add_argument('model', type=Path, help='model folder (model.keras + model.json)')
    r.add_argument('field', type=Path, help='local field NIfTI (ppm)')
    r.add_argument('out', type=Path, help='output chi NIfTI')
    r.add_argument('--mask', type=Path, default=None, help='mask NIfTI (default field != 0)')
    r.add_argument('--b0-dir', type=float, nargs=3, default=None, metavar=('X', 'Y', 'Z'),
                   help='B0 direction in the voxel frame (default: B0_dir of the sidecar, '
                        'else the affine)')
    r.add_argument('--mode', choices=['patches', 'whole', 'slices'], default=None)
    r.add_argument('--batch-size', type=int, default=None)
    r.add_argument('--threads', type=int, default=None)

    e = sub.add_parser('evaluate', help='score a model next to TKD and iLSQR on data with '
                                        'ground truth',
                       description='Score MODEL (and, by default, TKD and the iLSQR baseline) '
                                   'on every orientation of DATA, on the same inputs, against '
                                   'the ground truth: NRMSE, demeaned NRMSE, HFEN, XSIM and '
                                   'the DGM slope per orientation, and their medians.')
    e.add_argument('model', metavar='MODEL',
                   help="model folder (model.json + model.keras, as 'fit' writes), or 'tkd' "
                        "or 'ilsqr' (no TensorFlow needed)")
    e.add_argument('data', type=Path, metavar='DATA',
                   help='dataset with ground truth: a qsmprep-simulate dataset (or its '
                        'derivatives/qsmprep-simulate folder) or a qsm-forward dataset')
    e.add_argument('--model', dest='extra_models', action='append', default=[],
                   metavar='MODEL', help='another model (or tkd/ilsqr) to score on the same '
                                         'inputs; repeatable')
    e.add_argument('--no-baselines', action='store_true',
                   help='do not add tkd and ilsqr beside MODEL')
    e.add_argument('--inputs', choices=['truth', 'pipeline'], default='truth',
                   help='truth: the true local field and brain mask (default); pipeline: the '
                        'local field and mask of a qsmprep participant run (--derivatives), '
                        'scored against the same truth')
    e.add_argument('--derivatives', type=Path, default=None, metavar='DIR',
                   help='--inputs pipeline: the qsmprep output folder holding sub-* '
                        '(default DATA/derivatives/qsmprep)')
    e.add_argument('--participant-label', nargs='+', default=None, metavar='LABEL')
    e.add_argument('--orientation', nargs='+', default=None, metavar='ACQ',
                   help='only these acq- labels (e.g. ori01 ori04)')
    e.add_argument('--out', type=Path, default=None, metavar='JSON',
                   help='write the full result (per orientation, medians, ranking) here')
    e.add_argument('--markdown', action='store_true', help='print the table as Markdown')
    e.add_argument('--mode', choices=['patches', 'whole', 'slices'], default=None,
                   help='inference mode of trained models (default: the model\'s own)')
    e.add_argument('--batch-size', type=int, default=None)
    e.add_argument('--threads', type=int, default=None, help='TensorFlow intra-op threads')
    return p


def _setup_logging(verbosity):
    logger = logging.getLogger('qsmprep')
    # replace our handler, if any, by one on the *current* stderr (a handler kept from an
    # earlier call may point at a stream that has since been closed)
    for old in [h for h in logger.handlers if getattr(h, '_qsmprep_cli', False)]:
        logger.removeHandler(old)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter('%(asctime)s | %(levelname)-7s | %(message)s',
                                     '%H:%M:%S'))
    h._qsmprep_cli = True  # the same tag as qsmprep.cli.run: one CLI handler at a time
    logger.addHandler(h)
    logger.setLevel(max(logging.INFO - 10 * verbosity, logging.DEBUG))


def _dataset(ns) -> int:
    from qsmprep.dl.data import build_dataset

    m = build_dataset(ns.out_dir, root=ns.derivatives, source=ns.source, kind=ns.kind,
                      channels=ns.channels, patch_shape=ns.patch_size, stride=ns.stride,
                      min_inside=ns.min_inside, crop=ns.crop, max_outside=ns.max_outside,
                      min_gap=ns.min_gap, slices_per_axis=ns.slices_per_axis,
                      flip_prob=ns.flip_prob, validation_fraction=ns.validation_fraction,
                      validation_subjects=ns.validation_subjects, seed=ns.seed,
                      subjects=ns.participant_label, overwrite=ns.overwrite)
    print(json.dumps({'dataset': str(ns.out_dir), 'kind': m['kind'], 'counts': m['counts'],
                      'split': m['split']}, indent=2))
    return 0


def _fit(ns) -> int:
    from qsmprep.dl.config import TrainConfig
    from qsmprep.dl.data import read_manifest

    manifest = read_manifest(ns.dataset)
    model = ns.model or ('modl' if manifest['kind'] == 'patch3d' else 'swin')
    cfg = TrainConfig(model=model, model_params=ns.model_params, epochs=ns.epochs,
                      steps_per_epoch=ns.steps_per_epoch, batch_size=ns.batch_size,
                      learning_rate=ns.learning_rate, lr_schedule=ns.lr_schedule,
                      warmup_steps=ns.warmup_steps, early_stopping=ns.early_stopping,
                      ssim_weight=ns.ssim_weight, seed=ns.seed,
                      checkpoint_every=ns.checkpoint_every,
                      keep_checkpoints=ns.keep_checkpoints,
                      mixed_precision=ns.mixed_precision,
                      validation_batches=ns.validation_batches)
    from qsmprep.dl.train import TrainingInterrupted, train

    try:
        meta = train(manifest, ns.out_dir, cfg, resume=ns.resume, stop_after=ns.stop_after,
                     threads=ns.threads)
    except TrainingInterrupted as exc:
        print(f'qsmprep-train: {exc}', file=sys.stderr)
        return 128 + exc.signum if exc.signum else EX_TEMPFAIL
    print(json.dumps({'model_dir': str(ns.out_dir), 'metrics': meta['metrics'],
                      'steps': meta['training']['steps']}, indent=2))
    return 0


def _predict(ns) -> int:
    from qsmprep.dl.infer import predict_file

    kw = {} if ns.batch_size is None else {'batch_size': ns.batch_size}
    out = predict_file(ns.model, ns.field, ns.out, mask_file=ns.mask, b0_direction=ns.b0_dir,
                       mode=ns.mode, threads=ns.threads, **kw)
    print(out)
    return 0


def _evaluate(ns) -> int:
    from qsmprep.dl.evaluate import (
        BUILTIN_METHODS,
        check_writable,
        evaluate,
        format_table,
        write_json,
    )

    methods = [ns.model, *ns.extra_models]
    if not ns.no_baselines:
        methods += [b for b in BUILTIN_METHODS if b not in methods]
    if ns.out is not None:
        check_writable(ns.out)
    result = evaluate(ns.data, methods, inputs=ns.inputs, derivatives=ns.derivatives,
                      subjects=ns.participant_label, orientations=ns.orientation,
                      threads=ns.threads, mode=ns.mode, batch_size=ns.batch_size)
    print(format_table(result, markdown=ns.markdown))
    if ns.out is not None:
        print(f'written {write_json(result, ns.out)}')
    return 0


def main(argv=None) -> int:
    """Entry point of ``qsmprep-train``; returns the exit code."""
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    _setup_logging(ns.verbose)
    for name in ('derivatives', 'dataset', 'model', 'field', 'mask'):
        path = getattr(ns, name, None)
        if isinstance(path, Path) and not path.exists():
            print(f'qsmprep-train: error: {name} not found: {path}', file=sys.stderr)
            return EX_NOINPUT
    try:
        if ns.command in ('fit', 'predict'):
            from qsmprep.dl import require_tensorflow

            require_tensorflow(f'qsmprep-train {ns.command}')
        return {'dataset': _dataset, 'fit': _fit, 'predict': _predict,
                'evaluate': _evaluate}[ns.command](ns)
    except QsmprepError as exc:  # TensorFlow missing: exit 69 with the install hint
        print(f'qsmprep-train: error: {exc}', file=sys.stderr)
        return exc.exit_code
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f'qsmprep-train: error: {exc}', file=sys.stderr)
        return EX_USAGE
    except KeyboardInterrupt:
        print('qsmprep-train: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
