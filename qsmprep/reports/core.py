"""Per-subject HTML report (``sub-<label>.html``) with embedded PNG figures.

Built from the derivatives (and the raw first-echo magnitudes) after a subject finished:
brain-mask overlays, field maps before and after V-SHARP, registration check, the
orientation set on a sphere with its condition number, and χ33 / MMS / MSA / principal
eigenvector maps.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=80, bbox_inches='tight')
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _slices(vol):
    """Mid-slices along the three voxel axes."""
    c = [s // 2 for s in vol.shape[:3]]
    return [np.rot90(vol[c[0]]), np.rot90(vol[:, c[1]]), np.rot90(vol[:, :, c[2]])]


def _load(path):
    import nibabel as nb

    img = nb.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _panel(rows, titles, *, cmap='gray', vlim=None, contours=None, rgb=False):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.5 * len(rows)), squeeze=False)
    for r, (vol, title) in enumerate(zip(rows, titles, strict=True)):
        lim = vlim[r] if isinstance(vlim, list) else vlim
        cont = _slices(contours[r]) if contours is not None and contours[r] is not None else None
        for c, sl in enumerate(_slices(vol) if not rgb else _rgb_slices(vol)):
            ax = axes[r, c]
            # magnitude panels (no limit) are auto-scaled; maps get symmetric ±lim
            lo, hi = (lim if isinstance(lim, tuple) else (-lim, lim)) if lim else (None, None)
            kw = {} if rgb else {'cmap': cmap, 'vmin': lo, 'vmax': hi}
            im = ax.imshow(sl, interpolation='nearest', **kw)
            if cont is not None:
                ax.contour(cont[c], levels=[0.5], colors='r', linewidths=0.7)
            ax.set_axis_off()
        axes[r, 0].set_title(title, fontsize=8, loc='left')
        if not rgb and lim:
            fig.colorbar(im, ax=axes[r, 2], fraction=0.046, label='ppm')
    return _png(fig)


def _rgb_slices(vec):
    c = [s // 2 for s in vec.shape[:3]]
    return [np.rot90(np.abs(vec[c[0]])), np.rot90(np.abs(vec[:, c[1]])),
            np.rot90(np.abs(vec[:, :, c[2]]))]


def _sphere(b0, cond_text) -> str:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(4, 4))
    ax = fig.add_subplot(projection='3d')
    u, v = np.mgrid[0:2 * np.pi:30j, 0:np.pi:15j]
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), lw=0.2,
                      color='0.7')
    b = np.asarray(b0, float)
    b = b * np.sign(b[:, 2:3] + 1e-12)  # ±b are equivalent: show the upper hemisphere
    ax.scatter(b[:, 0], b[:, 1], b[:, 2], c='C3', s=40, depthshade=False)
    for i, p in enumerate(b):
        ax.text(*(p * 1.1), str(i + 1), fontsize=7)
    ax.set_title(f'B0 directions (reference voxel frame)\n{cond_text}', fontsize=8)
    ax.set_box_aspect((1, 1, 1))
    return _png(fig)


def _registration_rows(anat, subject, bids_dir):
    """Reference magnitude with the outline of each registered orientation's magnitude.

    The outline (30 % of the moving image's 99th percentile) is drawn from the raw first-echo
    magnitude of the other orientation pulled through the saved transform, so misregistration
    shows as an outline that does not follow the reference head.
    """
    from nitransforms.linear import Affine

    from qsmprep.utils.images import resample

    ref = subject.reference_orientation
    ref_mag, ref_aff = _load(ref.echoes[0].magnitude)
    rows, titles, conts = [], [], []
    for ori in subject.orientations:
        if ori is ref:
            continue
        xfm = anat / (f'{subject.prefix}_from-{ori.space_label}_to-{ref.space_label}'
                      '_mode-image_xfm.txt')
        if not xfm.exists():
            continue
        pull = Affine.from_filename(str(xfm), fmt='itk').matrix  # reference -> moving
        mag, maff = _load(ori.echoes[0].magnitude)
        reg = resample(mag, maff, ref_aff, ref_mag.shape, world_xfm=np.linalg.inv(pull))
        rows.append(ref_mag)
        titles.append(f'{ori.label} magnitude outline on {ref.label}')
        conts.append(reg > 0.3 * np.percentile(mag, 99))
    return rows, titles, conts


def generate_report(deriv_root, subject, *, bids_dir, options) -> Path:
    """Write ``<deriv_root>/<sub>[_ses].html`` for one subject and return its path."""
    deriv_root = Path(deriv_root)
    rel = f'sub-{subject.subject}' + (f'/ses-{subject.session}' if subject.session else '')
    anat = deriv_root / rel / 'anat'
    sections = []

    def section(title, body):
        sections.append(f'<h2>{html.escape(title)}</h2>\n{body}')

    def img(b64, alt):
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"/>'

    rows = []
    for ori in subject.orientations:
        rows.append(f'<tr><td>{html.escape(ori.label)}</td><td>{ori.n_echoes}</td>'
                    f'<td>{", ".join(f"{t * 1e3:.1f}" for t in ori.echo_times)}</td>'
                    f'<td>{ori.field_strength:g}</td><td>{ori.shape}</td>'
                    f'<td>{np.round(ori.b0_direction, 3).tolist()} ({ori.b0_source})</td></tr>')
    section('Inputs', '<table><tr><th>orientation</th><th>echoes</th><th>TE (ms)</th>'
            '<th>B0 (T)</th><th>grid</th><th>B0 direction (voxel frame)</th></tr>'
            + ''.join(rows) + '</table>'
            + f'<p>Reference orientation: {html.escape(subject.reference_orientation.label)} '
              f'({html.escape(subject.reference_rule)}).  Options: '
              f'{html.escape(json.dumps(options))}</p>')

    mags, masks, fields_t, fields_l, chis, titles = [], [], [], [], [], []
    for ori in subject.orientations:
        p = anat / ori.prefix
        try:
            mag, _ = _load(ori.echoes[0].magnitude)
            mask, _ = _load(f'{p}_space-orig_desc-brain_mask.nii.gz')
            tot, _ = _load(f'{p}_desc-total_field.nii.gz')
            loc, _ = _load(f'{p}_desc-local_field.nii.gz')
            chi, _ = _load(f'{p}_desc-tkd_Chimap.nii.gz')
        except FileNotFoundError:
            continue
        mags.append(mag)
        masks.append(mask)
        fields_t.append(tot)
        fields_l.append(loc)
        chis.append(chi)
        titles.append(ori.label)
    if mags:
        section('Brain masks (first-echo magnitude, mask contour)',
                img(_panel(mags, titles, contours=masks), 'brain masks'))
        lim_t = float(np.percentile(np.abs(np.concatenate([f[m > 0] for f, m in
                                                           zip(fields_t, masks)])), 99) or 1)
        lim_l = float(np.percentile(np.abs(np.concatenate([f[f != 0] for f in fields_l]
                                                          or [np.zeros(1)])), 99) or 1)
        section('Total field (before V-SHARP)',
                img(_panel(fields_t, titles, cmap='RdBu_r', vlim=lim_t), 'total field'))
        section('Local field (after V-SHARP)',
                img(_panel(fields_l, titles, cmap='RdBu_r', vlim=lim_l), 'local field'))
        section('Single-orientation χ (TKD)',
                img(_panel(chis, titles, cmap='gray', vlim=0.15), 'tkd'))
    if len(subject.orientations) >= 2:
        rows_r, titles_r, conts = _registration_rows(anat, subject, bids_dir)
        if rows_r:
            section('Registration check (reference magnitude, registered magnitude outlines)',
                    img(_panel(rows_r, titles_r, contours=conts), 'registration'))
        sp = f'{subject.prefix}_space-{subject.reference_orientation.space_label}'
        orient = anat / f'{sp}_desc-orientations_qsmprep.json'
        if orient.exists():
            info = json.loads(orient.read_text())
            cond = info.get('condition_number')
            cond_text = (f"STI condition number cond(A), median over k: {cond['median']:.3g}"
                         if isinstance(cond, dict)
                         and 'median' in cond else 'STI not run (< 6 orientations)')
            body = img(_sphere(info['b0_directions'], cond_text), 'orientations')
            warn = ''.join(f'<p class="warn">{html.escape(w)}</p>' for w in info['warnings'])
            section('Orientation set', body + f'<p>{html.escape(cond_text)}</p>' + warn)
        maps, mtitles, lims = [], [], []
        for key, lim in (('cosmos', 0.15), ('chi33', 0.15), ('mms', 0.15), ('msa', None)):
            f = anat / f'{sp}_desc-{key}_Chimap.nii.gz'
            if f.exists():
                maps.append(_load(f)[0])
                if lim is None:  # anisotropy is >= 0: show 0 .. 99th percentile
                    lim = (0.0, float(np.percentile(maps[-1][maps[-1] != 0], 99) or 0.05))
                mtitles.append(key.upper())
                lims.append(lim)
        if maps:
            section('Multi-orientation susceptibility',
                    img(_panel(maps, mtitles, cmap='gray', vlim=lims), 'chi maps'))
        pev = anat / f'{sp}_desc-pev_vector.nii.gz'
        if pev.exists():
            vec = _load(pev)[0]
            section('Principal eigenvector (|x|,|y|,|z| as RGB)',
                    img(_panel([np.clip(vec, -1, 1)], ['PEV'], rgb=True), 'pev'))
    name = subject.prefix + '.html'
    out = deriv_root / name
    out.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f'<title>qsmprep: {html.escape(subject.prefix)}</title>'
        '<style>body{font-family:sans-serif;max-width:1000px;margin:auto}'
        'td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}'
        '.warn{color:#a00}</style></head><body>'
        f'<h1>qsmprep report: {html.escape(subject.prefix)}</h1>' + '\n'.join(sections)
        + '</body></html>\n')
    return out
