"""The pre-commit configuration runs the ruff that the test extra asks for."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def test_precommit_ruff_satisfies_the_test_extra():
    config = yaml.safe_load((ROOT / '.pre-commit-config.yaml').read_text())
    (repo,) = [r for r in config['repos'] if r['repo'].endswith('/astral-sh/ruff-pre-commit')]
    assert [h['id'] for h in repo['hooks']] == ['ruff-check']
    m = re.fullmatch(r'v(\d+\.\d+\.\d+)', repo['rev'])
    assert m, f'rev should be a ruff release tag like v0.17.6, not {repo["rev"]!r}'
    extra = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project'][
        'optional-dependencies']['test']
    (ruff,) = [Requirement(r) for r in extra if Requirement(r).name == 'ruff']
    assert ruff.specifier.contains(m[1]), f'ruff {m[1]} does not satisfy {ruff}'
    # the hook lints what `make lint` lints
    lint = re.search(r'^lint:.*\n\t(.*)$', (ROOT / 'Makefile').read_text(), re.M)[1]
    folders = lint.split('ruff check', 1)[1].split()
    assert repo['hooks'][0]['files'] == rf'^({"|".join(folders)})/.*\.py$'
