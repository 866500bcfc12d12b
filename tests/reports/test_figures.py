"""Report figures and helpers against geometry worked out by hand (no pipeline run)."""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest

from qsmprep.options import PipelineOptions
from qsmprep.reports import figures
from qsmprep.reports.boilerplate import REFERENCES, boilerplate
from qsmprep.reports.core import crash_summary, markdown_to_html

SHAPE = (20, 24, 16)


def _affine(codes, voxel=2.0):
    """Axis-aligned affine storing voxel axes along ``codes`` (e.g. ``'LAS'``), centred."""
    axes = {'R': (0, 1), 'L': (0, -1), 'A': (1, 1), 'P': (1, -1), 'S': (2, 1), 'I': (2, -1)}
    A = np.zeros((4, 4))
    A[3, 3] = 1
    for i, c in enumerate(codes):
        world, sign = axes[c]
        A[world, i] = sign * voxel
    A[:3, 3] = -A[:3, :3] @ ((np.asarray(SHAPE) - 1) / 2)
    return A


def _blob_at(affine, world):
    """A volume with a 3-voxel cube around the voxel nearest to the world point."""
    vox = np.round(np.linalg.inv(affine) @ [*world, 1])[:3].astype(int)
    vol = np.zeros(SHAPE)
    vol[tuple(slice(v - 1, v + 2) for v in vox)] = 1.0
    return vol


def _centre_of_mass(img):
    rows, cols = np.nonzero(np.nan_to_num(img) > 0.5)
    return rows.mean() / img.shape[0], cols.mean() / img.shape[1]


@pytest.mark.parametrize('codes', ['RAS', 'LAS', 'LPI', 'ASL'])
def test_tiles_show_the_subjects_left_on_the_left_whatever_the_storage(codes):
    """A blob at the subject's left-anterior-superior: left/top in axial, left/top in
    coronal, right (anterior)/top in sagittal — for any voxel storage order."""
    A = _affine(codes)
    blob = _blob_at(A, (-10.0, 10.0, 6.0))  # x<0 left, y>0 anterior, z>0 superior
    d, a = figures.canonical(blob, A)
    for plane, want in (('axial', ('top', 'left')), ('coronal', ('top', 'left')),
                        ('sagittal', ('top', 'right'))):
        # the slice through the blob: extent = the blob itself
        (tile,) = figures.plane_tiles(d, a, planes=(plane,), extent=d > 0)
        r, c = _centre_of_mass(tile.image)
        assert (r < 0.5) == (want[0] == 'top'), (codes, plane, r)
        assert (c < 0.5) == (want[1] == 'left'), (codes, plane, c)


def test_slice_coordinates_are_world_mm():
    A = _affine('LAS')
    A[:3, 3] += (7.0, -3.0, 11.0)  # an off-centre origin
    world = (-10.0, 10.0, 6.0)
    d, a = figures.canonical(_blob_at(A, world), A)
    tiles = figures.plane_tiles(d, a, extent=d > 0)
    # the blob's centre voxel, back to world coordinates (the grid's nearest voxel)
    vox = np.round(np.linalg.inv(A) @ [*world, 1])[:3]
    centre = A @ [*vox, 1]
    got = {t.plane: t.coord for t in tiles}
    assert got == {'sagittal': f'x = {round(centre[0])} mm', 'coronal':
                   f'y = {round(centre[1])} mm', 'axial': f'z = {round(centre[2])} mm'}


def test_anisotropic_voxels_become_square_pixels():
    A = np.diag([1.0, 1.0, 3.0, 1.0])
    d = np.ones((30, 30, 10))
    (cor,) = figures.plane_tiles(d, A, planes=('coronal',))
    assert cor.image.shape == (30, 30)  # 10 slices of 3 mm = 30 mm tall, as the 30 mm wide


