"""The deployment recipes in the docs are valid for this version of qsmprep.

* troubleshooting.md lists every exit code, every error class and every error message that
  qsmprep raises (found in the source with :mod:`ast`);
* every ``qsmprep`` / ``docker run`` / ``apptainer run`` command line in the container and HPC
  docs and scripts parses with :func:`~qsmprep.cli.parser.build_parser`, and the container
  lines bind/mount folders (Apptainer lines use ``--cleanenv``);
* the YAML plugin files in docs/hpc.md load with :func:`~qsmprep.cli.parser.load_plugin_file`
  and name existing Nipype plugins;
* the shell scripts pass ``bash -n``.
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from qsmprep.cli.parser import build_parser, load_plugin_file
from qsmprep.io import errors

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / 'docs'
TROUBLESHOOTING = DOCS / 'troubleshooting.md'
RECIPE_FILES = [ROOT / 'bids_app' / 'README.md', DOCS / 'containers.md', DOCS / 'hpc.md',
                DOCS / 'usage.md', *sorted((ROOT / 'bids_app' / 'slurm').glob('*.sbatch'))]
SCRIPTS = [ROOT / 'tests' / 'deploy' / 'slurm_setup.sh',
           *sorted((ROOT / 'bids_app' / 'slurm').glob('*.sbatch'))]
ERROR_CLASSES = {name for name, obj in vars(errors).items()
                 if isinstance(obj, type) and issubclass(obj, errors.QsmprepError)}


# ------------------------------------------------------------------------------------------
def _literal(node) -> str:
    """The text of a message argument with every interpolated part as ``{}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return ''.join(v.value if isinstance(v, ast.Constant) else '{}' for v in node.values)
    if isinstance(node, ast.BinOp):
        return _literal(node.left) + _literal(node.right)
    return '{}'


def _raised_messages():
    """(where, class, message) of every ``<QsmprepError subclass>(message, ...)`` call."""
    found = []
    for path in sorted((ROOT / 'qsmprep').rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, 'attr', None)
            if name in ERROR_CLASSES - {'QsmprepError'}:
                where = f'{path.relative_to(ROOT)}:{node.lineno}'
                found.append((where, name, _literal(node.args[0])))
    return found


def _normalise(text: str) -> str:
    return re.sub(r'\s+', ' ', text)


def test_every_exit_code_and_error_class_is_documented():
    text = TROUBLESHOOTING.read_text()
    for code in errors.EXIT_CODES:
        assert re.search(rf'^\| {code} \|', text, re.M), f'exit code {code} missing'
    for name in ERROR_CLASSES:
        assert f'`{name}`' in text, f'{name} missing'


def test_every_error_message_is_documented():
    messages = _raised_messages()
    assert len(messages) > 40  # the scan finds the raise sites
    text = _normalise(TROUBLESHOOTING.read_text())
    missing = []
    for where, cls, message in messages:
        chunks = [c.strip() for c in message.split('{}')]
        for chunk in chunks:
            if len(chunk) >= 6 and _normalise(chunk) not in text:
                missing.append(f'{where} {cls}: {message!r} (missing: {chunk!r})')
                break
    assert not missing, 'add these messages to docs/troubleshooting.md:\n' + '\n'.join(missing)


