"""Every processing default once: the parser, the run's settings and --help take theirs from
:mod:`qsmprep.options` (group-level ones from the fields of :class:`Settings`), so that a new
option or a changed default cannot diverge between them."""

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from qsmprep.cli import config as config_module
from qsmprep.cli import parser as parser_module
from qsmprep.cli.config import _TRAINING, Settings
from qsmprep.cli.parser import build_parser
from qsmprep.options import CHOICES, DEFAULTS, PipelineOptions

OPTION_FIELDS = [f.name for f in dataclasses.fields(PipelineOptions)]
#: PipelineOptions field → parser dest, where they differ.
DEST = {'inversions': 'inversion'}


def _actions():
    return {a.dest: a for a in build_parser()._actions if a.option_strings}


def _same(a, b):
    """Equal, with lists and tuples alike (argparse lists, frozen tuples)."""
    def norm(v):
        return tuple(v) if isinstance(v, list | tuple) else v

    return norm(a) == norm(b)


def test_minimal_command_line_gives_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_namespace(build_parser().parse_args(['b', 'o', 'participant']))
    assert settings.options() == DEFAULTS
    assert PipelineOptions.from_settings(settings) == PipelineOptions()
    for name in OPTION_FIELDS:  # field by field, for a readable failure
        assert _same(getattr(settings, name), getattr(DEFAULTS, name)), name


@pytest.mark.parametrize('name', OPTION_FIELDS)
def test_every_processing_option_has_the_default_of_the_options(name):
    action = _actions().get(DEST.get(name, name))
    assert action is not None, f'PipelineOptions.{name} has no command-line option'
    assert _same(action.default, getattr(DEFAULTS, name)), name
    field = {f.name: f for f in dataclasses.fields(Settings)}[name]
    assert _same(field.default, getattr(DEFAULTS, name)), f'Settings.{name}'


@pytest.mark.parametrize('name', sorted(CHOICES))
def test_choices_are_those_of_the_options(name):
    action = _actions()[DEST.get(name, name)]
    if name == 'mask_method':  # 'user' masks come with --derivatives, not --mask-method
        assert set(action.choices) <= set(CHOICES[name])
        assert set(CHOICES[name]) - set(action.choices) == {'user'}
    else:
        assert list(action.choices) == list(CHOICES[name])
    assert getattr(DEFAULTS, name) in CHOICES[name] or set(getattr(DEFAULTS, name)) <= set(
        CHOICES[name])


def test_group_level_defaults_are_the_settings_fields():
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    actions = _actions()
    assert set(_TRAINING) <= set(actions)
    for name in (*_TRAINING, 'verbose'):
        key = 'verbosity' if name == 'verbose' else name
        assert _same(actions[name].default, fields[key]), name


def _literal_defaults(source: str):
    """(line, option) of every ``add_argument(..., default=<literal>)`` but ``None``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == 'add_argument':
            for kw in node.keywords:
                if kw.arg != 'default':
                    continue
                try:
                    value = ast.literal_eval(kw.value)
                except ValueError:
                    continue  # a name, attribute or call: taken from one place
                if value is not None:
                    out.append((node.lineno, ast.literal_eval(node.args[0])))
    return out


def test_no_default_value_is_typed_in_the_parser():
    """Not one literal default in parser.py: each comes from qsmprep.options or Settings."""
    source = Path(parser_module.__file__).read_text()
    assert _literal_defaults(source) == []
    # the check is live: a literal default is found
    assert _literal_defaults("p.add_argument('--x', default=2)") == [(1, '--x')]


def test_settings_take_the_processing_defaults_from_the_options():
    """In config.py, each processing field of Settings is written ``= DEFAULTS.<name>``."""
    tree = ast.parse(Path(config_module.__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == 'Settings')
    written = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            written[stmt.target.id] = stmt.value
    for name in OPTION_FIELDS:
        value = written[name]
        assert (isinstance(value, ast.Attribute) and value.attr == name
                and getattr(value.value, 'id', '') == 'DEFAULTS'), \
            f'Settings.{name} must default to DEFAULTS.{name}'


def test_help_shows_each_default_once(monkeypatch):
    monkeypatch.setenv('COLUMNS', '2000')  # one line per option: no hyphenated wrapping
    parser = build_parser()
    text = ' '.join(parser.format_help().split())
    for action in parser._actions:
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS) \
                or isinstance(action, argparse._CountAction | argparse._HelpAction):
            continue
        assert 'default' not in action.help.lower(), \
            f'{action.option_strings[0]}: the formatter appends the default; do not write it'
        default = action.default
        shown = ' '.join(map(str, default)) if isinstance(default, list) else str(default)
        assert text.count(f'(default: {shown})') >= 1, action.option_strings[0]
    assert '(default: None)' not in text and '(default: False)' not in text


#: Values probed around every bound of the numeric processing options.
PROBES = (-1, -1e-3, 0, 1e-3, 0.15, 0.5, 0.666, 2 / 3, 0.67, 0.999, 1, 1.001, 3, 40)
NUMERIC = ('mask_erosion', 'mask_threshold', 'vsharp_radii', 'vsharp_threshold',
           'tkd_threshold', 'sti_regularization')


def _accepted_by_parser(flag, text):
    try:
        build_parser().parse_args(['/b', '/o', 'participant', flag, text])
    except SystemExit as exc:
        assert exc.code == 64
        return False
    return True


@pytest.mark.parametrize('name', NUMERIC)
def test_the_parser_accepts_no_value_the_options_refuse(name):
    """Parser bounds within PipelineOptions' checks: a value the command line accepts never
    fails later, in the workflow (the parser may be stricter, e.g. --tkd-threshold < 2/3)."""
    flag = '--' + name.replace('_', '-')
    wrong = []
    for value in PROBES:
        if name == 'mask_erosion' and not float(value).is_integer():
            continue
        text = str(int(value)) if float(value).is_integer() else repr(value)
        if not _accepted_by_parser(flag, text):
            continue
        kind = int if name == 'mask_erosion' else float
        arg = (kind(text),) if name == 'vsharp_radii' else kind(text)
        try:
            PipelineOptions(**{name: arg})
        except ValueError as exc:
            wrong.append(f'{flag} {text}: {exc}')
    assert not wrong, wrong
