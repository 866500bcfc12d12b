"""Workflow graphs of the documentation (docs/_ext/qsmprep_graphs.py), checked against Nipype.

The whole Sphinx build (which runs the extension) is tested in tests/test_docs.py; here the
drawings are compared with the workflows' own Nipype graphs, built independently.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip('matplotlib')
pytest.importorskip('networkx')

from qsmprep.io.bids import collect_subjects
from qsmprep.io.testing import make_megre_dataset
from qsmprep.workflows.base import init_single_subject_wf
from qsmprep.workflows.orientation import init_orientation_wf

ROOT = Path(__file__).resolve().parents[2]
EXT = ROOT / 'docs' / '_ext' / 'qsmprep_graphs.py'
SVG = '{http://www.w3.org/2000/svg}'
NUMBER = re.compile(r'-?\d+(?:\.\d+)?')


def _load_extension():
    spec = importlib.util.spec_from_file_location('qsmprep_graphs', EXT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would (dataclasses look it up)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def ext():
    return _load_extension()


@pytest.fixture(scope='module')
def graphs(ext):
    """The extension's graphs (built once): {stem: networkx.DiGraph}."""
    return ext.build_graphs()


@pytest.fixture(scope='module')
def drawn(ext, graphs, tmp_path_factory):
    """Every graph drawn once by the extension: {stem: path of the SVG}."""
    return ext.write_graphs(tmp_path_factory.mktemp('graphs'), graphs=graphs)


def _svg(path):
    """Boxes {name: (xmin, ymin, xmax, ymax, fill)}, edges {id}, texts [(text, x, y)]."""
    root = ET.parse(path).getroot()
    assert root.tag == f'{SVG}svg'
    boxes, edges = {}, set()
    for group in root.iter(f'{SVG}g'):
        gid = group.get('id', '')
        if gid.startswith('node-'):
            (path_el,) = group.findall(f'{SVG}path')
            xy = [float(v) for v in NUMBER.findall(path_el.get('d'))]
            xs, ys = xy[0::2], xy[1::2]
            fill = re.search(r'fill: (#[0-9a-f]{6})', path_el.get('style')).group(1)
            boxes[gid[5:]] = (min(xs), min(ys), max(xs), max(ys), fill)
        elif gid.startswith('edge-'):
            assert group.findall(f'{SVG}path'), f'{gid} draws nothing'
            edges.add(gid)
    texts = [(t.text, float(t.get('x')), float(t.get('y'))) for t in root.iter(f'{SVG}text')]
    return boxes, edges, texts


def _relative(node, wf):
    return node.fullname[len(wf.name) + 1:]


def test_orientation_graph_draws_every_node_and_edge_of_the_workflow(drawn, ext):
    wf = init_orientation_wf(echo_times=(0.004, 0.008), field_strength=3.0,
                             b0_direction=(0, 0, 1), mask_method='python')
    flat = wf._create_flat_graph()
    boxes, edges, texts = _svg(drawn['orientation_wf'])
    assert set(boxes) == set(wf.list_node_names())
    assert len(boxes) == flat.number_of_nodes() == 12  # invert (TKD) and invert_ilsqr
    assert edges == {f'edge-{_relative(u, wf)}-{_relative(v, wf)}' for u, v in flat.edges}
    labels = {t for t, _, _ in texts}
    for name in ('stack_echoes', 'brainmask_wf.python_bet', 'erode_mask', 'unwrap',
                 'combine_echoes', 'bgremoval', 'invert', 'invert_ilsqr'):
        assert name in labels, name
    for cls in ('StackEchoes', 'PythonBET', 'UnwrapPhase', 'CombineEchoes', 'BackgroundRemoval',
                'DipoleInversion', 'IdentityInterface'):
        assert cls in labels, cls
    # each name is written inside its own box, and the box is wide enough for it
    for name, (x0, y0, x1, y1, _) in boxes.items():
        ((x, y),) = [(x, y) for t, x, y in texts if t == name]
        assert x0 < x < x1 and y0 < y < y1, name
        assert x1 - x0 >= ext._text_width(name, ext.NAME_SIZE), name
    # left to right along the pipeline
    centre = {n: (b[0] + b[2]) / 2 for n, b in boxes.items()}
    chain = ['inputnode', 'stack_echoes', 'unwrap', 'combine_echoes', 'bgremoval', 'invert',
             'outputnode']
    assert [centre[n] for n in chain] == sorted(centre[n] for n in chain)


