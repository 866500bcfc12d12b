"""Command-line parser of the qsmprep BIDS-App (BIDS-Apps 1.0 conventions, fMRIPrep style).

``qsmprep bids_dir output_dir {participant,group} [options]``.  Parse errors exit with 64
(``EX_USAGE``) instead of argparse's 2, which Bash reserves.  Checks that need the file system
(:func:`check_paths`, :func:`load_plugin_file`) run after parsing and raise
:class:`~qsmprep.io.errors.QsmprepError` with the BIDS-Apps exit codes.

Defaults are never written here: the processing options take theirs (and their choices) from
:mod:`qsmprep.options`, the group-level ones from the fields of
:class:`~qsmprep.cli.config.Settings`; ``--help`` shows each default once, appended by the
formatter.  :func:`parse_command_line` adds the options of a ``--config-file``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path

from qsmprep.__about__ import __version__
from qsmprep.cli.config import (
    DEFAULT_WORK_DIR,
    MAX_OMP_THREADS,
    Settings,
    read_config_file,
)
from qsmprep.io.errors import CantCreateError, MissingInputError, UsageError
from qsmprep.options import CHOICES, DEFAULTS

__all__ = [
    'EXIT_USAGE',
    'CommandLine',
    'build_parser',
    'check_paths',
    'load_plugin_file',
    'parse_command_line',
    'parse_labels',
    'parse_memory',
]

EXIT_USAGE = 64

_MEM_UNITS = {'': 1.0, 'B': 1e-9, 'K': 1e-6, 'M': 1e-3, 'G': 1.0, 'T': 1e3}
_MEM = re.compile(r'^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(I?B)?\s*$', re.IGNORECASE)
#: Memory given without a unit above this is almost certainly MB (fMRIPrep's default unit).
_MAX_BARE_GB = 4096


#: Field defaults of :class:`Settings` (the group-level options' defaults).
_SETTINGS = {f.name: f.default for f in dataclasses.fields(Settings)}
#: ``--mask-method``: the methods of :data:`qsmprep.options.CHOICES` but ``user`` (user masks
#: come with ``--derivatives``).
_MASK_METHODS = [m for m in CHOICES['mask_method'] if m != 'user']
#: Settings (``--config-file`` keys) whose parser ``dest`` has another name.
_DEST = {'participant_labels': 'participant_label', 'session_labels': 'session_label',
         'mem_gb': 'mem', 'plugin_file': 'use_plugin', 'verbosity': 'verbose',
         'inversions': 'inversion'}
#: Settings that are no option of the parser: read from a ``--config-file`` as they are.
_NOT_OPTIONS = ('plugin', 'plugin_args', 'bids_filters')


class _Parser(argparse.ArgumentParser):
    """ArgumentParser exiting with 64 (``EX_USAGE``) on errors."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f'{self.prog}: error: {message}\n')


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to options with a default value (not ``None``/``False``, not
    counters), lists shown as on the command line."""

    def _get_help_string(self, action):
        if (action.default in (None, False, argparse.SUPPRESS)
                or isinstance(action, argparse._CountAction)):
            return action.help
        return super()._get_help_string(action)

    def _expand_help(self, action):
        if isinstance(action.default, list | tuple):
            action = copy.copy(action)
            action.default = ' '.join(map(str, action.default))
        return super()._expand_help(action)


def parse_memory(value: str) -> float:
    """Memory in GB from ``'8'``, ``'8G'``, ``'8GB'``, ``'8000MB'``, ``'0.5T'`` (decimal units).

    A bare number is GB.

    >>> parse_memory('8G'), parse_memory('8000MB'), parse_memory('16'), parse_memory('1.5gb')
    (8.0, 8.0, 16.0, 1.5)
    """
    m = _MEM.match(str(value))
    if not m:
        raise argparse.ArgumentTypeError(
            f'invalid memory {value!r}: use a number with an optional unit, e.g. 8G or 8000MB'
        )
    number, unit, suffix = float(m.group(1)), m.group(2).upper(), (m.group(3) or '').upper()
    if not unit and suffix == 'B':
        unit = 'B'
    if not unit and not suffix and number > _MAX_BARE_GB:
        raise argparse.ArgumentTypeError(
            f'--mem {value} without a unit means {value} GB; add a unit, e.g. {value}MB'
        )
    gb = number * _MEM_UNITS[unit]
    if gb <= 0:
        raise argparse.ArgumentTypeError(f'memory must be positive; got {value!r}')
    return gb


def parse_labels(prefix: str):
    """argparse type stripping the BIDS ``<prefix>-`` from a label.

    >>> parse_labels('sub')('sub-01'), parse_labels('ses')('pre')
    ('01', 'pre')
    """
    def convert(value: str) -> str:
        label = value.strip()
        if label.startswith(f'{prefix}-'):
            label = label[len(prefix) + 1:]
        if not re.fullmatch(r'[A-Za-z0-9]+', label):
            raise argparse.ArgumentTypeError(
                f'invalid {prefix} label {value!r}: BIDS labels contain only letters and digits'
            )
        return label

    convert.__name__ = f'{prefix} label'
    return convert


def _number(kind, name, *, low=None, high=None, low_open=False, high_open=False):
    def convert(value):
        try:
            x = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f'{name} must be {"an integer" if kind is int else "a number"}; got {value!r}'
            ) from None
        bad_low = low is not None and (x <= low if low_open else x < low)
        bad_high = high is not None and (x >= high if high_open else x > high)
        if bad_low or bad_high:
            lo = '' if low is None else ('(' if low_open else '[') + f'{low:g}'
            hi = '' if high is None else f'{high:g}' + (')' if high_open else ']')
            rng = f'in {lo or "(-inf"}, {hi or "inf)"}'
            raise argparse.ArgumentTypeError(f'{name} must be {rng}; got {value!r}')
        return x

    convert.__name__ = name
    return convert


def build_parser() -> argparse.ArgumentParser:
    """The ``qsmprep`` argument parser (errors exit with 64)."""
    p = _Parser(
        prog='qsmprep',
        description='qsmprep: multi-orientation, multi-echo GRE → QSM and susceptibility '
                    'tensor imaging (STI), as a BIDS-App.',
        epilog='Exit codes: 0 success, 1 failure, 16 BIDS validation failed, 18 filters '
               'selected no data, 64 usage error, 65 input data incorrect, 66 required input '
               'missing, 73 cannot create output.',
        formatter_class=_HelpFormatter,
    )
    p.add_argument('bids_dir', type=Path, help='root of the raw BIDS dataset (read only)')
    p.add_argument('output_dir', type=Path,
                   help='output (derivatives) directory, e.g. <bids_dir>/derivatives/qsmprep; '
                        'must not be bids_dir or elsewhere inside it')
    p.add_argument('analysis_level', choices=['participant', 'group'],
                   help='participant: process each participant; group: run on the '
                        'participant-level outputs')
    p.add_argument('--version', action='version', version=f'qsmprep {__version__}')

    g = p.add_argument_group('BIDS selection')
    g.add_argument('--participant-label', '--participant_label', nargs='+',
                   type=parse_labels('sub'), metavar='LABEL',
                   help='participants to process (with or without "sub-"); default: all')
    g.add_argument('--session-label', '--session_label', nargs='+', type=parse_labels('ses'),
                   metavar='LABEL', help='sessions to process (with or without "ses-"); '
                                         'default: all')
    g.add_argument('--skip-bids-validation', '--skip_bids_validation', action='store_true',
                   help='do not run the BIDS schema validator (bids-validator-deno) on bids_dir')
    g.add_argument('--derivatives', type=Path, metavar='PATH',
                   help='folder with user brain masks named sub-<s>[_ses-<x>][_acq-<a>]'
                        '[_run-<r>][_space-orig][_desc-brain]_mask.nii[.gz] (used instead of '
                        'computed masks)')
    g.add_argument('--bids-filter-file', '--bids_filter_file', type=Path, metavar='FILE',
                   help='JSON file restricting the input, as in fMRIPrep: {"megre": '
                        '{"session": "01", "acquisition": ["ori01", "ori02"], "run": 1}} '
                        'collects only the MEGRE files with these entities (pybids names, '
                        'labels without prefixes, one value or a list)')

    g = p.add_argument_group('Performance')
    g.add_argument('--nprocs', '--nthreads', '--n_cpus', '--n-cpus', type=_number(
        int, '--nprocs', low=1), metavar='N', help='processes run in parallel; default: all '
                                                   'available CPUs')
    g.add_argument('--omp-nthreads', type=_number(int, '--omp-nthreads', low=1), metavar='N',
                   help='threads per process (FFT workers); default: '
                        f'min(nprocs, {MAX_OMP_THREADS})')
    g.add_argument('--mem', '--mem-gb', '--mem_gb', type=parse_memory, metavar='MEM',
                   help='memory limit for the Nipype scheduler, e.g. 8G or 8000MB '
                        '(a bare number is GB)')
    g.add_argument('--use-plugin', '--nipype-plugin-file', type=Path, metavar='FILE',
                   help='YAML or JSON file with the Nipype "plugin" and "plugin_args" '
                        '(e.g. SLURM, SGE, PBS)')
    g.add_argument('-w', '--work-dir', type=Path, metavar='PATH',
                   help='working directory for intermediate results; re-runs reuse finished '
                        f'nodes (default: ./{DEFAULT_WORK_DIR}, which must not be inside '
                        'bids_dir)')
    g.add_argument('--stop-on-first-crash', action='store_true',
                   help='stop at the first crashing node instead of running the others')

    g = p.add_argument_group('Run modes')
    g.add_argument('--config-file', type=Path, metavar='FILE',
                   help='TOML file of options, as in fMRIPrep: the settings file of an earlier '
                        'run (sub-<label>/log/qsmprep_<run_uuid>.toml) repeats its options, or '
                        'the same keys written by hand (mask_erosion = 3); options given on '
                        'the command line win; paths are relative to the file\'s folder')
    g.add_argument('--validate-only', action='store_true',
                   help='only collect and validate the input, print the summary table and '
                        'exit (0 if valid); writes nothing')
    g.add_argument('--boilerplate-only', action='store_true',
                   help='write the methods boilerplate (logs/CITATION.md) and exit')
    g.add_argument('-v', '--verbose', action='count', default=_SETTINGS['verbosity'],
                   help='more output (-v info, -vv verbose, -vvv debug)')

    g = p.add_argument_group('Processing')
    g.add_argument('--reference-orientation', metavar='LABEL',
                   help='orientation used as registration/STI reference, by label (e.g. '
                        'acq-ori01 or ori01); default: the one whose B0 is closest to the '
                        "head's superior axis")
    g.add_argument('--mask-method', choices=_MASK_METHODS, default=DEFAULTS.mask_method,
                   help='brain extraction: FSL BET, a pure-Python BET port, or auto (BET when '
                        'on PATH)')
    g.add_argument('--mask-erosion', type=_number(int, '--mask-erosion', low=0),
                   default=DEFAULTS.mask_erosion, metavar='VOXELS',
                   help='erode the brain mask by this many voxels')
    g.add_argument('--mask-threshold', default=DEFAULTS.mask_threshold, metavar='FRACTION',
                   type=_number(
        float, '--mask-threshold', low=0, high=1, high_open=True),
        help='refinement of computed brain masks: remove voxels darker than this fraction of '
             'the typical brain magnitude (first echo) that connect to the outside of the '
             'mask (skull, air, dropout); 0 disables it. User masks are never refined')
    g.add_argument('--unwrapping', choices=CHOICES['unwrapping'],
                   default=DEFAULTS.unwrapping, help='Laplacian phase unwrapping variant')
    g.add_argument('--echo-combination', choices=CHOICES['echo_combination'],
                   default=DEFAULTS.echo_combination,
                   help='combination of the per-echo fields (ppm): linear fit against TE with '
                        'intercept (needs >= 2 echoes; unbiased by a receiver phase offset), '
                        'average (the thesis), or inverse-variance weighted average; auto: '
                        'linear-fit, or average for single-echo data')
    g.add_argument('--bgremoval', choices=CHOICES['bgremoval'], default=DEFAULTS.bgremoval,
                   help='background field removal: V-SHARP, V-SHARP with a least-squares '
                        'deconvolution (vsharp-ls: less distortion of the local field, ~10x '
                        'the FFTs), iSMV, PDF (projection onto dipole fields), LBV (Laplacian '
                        'boundary value) or RESHARP; --vsharp-radii applies to both V-SHARPs, '
                        '--vsharp-threshold to vsharp only')
    g.add_argument('--vsharp-radii', nargs='+', metavar='MM', default=DEFAULTS.vsharp_radii,
                   type=_number(float, '--vsharp-radii', low=0, low_open=True),
                   help='V-SHARP sphere radii in mm; default: 18*min(voxel) down to '
                        '2*max(voxel) in steps of 2*max(voxel)')
    g.add_argument('--vsharp-threshold', default=DEFAULTS.vsharp_threshold, metavar='T',
                   type=_number(
        float, '--vsharp-threshold', low=0, high=1, low_open=True, high_open=True),
        help='V-SHARP TSVD threshold on the magnitude of the high-pass kernel 1 - S(k)')
    g.add_argument('--tkd-threshold', default=DEFAULTS.tkd_threshold, metavar='T',
                   type=_number(
        float, '--tkd-threshold', low=0, high=2 / 3, low_open=True),
        help='TKD threshold on the magnitude of the dipole kernel D(k) (single-orientation '
             'inversions)')
    g.add_argument('--inversion', nargs='+', choices=CHOICES['inversions'],
                   default=list(DEFAULTS.inversions),
                   metavar='{' + ','.join(CHOICES['inversions']) + '}',
                   help='single-orientation inversions written per orientation as '
                        'desc-<method>_Chimap: tkd (thresholded k-space division) and/or ilsqr '
                        '(masked gradient-regularised least squares, the classical baseline; '
                        'about 3 s per orientation at 2 mm)')
    g.add_argument('--multi-solver', choices=CHOICES['multi_solver'],
                   default=DEFAULTS.multi_solver,
                   help='COSMOS/STI solver: single-step fits the susceptibility to the '
                        'registered total fields through a multi-radius SMV data term, with no '
                        'separate background removal and no loss of the harmonic part of the '
                        'local field; closed-form: per-k closed forms on the '
                        'background-removed local fields (STI Suite style, faster; less '
                        'accurate on the simulated heads, docs/workflows.md)')
    g.add_argument('--sti-regularization', default=DEFAULTS.sti_regularization,
                   metavar='LAMBDA', type=_number(
        float, '--sti-regularization', low=0),
        help='weight of the penalty on the anisotropic (deviatoric) part of the '
             'susceptibility tensor (the mean susceptibility is never penalised), relative to '
             'the mean diagonal of the normal operator; default 0.1 with --multi-solver '
             'single-step, 0.3 with closed-form; 0 with closed-form gives the unregularised '
             'STI least-squares solution (STI Suite)')
    g.add_argument('--registration', choices=CHOICES['registration'],
                   default=DEFAULTS.registration,
                   help='rigid registration of the orientations: FSL FLIRT, SimpleITK, or auto '
                        '(FLIRT when on PATH)')
    g.add_argument('--model', type=Path, metavar='PATH', default=DEFAULTS.model,
                   help='trained model folder (model.keras + model.json, written by the group '
                        'level), or the published MoDL-QSM weights (their logs/last.h5, with '
                        'NormFactor.mat next to it or one folder up), for deep-learning '
                        'inference: adds a desc-<model>_Chimap per orientation')

    g = p.add_argument_group(
        'Group level (training)',
        'Build a training dataset from the participant derivatives and train a model into '
        '<output_dir>/models/<name>/ (see the learning page of the documentation).')
    g.add_argument('--resume', action='store_true',
                   help='continue training from the newest checkpoint of the model folder '
                        '(with the same optimizer state); starts afresh when there is none. '
                        'Use it in batch jobs that are requeued across time limits')
    g.add_argument('--dl-model', choices=['modl', 'swin', 'fcn'], default=_SETTINGS['dl_model'],
                   help='modl: MoDL-QSM on 3D patches; swin: Swin-UNet on 2D slices; fcn: a '
                        'small fully convolutional baseline on 3D patches')
    g.add_argument('--dl-source', choices=['derivatives', 'simulate-truth'],
                   default=_SETTINGS['dl_source'],
                   help='training pairs from the participant derivatives (local field -> '
                        'apparent susceptibility of the multi-orientation fit), or from the '
                        "simulator's ground truth (needs --derivatives pointing at "
                        'derivatives/qsmprep-simulate)')
    g.add_argument('--dl-epochs', type=_number(int, '--dl-epochs', low=1),
                   default=_SETTINGS['dl_epochs'],
                   metavar='N', help='training epochs (with --resume: the total to reach)')
    g.add_argument('--dl-steps-per-epoch', type=_number(int, '--dl-steps-per-epoch', low=1),
                   metavar='N', help='optimizer steps per epoch; default: one pass over the '
                                     'training samples')
    g.add_argument('--dl-batch-size', type=_number(int, '--dl-batch-size', low=1),
                   default=_SETTINGS['dl_batch_size'],
                   metavar='N', help='samples per optimizer step')
    g.add_argument('--dl-learning-rate', type=_number(float, '--dl-learning-rate', low=0,
                                                      low_open=True),
                   default=_SETTINGS['dl_learning_rate'], metavar='LR',
                   help='peak learning rate (Adam)')
    g.add_argument('--dl-lr-schedule', choices=['cosine', 'constant', 'step', 'plateau'],
                   default=_SETTINGS['dl_lr_schedule'], help='learning-rate schedule')
    g.add_argument('--dl-patch-size', type=_number(int, '--dl-patch-size', low=16),
                   metavar='N', help='edge of the cubic 3D patches (default: about 96 mm, a '
                                     'multiple of 8 in 16-64 voxels and within the brain, '
                                     'e.g. 48 at 2 mm) or of the square 2D slice crops '
                                     '(default 128), in voxels')
    g.add_argument('--dl-validation', type=_number(float, '--dl-validation', low=0, high=1,
                                                   high_open=True),
                   default=_SETTINGS['dl_validation'], metavar='FRACTION',
                   help='fraction of the subjects held out for validation (never in training)')
    g.add_argument('--dl-seed', type=_number(int, '--dl-seed', low=0),
                   default=_SETTINGS['dl_seed'], metavar='N',
                   help='seed of the dataset sampling, weight initialisation and batch order '
                        '(same seed, same result)')
    g.add_argument('--dl-checkpoint-every', type=_number(int, '--dl-checkpoint-every', low=1),
                   default=_SETTINGS['dl_checkpoint_every'], metavar='STEPS',
                   help='optimizer steps between checkpoints (also written at every epoch end '
                        'and on SIGTERM/SIGINT)')
    g.add_argument('--dl-mixed-precision', choices=['auto', 'on', 'off'],
                   default=_SETTINGS['dl_mixed_precision'],
                   help='mixed precision (auto: on when training on a GPU)')
    g.add_argument('--dl-model-params', type=_json_object, metavar='JSON',
                   help='model hyper-parameters overriding the defaults, as a JSON object, '
                        'e.g. \'{"iterations": 5, "width": 32}\'')
    g.add_argument('--dl-name', type=_name, metavar='NAME',
                   help='model folder name under <output_dir>/models/ (default: the model '
                        'kind)')
    return p


@dataclasses.dataclass
class CommandLine:
    """What :func:`parse_command_line` returns: the namespace (command line over
    ``--config-file`` over defaults), what the file gives that is no parser option
    (``plugin``, ``plugin_args``, ``bids_filters``), and notes to log once logging is set up
    (``(level, message)``)."""

    namespace: argparse.Namespace
    from_file: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)


class _FileValueError(Exception):
    pass


def _tokens(action, key, value) -> list[str]:
    """Command-line tokens for ``value`` of a ``--config-file`` key (action of the parser)."""
    flag = next((o for o in action.option_strings if o.startswith('--')),
                action.option_strings[0])
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise _FileValueError('must be true or false')
        return [flag] if value else []
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _FileValueError('must be a count (0, 1, 2 or 3)')
        return [action.option_strings[0]] * value
    if isinstance(value, bool):
        raise _FileValueError('must be a value, not true/false')
    if action.nargs in ('+', '*'):
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, list | dict) for v in values):
            raise _FileValueError('must be a list of values')
        return [flag, *(str(v) for v in values)]
    if isinstance(value, list):
        raise _FileValueError('must be one value, not a list')
    if key == 'mem_gb' and isinstance(value, int | float):
        value = f'{value}G'  # settings hold GB; --mem refuses large bare numbers
    text = json.dumps(value) if isinstance(value, dict) else str(value)
    return [f'{flag}={text}']


def _toml_text(value) -> str:
    return json.dumps(value, default=str) if not isinstance(value, bool) else str(value).lower()


def parse_command_line(argv=None) -> CommandLine:
    """Parse ``argv`` (:func:`build_parser`) and merge a ``--config-file`` into it.

    Options given on the command line win over the file's, the file's over the defaults.
    The file's values go through the same checks as the command line's (types, choices,
    bounds): a bad one is a :class:`~qsmprep.io.errors.UsageError` (64) naming the key and
    the file.  ``work_dir`` from the file is used (with an INFO note) when ``-w`` is not
    given; the per-run keys are ignored (:func:`qsmprep.cli.config.read_config_file`).
    Parse errors of ``argv`` itself exit with 64 (:class:`SystemExit`) as before.
    """
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.config_file is None:
        return CommandLine(ns)
    path = ns.config_file
    values, notes = read_config_file(path)

    # what the command line gave: a parser without defaults
    quiet = build_parser()
    for action in quiet._actions:
        if action.option_strings:
            action.default = argparse.SUPPRESS
    given = set(vars(quiet.parse_args(argv)))

    def raising_error(message):
        raise _FileValueError(message)

    checker = build_parser()
    checker.error = raising_error
    for action in checker._actions:
        if action.option_strings:
            action.default = argparse.SUPPRESS
    actions = {a.dest: a for a in checker._actions if a.option_strings}
    positional = [str(getattr(ns, a.dest)) for a in checker._actions if not a.option_strings]

    from_file: dict = {}
    taken = []
    for key, value in values.items():
        if key in _NOT_OPTIONS:
            from_file[key] = value
            continue
        dest = _DEST.get(key, key)
        action = actions.get(dest)
        if action is None:  # a Settings field without an option (cannot happen today)
            notes.append((logging.DEBUG, f'{path}: {key} is not a command-line option; ignored'))
            continue
        flag = next((o for o in action.option_strings if o.startswith('--')),
                    action.option_strings[0])
        try:
            tokens = _tokens(action, key, value)
            parsed = vars(checker.parse_args([*positional, *tokens]))
        except _FileValueError as exc:
            raise UsageError(
                f'invalid value in the configuration file: {key} = {_toml_text(value)} '
                f'({exc})', path=path,
                hint=f'fix {key} in the file (it takes the values of {flag}, see qsmprep '
                     '--help) or remove it') from None
        if dest in given:
            notes.append((logging.DEBUG, f'{path}: {key} overridden by the command line'))
            continue
        if dest in parsed:
            setattr(ns, dest, parsed[dest])
            taken.append(key)
    if 'work_dir' in taken:
        notes.append((logging.INFO, f'work directory {ns.work_dir} from {path} (pass -w to choose '
                      'another one)'))
    if ns.use_plugin is not None and 'use_plugin' in given:
        from_file.pop('plugin', None)
        from_file.pop('plugin_args', None)
    for key, kind in (('plugin', str), ('plugin_args', dict), ('bids_filters', dict)):
        if key in from_file and not isinstance(from_file[key], kind):
            raise UsageError(f'invalid value in the configuration file: {key} = '
                             f'{_toml_text(from_file[key])} (must be a '
                             f'{"table" if kind is dict else "string"})', path=path,
                             hint=f'fix {key} in the file or remove it')
    used = ', '.join(taken + sorted(from_file)) or 'none'
    notes.append((logging.INFO, f'options from {path}: {used}'))
    return CommandLine(ns, from_file, notes)


def _json_object(value: str) -> dict:
    """argparse type: a JSON object (``--dl-model-params``).

    >>> _json_object('{"iterations": 5}')
    {'iterations': 5}
    """
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f'--dl-model-params is not valid JSON ({exc.msg} at character {exc.pos}): '
            f'{value!r}; quote it for the shell, e.g. \'{{"width": 32}}\'') from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(
            f'--dl-model-params must be a JSON object ({{"name": value, ...}}); got {value!r}')
    return data


def _name(value: str) -> str:
    if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_.-]*', value):
        raise argparse.ArgumentTypeError(
            f'--dl-name {value!r}: use letters, digits, ".", "_" and "-" (a folder name)')
    return value


def load_plugin_file(path) -> tuple[str, dict]:
    """Read a Nipype plugin file (YAML or JSON): ``{plugin: NAME, plugin_args: {...}}``.

    Raises :class:`MissingInputError` (66) when absent, :class:`UsageError` (64) when invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError('plugin file (--use-plugin) does not exist', path=path,
                                hint='pass a YAML/JSON file with "plugin" and "plugin_args"')
    text = path.read_text()
    hint = 'write e.g. {"plugin": "MultiProc", "plugin_args": {"n_procs": 4}} (JSON or YAML)'
    try:
        if path.suffix.lower() == '.json':
            data = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise UsageError('reading a YAML plugin file needs PyYAML', path=path,
                                 hint='pip install pyyaml, or write the file as .json') from None
            data = yaml.safe_load(text)
    except UsageError:
        raise
    except Exception as exc:  # json/yaml syntax errors
        raise UsageError(f'cannot parse plugin file ({exc})', path=path, hint=hint) from None
    if not isinstance(data, dict) or not isinstance(data.get('plugin'), str):
        raise UsageError('plugin file has no "plugin" name', path=path, hint=hint)
    args = data.get('plugin_args') or {}
    if not isinstance(args, dict):
        raise UsageError('"plugin_args" must be a mapping', path=path, hint=hint)
    return data['plugin'], args


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
    except ValueError:
        return False
    return True


