"""The subject report built from a real ``tiny`` run: sections, figures, errors, robustness."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
import re
import shutil
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from qsmprep.io import derivatives as contract
from qsmprep.options import PipelineOptions
from qsmprep.reports import figures
from qsmprep.reports.core import generate_report

SECTIONS = ('summary', 'masks', 'fields', 'chi', 'registration', 'orientations', 'multi',
            'options', 'about', 'methods', 'errors')


def _subject(bids):
    from qsmprep.io.bids import collect_subjects

    (subject,) = collect_subjects(bids)
    return subject


def _run_settings(out):
    from qsmprep.cli.config import Settings

    toml = next((out / 'sub-01' / 'log').glob('*.toml'))
    return Settings.from_toml(toml.read_text())


def _settings(out, work, **extra):
    """The run's own settings (from its TOML in the subject's log/) with ``work_dir``
    pointed at ``work`` and the start time ``created`` a minute ago."""
    s = _run_settings(out)
    created = time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime(time.time() - 60))
    changes = {'work_dir': work, 'created': created, **extra}
    if set(changes) <= {f.name for f in dataclasses.fields(s)}:
        return dataclasses.replace(s, **changes)
    return SimpleNamespace(**{**dataclasses.asdict(s), **changes})


def _section(page, key):
    m = re.search(rf'<section id="{key}">(.*?)</section>', page, re.S)
    assert m, f'section {key!r} missing'
    return m.group(1)


def _images(page):
    out = []
    for alt, b64 in re.findall(r'<img[^>]*alt="([^"]*)"[^>]*src="data:image/png;base64,'
                               r'([^"]+)"', page):
        out.append((alt, Image.open(io.BytesIO(base64.b64decode(b64)))))
    return out


@pytest.fixture
def text_spy(monkeypatch):
    """Every figure's texts (titles, L/R labels, coordinates, colour-bar labels), recorded
    where figures become PNG."""
    from matplotlib.text import Text

    seen = []
    real = figures.to_png

    def spy(fig, **kw):
        seen.append([t.get_text() for t in fig.findobj(Text) if t.get_text()])
        return real(fig, **kw)

    monkeypatch.setattr(figures, 'to_png', spy)
    return seen


def _plant_crash(work, node, last_line, *, age=0.0):
    crash = work / 'crash'
    crash.mkdir(exist_ok=True)
    p = crash / f'crash-20261202-000000-root-{node.rsplit(".", 1)[-1]}-{len(node)}.txt'
    p.write_text(f'Node: {node}\nWorking directory: /tmp/x\n\nNode inputs:\n\nin_file = x\n\n'
                 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
                 f'    boom()\n{last_line}\n')
    if age:
        t = time.time() - age
        os.utime(p, (t, t))
    return p


@pytest.mark.slow
@pytest.mark.xdist_group('report_tiny_run')
def test_report_of_a_real_run(run_copy, text_spy):
    out, subject = run_copy.out, _subject(run_copy.bids)
    # a --model map for every orientation (a copy of TKD under a model's name), a warning
    # in the orientations JSON, and a crash file of this run plus an older one
    for ori in subject.orientations:
        shutil.copy(contract.orientation_path(out, subject, ori, 'chimap', method='tkd'),
                    contract.orientation_path(out, subject, ori, 'chimap', method='mymodel'))
    info_path = contract.subject_path(out, subject, 'orientations')
    info = json.loads(info_path.read_text())
    info['warnings'].append('planted warning: orientations close together')
    info_path.write_text(json.dumps(info))
    _plant_crash(run_copy.work, 'qsmprep_wf.single_subject_sub_01_wf.ori03_wf.bgremoval',
                 'ValueError: planted failure in the background removal')
    _plant_crash(run_copy.work, 'qsmprep_wf.old_run_node', 'RuntimeError: an older run',
                 age=3600)
    settings = _settings(out, run_copy.work, command_line='qsmprep bids out participant')

    options = PipelineOptions.from_settings(settings).resolved()
    page = generate_report(out, subject, bids_dir=run_copy.bids, options=options,
                           settings=settings).read_text()

    for key in SECTIONS:
        _section(page, key)
    assert 'could not be drawn' not in page
    assert 'not found' not in page

    # every image decodes, is not blank and is large enough to read
    imgs = _images(page)
    assert len(imgs) >= 14
    for alt, im in imgs:
        arr = np.asarray(im.convert('L'), float)
        assert arr.std() > 5, alt
        assert im.width >= 400, (alt, im.size)
    # every mosaic marks left/right and the slice positions; fields and maps have a ppm bar
    mosaics = [t for t in text_spy if any(x.endswith(' mm') for x in t)]
    assert len(mosaics) == len(text_spy) - 1  # all figures but the orientation sphere
    for texts in mosaics:
        assert {'L', 'R'} <= set(texts) or {'P', 'A'} <= set(texts)
        planes = [x for x in texts if x in figures.PLANES]
        assert set(planes) == set(figures.PLANES) or not planes
    ppm_bars = [t for t in text_spy if any('ppm' in x for x in t)]
    # total, local, tkd, ilsqr, mymodel, cosmos, chi33, mms, msa
    assert len(ppm_bars) >= 9

    summary = _section(page, 'summary')
    assert 'acq-ori01' in summary and 'closest to the head' in summary
    assert 'planted warning: orientations close together' in summary
    assert summary.count('<tr>') == 1 + len(subject.orientations)

    chi = _section(page, 'chi')
    assert 'id="chi-tkd"' in chi and 'id="chi-ilsqr"' in chi and 'id="chi-mymodel"' in chi
    assert '--model' in chi and 'chi-apparent' not in chi

    reg = _section(page, 'registration')
    assert 'flicker-top' in reg and 'flicker-base' in reg and 'checkerboard' in reg.lower()

    orient = _section(page, 'orientations')
    cond = info['condition_number']['median']
    assert f'{cond:.3g}' in orient and 'singular value' in orient

    opts = _section(page, 'options')
    assert '<code>--tkd-threshold</code>' in opts and '{"' not in opts

    about = _section(page, 'about')
    for value in (settings.run_uuid, settings.version, 'qsmprep bids out participant',
                  settings.created):
        assert value in about

    methods = _section(page, 'methods')
    assert 'V-SHARP' in methods and '[@' not in methods
    assert '<ol class="refs">' in methods and 'Susceptibility tensor imaging' in methods

    errors = _section(page, 'errors')
    assert 'single_subject_sub_01_wf.ori03_wf.bgremoval' in errors
    assert 'ValueError: planted failure in the background removal' in errors
    assert 'old_run_node' not in errors  # older than this run's start


@pytest.mark.slow
@pytest.mark.xdist_group('report_tiny_run')
def test_the_runs_own_report_has_its_provenance(tiny_run):
    """The report the participant run wrote itself names that run."""
    settings = _run_settings(tiny_run.out)
    page = (tiny_run.out / 'sub-01.html').read_text()
    about = _section(page, 'about')
    assert settings.run_uuid in about and settings.created in about
    assert settings.command_line.startswith('qsmprep ')
    assert html.escape(settings.command_line) in about
    assert 'No errors' in _section(page, 'errors')
    for key in SECTIONS:
        assert 'could not be drawn' not in _section(page, key)


@pytest.mark.slow
@pytest.mark.xdist_group('report_tiny_run')
def test_no_crash_file_says_no_errors(run_copy):
    subject = _subject(run_copy.bids)
    page = generate_report(run_copy.out, subject, bids_dir=run_copy.bids,
                           options={'mask_method': 'python', 'registration': 'sitk'},
                           settings=_settings(run_copy.out, run_copy.work)).read_text()
    assert 'No errors' in _section(page, 'errors')
    assert '<b>python</b>' in _section(page, 'options')  # differs from the default 'auto'


def test_missing_outputs_skip_sections_with_a_note(tiny_dataset, tmp_path, monkeypatch):
    """Only the raw data, no derivatives: every section is there, none raises."""
    monkeypatch.setenv('QSMPREP_CONTAINER', 'apptainer')
    bids, _ = tiny_dataset
    subject = _subject(bids)
    page = generate_report(tmp_path, subject, bids_dir=bids, options=None).read_text()
    for key in SECTIONS:
        _section(page, key)
    assert 'could not be drawn' not in page
    assert 'not found' in _section(page, 'fields')
    assert 'not found' in _section(page, 'orientations')
    assert 'no work directory known' in _section(page, 'errors')
    about = _section(page, 'about')
    assert 'not recorded' in about and 'apptainer' in about


def test_a_broken_file_breaks_only_its_section(tiny_dataset, tmp_path):
    bids, _ = tiny_dataset
    subject = _subject(bids)
    for ori in subject.orientations:
        p = contract.orientation_path(tmp_path, subject, ori, 'local_field')
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b'not a NIfTI')
    page = generate_report(tmp_path, subject, bids_dir=bids, options=None).read_text()
    assert 'could not be drawn' in _section(page, 'fields')
    assert 'the Fields section could not be drawn' in _section(page, 'summary')
    assert 'could not be drawn' not in _section(page, 'masks')
    assert _images(_section(page, 'masks'))  # the raw magnitudes are still shown


def test_one_orientation_has_no_multi_orientation_sections(tiny_dataset, tmp_path):
    bids, _ = tiny_dataset
    full = _subject(bids)
    one = dataclasses.replace(full, orientations=full.orientations[:1], reference=0)
    page = generate_report(tmp_path, one, bids_dir=bids, options=None).read_text()
    for key in ('registration', 'orientations', 'multi'):
        assert 'one orientation' in _section(page, key)
    assert '1 orientation(s) → single-orientation maps only' in _section(page, 'summary')
    assert 'could not be drawn' not in page


@pytest.mark.slow
@pytest.mark.xdist_group('report_tiny_run')
def test_registration_check_aligns_the_moving_magnitudes(tiny_run):
    """The flicker's moving images are the magnitudes pulled through the saved transforms:
    they match the reference (correlation in its brain mask), the unregistered images and
    the images pulled the wrong way round do not."""
    from nitransforms.linear import Affine

    from qsmprep.reports.core import _Context, _registered_magnitudes
    from qsmprep.utils.images import resample

    subject = _subject(tiny_run.bids)
    ctx = _Context(tiny_run.out, subject, tiny_run.bids, None, None)
    ref_mag, ref_aff, ref_mask, moved, notes = _registered_magnitudes(ctx)
    others = [o for o in subject.orientations if o is not subject.reference_orientation]
    assert not notes and [lab for lab, _ in moved] == [o.space_label for o in others]

    def corr(a):
        return np.corrcoef(a[ref_mask], ref_mag[ref_mask])[0, 1]

    for (_, reg), ori in zip(moved, others, strict=True):
        mag, aff = ctx.load(ori.echoes[0].magnitude)
        unregistered = resample(mag, aff, ref_aff, ref_mag.shape)
        pull = Affine.from_filename(str(ctx.ori_path(ori, 'xfm')), fmt='itk').matrix
        inverted = resample(mag, aff, ref_aff, ref_mag.shape, world_xfm=pull)
        assert corr(reg) > 0.9, ori.label
        assert corr(reg) > max(corr(unregistered), corr(inverted)) + 0.3, ori.label