# ------------------------------------------------------------------------------------------
def _bash_blocks(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == '.sbatch':
        return [text]
    return re.findall(r'^```bash\n(.*?)^```', text, re.M | re.S)


def _logical_lines(script: str) -> list[str]:
    """Continuation lines joined; ``cmd=( … )`` arrays joined into one line."""
    lines, buf = [], ''
    for raw in script.splitlines():
        line = raw.split(' #')[0].rstrip() if not raw.lstrip().startswith('#') else ''
        if not line and not buf:
            continue
        if line.endswith('\\'):
            buf += line[:-1] + ' '
            continue
        buf += line
        if re.match(r'\s*\w+=\(', buf) and buf.count('(') > buf.count(')'):
            buf += ' '
            continue
        lines.append(buf.strip())
        buf = ''
    return lines


def _substitute(line: str, assigned: dict[str, str]) -> str:
    """Resolve ``$VAR`` from simple assignments; other shell expansions become ``1``."""
    line = re.sub(r'\$\(([^()]*)\)', '1', line)
    line = re.sub(r'\$\{(\w+)\}', lambda m: assigned.get(m.group(1), '1'), line)
    line = re.sub(r'\$\{[^}]*\}', '1', line)
    return re.sub(r'\$(\w+)', lambda m: assigned.get(m.group(1), '1'), line)


def _command_lines():
    """(file, kind, argv after the image/executable, full tokens) of every qsmprep run."""
    found = []
    for path in RECIPE_FILES:
        for block in _bash_blocks(path):
            assigned = dict(re.findall(r'^(\w+)=([^\s$()]+)$', block, re.M))
            for line in _logical_lines(block):
                if '[options]' in line:
                    continue
                tokens = shlex.split(_substitute(line.removeprefix('cmd=(').rstrip(')'),
                                                 assigned))
                if 'docker' in tokens[:1] and 'run' in tokens[:2]:
                    kind, start = 'docker', next(i for i, t in enumerate(tokens)
                                                 if t.startswith('qsmprep/qsmprep:')) + 1
                elif tokens[:2] in (['apptainer', 'run'], ['singularity', 'run']):
                    kind, start = 'apptainer', next(i for i, t in enumerate(tokens)
                                                    if t.endswith('.sif')) + 1
                elif tokens[:1] == ['qsmprep']:
                    kind, start = 'native', 1
                else:
                    continue
                found.append((path.relative_to(ROOT).as_posix(), kind, tokens[start:], tokens))
    return found


COMMANDS = _command_lines()


def test_recipes_have_command_lines():
    kinds = {kind for _, kind, _, _ in COMMANDS}
    assert kinds == {'docker', 'apptainer', 'native'}
    assert any(f.endswith('.sbatch') for f, *_ in COMMANDS)


@pytest.mark.parametrize('where, kind, argv, tokens', COMMANDS,
                         ids=[f'{f}-{i}' for i, (f, *_) in enumerate(COMMANDS)])
def test_recipe_command_line_parses(where, kind, argv, tokens):
    if argv in (['--help'], ['--version']):
        return
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as exc:  # pragma: no cover - the assertion message is the point
        pytest.fail(f'{where}: `{shlex.join(argv)}` does not parse (exit {exc.code})')
    assert ns.analysis_level in ('participant', 'group')
    if kind == 'apptainer':
        assert '--cleanenv' in tokens and '-B' in tokens, where
    if kind == 'docker':
        assert '--rm' in tokens and tokens.count('-v') >= 2, where
    if kind != 'native' and ns.analysis_level == 'participant':
        assert ns.work_dir is not None, f'{where}: give containers a -w work directory'


# ------------------------------------------------------------------------------------------
def _yaml_blocks():
    blocks = re.findall(r'^```yaml\n(.*?)^```', (DOCS / 'hpc.md').read_text(), re.M | re.S)
    return blocks + [p.read_text() for p in sorted((ROOT / 'bids_app' / 'slurm').glob('*.yml'))]


@pytest.mark.parametrize('text', _yaml_blocks())
def test_plugin_files_load_and_name_nipype_plugins(tmp_path, text):
    from nipype.pipeline import plugins

    path = tmp_path / 'plugin.yml'
    path.write_text(text)
    plugin, args = load_plugin_file(path)
    assert hasattr(plugins, f'{plugin}Plugin'), f'Nipype has no {plugin} plugin'
    assert isinstance(args, dict) and args


def test_documented_slurm_args_keep_nipype_log_options():
    """Nipype adds -o/-e only when absent from sbatch_args (a substring test)."""
    from qsmprep.cli.parser import load_plugin_file as load

    _, args = load(ROOT / 'bids_app' / 'slurm' / 'nipype_slurm.yml')
    assert '-o' not in args['sbatch_args'] and '-e' not in args['sbatch_args']


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    if shutil.which('bash') is None:
        pytest.skip('bash is not available')
    proc = subprocess.run(['bash', '-n', str(script)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def test_training_script_forwards_term_and_requeues():
    text = (ROOT / 'bids_app' / 'slurm' / 'train_requeue.sbatch').read_text()
    for directive in ('--signal=B:TERM@120', '--requeue', '--open-mode=append'):
        assert f'#SBATCH {directive}' in text
    assert 'trap on_term TERM' in text and 'scontrol requeue' in text
    assert re.search(r'^"\$\{cmd\[@\]\}" &$', text, re.M), 'the trainer must run in background'
    assert ' group ' in text and '--resume' in text