@pytest.mark.parametrize('n', [2, 6])
def test_single_subject_graph_is_the_top_level_graph(drawn, ext, tmp_path, n):
    oris = [f'ori{i:02d}' for i in range(1, n + 1)]
    root = make_megre_dataset(tmp_path / 'bids', orientations=oris)
    wf = init_single_subject_wf(collect_subjects(root)[0], output_dir=tmp_path / 'out',
                                bids_dir=root)
    graph = wf._graph
    boxes, edges, _ = _svg(drawn[f'single_subject_{n}ori'])
    assert len(boxes) == graph.number_of_nodes()
    assert set(boxes) == {node.name for node in graph.nodes}
    assert edges == {f'edge-{u.name}-{v.name}' for u, v in graph.edges}
    assert len(edges) == graph.number_of_edges()
    # sub-workflows are single boxes; nodes, sub-workflows and data sinks differ in colour
    fill = {name: box[4] for name, box in boxes.items()}
    for ori in oris:
        assert f'orientation_acq_{ori}_wf' in boxes and f'registration_acq_{ori}_wf' in boxes
        assert f'orientation_acq_{ori}_wf.unwrap' not in boxes
    workflow, node, sink = (ext.STYLES[k][0] for k in ('workflow', 'node', 'sink'))
    assert len({workflow, node, sink}) == 3
    assert fill['orientation_acq_ori01_wf'] == workflow
    assert fill['multi_orientation_wf'] == workflow
    assert fill['ds_acq_ori01_wf'] == sink  # the per-orientation derivatives
    assert all((fill[b] == sink) == b.startswith('ds_') for b in boxes)
    assert all(f'to_reference_acq_{ori}_wf' in boxes for ori in oris)
    assert any(b.startswith('apparent_') for b in boxes) == (n >= 6)
    # no two boxes overlap
    items = sorted(boxes.values())
    for i, (ax0, ay0, ax1, ay1, _) in enumerate(items):
        for bx0, by0, bx1, by1, _ in items[i + 1:]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0


def test_every_graph_is_drawn_and_laid_out_left_to_right(ext, graphs, drawn):
    assert set(graphs) == set(drawn) == set(ext.GRAPHS)
    for stem, graph in graphs.items():
        boxes, edges, _ = _svg(drawn[stem])  # valid SVG with one box per node
        assert len(boxes) == graph.number_of_nodes() and len(edges) == graph.number_of_edges()
        layout = ext.layout_graph(graph)
        assert set(layout.boxes) == set(graph.nodes)
        assert set(layout.edges) == set(graph.edges)
        for (u, v), points in layout.edges.items():
            xu, yu, wu, _ = layout.boxes[u]
            xv, yv, wv, _ = layout.boxes[v]
            assert xu + wu / 2 < xv - wv / 2  # every edge points right
            assert points[0] == pytest.approx((xu + wu / 2, yu))  # leaves u's right side
            assert points[-1] == pytest.approx((xv - wv / 2, yv))  # enters v's left side
            assert [p[0] for p in points] == sorted(p[0] for p in points)
        for x, y, w, h in layout.boxes.values():
            assert 0 <= x - w / 2 and x + w / 2 <= layout.width
            assert 0 <= y - h / 2 and y + h / 2 <= layout.height


def test_cycles_are_refused(ext):
    import networkx as nx

    with pytest.raises(ValueError, match='cycle'):
        ext.layout_graph(nx.DiGraph([('a', 'b'), ('b', 'a')]))


@pytest.mark.slow
def test_rebuild_in_a_fresh_process_gives_identical_files_without_tensorflow(drawn, tmp_path):
    """A second build (other hash seed) rewrites nothing and never imports TensorFlow."""
    copy = tmp_path / 'graphs'
    copy.mkdir()
    for path in drawn.values():
        shutil.copy2(path, copy / path.name)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.iterdir()}
    code = ('import importlib.util, sys\n'
            f'spec = importlib.util.spec_from_file_location("g", {str(EXT)!r})\n'
            'm = importlib.util.module_from_spec(spec); sys.modules["g"] = m\n'
            'spec.loader.exec_module(m)\n'
            f'm.write_graphs({str(copy)!r})\n'
            'print("tensorflow" in sys.modules)\n')
    env = {**os.environ, 'PYTHONHASHSEED': '12345'}
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'False'
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.iterdir()}
    assert after.keys() == before.keys() == {f'{s}.svg' for s in drawn}
    for name in before:
        assert after[name][0] == before[name][0], f'{name} differs between builds'
        assert after[name][1] == before[name][1], f'{name} was rewritten'
