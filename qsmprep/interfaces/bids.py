"""Writing derivatives: copy a result to its BIDS path with a JSON sidecar (atomically)."""

from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _SinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='file to store')
    out_path = traits.Str(mandatory=True, desc='absolute destination path (BIDS name)')
    metadata = traits.Dict(usedefault=True, desc='JSON sidecar content (none if empty)')
    dtype = traits.Enum(None, 'float32', 'uint8', 'int16', usedefault=True,
                        desc='cast NIfTI data to this type')


class _SinkOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='the stored file')
    out_meta = File(desc='its JSON sidecar')


class DerivativesSink(SimpleInterface):
    """Store ``in_file`` at ``out_path`` (NIfTI re-saved gzip'ed; others copied) + sidecar."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        import json
        import shutil
        from pathlib import Path

        from qsmprep.utils.fsutils import atomic_path, write_text

        out = Path(self.inputs.out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        # written under a temporary name, renamed when complete: never a truncated file
        with atomic_path(out) as tmp:
            if out.name.endswith('.nii.gz'):
                import nibabel as nb
                import numpy as np

                img = nb.load(self.inputs.in_file)
                data = np.asanyarray(img.dataobj)
                if self.inputs.dtype:
                    data = data.astype(self.inputs.dtype)
                new = nb.Nifti1Image(data, img.affine, img.header)
                new.set_data_dtype(data.dtype)
                new.to_filename(str(tmp))
            else:
                shutil.copyfile(self.inputs.in_file, tmp)
        self._results['out_file'] = str(out)
        if self.inputs.metadata:
            meta = out.with_name(out.name.split('.')[0] + '.json')
            write_text(meta, json.dumps(self.inputs.metadata, indent=2, sort_keys=True) + '\n')
            self._results['out_meta'] = str(meta)
        return runtime
