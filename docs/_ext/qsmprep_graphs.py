"""Sphinx extension: draw qsmprep's Nipype workflow graphs as SVG, without graphviz.

On ``builder-inited`` the workflows are built from the code (the factories in
:mod:`qsmprep.workflows`, and two subjects from :func:`qsmprep.io.testing.make_megre_dataset`
collected with :func:`qsmprep.io.bids.collect_subjects`) and drawn with networkx and
matplotlib into ``docs/_generated/*.svg``, so the figures in the documentation cannot drift
from the code.

Layout (a small Sugiyama-style layered drawing): layers are the topological generations of
the graph (left to right), edges spanning several layers get invisible waypoints in the
layers they cross, the order within each layer minimises crossings by barycentre sweeps,
and vertical positions are pulled towards their neighbours by order-preserving least squares
(isotonic regression).  Boxes show the node name and, smaller, the interface class;
sub-workflows, data sinks (``ds_*``) and input/output nodes have their own colours.

The SVG is deterministic: fixed sizes, ``svg.hashsalt`` set, no date, text kept as text
(``svg.fonttype = 'none'``).  Every box is a group with id ``node-<name>`` and every edge a
group with id ``edge-<source>-<target>``, so tests can check the drawing against the graph.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import networkx as nx
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont, get_font
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path as MplPath

__all__ = ['GRAPHS', 'Layout', 'build_graphs', 'draw_graph', 'graph_from_workflow',
           'layout_graph', 'write_graphs']

#: Folder (relative to the Sphinx source folder) the SVG files are written to.
GENERATED = '_generated'

#: Face and edge colours of the box kinds, and their legend text.
STYLES = {
    'workflow': ('#d6e4f5', '#3b6ea5', 'sub-workflow'),
    'node': ('#fdf1cf', '#a8821b', 'node'),
    'sink': ('#d9eed3', '#4b8a3b', 'data sink (ds_*)'),
    'io': ('#ececec', '#8a8a8a', 'input/output node'),
}
NAME_SIZE, DETAIL_SIZE = 9.0, 7.0  # font sizes, pt
BOX_HEIGHT, BOX_PAD = 30.0, 7.0  # pt
COLUMN_GAP, MARGIN, HEADER = 42.0, 10.0, 24.0  # pt
GAPS = {(False, False): 10.0, (False, True): 6.0, (True, False): 6.0, (True, True): 4.0}
_RC = {'svg.hashsalt': 'qsmprep-docs', 'svg.fonttype': 'none', 'font.family': 'sans-serif',
       'font.sans-serif': ['DejaVu Sans'], 'path.simplify': False}
_FONT = FontProperties(family='DejaVu Sans')


def graph_from_workflow(wf, *, expand: bool = True) -> nx.DiGraph:
    """The node/edge graph of a Nipype workflow, with drawing attributes.

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
    expand : bool
        ``True``: every node of every nested workflow (``wf._create_flat_graph()``, named by
        its path below ``wf``, e.g. ``brainmask_wf.python_bet``); ``False``: the top level
        only (``wf._graph``), each sub-workflow one box.

    Returns
    -------
    networkx.DiGraph
        Nodes named as in ``wf.list_node_names()`` with attributes ``kind`` (``'workflow'``,
        ``'sink'``, ``'io'`` or ``'node'``) and ``detail`` (interface class, or the size of
        a sub-workflow); edges with ``fields``, the number of connected fields.
    """
    from nipype.interfaces.utility import IdentityInterface
    from nipype.pipeline.engine import Workflow

    source = wf._create_flat_graph() if expand else wf._graph
    prefix = f'{wf.name}.'

    def name_of(node):
        full = node.fullname
        return full[len(prefix):] if full.startswith(prefix) else node.name

    graph = nx.DiGraph(name=wf.name)
    for node in source.nodes:
        name = name_of(node)
        if isinstance(node, Workflow):  # a ds_* sub-workflow holds only data sinks
            kind = 'sink' if name.rsplit('.', 1)[-1].startswith('ds_') else 'workflow'
            detail = f'workflow, {len(node.list_node_names())} nodes'
        else:
            detail = type(node.interface).__name__
            if name.rsplit('.', 1)[-1].startswith('ds_'):
                kind = 'sink'
            elif isinstance(node.interface, IdentityInterface):
                kind = 'io'
            else:
                kind = 'node'
        graph.add_node(name, kind=kind, detail=detail)
    for u, v, data in source.edges(data=True):
        graph.add_edge(name_of(u), name_of(v), fields=len(data.get('connect', ())))
    return graph


@dataclass(frozen=True)
class Layout:
    """Positions in pt (y downwards): ``boxes[name] = (x_centre, y_centre, width, height)``,
    ``edges[(u, v)]`` = the waypoints from the right side of ``u`` to the left side of ``v``."""

    boxes: dict
    edges: dict
    width: float
    height: float


@functools.lru_cache(maxsize=4096)
def _text_width(text: str, size: float) -> float:
    """Advance width (pt) of ``text`` in DejaVu Sans (FreeType metrics, no rendering)."""
    font = get_font(findfont(_FONT))
    font.set_size(10 * size, 72)  # 10x, so that pixel rounding costs < 0.1 pt
    font.set_text(text, 0.0)
    return font.get_width_height()[0] / 640


def _is_dummy(node) -> bool:
    return isinstance(node, tuple)


def _crossings(order_a, order_b, edges) -> int:
    pos_a = {n: i for i, n in enumerate(order_a)}
    pos_b = {n: i for i, n in enumerate(order_b)}
    pairs = sorted((pos_a[u], pos_b[v]) for u, v in edges if u in pos_a and v in pos_b)
    return sum(1 for i, (a1, b1) in enumerate(pairs) for a2, b2 in pairs[i + 1:]
               if a1 < a2 and b1 > b2)


def _isotonic(values, weights):
    """Least-squares non-decreasing fit (pool adjacent violators)."""
    blocks = []  # [mean, weight, count]
    for v, w in zip(values, weights):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return [m for m, _, c in blocks for _ in range(c)]


def layout_graph(graph: nx.DiGraph, *, sweeps: int = 12) -> Layout:
    """Left-to-right layered layout of a DAG (deterministic; see the module docstring)."""
    if not nx.is_directed_acyclic_graph(graph):
        raise ValueError(f'graph {graph.name!r} has a cycle; a workflow graph must be acyclic')
    layers = [sorted(gen) for gen in nx.topological_generations(graph)]
    layer_of = {n: i for i, layer in enumerate(layers) for n in layer}
    # waypoints (dummy nodes) for edges spanning several layers
    chains, aux = {}, []
    for u, v in graph.edges:
        chain = [u, *[(u, v, k) for k in range(layer_of[u] + 1, layer_of[v])], v]
        for k, dummy in enumerate(chain[1:-1]):
            layers[layer_of[u] + 1 + k].append(dummy)
        chains[u, v] = chain
        aux += list(itertools.pairwise(chain))
    preds = {n: [] for layer in layers for n in layer}
    succs = {n: [] for layer in layers for n in layer}
    for a, b in aux:
        succs[a].append(b)
        preds[b].append(a)

    # order within layers: barycentre sweeps, keep the order with the fewest crossings
    def reorder(layer, neighbours, ref):
        pos = {n: i for i, n in enumerate(ref)}
        keys = {}
        for i, n in enumerate(layer):
            near = [pos[m] for m in neighbours[n] if m in pos]
            keys[n] = (sum(near) / len(near) if near else i * len(ref) / max(len(layer), 1), i)
        return sorted(layer, key=keys.__getitem__)

    order = [layers[0]]
    for layer in layers[1:]:
        order.append(reorder(sorted(layer, key=str), preds, order[-1]))

    def total(o):
        return sum(_crossings(o[i], o[i + 1], aux) for i in range(len(o) - 1))

    best, best_cost = [list(x) for x in order], total(order)
    for sweep in range(sweeps):
        if sweep % 2:  # upwards: order by successors
            for i in range(len(order) - 2, -1, -1):
                order[i] = reorder(order[i], succs, order[i + 1])
        else:
            for i in range(1, len(order)):
                order[i] = reorder(order[i], preds, order[i - 1])
        cost = total(order)
        if cost < best_cost:
            best, best_cost = [list(x) for x in order], cost
    order = best

    # sizes
    size = {}
    for n in preds:
        if _is_dummy(n):
            size[n] = (0.0, 0.0)
        else:
            attrs = graph.nodes[n]
            w = max(_text_width(n, NAME_SIZE), _text_width(attrs.get('detail', ''), DETAIL_SIZE))
            size[n] = (w + 2 * BOX_PAD, BOX_HEIGHT)
    col_width = [max([size[n][0] for n in layer] + [40.0]) for layer in order]
    col_x, x = [], MARGIN
    for w in col_width:
        col_x.append(x + w / 2)
        x += w + COLUMN_GAP
    width = x - COLUMN_GAP + MARGIN

    # vertical positions: stacked, then pulled towards the neighbours (isotonic least squares)
    def offsets(layer):
        out, s = [0.0], 0.0
        for a, b in itertools.pairwise(layer):
            s += (size[a][1] + size[b][1]) / 2 + GAPS[_is_dummy(a), _is_dummy(b)]
            out.append(s)
        return out

    y = {}
    for layer in order:
        off = offsets(layer)
        for n, o in zip(layer, off):
            y[n] = o - off[-1] / 2

    def place(layer, neighbours):
        off = offsets(layer)
        want = []
        for n in layer:
            near = [y[m] for m in neighbours(n)]
            want.append(sum(near) / len(near) if near else y[n])
        weights = [3.0 if _is_dummy(n) else 1.0 for n in layer]
        fit = _isotonic([w - o for w, o in zip(want, off)], weights)
        for n, f, o in zip(layer, fit, off):
            y[n] = f + o

    for sweep in range(8):
        if sweep % 2:
            for layer in reversed(order[:-1]):
                place(layer, lambda n: succs[n])
        else:
            for layer in order[1:]:
                place(layer, lambda n: preds[n])
    for layer in order:
        place(layer, lambda n: preds[n] + succs[n])

    top = min(y[n] - size[n][1] / 2 for n in y)
    shift = MARGIN + HEADER - top
    height = max(y[n] + size[n][1] / 2 for n in y) + shift + MARGIN
    col = {n: i for i, layer in enumerate(order) for n in layer}
    boxes = {n: (col_x[col[n]], y[n] + shift, *size[n]) for n in graph.nodes}
    edges = {}
    for (u, v), chain in chains.items():
        # horizontal through every column (a box edge → the column edge, or a waypoint's slot
        # across the column), curves only in the gaps between columns, so no box is crossed
        points = []
        for k, n in enumerate(chain):
            c, yn = col[n], y[n] + shift
            left, right = col_x[c] - col_width[c] / 2, col_x[c] + col_width[c] / 2
            if k == 0:
                points += [(col_x[c] + size[n][0] / 2, yn), (right, yn)]
            elif k == len(chain) - 1:
                points += [(left, yn), (col_x[c] - size[n][0] / 2, yn)]
            else:
                points += [(left, yn), (right, yn)]
        edges[u, v] = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
    return Layout(boxes=boxes, edges=edges, width=round(width, 2), height=round(height, 2))


def _edge_path(points) -> MplPath:
    verts, codes = [points[0]], [MplPath.MOVETO]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if abs(y1 - y0) < 1e-6:
            verts.append((x1, y1))
            codes.append(MplPath.LINETO)
        else:
            xm = (x0 + x1) / 2
            verts += [(xm, y0), (xm, y1), (x1, y1)]
            codes += [MplPath.CURVE4] * 3
    return MplPath(verts, codes)


def draw_graph(graph: nx.DiGraph, *, layout: Layout | None = None, fmt: str = 'svg',
               dpi: float = 72) -> bytes:
    """The drawing of a graph from :func:`graph_from_workflow` (deterministic SVG bytes).

    ``fmt='png'`` (at ``dpi``) is for looking at a drawing without a browser.
    """
    layout = layout or layout_graph(graph)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(layout.width / 72, layout.height / 72), dpi=72)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, layout.width)
        ax.set_ylim(layout.height, 0)  # 1 data unit = 1 pt, y downwards
        ax.set_axis_off()
        kinds = [k for k in STYLES if any(d == k for _, d in graph.nodes(data='kind'))]
        x = MARGIN
        for kind in kinds:  # legend
            face, edge, text = STYLES[kind]
            ax.add_patch(FancyBboxPatch((x, MARGIN), 14, 10, fc=face, ec=edge, lw=0.8,
                                        boxstyle='round,pad=0,rounding_size=2'))
            ax.text(x + 18, MARGIN + 5, text, fontsize=DETAIL_SIZE, va='center', ha='left',
                    color='#333333')
            x += 18 + _text_width(text, DETAIL_SIZE) + 14
        for (u, v), points in layout.edges.items():
            ax.add_patch(FancyArrowPatch(path=_edge_path(points), arrowstyle='-|>',
                                         mutation_scale=7, lw=0.7, color='#5a5a5a',
                                         gid=f'edge-{u}-{v}', zorder=1))
        for name, (xc, yc, w, h) in layout.boxes.items():
            attrs = graph.nodes[name]
            face, edge, _ = STYLES[attrs.get('kind', 'node')]
            ax.add_patch(FancyBboxPatch((xc - w / 2, yc - h / 2), w, h,
                                        boxstyle='round,pad=0,rounding_size=4', fc=face,
                                        ec=edge, lw=0.9, gid=f'node-{name}', zorder=2))
            ax.text(xc, yc - 5, name, fontsize=NAME_SIZE, ha='center', va='center', zorder=3,
                    color='#111111')
            ax.text(xc, yc + 8, attrs.get('detail', ''), fontsize=DETAIL_SIZE, ha='center',
                    va='center', zorder=3, color='#555555', style='italic')
        buf = io.BytesIO()
        if fmt == 'svg':
            fig.savefig(buf, format='svg', metadata={'Date': None})
        else:
            fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


#: The drawn graphs: file stem → what it shows.
GRAPHS = {
    'orientation_wf': 'per-orientation workflow (init_orientation_wf)',
    'brainmask_wf': 'brain-mask workflow (init_brainmask_wf, pure-Python BET)',
    'registration_wf_sitk': 'registration workflow (init_registration_wf, SimpleITK)',
    'registration_wf_flirt': 'registration workflow (init_registration_wf, FSL FLIRT)',
    'single_subject_2ori': 'single-subject workflow, 2 orientations (top level)',
    'single_subject_6ori': 'single-subject workflow, 6 orientations (top level)',
}


def build_graphs() -> dict[str, nx.DiGraph]:
    """Build the workflows of :data:`GRAPHS` from the code and return their graphs."""
    import qsmprep.workflows.base  # noqa: F401  (nipype configures its loggers on import)

    # nipype's FSL interfaces warn that FSLOUTPUTTYPE is unset; irrelevant for drawing
    quiet = logging.getLogger('nipype.interface')
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        graphs = _build_graphs()
    finally:
        quiet.setLevel(level)
    return graphs


def _build_graphs():
    from qsmprep.io.bids import collect_subjects
    from qsmprep.io.testing import make_megre_dataset
    from qsmprep.workflows.base import init_single_subject_wf
    from qsmprep.workflows.orientation import init_brainmask_wf, init_orientation_wf
    from qsmprep.workflows.registration import init_registration_wf

    graphs = {
        'orientation_wf': graph_from_workflow(init_orientation_wf(
            echo_times=(0.004, 0.008, 0.012), field_strength=3.0, b0_direction=(0, 0, 1),
            mask_method='python')),
        'brainmask_wf': graph_from_workflow(init_brainmask_wf(method='python')),
        'registration_wf_sitk': graph_from_workflow(init_registration_wf(method='sitk')),
        'registration_wf_flirt': graph_from_workflow(init_registration_wf(method='flirt')),
    }
    with tempfile.TemporaryDirectory(prefix='qsmprep-docs-') as tmp:
        for n in (2, 6):
            root = make_megre_dataset(Path(tmp) / f'bids{n}',
                                      orientations=[f'ori{i:02d}' for i in range(1, n + 1)])
            subject = collect_subjects(root)[0]
            wf = init_single_subject_wf(subject, output_dir=Path(tmp) / 'out', bids_dir=root)
            graphs[f'single_subject_{n}ori'] = graph_from_workflow(wf, expand=False)
    return graphs


def write_graphs(outdir, *, graphs: dict[str, nx.DiGraph] | None = None) -> dict[str, Path]:
    """Draw every graph of :data:`GRAPHS` (or of ``graphs``) into ``outdir/<stem>.svg``.

    Files whose content is unchanged are not rewritten (their mtime stays).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = {}
    for stem, graph in (build_graphs() if graphs is None else graphs).items():
        path = outdir / f'{stem}.svg'
        svg = draw_graph(graph)
        if not path.exists() or path.read_bytes() != svg:
            path.write_bytes(svg)
        written[stem] = path
    return written


def _on_builder_inited(app) -> None:
    from sphinx.util import logging

    paths = write_graphs(Path(app.srcdir) / GENERATED)
    logging.getLogger(__name__).info('qsmprep_graphs: %d workflow graphs in %s', len(paths),
                                     GENERATED)


def setup(app):
    app.connect('builder-inited', _on_builder_inited)
    return {'version': '1.0', 'parallel_read_safe': True, 'parallel_write_safe': True}