def check_paths(bids_dir, output_dir, work_dir=None, *, derivatives=None, model=None) -> None:
    """Refuse paths that would read nothing or write into the raw dataset.

    * ``bids_dir`` must exist (66);
    * ``output_dir`` must differ from ``bids_dir`` and lie outside it, except under
      ``bids_dir/derivatives/<name>`` (64); it must not contain ``bids_dir`` (64) and, if it
      exists, be a directory (73);
    * ``work_dir`` likewise must not be inside ``bids_dir`` (except under ``derivatives/``) nor
      inside ``output_dir`` (64);
    * ``derivatives`` and ``model``, when given, must exist (66).
    """
    bids = Path(bids_dir).expanduser().resolve()
    if not bids.is_dir():
        raise MissingInputError('BIDS directory does not exist', path=bids_dir,
                                hint='pass the root folder of the raw BIDS dataset as bids_dir')
    out = Path(output_dir).expanduser().resolve()
    suggestion = f'use {bids / "derivatives" / "qsmprep"} or a folder outside the dataset'
    if out == bids:
        raise UsageError('output_dir is the BIDS directory; qsmprep never writes into bids_dir',
                         path=output_dir, hint=suggestion)
    if _inside(out, bids):
        rel = out.relative_to(bids).parts
        if not (len(rel) >= 2 and rel[0] == 'derivatives'):
            raise UsageError('output_dir is inside the BIDS directory; qsmprep never writes '
                             'into bids_dir', path=output_dir, hint=suggestion)
    if _inside(bids, out):
        raise UsageError('output_dir contains the BIDS directory', path=output_dir,
                         hint=suggestion)
    if out.exists() and not out.is_dir():
        raise CantCreateError('output_dir exists and is not a directory', path=output_dir,
                              hint='remove the file or choose another output_dir')
    if work_dir is not None:
        work = Path(work_dir).expanduser().resolve()
        hint = 'pass -w/--work-dir with a folder outside bids_dir and output_dir'
        if work == bids or (_inside(work, bids)
                            and work.relative_to(bids).parts[:1] != ('derivatives',)):
            raise UsageError('work directory is inside the BIDS directory', path=work_dir,
                             hint=hint)
        if _inside(work, out):
            raise UsageError('work directory is inside output_dir (it would pollute the '
                             'derivatives)', path=work_dir, hint=hint)
        if work.exists() and not work.is_dir():
            raise CantCreateError('work directory exists and is not a directory',
                                  path=work_dir, hint=hint)
    if derivatives is not None and not Path(derivatives).is_dir():
        raise MissingInputError('derivatives folder (--derivatives) does not exist',
                                path=derivatives, hint='pass the folder holding the masks')
    if model is not None and not Path(model).exists():
        raise MissingInputError('model (--model) does not exist', path=model,
                                hint='pass the path of a trained model')
