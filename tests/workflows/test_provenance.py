"""Provenance of every output: its ``Sources`` are its direct inputs, checked on the graph.

For each sink of the participant graph, every ``bids::`` entry of its ``Sources`` must be a
file another sink writes *from a node upstream of this output* (an ancestor in the executed
graph), and every ``bids:raw:`` entry a raw file some upstream node reads.  The sinks and the
contract (:mod:`qsmprep.io.derivatives`) must name the same files.
"""

from pathlib import Path

import networkx as nx
import pytest

from qsmprep.io import derivatives as contract
from qsmprep.io.bids import collect_subjects
from qsmprep.io.testing import make_megre_dataset
from qsmprep.workflows.base import dataset_description, init_single_subject_wf

ORIENTS = [f'ori{i:02d}' for i in range(1, 7)]


def _graph(tmp_path, n, **kw):
    root = make_megre_dataset(tmp_path / 'bids', orientations=ORIENTS[:n])
    subject = collect_subjects(root)[0]
    out = tmp_path / 'out'
    wf = init_single_subject_wf(subject, output_dir=out, bids_dir=root, **kw)
    return root, out, subject, wf._create_flat_graph()


def _producer(g, node, field='in_file'):
    """The node that really computes ``node``'s input ``field``, through identity nodes."""
    from nipype.interfaces.utility import IdentityInterface

    for pred in g.predecessors(node):
        for src_field, dst_field in g.edges[pred, node]['connect']:
            if dst_field != field:
                continue
            if isinstance(pred.interface, IdentityInterface):
                return _producer(g, pred, src_field)
            return pred
    raise AssertionError(f'{node.fullname}.{field} is connected to nothing')


def _inputs_of(node) -> set[str]:
    """Every string (file path) among a node's input values."""
    found = set()

    def walk(v):
        if isinstance(v, str):
            found.add(v)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    for name in node.inputs.copyable_trait_names():
        walk(getattr(node.inputs, name))
    return found


@pytest.mark.parametrize(('n', 'solver'), [(1, 'closed-form'), (2, 'closed-form'),
                                           (6, 'closed-form'), (6, 'single-step')])
def test_sources_are_direct_upstream_inputs(tmp_path, n, solver):
    root, out, _, g = _graph(tmp_path, n, multi_solver=solver)
    sinks = {Path(node.inputs.out_path): node for node in g.nodes
             if node.name.startswith('ds_')}
    assert sinks
    checked = 0
    for path, sink in sinks.items():
        meta = sink.inputs.metadata
        if not meta:
            continue
        assert meta.get('Description'), f'{path.name}: no Description'
        producer = _producer(g, sink)
        upstream = nx.ancestors(g, producer) | {producer}
        raw_read = set().union(*(_inputs_of(u) for u in upstream))
        assert meta.get('Sources'), f'{path.name}: no Sources'
        for uri in meta['Sources']:
            if uri.startswith('bids::'):
                target = out / uri[len('bids::'):]
                assert target in sinks, f'{path.name}: {uri} is written by no sink'
                made_by = _producer(g, sinks[target])
                assert made_by in upstream, (
                    f'{path.name}: Sources lists {target.name}, which is not an input of it')
            else:
                assert uri.startswith('bids:raw:'), uri
                raw = root / uri[len('bids:raw:'):]
                assert raw.exists(), uri
                assert str(raw) in raw_read, f'{path.name}: {uri} is read by no upstream node'
            checked += 1
    assert checked >= 4 * n


def test_sinks_write_exactly_the_contract_names(tmp_path):
    _, out, subject, g = _graph(tmp_path, 6)
    written = {Path(node.inputs.out_path).name for node in g.nodes if node.name.startswith('ds_')}
    expected = set()
    for ori in subject.orientations:
        for key in ('brain_mask', 'local_mask', 'total_field', 'local_field', 'apparent'):
            expected.add(contract.orientation_path(out, subject, ori, key).name)
        for m in ('tkd', 'ilsqr'):
            expected.add(contract.orientation_path(out, subject, ori, 'chimap', method=m).name)
        if ori is not subject.reference_orientation:
            expected.add(contract.orientation_path(out, subject, ori, 'xfm').name)
    for key in ('common_mask', 'cosmos', 'orientations', 'chi33', 'mms', 'msa',
                'sti_tensor', 'pev'):
        expected.add(contract.subject_path(out, subject, key).name)
    assert written == expected
    # the storage type and static metadata come from the contract
    for node in g.nodes:
        if node.name == 'ds_brainmask':
            assert node.inputs.dtype == 'uint8'
            assert node.inputs.metadata['Type'] == 'Brain'


def test_dataset_description_links_and_container(tmp_path):
    desc = dataset_description(tmp_path / 'raw', tmp_path / 'masks',
                               env={'QSMPREP_CONTAINER': 'apptainer'})
    assert desc['DatasetLinks']['raw'] == (tmp_path / 'raw').resolve().as_uri()
    assert desc['DatasetLinks']['masks'] == (tmp_path / 'masks').resolve().as_uri()
    assert [s['URL'] for s in desc['SourceDatasets']] == list(desc['DatasetLinks'].values())
    gen = desc['GeneratedBy'][0]
    assert gen['Container']['Type'] == 'apptainer' and gen['Version'] in gen['Container']['Tag']
    assert 'Container' not in dataset_description(tmp_path, env={})['GeneratedBy'][0]


def test_docs_outputs_table_is_the_contract():
    page = Path(__file__).parents[2] / 'docs' / 'outputs.md'
    text = page.read_text()
    assert contract.render_docs(text) == text, (
        'docs/outputs.md is out of date: python -m qsmprep.io.derivatives --write-docs '
        'docs/outputs.md')
