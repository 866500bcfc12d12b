"""The report in headless Chromium (Debian's ``chromium``): it loads with no broken image
and renders to a screenshot that is not blank."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from qsmprep.reports import browser

#: the tests of the tiny run on one xdist worker (effective with --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('report_tiny_run')]


def _body_attrs(dom):
    body = re.search(r'<body([^>]*)>', dom)
    assert body, dom[:500]
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', body.group(1)))


def test_report_loads_with_every_image_in_chromium(tiny_run, chromium, tmp_path):
    assert tiny_run.rc == 0
    report = tiny_run.out / 'sub-01.html'
    n_img = report.read_text().count('<img ')
    assert n_img >= 14
    attrs = _body_attrs(browser.dump_dom(report, check_images=True))
    assert attrs == {'images': str(n_img), 'broken': '0'}

    png = browser.screenshot(report, tmp_path / 'shot.png', width=1200, height=3000)
    im = Image.open(png).convert('RGB')
    assert im.size == (1200, 3000)
    arr = np.asarray(im, float)
    assert arr.std() > 20
    colours = len(set(map(tuple, np.asarray(im.quantize(64).convert('RGB')).reshape(-1, 3))))
    assert colours >= 16
    # the first mosaic (brain masks) is on screen: a dark image region below the summary
    dark = (arr.mean(axis=2) < 40).mean(axis=1)
    assert dark[600:].max() > 0.2


def test_the_image_check_sees_a_broken_image(chromium, tmp_path):
    """Negative control: the same check on a page with one image that cannot load."""
    page = tmp_path / 'broken.html'
    page.write_text('<!DOCTYPE html><html><body><p>x</p>'
                    '<img alt="missing" src="file:///nonexistent/qsmprep.png"/>'
                    '<img alt="bad" src="data:image/png;base64,AAAA"/></body></html>')
    assert _body_attrs(browser.dump_dom(page, check_images=True)) == {'images': '2',
                                                                       'broken': '2'}
