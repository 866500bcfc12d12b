"""Per-subject HTML report (``sub-<label>[_ses-<label>].html`` at the derivatives root).

Built after a subject's outputs are installed, from the derivatives (names from the
contract :mod:`qsmprep.io.derivatives`) and the raw first-echo magnitudes.  Sections, as in
fMRIPrep/MRIQC reports:

- **Summary**: the inputs, the reference orientation and why it was chosen, warnings;
- **Brain masks**, **Fields** (before and after background removal), **Single-orientation
  χ** (TKD, iLSQR and every ``--model`` map): one row per orientation, three planes each;
- **Registration**: each registered magnitude flickering against the reference, and a
  checkerboard of the two;
- **Orientation set**: the B0 directions on a sphere and the condition number;
- **Multi-orientation susceptibility**: COSMOS, χ33, MMS, MSA and the principal eigenvector
  coloured by direction and weighted by MSA, as slice mosaics;
- **Options**, **About** (version, command line, dates, run UUID, container, platform),
  **Methods** (the citation boilerplate) and **Errors** (this run's crash files).

Figures are PNGs (:mod:`qsmprep.reports.figures`) embedded as base64, so the page is one
self-contained file.  Each section is built on its own: a missing file skips what needs it
with a note in the page, and an unexpected error in one section is shown in that section
instead of stopping the report.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import os
import platform
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from qsmprep.io import derivatives as contract

LOGGER = logging.getLogger('qsmprep.report')

__all__ = ['crash_summary', 'generate_report', 'markdown_to_html']


# ---------------------------------------------------------------------------------------------
# small helpers
def _esc(text) -> str:
    return html.escape(str(text))


def _img(png: bytes, alt: str, cls: str = '') -> str:
    c = f' class="{cls}"' if cls else ''
    return (f'<img{c} alt="{_esc(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}"/>')


def _figure(png: bytes, alt: str, caption: str) -> str:
    return f'<figure>{_img(png, alt)}<figcaption>{caption}</figcaption></figure>'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _table(header, rows) -> str:
    head = ''.join(f'<th>{_esc(h)}</th>' for h in header)
    body = ''.join('<tr>' + ''.join(f'<td>{c}</td>' for c in row) + '</tr>' for row in rows)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _sidecar(path: Path) -> dict:
    """The JSON sidecar of a NIfTI (same name, ``.json``), ``{}`` if absent or unreadable."""
    name = path.name
    for ext in ('.nii.gz', '.nii'):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    try:
        return json.loads((path.parent / f'{name}.json').read_text())
    except (OSError, ValueError):
        return {}


def _lim(values, q=99.0, floor=1e-6) -> float:
    """A symmetric colour limit: the ``q``-th percentile of ``|values|``, 2 significant
    digits."""
    v = np.abs(np.asarray(values, float))
    v = v[np.isfinite(v)]
    if not v.size:
        return 1.0
    x = max(float(np.percentile(v, q)), floor)
    return float(f'{x:.2g}')


@dataclasses.dataclass
class _Context:
    deriv_root: Path
    subject: object
    bids_dir: Path | None
    options: object
    settings: object
    warnings: list = dataclasses.field(default_factory=list)
    _cache: dict = dataclasses.field(default_factory=dict)

    def load(self, path):
        """``(data, affine)`` of a NIfTI as float32, ``None`` when the file is missing.

        Not cached (at 1 mm with 12 orientations the maps would hold gigabytes); masks are,
        as booleans (:meth:`mask_of`).
        """
        path = Path(path)
        if not path.exists():
            return None
        import nibabel as nb

        img = nb.load(str(path))
        return np.asarray(img.dataobj, dtype=np.float32), img.affine

    def ori_path(self, ori, key, **fields) -> Path:
        return contract.orientation_path(self.deriv_root, self.subject, ori, key, **fields)

    def sub_path(self, key, **fields) -> Path:
        return contract.subject_path(self.deriv_root, self.subject, key, **fields)

    def per_orientation(self, key, notes, **fields):
        """``[(ori, data, affine)]`` of a per-orientation output; missing files noted."""
        out = []
        for ori in self.subject.orientations:
            p = self.ori_path(ori, key, **fields)
            got = self.load(p)
            if got is None:
                notes.append(f'{ori.space_label}: {p.name} not found')
                continue
            out.append((ori, *got))
        return out

    def mask_of(self, ori, key='brain_mask'):
        """A per-orientation mask as booleans (cached), ``None`` when missing."""
        return self.mask(self.ori_path(ori, key))

    def mask(self, path):
        path = Path(path)
        if path not in self._cache:
            got = self.load(path)
            self._cache[path] = None if got is None else got[0] > 0
        return self._cache[path]

    @property
    def several(self) -> bool:
        return len(self.subject.orientations) >= 2


# ---------------------------------------------------------------------------------------------
# options
def _options_object(options):
    """A :class:`~qsmprep.options.PipelineOptions` (resolved) from the object or a dict of
    the same names; ``None`` when that is not possible."""
    from qsmprep.options import PipelineOptions

    if isinstance(options, PipelineOptions):
        obj = options
    elif isinstance(options, dict):
        names = {f.name for f in dataclasses.fields(PipelineOptions)}
        try:
            obj = PipelineOptions(**{k: (tuple(v) if isinstance(v, list) else v)
                                     for k, v in options.items() if k in names})
        except (TypeError, ValueError):
            return None
    else:
        return None
    try:
        return obj.resolved()
    except Exception:
        return obj


def _options_dict(options) -> dict:
    if options is None:
        return {}
    if hasattr(options, 'to_dict'):
        return options.to_dict()
    return dict(options)


def _flags() -> dict:
    """Command-line flag of each option (from the parser), by destination."""
    try:
        from qsmprep.cli import parser

        by_dest = {}
        for action in parser.build_parser()._actions:
            longs = [s for s in action.option_strings if s.startswith('--')]
            if longs:
                by_dest.setdefault(action.dest, longs[0])
        renamed = getattr(parser, '_DEST', {})  # settings whose parser dest differs
        names = set(by_dest) | set(renamed)
        return {n: by_dest[renamed.get(n, n)] for n in names if renamed.get(n, n) in by_dest}
    except Exception:
        return {}


def _fmt_value(v) -> str:
    if v is None:
        return '<span class="muted">default</span>'
    if isinstance(v, list | tuple):
        return _esc(' '.join(str(x) for x in v))
    return _esc(v)


# ---------------------------------------------------------------------------------------------
# sections
def _section_masks(ctx):
    from qsmprep.reports import figures

    notes, items = [], []
    for ori in ctx.subject.orientations:
        got = ctx.load(ori.echoes[0].magnitude)
        if got is None:
            notes.append(f'{ori.space_label}: first-echo magnitude not found')
            continue
        mag, aff = got
        mask = ctx.mask_of(ori)
        if mask is not None and mask.shape != mag.shape:
            mask = None
        if mask is None:
            notes.append(f'{ori.space_label}: '
                         f'{ctx.ori_path(ori, "brain_mask").name} not found (no outline)')
        inside = mag[mask] if mask is not None and mask.any() else mag[mag > 0]
        scale = float(np.percentile(inside, 99)) if inside.size else 1.0
        items.append((ori.space_label, mag / (scale or 1.0), aff)
                     + ((mask,) if mask is not None else ()))
    if not items:
        return ''.join(_note(n) for n in notes) or _note('no magnitude images found')
    png = figures.mosaic_rows(items, vlim=(0, 1.25), title='First-echo magnitude, brain mask')
    return (_figure(png, 'brain masks', 'First-echo magnitude of every orientation with the '
                    'outline of its brain mask (red), through the centre of the mask. '
                    'Neurological convention: the subject\'s left (L) on the left.')
            + ''.join(_note(n) for n in notes))


def _section_fields(ctx):
    from qsmprep.reports import figures

    notes, body = [], []
    bgrm = _options_dict(ctx.options).get('bgremoval')
    method = f' ({_esc(bgrm)})' if bgrm else ''
    for key, mask_key, title, what in (
            ('total_field', 'brain_mask', 'Total field',
             'echo-combined, unwrapped field shift in the brain mask, before background '
             'removal: dominated by the smooth background field'),
            ('local_field', 'local_mask', 'Local field',
             f'after background removal{method} in its (eroded) mask: the tissue field the '
             'inversions use')):
        maps = ctx.per_orientation(key, notes)
        items, vals = [], []
        for ori, data, aff in maps:
            m = ctx.mask_of(ori, mask_key)
            if m is None or m.shape != data.shape:
                m = data != 0
            items.append((ori.space_label, data, aff, m))
            vals.append(data[m])
        if not items:
            continue
        lim = _lim(np.concatenate(vals))
        png = figures.mosaic_rows(items, cmap='RdBu_r', vlim=(-lim, lim), units='ppm',
                                  cbar_label=f'{title.lower()} (ppm)', title=title,
                                  outline=False, blank=True)
        body.append(_figure(png, title.lower(), f'{title}: {what}; colour range ±{lim:g} ppm '
                            '(99th percentile of |field|).'))
    return ''.join(body) + ''.join(_note(n) for n in notes) if body or notes else _note(
        'no field maps found')


def _chi_methods(ctx) -> list[str]:
    """Single-orientation inversion methods present on disk (tkd, ilsqr, then models),
    found with the contract's ``chimap`` template (other outputs that match it, such as
    the apparent-susceptibility label, are left out)."""
    found = set()
    pattern = contract.name('chimap', ori='\0', method='\1')
    pre, post = pattern.split('\1')
    pre = pre.replace('\0', '')
    for ori in ctx.subject.orientations:
        others = {ctx.ori_path(ori, k).name for k, o in contract.OUTPUTS.items()
                  if o.scope == 'orientation' and k != 'chimap' and o.fields <= {
                      'ori', 'sub', 'ref', 'space'}}
        folder = ctx.ori_path(ori, 'chimap', method='x').parent
        for p in folder.glob(ori.prefix + pre + '*' + post):
            if p.name in others:
                continue
            found.add(p.name[len(ori.prefix + pre): -len(post)])
    from qsmprep.options import CHOICES

    builtin = [m for m in CHOICES['inversions'] if m in found]
    return builtin + sorted(found - set(builtin))


def _chi_limit(ctx) -> float:
    if 'chi_lim' not in ctx._cache:
        lim = None
        cos = ctx.load(ctx.sub_path('cosmos')) if ctx.several else None
        if cos is not None:
            cm = ctx.mask(ctx.sub_path('common_mask'))
            m = cm if cm is not None and cm.shape == cos[0].shape else cos[0] != 0
            lim = _lim(cos[0][m], 99.5)
        else:
            vals = []
            for ori in ctx.subject.orientations:
                got = ctx.load(ctx.ori_path(ori, 'chimap', method='tkd'))
                if got is not None:
                    vals.append(got[0][got[0] != 0])
            if vals:
                lim = _lim(np.concatenate(vals), 99.5)
        ctx._cache['chi_lim'] = lim or 0.15
    return ctx._cache['chi_lim']


def _section_chi(ctx):
    from qsmprep.options import CHOICES
    from qsmprep.reports import figures

    methods = _chi_methods(ctx)
    if not methods:
        return _note('no single-orientation susceptibility map found')
    lim = _chi_limit(ctx)
    body = []
    for method in methods:
        notes = []
        maps = ctx.per_orientation('chimap', notes, method=method)
        items = []
        for ori, data, aff in maps:
            m = ctx.mask_of(ori, 'local_mask')
            if m is None or m.shape != data.shape:
                m = data != 0
            items.append((ori.space_label, data, aff, m))
        if not items:
            continue
        algo = _sidecar(ctx.ori_path(maps[0][0], 'chimap', method=method)).get(
            'EstimationAlgorithm', '')
        kind = (f'<code>--model</code> map <b>{_esc(method)}</b>'
                if method not in CHOICES['inversions'] else f'<b>{_esc(method.upper())}</b>')
        title = f'χ, {method}' + ('' if method in CHOICES['inversions'] else ' (--model)')
        png = figures.mosaic_rows(items, vlim=(-lim, lim), units='ppm',
                                  cbar_label='χ (ppm)', title=title, outline=False,
                                  blank=True)
        body.append(f'<h3 id="chi-{_esc(method)}">{kind}</h3>' + _figure(
            png, f'chi {method}', f'Single-orientation susceptibility ({_esc(algo) or method})'
            f' in the local mask of each orientation; grey scale ±{lim:g} ppm, the same for '
            'every χ map of this report.') + ''.join(_note(n) for n in notes))
    return ''.join(body)


def _registered_magnitudes(ctx):
    """``(reference magnitude, affine, reference mask, [(label, registered magnitude)])``:
    each moving orientation's raw first-echo magnitude pulled onto the reference grid
    through its saved ITK transform (which maps reference points to the moving image)."""
    from nitransforms.linear import Affine

    from qsmprep.utils.images import resample

    ref = ctx.subject.reference_orientation
    got = ctx.load(ref.echoes[0].magnitude)
    if got is None:
        return None
    ref_mag, ref_aff = got
    ref_mask = ctx.mask_of(ref)
    if ref_mask is None or ref_mask.shape != ref_mag.shape:
        ref_mask = ref_mag > np.percentile(ref_mag, 60)
    moved, notes = [], []
    for ori in ctx.subject.orientations:
        if ori is ref:
            continue
        xfm = ctx.ori_path(ori, 'xfm')
        mag = ctx.load(ori.echoes[0].magnitude)
        if not xfm.exists() or mag is None:
            notes.append(f'{ori.space_label}: {xfm.name} or its magnitude not found')
            continue
        pull = Affine.from_filename(str(xfm), fmt='itk').matrix  # reference -> moving
        reg = resample(mag[0], mag[1], ref_aff, ref_mag.shape, world_xfm=np.linalg.inv(pull))
        moved.append((ori.space_label, reg))
    return ref_mag, ref_aff, ref_mask, moved, notes


def _section_registration(ctx):
    from qsmprep.reports import figures

    if not ctx.several:
        return _note('one orientation: nothing to register')
    got = _registered_magnitudes(ctx)
    if got is None:
        return _note('the reference magnitude was not found')
    ref_mag, ref_aff, ref_mask, moved, notes = got
    if not moved:
        return ''.join(_note(n) for n in notes) or _note('no transforms found')
    ref_label = ctx.subject.reference_orientation.space_label

    def unit(a):
        hi = float(np.percentile(a[ref_mask], 99)) if ref_mask.any() else float(a.max())
        return a / (hi or 1.0)

    ref_u = unit(ref_mag)
    regs = [(f'{lab} → {ref_label}', unit(r)) for lab, r in moved]
    kw = {'vlim': (0, 1.1), 'outline': True, 'overlay_color': '#30d0ff'}
    moving_png = figures.mosaic_rows([(lab, r, ref_aff, ref_mask) for lab, r in regs],
                                     title='Registered magnitude (moving)', **kw)
    ref_png = figures.mosaic_rows([(lab, ref_u, ref_aff, ref_mask) for lab, _ in regs],
                                  title=f'Reference magnitude ({ref_label})', **kw)
    checker = figures.mosaic_rows(
        [(lab, figures.checkerboard(ref_u, r, mask=ref_mask), ref_aff, ref_mask)
         for lab, r in regs], title='Checkerboard: reference / registered', **kw)
    flicker = (
        '<div class="flicker" title="hover to pause">'
        + _img(ref_png, 'reference magnitude', 'flicker-base')
        + _img(moving_png, 'registered magnitude', 'flicker-top') + '</div>')
    return (
        '<p>Each moving orientation\'s raw first-echo magnitude resampled onto the reference '
        'grid with its saved transform.  The image alternates every second between the '
        'registered moving magnitude and the reference (hover to pause); the outline is the '
        'reference brain mask, so a head that shifts against it, or edges that jump, show a '
        'misregistration.</p>'
        + f'<figure>{flicker}<figcaption>Flicker: registered moving magnitude ⇄ reference '
          f'{_esc(ref_label)} (each tile labelled moving → reference).</figcaption></figure>'
        + _figure(checker, 'checkerboard', 'Checkerboard of the reference and each registered '
                  'magnitude (alternate squares, each image scaled to its 99th percentile in '
                  'the reference brain mask): edges must continue across the squares.')
        + ''.join(_note(n) for n in notes))


def _orientations_info(ctx):
    if not ctx.several:
        return None
    p = ctx.sub_path('orientations')
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return None


_COND_TEXT = (
    'cond(A) is the ratio of the largest to the smallest singular value of the per-k STI '
    'system (median over k-space directions): relative errors in the local fields — noise, '
    'background-removal and registration errors — can be amplified up to this factor in '
    'the tensor, so about 10–30 means a well-spread set of head orientations, above 1000 '
    'qsmprep warns, and ∞ means the directions do not determine the tensor.')


def _section_orientations(ctx):
    from qsmprep.reports import figures

    if not ctx.several:
        return _note('one orientation: no orientation set')
    info = _orientations_info(ctx)
    if info is None:
        return _note(f'{ctx.sub_path("orientations").name} not found')
    b0 = np.asarray(info.get('b0_directions', []), float)
    labels = [o.space_label for o in ctx.subject.orientations]
    ref_idx = ctx.subject.reference
    order = [ref_idx] + [i for i in range(len(b0)) if i != ref_idx]  # reference first (red)
    png = figures.orientation_sphere(b0[order], [labels[i] for i in order],
                                     title='B0 directions in the reference voxel frame')
    tilt = np.degrees(np.arccos(np.clip(np.abs(b0 @ b0[ref_idx]), 0, 1)))
    rows = [[_esc(labels[i]), ', '.join(f'{x:+.3f}' for x in b0[i]), f'{tilt[i]:.1f}']
            for i in range(len(b0))]
    cond = info.get('condition_number')
    if isinstance(cond, dict) and 'median' in cond:
        text = (f'<p><b>STI condition number</b> cond(A): median {cond["median"]:.3g} '
                f'(5–95 %: {cond.get("p5", float("nan")):.3g}–'
                f'{cond.get("p95", float("nan")):.3g}). {_esc(_COND_TEXT)}</p>')
    else:
        text = '<p>STI needs at least 6 orientations: no tensor condition number.'
        try:
            from qsmprep.numerics.sti import cosmos_conditioning

            c = cosmos_conditioning(b0)
            text += (f'  COSMOS conditioning: min over k of Σᵢ Dᵢ(k)² = {c.minimum:.3g} '
                     f'(0 means some k-space directions are not determined by any '
                     f'orientation; {100 * c.fraction_below:.1f} % of directions are below '
                     f'the solver threshold).')
        except Exception:
            pass
        text += '</p>'
    return (_figure(png, 'orientation sphere', 'B0 direction of each orientation on the '
                    'upper hemisphere (±B0 are the same measurement); the reference in red.')
            + _table(['orientation', 'B0 (reference voxel frame)', 'tilt from reference (°)'],
                     rows) + text)


def _section_multi(ctx):
    from qsmprep.reports import figures

    if not ctx.several:
        return _note('one orientation: no COSMOS or STI')
    mask = ctx.mask(ctx.sub_path('common_mask'))
    lim = _chi_limit(ctx)
    body, notes = [], []
    captions = {'cosmos': 'COSMOS (isotropic χ from all orientations)',
                'chi33': 'STI χ33: the tensor along the reference B0',
                'mms': 'STI mean magnetic susceptibility tr(χ)/3'}
    for key, cap in captions.items():
        p = ctx.sub_path(key)
        got = ctx.load(p)
        if got is None:
            if key == 'cosmos' or len(ctx.subject.orientations) >= 6:
                notes.append(f'{p.name} not found')
            continue
        ext = mask if mask is not None and mask.shape == got[0].shape else got[0] != 0
        png = figures.mosaic_slices(got[0], got[1], extent=ext, vlim=(-lim, lim), units='ppm',
                                    cbar_label='χ (ppm)', title=key.upper())
        body.append(_figure(png, key, f'{cap}, in the common mask; grey scale ±{lim:g} ppm.'))
    msa = ctx.load(ctx.sub_path('msa'))
    pev = ctx.load(ctx.sub_path('pev'))
    if msa is not None:
        ext = mask if mask is not None and mask.shape == msa[0].shape else msa[0] != 0
        top = _lim(msa[0][ext], 99)
        png = figures.mosaic_slices(msa[0], msa[1], extent=ext, vlim=(0, top), cmap='magma',
                                    units='ppm', cbar_label='MSA (ppm)', title='MSA')
        body.append(_figure(
            png, 'msa', f'Magnetic susceptibility anisotropy λ1 − (λ2 + λ3)/2, 0–{top:g} ppm.'))
        if pev is not None and pev[0].ndim == 4:
            rgb, w = figures.pev_rgb(pev[0], msa[0], pev[1], mask=ext, msa_max=top)
            png = figures.mosaic_slices(rgb, pev[1], extent=ext, rgb=True,
                                        title='Principal eigenvector × MSA')
            body.append(_figure(
                png, 'pev', 'Principal eigenvector of the tensor, |v| as colour (red: L–R, '
                f'green: A–P, blue: S–I), brightness MSA / {w:g} ppm clipped to 1: bright '
                'where the anisotropy is large, dark where the direction is meaningless.'))
    elif len(ctx.subject.orientations) >= 6:
        notes.append(f'{ctx.sub_path("msa").name} not found')
    return ''.join(body) + ''.join(_note(n) for n in notes) or _note(
        'no multi-orientation maps found')


def _section_options(ctx):
    from qsmprep.options import DEFAULTS

    opts = _options_dict(ctx.options)
    if not opts:
        return _note('no options recorded')
    defaults = DEFAULTS.to_dict()
    flags = _flags()
    rows = []
    for k, v in opts.items():
        changed = k in defaults and v != defaults[k]
        flag = flags.get(k, '')
        rows.append([f'<code>{_esc(flag)}</code>' if flag else _esc(k),
                     ('<b>' if changed else '') + _fmt_value(v) + ('</b>' if changed else ''),
                     _fmt_value(defaults.get(k)) if k in defaults else ''])
    s = ctx.settings
    for attr, label in (('nprocs', '--nprocs'), ('omp_nthreads', '--omp-nthreads'),
                        ('plugin', 'plugin'), ('reference_orientation',
                                               '--reference-orientation'),
                        ('derivatives', '--derivatives')):
        v = getattr(s, attr, None) if s is not None else None
        if v is not None:
            rows.append([f'<code>{_esc(label)}</code>', _fmt_value(str(v)), ''])
    return ('<p>Processing options of this run (values that differ from the default in '
            'bold; <i>default</i> for an option left to its automatic value).</p>'
            + _table(['option', 'value', 'default'], rows))


def _version(mod) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return '?'


def _section_about(ctx):
    from qsmprep import __version__

    s = ctx.settings
    get = (lambda name, default=None: getattr(s, name, default)) if s is not None else (
        lambda name, default=None: default)
    cmd = get('command_line')
    if isinstance(cmd, list | tuple):
        import shlex

        cmd = ' '.join(shlex.quote(str(c)) for c in cmd)
    try:
        from qsmprep.workflows.base import container_info

        cont = container_info()
    except Exception:
        cont = None
    container = (f'{cont.get("Type")} ({cont.get("Tag", "")})' if cont else
                 os.environ.get('QSMPREP_CONTAINER') or 'none (not run in the qsmprep image)')
    rows = [
        ('qsmprep version', _esc(get('version') or __version__)),
        ('command line', f'<code>{_esc(cmd)}</code>' if cmd else
         '<span class="muted">not recorded</span>'),
        ('run started', _esc(get('created') or 'unknown')),
        ('report written', _esc(datetime.now(UTC).isoformat(timespec='seconds'))),
        ('run UUID', f'<code>{_esc(get("run_uuid") or "unknown")}</code>'),
        ('container', _esc(container)),
        ('platform', _esc(f'{platform.platform()} ({platform.machine()}), '
                          f'{os.cpu_count()} CPUs')),
        ('Python', _esc(f'{platform.python_implementation()} {sys.version.split()[0]}')),
        ('packages', _esc(', '.join(f'{m} {_version(m)}' for m in
                                    ('nipype', 'numpy', 'scipy', 'nibabel', 'SimpleITK')))),
        ('input (BIDS)', _esc(ctx.bids_dir or get('bids_dir') or '')),
        ('work directory', _esc(get('work_dir') or 'unknown')),
    ]
    return _table(['', ''], [[f'<b>{_esc(k)}</b>', v] for k, v in rows])


_INLINE = [
    (re.compile(r'`([^`]+)`'), r'<code>\1</code>'),
    (re.compile(r'\*\*(.+?)\*\*'), r'<strong>\1</strong>'),
    (re.compile(r'(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])'), r'<em>\1</em>'),
]


def markdown_to_html(text: str) -> str:
    """The small Markdown of :func:`qsmprep.reports.boilerplate.boilerplate` as HTML.

    Headings (``#``), paragraphs, ``**bold**``, ``*italic*``, ```code```, citations
    ``[@key]`` (numbered in order of first use, linked to the list) and reference
    definitions ``[@key]: text`` (an ordered list).

    >>> print(markdown_to_html('# Methods\\n\\nWe used **X** [@a].\\n\\n[@a]: A. Paper.'))
    <h3>Methods</h3>
    <p>We used <strong>X</strong> <a class="cite" href="#ref-a">[1]</a>.</p>
    <ol class="refs"><li id="ref-a">A. Paper.</li></ol>
    """
    refs, blocks, para = {}, [], []
    for line in text.splitlines():
        m = re.match(r'\s*\[@([\w-]+)\]:\s*(.*)$', line)
        if m:
            refs[m.group(1)] = m.group(2)
            continue
        if not line.strip():
            if para:
                blocks.append(('p', ' '.join(para)))
                para = []
            continue
        h = re.match(r'(#+)\s+(.*)$', line)
        if h:
            if para:
                blocks.append(('p', ' '.join(para)))
                para = []
            blocks.append(('h', h.group(2)))
            continue
        para.append(line.strip())
    if para:
        blocks.append(('p', ' '.join(para)))
    order: list[str] = []

    def cite(m):
        keys = [k.strip().lstrip('@') for k in m.group(1).split(';')]
        out = []
        for k in keys:
            if k not in order:
                order.append(k)
            out.append(f'<a class="cite" href="#ref-{_esc(k)}">[{order.index(k) + 1}]</a>')
        return ''.join(out)

    def inline(s):
        s = _esc(s)
        for pat, rep in _INLINE:
            s = pat.sub(rep, s)
        return re.sub(r'\[(@[\w-]+(?:;\s*@[\w-]+)*)\]', cite, s)

    parts = []
    for kind, content in blocks:
        if kind == 'h':
            if content.strip().lower() == 'references' and refs:
                continue  # the list below is the references
            parts.append(f'<h3>{inline(content)}</h3>')
        else:
            parts.append(f'<p>{inline(content)}</p>')
    listed = order + [k for k in refs if k not in order]
    if refs:
        if any(b == ('h', 'References') for b in blocks):
            parts.append('<h3>References</h3>')
        parts.append('<ol class="refs">' + ''.join(
            f'<li id="ref-{_esc(k)}">{inline(refs.get(k, k))}</li>' for k in listed) + '</ol>')
    return '\n'.join(parts)


def _section_methods(ctx):
    from qsmprep.reports.boilerplate import boilerplate

    opts = _options_object(ctx.options)
    if opts is None:
        opts = ctx.options
    if opts is None:
        return _note('no options recorded: no methods text')
    return ('<p class="muted">The text below describes what this run did; it is also in '
            '<code>logs/CITATION.md</code>.  Copy it into your methods section.</p>'
            '<div class="boilerplate">' + markdown_to_html(boilerplate(opts)) + '</div>')


def crash_summary(crash_dir, since: float | None = None) -> list[dict]:
    """Nipype crash files in ``crash_dir`` (modified at or after ``since``, a POSIX time):
    ``file``, ``node`` and ``error`` (the last line of the traceback), oldest first."""
    crash_dir = Path(crash_dir)
    if not crash_dir.is_dir():
        return []
    out = []
    for p in sorted(crash_dir.glob('crash-*')):
        try:
            mtime = p.stat().st_mtime
        except OSError:
            continue
        if since is not None and mtime < since:
            continue
        node, error = '?', ''
        try:
            if p.suffix == '.txt':
                lines = p.read_text(errors='replace').splitlines()
                node = next((ln.split(':', 1)[1].strip() for ln in lines
                             if ln.startswith('Node:')), '?')
                tb = '\n'.join(lines)
            else:
                from nipype.utils.filemanip import loadcrash

                rec = loadcrash(str(p))
                node = getattr(rec.get('node'), 'fullname', None) or str(rec.get('node', '?'))
                tb = ''.join(rec.get('traceback', []))
            error = next((ln.strip() for ln in reversed(tb.splitlines()) if ln.strip()), '')
        except Exception as exc:
            error = f'(could not read the crash file: {exc})'
        out.append({'file': p, 'node': node, 'error': error, 'mtime': mtime})
    return sorted(out, key=lambda d: d['mtime'])


def _section_errors(ctx):
    s = ctx.settings
    work = getattr(s, 'work_dir', None) if s is not None else None
    if work is None:
        return _note('no work directory known: crash files not looked for')
    crash_dir = Path(work) / 'crash'
    since = None
    created = getattr(s, 'created', None)
    if created:
        try:
            since = datetime.fromisoformat(str(created)).timestamp() - 1.0
        except ValueError:
            since = None
    crashes = crash_summary(crash_dir, since)
    if not crashes:
        return (f'<p class="ok">No errors: no crash file from this run in '
                f'<code>{_esc(crash_dir)}</code>.</p>')
    rows = [[f'<code>{_esc(c["node"])}</code>', _esc(c['error']),
             f'<code>{_esc(c["file"].name)}</code>'] for c in crashes]
    ctx.warnings.append(f'{len(crashes)} crash file(s) from this run (see Errors)')
    return (f'<p class="warn">{len(crashes)} node(s) of this run crashed; crash files in '
            f'<code>{_esc(crash_dir)}</code> (<code>nipypecli crash FILE</code> shows one).</p>'
            + _table(['node', 'error (last line of the traceback)', 'crash file'], rows))


_RULES = {
    'most-superior-b0': 'chosen automatically: the orientation whose B0 is closest to the '
                        'head\'s superior axis',
    'user': 'chosen with <code>--reference-orientation</code>',
}


def _section_summary(ctx):
    subj = ctx.subject
    ref = subj.reference_orientation
    rows = []
    for ori in subj.orientations:
        mark = ' <b>(reference)</b>' if ori is ref else ''
        rows.append([
            _esc(ori.label) + mark, str(ori.n_echoes),
            ', '.join(f'{t * 1e3:.1f}' for t in ori.echo_times), f'{ori.field_strength:g}',
            '×'.join(str(n) for n in ori.shape),
            '×'.join(f'{v:g}' for v in ori.voxel_size),
            '(' + ', '.join(f'{x:.3f}' for x in ori.b0_direction) + f') {_esc(ori.b0_source)}',
            'user' if getattr(ori, 'user_mask', None) else _esc(
                _options_dict(ctx.options).get('mask_method', '')),
        ])
    why = _RULES.get(subj.reference_rule, _esc(subj.reference_rule))
    if subj.reference_rule == 'most-superior-b0':
        try:
            from qsmprep.io.datamodel import reference_scores

            scores = reference_scores(subj.orientations)
            why += f' (|b̂·ŝ| = {scores[subj.reference]:.3f}, the largest of {len(scores)})'
        except Exception:
            pass
    n = len(subj.orientations)
    produced = ('single-orientation maps only' if n < 2 else
                'COSMOS' if n < 6 else 'COSMOS and the susceptibility tensor (STI)')
    info = _orientations_info(ctx)
    warns = list((info or {}).get('warnings', [])) + ctx.warnings
    wl = ('<ul class="warn">' + ''.join(f'<li>{_esc(w)}</li>' for w in warns) + '</ul>'
          if warns else '<p class="ok">No warnings.</p>')
    return (f'<ul><li>Subject <b>{_esc(subj.subject)}</b>'
            + (f', session <b>{_esc(subj.session)}</b>' if subj.session else '')
            + f': {n} orientation(s) → {produced}.</li>'
            f'<li>Reference orientation: <b>{_esc(ref.label)}</b>, {why}.</li></ul>'
            + _table(['orientation', 'echoes', 'TE (ms)', 'B0 (T)', 'grid', 'voxel (mm)',
                      'B0 direction (own voxel frame), from', 'mask'], rows)
            + '<h3>Warnings</h3>' + wl)


_SECTIONS = (
    ('summary', 'Summary', _section_summary),
    ('masks', 'Brain masks', _section_masks),
    ('fields', 'Fields', _section_fields),
    ('chi', 'Single-orientation χ', _section_chi),
    ('registration', 'Registration', _section_registration),
    ('orientations', 'Orientation set', _section_orientations),
    ('multi', 'Multi-orientation susceptibility', _section_multi),
    ('options', 'Options', _section_options),
    ('about', 'About', _section_about),
    ('methods', 'Methods', _section_methods),
    ('errors', 'Errors', _section_errors),
)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;
color:#222;background:#fff}
nav{position:sticky;top:0;background:#2d3e50;padding:6px 16px;z-index:2}
nav a{color:#fff;text-decoration:none;margin-right:14px;font-size:14px}
nav a:hover{text-decoration:underline}
main{max-width:1180px;margin:auto;padding:0 16px 40px}
h1{font-size:24px;margin:18px 0 4px}h2{border-bottom:2px solid #2d3e50;padding-top:12px}
h3{margin-bottom:4px}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}
th{background:#eef2f6}
figure{margin:10px 0}figcaption{font-size:13px;color:#444;max-width:900px}
img{max-width:100%;height:auto}
.note{color:#777;font-style:italic}.muted{color:#777}
.warn{color:#a00}.ok{color:#176b2c}
.flicker{position:relative;display:inline-block;max-width:100%}
.flicker img{display:block}
.flicker .flicker-top{position:absolute;left:0;top:0;animation:qsmprep-flick 2s steps(1,end)
infinite}
.flicker:hover .flicker-top{animation-play-state:paused}
@keyframes qsmprep-flick{0%{opacity:1}50%{opacity:0}}
.boilerplate{background:#f7f7f7;border-left:4px solid #2d3e50;padding:4px 14px}
.refs{font-size:13px}
"""


def generate_report(deriv_root, subject, *, bids_dir, options, settings=None) -> Path:
    """Write ``<deriv_root>/<sub>[_ses].html`` for one subject and return its path.

    Parameters
    ----------
    deriv_root : path
        The derivatives dataset, with the subject's outputs installed.
    subject : qsmprep.io.datamodel.SubjectData
    bids_dir : path
        The raw dataset (the first-echo magnitudes are read from the paths in ``subject``).
    options : qsmprep.options.PipelineOptions or dict
        The processing options of the run.
    settings : qsmprep.cli.config.Settings, optional
        The run's settings: version, command line, dates, run UUID and work directory (for
        the crash files) in *About* and *Errors*.
    """
    deriv_root = Path(deriv_root)
    ctx = _Context(deriv_root, subject, Path(bids_dir) if bids_dir else None, options,
                   settings)
    bodies = {}
    for key, title, build in _SECTIONS[1:] + _SECTIONS[:1]:  # summary last: it has warnings
        try:
            bodies[key] = build(ctx)
        except Exception as exc:
            LOGGER.warning('report %s: section %r failed: %s', subject.prefix, title, exc,
                           exc_info=LOGGER.isEnabledFor(logging.DEBUG))
            ctx.warnings.append(f'the {title} section could not be drawn: {exc}')
            bodies[key] = _note(f'This section could not be drawn: {type(exc).__name__}: {exc}')
            if key == 'summary':
                bodies[key] += '<ul class="warn">' + ''.join(
                    f'<li>{_esc(w)}</li>' for w in ctx.warnings) + '</ul>'
    nav = ''.join(f'<a href="#{k}">{_esc(t)}</a>' for k, t, _ in _SECTIONS)
    sections = ''.join(f'<section id="{k}"><h2>{_esc(t)}</h2>\n{bodies[k]}</section>\n'
                       for k, t, _ in _SECTIONS)
    from qsmprep import __version__
    from qsmprep.utils.fsutils import write_text  # atomic: no half-written report

    out = deriv_root / contract.name('report', sub=subject.prefix)
    write_text(
        out,
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>qsmprep: {_esc(subject.prefix)}</title><style>{_CSS}</style></head><body>'
        f'<nav>{nav}</nav><main><h1>qsmprep report: {_esc(subject.prefix)}</h1>'
        f'<p class="muted">qsmprep {_esc(__version__)} · '
        f'{len(subject.orientations)} orientation(s) · '
        f'reference {_esc(subject.reference_orientation.label)}</p>\n'
        + sections + '</main></body></html>\n')
    return out
