"""Command line: ``qsmprep-simulate OUT_DIR [--preset demo] [--subjects N] [--seed S] ...``.

Exit codes (sysexits.h): 0 success; 64 (``EX_USAGE``) bad option or value; 73
(``EX_CANTCREAT``) the output directory is not empty (or may not be overwritten).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys

from qsmprep.__about__ import __version__
from qsmprep.simulate.presets import (
    DEFAULTS,
    GRID_ORIENTATIONS,
    PRESETS,
    REALISTIC,
    SimulationConfigError,
    resolve_config,
)

__all__ = ['EX_CANTCREAT', 'EX_USAGE', 'build_parser', 'main']

EX_USAGE = 64
EX_CANTCREAT = 73


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f'{self.prog}: error: {message}\n')


def _snr(text):
    t = text.strip().lower()
    if t in ('inf', 'none', 'off', '0'):
        return math.inf
    try:
        v = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not a number: {text!r}') from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f'must be > 0 (or inf for noise-free): {text!r}')
    return v


def _preset_table():
    rows = []
    for name, p in PRESETS.items():
        vs = 'x'.join(f'{v:g}' for v in p['voxel_size'])
        cohort = p.get('variation') == 'cohort'
        if cohort:
            vs = '1-2'
        rows.append(f'  {name:7s} {vs:>7s} mm, {p["orientations"]:2d} orientations, '
                    f'{len(p["echo_times"])} echoes, {p["subjects"]} subject(s)' +
                    (', every subject drawn (anatomy, lesions, voxel size, 3/7 T, SNR)'
                     if cohort else ''))
    return '\n'.join(rows)


def build_parser():
    """The argument parser (every option documented in ``--help``)."""
    p = _Parser(
        prog='qsmprep-simulate',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Write a simulated multi-orientation, multi-echo GRE BIDS dataset '
                    '(part-mag/part-phase MEGRE, one acq-oriNN per head orientation) of a '
                    'numerical head phantom with an anisotropic susceptibility tensor, and '
                    'its ground truth in derivatives/qsmprep-simulate.',
        epilog='presets:\n' + _preset_table() + '\n\nexit codes: 0 success, 64 invalid option '
               'or value, 73 output directory not empty.\n'
               'example: qsmprep-simulate /data/sim --preset demo --subjects 2 --seed 0')
    p.add_argument('out_dir', metavar='OUT_DIR', help='output BIDS directory (new or empty)')
    g = p.add_argument_group('dataset')
    g.add_argument('--preset', choices=sorted(PRESETS), default='demo',
                   help='named settings (default: %(default)s); other options override them')
    g.add_argument('--subjects', type=int, metavar='N',
                   help="number of participants (default: the preset's)")
    g.add_argument('--sessions', type=int, metavar='N',
                   help='sessions per participant, each with new head rotations and noise '
                        '(default: no session level)')
    g.add_argument('--seed', type=int, default=0,
                   help='random seed; same seed and options give bit-identical files '
                        '(default: %(default)s)')
    g.add_argument('--overwrite', action='store_true',
                   help='replace the contents of a non-empty OUT_DIR if it holds a dataset '
                        'written by qsmprep-simulate')
    g.add_argument('--no-truth', dest='truth', action='store_false', default=None,
                   help='do not write the ground-truth derivatives')
    g = p.add_argument_group('acquisition')
    g.add_argument('--orientations', type=int, metavar='N',
                   help='head orientations (acq-ori01 is the reference; STI needs >= 6)')
    g.add_argument('--echoes', type=int, metavar='N',
                   help="number of echoes (the preset's first echo time and spacing)")
    g.add_argument('--echo-times', type=float, nargs='+', metavar='TE',
                   help='echo times in seconds, increasing (overrides --echoes)')
    g.add_argument('--voxel-size', type=float, nargs='+', metavar='MM',
                   help='voxel size in mm: one value (isotropic) or three')
    g.add_argument('--field-strength', type=float, metavar='T',
                   help=f'B0 in tesla (default: {DEFAULTS["field_strength"]:g})')
    g.add_argument('--snr', type=_snr, metavar='SNR',
                   help=f'magnitude SNR of the first echo in the brain; inf or 0: noise-free '
                        f'(default: {DEFAULTS["snr"]:g})')
    g.add_argument('--phase-units', choices=('rad', 'arbitrary'),
                   help="phase stored in radians (float32) or as scanner integers "
                        "-4096..4095 with sidecar Units 'arbitrary' (default: rad; full: "
                        "arbitrary)")
    g.add_argument('--magnitude-dtype', choices=('float32', 'int16'),
                   help='magnitude storage (default: float32; full: int16, scaled by 2000)')
    g.add_argument('--b0-dir', dest='b0_dir_sidecar', action=argparse.BooleanOptionalAction,
                   default=None,
                   help='write B0_dir (unit B0 vector in the voxel frame) to the sidecars '
                        '(default: yes)')
    g.add_argument('--oblique', type=float, metavar='DEG',
                   help='oblique grid prescriptions rotated by up to DEG degrees '
                        '(default: 0, axis-aligned scanner grids)')
    g.add_argument('--tilt-range', type=float, nargs=2, metavar=('MIN', 'MAX'),
                   help='head tilts in degrees of the non-reference orientations '
                        '(default: 15 40)')
    g.add_argument('--grid-orientation', type=str.upper, choices=GRID_ORIENTATIONS,
                   metavar='CODE',
                   help='axis code of the acquisition grids: RAS, or LAS (x flipped, as many '
                        'scanners write) or any other sign flip (default: RAS; 7t: LAS)')
    g = p.add_argument_group('realism effects (all off by default except with --realistic '
                             'or --preset 7t)')
    g.add_argument('--realism', choices=('none', 'realistic'),
                   help="'realistic' turns on every effect below at documented strengths, "
                        'plus scanner-integer phase and int16 magnitude, unless set '
                        'explicitly (default: none; 7t: realistic)')
    g.add_argument('--realistic', dest='realism', action='store_const', const='realistic',
                   help='same as --realism realistic')
    g.add_argument('--air-cavities', choices=('standard', 'extended'),
                   help="air cavities: 'extended' adds larger frontal/sphenoid sinuses, "
                        'ethmoid and mastoid cells next to the frontal and temporal lobes '
                        f"(realistic: {REALISTIC['air_cavities']})")
    g.add_argument('--body', action=argparse.BooleanOptionalAction, default=None,
                   help='add the field of the neck and shoulders below the modelled head '
                        '(sources outside the field of view)')
    g.add_argument('--dephasing', action=argparse.BooleanOptionalAction, default=None,
                   help='intravoxel dephasing: magnitude x |sinc(gamma G dx TE/2)| per axis '
                        'where the field gradient is steep (signal dropout near air)')
    g.add_argument('--receiver-nonharmonic', type=float, metavar='RAD',
                   help='peak amplitude (rad) of a smooth non-harmonic, TE-independent '
                        f"receiver phase (realistic: {REALISTIC['receiver_nonharmonic']:g})")
    g.add_argument('--coil-phase', type=float, metavar='RAD',
                   help='peak amplitude (rad) of a smooth non-harmonic coil-combination '
                        'phase drawn independently per echo '
                        f"(realistic: {REALISTIC['coil_phase']:g})")
    g.add_argument('--bias-field', type=float, metavar='A',
                   help='magnitude bias: central brightening 1 + A*G times a smooth random '
                        'exp(A/2*n) (realistic: 0.2 below 5 T, 0.5 from 5 T)')
    g = p.add_argument_group('phantom and numerics')
    g.add_argument('--deformation', type=float, metavar='MM',
                   help='amplitude of the per-subject random deformation in mm (default: 3; '
                        'cohort: drawn per subject in 2-6)')
    g.add_argument('--variation', choices=('none', 'cohort'),
                   help="'cohort': per-subject random head size, pose and deformation, "
                        'deep-grey-matter iron, white-matter anisotropy and fibre field, '
                        'veins, lesions and (unless given) voxel size, field strength, SNR; '
                        'draws in derivatives/.../sub-XX_cohort.json (default: none; '
                        'cohort: cohort)')
    g.add_argument('--lesions', choices=('none', 'random', 'all'),
                   help='lesions of a cohort (MS-like iso-intense and paramagnetic-rim, '
                        'microbleeds, calcifications, a haemorrhage): a random number of '
                        "each class, at least one of each, or none (default with --variation "
                        "cohort: random)")
    g.add_argument('--model-resolution', type=float, metavar='MM',
                   help='phantom model grid in mm (default: the smallest voxel size)')
    g.add_argument('--padding', type=float, metavar='MM',
                   help='air around the head for the FFT in mm (default: 24)')
    g.add_argument('--fov-margin', type=float, metavar='MM',
                   help='margin around the brain in the field of view in mm (default: 12)')
    g.add_argument('--jobs', type=int, metavar='N',
                   help='worker processes (default: CPUs; 2 at 1 mm); does not change results')
    g = p.add_argument_group('output')
    g.add_argument('--dry-run', action='store_true',
                   help='print the resolved settings as JSON and exit without writing')
    g.add_argument('-q', '--quiet', action='store_true', help='only warnings and errors')
    g.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    return p


_OVERRIDES = ('orientations', 'echoes', 'echo_times', 'voxel_size', 'field_strength', 'snr',
              'phase_units', 'magnitude_dtype', 'b0_dir_sidecar', 'oblique', 'tilt_range',
              'deformation', 'model_resolution', 'padding', 'fov_margin', 'truth',
              'grid_orientation', 'realism', 'air_cavities', 'body', 'dephasing',
              'receiver_nonharmonic', 'coil_phase', 'bias_field', 'variation', 'lesions')


def main(argv=None) -> int:
    """Entry point of ``qsmprep-simulate``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    if overrides.get('snr') == math.inf:
        overrides['snr'] = None
    if args.jobs is not None and args.jobs < 1:
        parser.error(f'--jobs must be >= 1; got {args.jobs}')
    try:
        cfg = resolve_config(args.preset, subjects=args.subjects, sessions=args.sessions,
                             seed=args.seed, **overrides)
    except SimulationConfigError as exc:
        parser.error(str(exc))
    if args.dry_run:
        print(json.dumps(cfg, indent=2, sort_keys=True))
        return 0
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format='%(asctime)s %(name)s: %(message)s', datefmt='%H:%M:%S')
    from qsmprep.simulate.api import OutputExistsError, simulate_dataset

    try:
        summary = simulate_dataset(args.out_dir, preset=args.preset, subjects=args.subjects,
                                   sessions=args.sessions, seed=args.seed,
                                   overwrite=args.overwrite, jobs=args.jobs, **overrides)
    except OutputExistsError as exc:
        print(f'qsmprep-simulate: error: {exc}', file=sys.stderr)
        return EX_CANTCREAT
    except SimulationConfigError as exc:
        print(f'qsmprep-simulate: error: {exc}', file=sys.stderr)
        return EX_USAGE
    if not args.quiet:
        print(f'wrote {summary.files} files to {summary.out_dir} in {summary.elapsed_s:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
