"""The version of qsmprep has one source, ``qsmprep/__about__.py``; every other place agrees.

Places that can read it do (``pyproject.toml`` through hatch, ``docs/conf.py``, the CLI); the
files that cannot (Dockerfile, Apptainer definition, Boutiques descriptor, image tags and file
names in the docs and scripts) are checked against it here.  When the version changes, this
test lists every place to update.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import io
import json
import re
import tomllib
from pathlib import Path

import pytest

import qsmprep
from qsmprep.__about__ import __version__

ROOT = Path(__file__).resolve().parents[2]
ABOUT = 'qsmprep/__about__.py'
#: Text files that name the version (image tags, Apptainer image names, build arguments).
TEXT_FILES = sorted({ROOT / 'README.md', ROOT / 'Dockerfile', ROOT / 'bids_app' / 'README.md',
                     ROOT / 'bids_app' / 'Singularity.def', *(ROOT / 'docs').glob('*.md'),
                     *(ROOT / 'bids_app' / 'slurm').glob('*')})
#: How those files name a version: ``qsmprep/qsmprep:X``, ``qsmprep-X.sif``, ``VERSION=X``.
PATTERNS = [re.compile(r'qsmprep/qsmprep:(?P<v>[0-9][\w.+-]*)'),
            re.compile(r'qsmprep-(?P<v>[0-9][\w.+-]*?)\.sif'),
            re.compile(r'\bVERSION=(?P<v>[0-9][\w.+-]*)')]


def test_the_single_source_is_a_release_version():
    text = (ROOT / ABOUT).read_text()
    assert re.fullmatch(r'\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?', __version__)
    # one literal assignment, nothing computed
    assigns = [n for n in ast.parse(text).body if isinstance(n, ast.Assign)]
    assert [a.targets[0].id for a in assigns] == ['__version__']
    assert isinstance(assigns[0].value, ast.Constant)
    assert qsmprep.__version__ == __version__


def test_pyproject_reads_the_version_from_about():
    meta = tomllib.loads((ROOT / 'pyproject.toml').read_text())
    assert 'version' not in meta['project'], 'no static version in pyproject.toml'
    assert 'version' in meta['project']['dynamic']
    assert meta['tool']['hatch']['version']['path'] == ABOUT


def test_installed_metadata_matches():
    try:
        installed = importlib.metadata.version('qsmprep')
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        pytest.skip('qsmprep is not installed (no distribution metadata)')
    assert installed == __version__, (
        f'installed metadata says {installed}, {ABOUT} says {__version__}: reinstall '
        '(pip install -e .) after changing the version')


def test_docs_conf_imports_the_version():
    tree = ast.parse((ROOT / 'docs' / 'conf.py').read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and n.module == 'qsmprep' and any(a.name == '__version__' for a in n.names)]
    assert imports, 'docs/conf.py must import __version__ from qsmprep'
    assigned = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name)}
    for name in ('version', 'release'):
        assert isinstance(assigned[name], ast.Name) and assigned[name].id == '__version__'


def test_command_line_version():
    from qsmprep.cli.parser import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        build_parser().parse_args(['--version'])
    assert exc.value.code == 0
    assert out.getvalue().strip() == f'qsmprep {__version__}'


def test_boutiques_descriptor():
    d = json.loads((ROOT / 'bids_app' / 'boutiques' / 'descriptor.json').read_text())
    assert d['tool-version'] == __version__
    assert d['container-image']['image'] == f'qsmprep/qsmprep:{__version__}'


def test_apptainer_definition():
    text = (ROOT / 'bids_app' / 'Singularity.def').read_text()
    assert re.search(r'^From:\s*(\S+)$', text, re.M)[1] == f'qsmprep/qsmprep:{__version__}'
    labels = re.search(r'^%labels\n((?:[ \t]+.*\n)+)', text, re.M)[1]
    assert f'org.opencontainers.image.version {__version__}' in [
        ' '.join(line.split()) for line in labels.splitlines()]


def test_dockerfile_build_argument():
    text = (ROOT / 'Dockerfile').read_text()
    assert re.findall(r'^ARG VERSION=(\S+)$', text, re.M) == [__version__]
    # the labels take it from the build argument, not from a second literal
    for key in ('org.label-schema.version', 'org.opencontainers.image.version'):
        assert f'{key}="${{VERSION}}"' in text


def _mentions():
    for path in TEXT_FILES:
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            for pattern in PATTERNS:
                for m in pattern.finditer(line):
                    yield f'{path.relative_to(ROOT)}:{lineno}', m['v']


def test_image_tags_and_file_names_in_docs_and_scripts():
    found = list(_mentions())
    assert len(found) >= 10, 'the patterns no longer find the image tags: update them'
    wrong = [f'{where}: {v}' for where, v in found if v != __version__]
    assert not wrong, (f'these name another version than {ABOUT} ({__version__}):\n  '
                       + '\n  '.join(wrong))
