"""Top-level participant workflow: every orientation of a subject → STI/COSMOS derivatives."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep import __version__
from qsmprep.interfaces.bids import DerivativesSink
from qsmprep.interfaces.qsm import ApparentSusceptibility, MultiOrientation
from qsmprep.interfaces.registration import MaskFromReference, ResampleToReference
from qsmprep.workflows.orientation import init_orientation_wf
from qsmprep.workflows.registration import init_registration_wf

#: Minimum numbers of orientations for the multi-orientation methods.
MIN_COSMOS, MIN_STI = 2, 6


def _safe(label: str) -> str:
    return ''.join(c if c.isalnum() else '_' for c in label)


def _anat_dir(subject) -> str:
    d = f'sub-{subject.subject}'
    if subject.session:
        d += f'/ses-{subject.session}'
    return d + '/anat'


def _raw_uri(bids_dir, path) -> str:
    return 'bids:raw:' + Path(path).resolve().relative_to(Path(bids_dir).resolve()).as_posix()


def init_single_subject_wf(subject, *, output_dir, bids_dir, mask_method='python',
                           mask_erosion=2, mask_threshold=0.2, registration='sitk',
                           unwrapping='wrapped-difference',
                           echo_combination='auto', vsharp_radii=None,
                           vsharp_threshold=0.05, tkd_threshold=0.15, sti_regularization=0.3,
                           model=None, name=None):
    """Process all orientations of one subject (and session).

    Parameters
    ----------
    subject : qsmprep.io.datamodel.SubjectData
        Validated inputs (orientations, echoes, B0 directions, reference orientation).
    output_dir : path
        Root of the derivatives tree the sink nodes write to (qsmprep stages outputs in the
        work directory and moves them into the real output directory only after the whole
        subject finished, so a failed run leaves nothing half-written there).
    bids_dir : path
        Raw dataset (for the ``Sources`` BIDS URIs).
    model : path, optional
        Trained deep-learning model folder (``--model``): adds a χ map per orientation,
        ``desc-<model name>_Chimap`` (:class:`~qsmprep.interfaces.dl.PredictChimap`).

    The graph: one :func:`~qsmprep.workflows.orientation.init_orientation_wf` per
    orientation; with ≥ 2 orientations each first-echo magnitude is registered to the
    reference (:func:`~qsmprep.workflows.registration.init_registration_wf`), its local
    field and mask are resampled into the reference grid and its B0 direction is rotated
    into the reference voxel frame; COSMOS (≥ 2) and STI (≥ 6) follow, and with STI each
    orientation gets its apparent-susceptibility training label bᵢᵀχbᵢ on its own grid.
    """
    oris = subject.orientations
    ref = subject.reference_orientation
    n = len(oris)
    wf = pe.Workflow(name=name or f'single_subject_{_safe(subject.prefix)}_wf')
    anat = Path(output_dir) / _anat_dir(subject)
    ref_space = ref.space_label
    ref_uri = _raw_uri(bids_dir, ref.echoes[0].magnitude)
    common = {'MagneticFieldStrength': ref.field_strength, 'SkullStripped': True}

    def sink(node_name, path, meta, src, field, dtype=None):
        node = pe.Node(DerivativesSink(out_path=str(anat / path), metadata=meta or {},
                                       dtype=dtype),
                       name=node_name, overwrite=True, run_without_submitting=True)
        wf.connect(src, field, node, 'in_file')
        return node

    ori_wfs, to_ref = [], []
    merge_fields = pe.Node(niu.Merge(n), name='merge_fields')
    merge_masks = pe.Node(niu.Merge(n), name='merge_masks')
    merge_b0 = pe.Node(niu.Merge(n), name='merge_b0')
    for i, ori in enumerate(oris):
        tag = _safe(ori.label)
        sources = [_raw_uri(bids_dir, f) for e in ori.echoes for f in (e.magnitude, e.phase)]
        meta = {**common, 'Sources': sources, 'EchoTime': list(ori.echo_times),
                'B0_dir': list(ori.b0_direction)}
        combination = echo_combination
        if combination == 'auto':
            combination = 'linear-fit' if ori.n_echoes >= 2 else 'average'
        # with several orientations, only the reference is skull-stripped; the others get
        # its mask through their registration (MaskFromReference below)
        mask_from_ref = n >= MIN_COSMOS and ori is not ref and not ori.user_mask
        owf = init_orientation_wf(
            echo_times=ori.echo_times, field_strength=ori.field_strength,
            b0_direction=ori.b0_direction, phase_units=ori.phase_units,
            phase_range=ori.phase_range,
            mask_method='user' if ori.user_mask or mask_from_ref else mask_method,
            mask_erosion=mask_erosion, mask_threshold=mask_threshold,
            unwrapping=unwrapping, echo_combination=combination,
            vsharp_radii=vsharp_radii, vsharp_threshold=vsharp_threshold,
            tkd_threshold=tkd_threshold, name=f'orientation_{tag}_wf')
        owf.inputs.inputnode.magnitude_files = [str(e.magnitude) for e in ori.echoes]
        owf.inputs.inputnode.phase_files = [str(e.phase) for e in ori.echoes]
        if ori.user_mask:
            owf.inputs.inputnode.user_mask = str(ori.user_mask)
        ori_wfs.append(owf)
        p = ori.prefix
        native = _raw_uri(bids_dir, ori.echoes[0].magnitude)
        sink(f'ds_brainmask_{tag}', f'{p}_space-orig_desc-brain_mask.nii.gz',
             {'Type': 'Brain', 'Sources': [native], 'SpatialReference': native},
             owf, 'outputnode.brain_mask', 'uint8')
        sink(f'ds_localmask_{tag}', f'{p}_space-orig_desc-local_mask.nii.gz',
             {'Type': 'ROI', 'SpatialReference': native,
              'Description': 'V-SHARP final mask (local field support)'},
             owf, 'outputnode.local_mask', 'uint8')
        sink(f'ds_totalfield_{tag}', f'{p}_desc-total_field.nii.gz',
             {**meta, 'Units': 'ppm', 'Description': f'Echo-combined field ({combination})'},
             owf, 'outputnode.total_field')
        sink(f'ds_localfield_{tag}', f'{p}_desc-local_field.nii.gz',
             {**meta, 'Units': 'ppm', 'Description': 'Local field after V-SHARP'},
             owf, 'outputnode.local_field')
        sink(f'ds_chimap_tkd_{tag}', f'{p}_desc-tkd_Chimap.nii.gz',
             {**meta, 'Units': 'ppm',
              'EstimationAlgorithm': f'TKD (threshold {tkd_threshold}), demeaned in mask'},
             owf, 'outputnode.chimap')
        if model:  # --- deep-learning inference (qsmprep.interfaces.dl; TF inside the node)
            from qsmprep.interfaces.dl import PredictChimap, model_description

            dl_desc, dl_text = model_description(model)
            predict = pe.Node(PredictChimap(model=str(model), b0_direction=list(
                ori.b0_direction)), name=f'predict_{tag}')
            wf.connect([(owf, predict, [('outputnode.local_field', 'in_file'),
                                        ('outputnode.local_mask', 'in_mask')])])
            sink(f'ds_chimap_{dl_desc}_{tag}', f'{p}_desc-{dl_desc}_Chimap.nii.gz',
                 {**meta, 'Units': 'ppm', 'EstimationAlgorithm': dl_text}, predict, 'out_file')
        if n < MIN_COSMOS:
            continue
        reg_wf = init_registration_wf(method=registration, is_reference=ori is ref,
                                      name=f'registration_{tag}_wf')
        rs = pe.Node(ResampleToReference(b0_direction=list(ori.b0_direction)),
                     name=f'to_reference_{tag}')
        to_ref.append(rs)
        # registration reads the raw first-echo magnitudes directly, so that it does not
        # depend on the orientation workflow (whose brain mask may come from it)
        reg_wf.inputs.inputnode.moving = str(ori.echoes[0].magnitude)
        reg_wf.inputs.inputnode.fixed = str(ref.echoes[0].magnitude)
        rs.inputs.reference = str(ref.echoes[0].magnitude)
        wf.connect([
            (reg_wf, rs, [('outputnode.xfm', 'in_xfm')]),
            (owf, rs, [('outputnode.local_field', 'in_file'),
                       ('outputnode.local_mask', 'in_mask')]),
            (rs, merge_fields, [('out_file', f'in{i + 1}')]),
            (rs, merge_masks, [('out_mask', f'in{i + 1}')]),
            (rs, merge_b0, [('b0_direction', f'in{i + 1}')]),
        ])  # fmt: skip
        if ori is not ref:
            sink(f'ds_xfm_{tag}',
                 f'{subject.prefix}_from-{ori.space_label}_to-{ref_space}_mode-image_xfm.txt',
                 None, reg_wf, 'outputnode.itk_xfm')
    if n < MIN_COSMOS:
        return wf

    ref_wf = ori_wfs[oris.index(ref)]
    for i, ori in enumerate(oris):
        tag = _safe(ori.label)
        reg_wf = wf.get_node(f'registration_{tag}_wf')
        wf.connect(ref_wf, 'outputnode.brain_mask', reg_wf, 'inputnode.fixed_mask')
        if ori is not ref and not ori.user_mask:
            carry = pe.Node(MaskFromReference(native=str(ori.echoes[0].magnitude)),
                            name=f'mask_from_reference_{tag}')
            wf.connect([
                (ref_wf, carry, [('outputnode.brain_mask', 'in_mask')]),
                (reg_wf, carry, [('outputnode.xfm', 'in_xfm')]),
                (carry, ori_wfs[i], [('out_mask', 'inputnode.user_mask')]),
            ])  # fmt: skip

    multi = pe.Node(MultiOrientation(reference_b0=list(ref.b0_direction),
                                     sti_regularization=sti_regularization),
                    name='multi_orientation')
    wf.connect([
        (merge_fields, multi, [('out', 'in_files')]),
        (merge_masks, multi, [('out', 'in_masks')]),
        (merge_b0, multi, [('out', 'b0_directions')]),
    ])  # fmt: skip
    space = {'SpatialReference': ref_uri}
    sp = f'{subject.prefix}_space-{ref_space}'
    multi_meta = {**common, **space, 'Units': 'ppm',
                  'Sources': [_raw_uri(bids_dir, o.echoes[0].phase) for o in oris]}
    sink('ds_common_mask', f'{sp}_desc-common_mask.nii.gz',
         {'Type': 'ROI', **space, 'Description': 'Voxels inside every registered local mask'},
         multi, 'out_mask', 'uint8')
    sink('ds_cosmos', f'{sp}_desc-cosmos_Chimap.nii.gz',
         {**multi_meta, 'EstimationAlgorithm': f'COSMOS (closed form, {n} orientations)'},
         multi, 'cosmos')
    sink('ds_orientations', f'{sp}_desc-orientations_qsmprep.json', None,
         multi, 'out_report')
    if n < MIN_STI:
        return wf
    sti = (f'STI (per-k closed form, {n} orientations, anisotropy penalty '
           f'{sti_regularization})')
    for key, what in (('chi33', 'chi33: susceptibility along the reference B0'),
                      ('mms', 'mean magnetic susceptibility tr(chi)/3'),
                      ('msa', 'magnetic susceptibility anisotropy l1-(l2+l3)/2')):
        sink(f'ds_{key}', f'{sp}_desc-{key}_Chimap.nii.gz',
             {**multi_meta, 'EstimationAlgorithm': sti, 'Description': what}, multi, key)
    sink('ds_tensor', f'{sp}_desc-sti_tensor.nii.gz',
         {**multi_meta, 'EstimationAlgorithm': sti,
          'TensorComponents': ['chi11', 'chi12', 'chi13', 'chi22', 'chi23', 'chi33']},
         multi, 'tensor')
    sink('ds_pev', f'{sp}_desc-pev_vector.nii.gz',
         {**space, 'Units': 'arbitrary', 'EstimationAlgorithm': sti,
          'Description': 'principal eigenvector of the susceptibility tensor (unit)'},
         multi, 'pev')
    for i, ori in enumerate(oris):
        tag = _safe(ori.label)
        owf = ori_wfs[i]
        app = pe.Node(ApparentSusceptibility(), name=f'apparent_{tag}')
        reg_wf = wf.get_node(f'registration_{tag}_wf')
        wf.connect([
            (multi, app, [('tensor', 'tensor'), ('out_mask', 'reference_mask')]),
            (to_ref[i], app, [('b0_direction', 'b0_direction')]),
            (reg_wf, app, [('outputnode.xfm', 'in_xfm')]),
            (owf, app, [('outputnode.local_field', 'native'),
                        ('outputnode.local_mask', 'native_mask')]),
        ])  # fmt: skip
        sink(f'ds_apparent_{tag}', f'{ori.prefix}_desc-apparent_Chimap.nii.gz',
             {**common, 'Units': 'ppm', 'B0_dir': list(ori.b0_direction),
              'EstimationAlgorithm': f'{sti}; apparent susceptibility b^T chi b',
              'Description': 'Training label: STI tensor seen along this orientation\'s B0, '
                             'on its native grid', 'Sources': [ref_uri]},
             app, 'out_file')
    return wf


def dataset_description(bids_dir) -> dict:
    """``dataset_description.json`` of the derivatives dataset."""
    return {
        'Name': 'qsmprep derivatives',
        'BIDSVersion': '1.10.0',
        'DatasetType': 'derivative',
        'GeneratedBy': [{'Name': 'qsmprep', 'Version': __version__,
                         'CodeURL': 'https://github.com/qsmprep/qsmprep'}],
        'SourceDatasets': [{'URL': Path(bids_dir).resolve().as_uri()}],
        'DatasetLinks': {'raw': Path(bids_dir).resolve().as_uri()},
    }


BIDSIGNORE = """\
# qsmprep outputs that have no BIDS suffix yet (fields in ppm, tensor, eigenvector),
# reports and logs
*_field.nii.gz
*_field.json
*_tensor.nii.gz
*_tensor.json
*_vector.nii.gz
*_vector.json
*_xfm.txt
*_qsmprep.json
*.html
logs/
sub-*/figures
sub-*/log
"""
