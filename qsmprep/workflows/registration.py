"""Registration of an orientation's magnitude to the reference orientation."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.interfaces.registration import FlirtToWorld, SimpleITKRigid

REGISTRATION_METHODS = ('sitk', 'flirt')


def init_registration_wf(*, method: str = 'sitk', is_reference: bool = False,
                         name: str = 'registration_wf'):
    """Rigid (6-dof) registration ``moving`` → ``fixed`` giving a world transform.

    ``method='flirt'`` runs FSL FLIRT (``-dof 6``, ±90° search) and converts its matrix
    (FSL scaled-voxel coordinates) to a RAS world transform with nitransforms;
    ``'sitk'`` uses SimpleITK (mutual information, multi-start).  The reference
    orientation itself gets the identity.

    Inputs: ``moving``, ``fixed``, ``fixed_mask``.  Outputs: ``xfm`` (4×4 world text
    file, moving → reference), ``itk_xfm`` (ITK text), ``registered`` (moving on the
    reference grid).
    """
    if method not in REGISTRATION_METHODS:
        raise ValueError(f'registration must be one of {REGISTRATION_METHODS}; got {method!r}')
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(['moving', 'fixed', 'fixed_mask']),
                        name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(['xfm', 'itk_xfm', 'registered']),
                         name='outputnode')
    if method == 'sitk' or is_reference:
        reg = pe.Node(SimpleITKRigid(identity=is_reference), name='sitk_rigid')
        wf.connect([
            (inputnode, reg, [('moving', 'moving'), ('fixed', 'fixed'),
                              ('fixed_mask', 'fixed_mask')]),
        ])  # fmt: skip
    else:
        from nipype.interfaces import fsl

        flirt = pe.Node(fsl.FLIRT(dof=6, cost='mutualinfo', searchr_x=[-90, 90],
                                  searchr_y=[-90, 90], searchr_z=[-90, 90],
                                  output_type='NIFTI_GZ'), name='flirt')
        reg = pe.Node(FlirtToWorld(), name='flirt_to_world')
        wf.connect([
            (inputnode, flirt, [('moving', 'in_file'), ('fixed', 'reference')]),
            (flirt, reg, [('out_matrix_file', 'in_matrix')]),
            (inputnode, reg, [('moving', 'moving'), ('fixed', 'fixed')]),
        ])  # fmt: skip
    wf.connect([
        (reg, outputnode, [('out_xfm', 'xfm'), ('out_itk', 'itk_xfm'),
                           ('out_file', 'registered')]),
    ])  # fmt: skip
    return wf