def test_pev_colours_follow_the_display_axes():
    """Voxel axis 1 of this grid points to world -x (left-right): a PEV along it is red;
    the weight is MSA / msa_max clipped to 1."""
    A = np.zeros((4, 4))
    A[0, 1], A[1, 0], A[2, 2], A[3, 3] = -2.0, 2.0, 2.0, 1.0
    pev = np.zeros((*SHAPE, 3))
    pev[..., 1] = -1.0
    msa = np.full(SHAPE, 0.01)
    msa[0] = 0.05
    rgb, top = figures.pev_rgb(pev, msa, A, msa_max=0.02)
    assert top == 0.02
    np.testing.assert_allclose(rgb[5, 5, 5], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(rgb[0, 5, 5], [1.0, 0.0, 0.0])


def test_checkerboard_alternates_squares():
    a = np.full((8, 8, 8), 4.0)
    cb = figures.checkerboard(a, np.full_like(a, 2.0), squares=2)
    assert cb.shape == a.shape
    assert np.all(cb == 1.0)  # both scaled to their own 99th percentile: 1 everywhere
    half = figures.checkerboard(a, np.zeros_like(a), squares=2)
    assert half[0, 0, 0] == 1.0 and half[4, 0, 0] == 0.0 and half[4, 4, 0] == 1.0
    assert half[4, 4, 4] == 0.0 and half.mean() == pytest.approx(0.5)


def test_mosaic_png_is_wide_and_has_labels(monkeypatch):
    from matplotlib.text import Text

    seen = []
    real = figures.to_png
    monkeypatch.setattr(figures, 'to_png', lambda fig, **kw: seen.append(
        [t.get_text() for t in fig.findobj(Text)]) or real(fig, **kw))
    A = _affine('RAS')
    vol = np.random.default_rng(0).normal(size=SHAPE)
    png = figures.mosaic_slices(vol, A, n_slices=4, vlim=(-1, 1), units='ppm',
                                cbar_label='χ (ppm)')
    from io import BytesIO

    from PIL import Image

    im = Image.open(BytesIO(png))
    assert im.width >= 400
    (texts,) = seen
    assert texts.count('L') == 8 and texts.count('R') == 8  # 4 axial + 4 coronal tiles
    assert texts.count('P') == 4 and texts.count('A') == 4
    assert 'χ (ppm)' in texts
    assert sum(bool(re.fullmatch(r'[xyz] = -?\d+ mm', t)) for t in texts) == 12


def test_palette_png_keeps_grey_ramps():
    """The 256-colour PNG of a map differs from the full-colour rendering by at most one
    level (a coarse palette would posterise the ramp)."""
    from io import BytesIO

    from PIL import Image

    def draw():
        fig = figures._figure(4, 3)
        ax = fig.add_axes((0.1, 0.1, 0.6, 0.8))
        ax.imshow(np.linspace(-1, 1, 512)[:, None] * np.ones((1, 64)), cmap='gray')
        fig.colorbar(ax.images[0], cax=fig.add_axes((0.8, 0.1, 0.05, 0.8)), label='ppm')
        return fig

    full, pal = (np.asarray(Image.open(BytesIO(figures.to_png(draw(), palette=p)))
                            .convert('RGB'), int) for p in (False, True))
    assert full.shape == pal.shape
    assert len(np.unique(full[..., 0])) > 200  # the ramp really has many levels
    assert np.abs(full - pal).max() <= 2


def test_boilerplate_renders_as_html():
    md = boilerplate(PipelineOptions().resolved())
    out = markdown_to_html(md)
    cited = list(dict.fromkeys(re.findall(r'\[@([\w-]+)\]', md.split('# References')[0])))
    assert '[@' not in out and '# ' not in out
    items = re.findall(r'<li id="ref-([\w-]+)">(.*?)</li>', out)
    assert [k for k, _ in items][:len(cited)] == cited  # numbered in order of first use
    for k, text in items:
        assert text == REFERENCES[k].replace("'", '&#x27;')
    for n, k in enumerate(cited, 1):
        assert f'<a class="cite" href="#ref-{k}">[{n}]</a>' in out
    assert out.count('<h3>') == 2  # Methods, References


def test_markdown_inline_markup():
    out = markdown_to_html('A **bold** and *italic* `x<y` text.\nsame paragraph\n\nnext')
    assert out == ('<p>A <strong>bold</strong> and <em>italic</em> <code>x&lt;y</code> '
                   'text. same paragraph</p>\n<p>next</p>')


def test_crash_summary_reads_node_and_last_line(tmp_path):
    old = tmp_path / 'crash-20260101-000000-root-old-1.txt'
    old.write_text('Node: wf.old\n\nTraceback (most recent call last):\nKeyError: 1\n')
    t = time.time() - 7200
    os.utime(old, (t, t))
    new = tmp_path / 'crash-20260101-000001-root-new-2.txt'
    new.write_text('Node: wf.sub_wf.new\nWorking directory: /w\n\nNode inputs:\n\na = 1\n\n'
                   'Traceback (most recent call last):\n  File "f.py", line 2, in g\n'
                   '    h()\nRuntimeError: it broke\n\n')
    (tmp_path / 'unrelated.txt').write_text('x')
    everything = crash_summary(tmp_path)
    assert [c['node'] for c in everything] == ['wf.old', 'wf.sub_wf.new']
    recent = crash_summary(tmp_path, since=time.time() - 60)
    assert [(c['node'], c['error']) for c in recent] == [('wf.sub_wf.new',
                                                           'RuntimeError: it broke')]
    assert crash_summary(tmp_path / 'absent') == []
