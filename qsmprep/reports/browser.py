"""Headless Chromium for the report's checks and the documentation's screenshot.

Not used by a run: the tests (``tests/reports``) load each report in Debian's ``chromium``
to check that it renders with no broken image, and ``scripts/report_screenshot.py`` makes
the screenshot of the README and ``docs/outputs.md``.  No network: the report is one
self-contained file, and Chromium's background services are switched off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ['IMAGE_CHECK', 'chromium_executable', 'dump_dom', 'screenshot']

#: Script appended to a copy of a report by :func:`dump_dom` (``check_images=True``): after
#: the page's ``load`` event it writes, on ``<body>``, the number of images and of those
#: that did not load (``data-images``, ``data-broken``).
IMAGE_CHECK = (
    '<script>window.addEventListener("load",function(){'
    'var a=Array.prototype.slice.call(document.images);'
    'document.body.setAttribute("data-images",a.length);'
    'document.body.setAttribute("data-broken",a.filter(function(i){'
    'return !(i.complete&&i.naturalWidth>0);}).length);});</script>')

_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
          '--disable-background-networking', '--disable-component-update', '--disable-sync',
          '--disable-extensions', '--hide-scrollbars', '--mute-audio')


def chromium_executable() -> str | None:
    """Path of ``chromium`` (or ``chromium-browser``, ``google-chrome``), ``None`` if absent."""
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def _run(args, timeout):
    exe = chromium_executable()
    if exe is None:
        raise FileNotFoundError('chromium is not installed (apt-get install chromium)')
    with tempfile.TemporaryDirectory(prefix='qsmprep-chromium-') as profile:
        env = dict(os.environ, HOME=profile)
        return subprocess.run([exe, *_FLAGS, f'--user-data-dir={profile}', *args],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)


def screenshot(page, png, *, width=1200, height=3000, timeout=120) -> Path:
    """Screenshot of the top ``width`` × ``height`` pixels of ``page`` into ``png``."""
    png = Path(png).absolute()
    proc = _run([f'--screenshot={png}', f'--window-size={width},{height}',
                 '--virtual-time-budget=5000', Path(page).absolute().as_uri()], timeout)
    if not png.exists():
        raise RuntimeError(f'chromium wrote no screenshot (exit {proc.returncode}):\n'
                           f'{proc.stderr[-2000:]}')
    return png


def dump_dom(page, *, check_images=False, timeout=120) -> str:
    """The DOM of ``page`` after loading it; with ``check_images`` the page is first copied
    with :data:`IMAGE_CHECK` appended."""
    page = Path(page).absolute()
    with tempfile.TemporaryDirectory(prefix='qsmprep-dom-') as tmp:
        if check_images:
            text = page.read_text(encoding='utf-8')
            copy = Path(tmp) / page.name
            copy.write_text(text.replace('</body>', IMAGE_CHECK + '</body>'), encoding='utf-8')
            page = copy
        proc = _run(['--dump-dom', '--virtual-time-budget=5000', page.as_uri()], timeout)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f'chromium --dump-dom failed (exit {proc.returncode}):\n'
                           f'{proc.stderr[-2000:]}')
    return proc.stdout
