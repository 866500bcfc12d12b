"""``qsmprep-train`` parsing and the dataset subcommand; TensorFlow stays out of the CLI and
workflow modules (NumPy only, no TensorFlow needed)."""

import json
import subprocess
import sys

import pytest

from qsmprep.cli.train import build_parser, main


def test_parser_defaults_and_usage_errors(capsys):
    ns = build_parser().parse_args(['fit', 'ds', 'out'])
    assert ns.epochs == 10 and ns.batch_size == 2 and not ns.resume and ns.model is None
    ns = build_parser().parse_args(['fit', 'ds', 'out', '--model-params', '{"width": 8}'])
    assert ns.model_params == {'width': 8}
    assert main(['fit']) == 64
    assert main(['fit', 'ds', 'out', '--model', 'resnet50']) == 64
    assert main(['--help']) == 0
    assert main(['fit', 'does-not-exist', 'out']) == 66
    assert 'dataset not found' in capsys.readouterr().err


def test_dataset_subcommand(tmp_path, derivatives, capsys):
    rc = main(['dataset', str(derivatives), str(tmp_path / 'ds'), '--kind', 'slice2d',
               '--crop', '32', '--validation-subjects', '02', '--seed', '7'])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out['split']['validation'] == ['02'] and out['counts']['train'] > 0
    manifest = json.loads((tmp_path / 'ds' / 'manifest.json').read_text())
    assert manifest['seed'] == 7 and manifest['geometry']['crop'] == [32, 32]
    assert main(['dataset', str(derivatives), str(tmp_path / 'ds')]) == 64  # not empty


def test_no_tensorflow_at_import_time():
    code = ('import sys; import qsmprep.cli.run, qsmprep.cli.train, qsmprep.workflows.base, '
            'qsmprep.workflows.participant, qsmprep.workflows.group, qsmprep.interfaces.dl, '
            'qsmprep.dl, qsmprep.dl.data, qsmprep.dl.windows, qsmprep.dl.config; '
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
            'assert not bad, bad')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize('argv', [['predict', 'm', 'f'], ['dataset', 'x']])
def test_missing_positionals(argv):
    assert main(argv) == 64
