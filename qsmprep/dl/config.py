"""Training settings (no TensorFlow import): one small dataclass, JSON round-trip."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

__all__ = ['DEFAULT_MODEL_PARAMS', 'MODEL_KINDS', 'TrainConfig', 'check_model_params',
           'label_normalization']

#: Model kinds: MoDL-QSM (3D), Swin-UNet (2D), fully convolutional stand-in (2D or 3D).
MODEL_KINDS = ('modl', 'swin', 'fcn')

#: Model hyper-parameters used when none are given (``--model-params`` overrides keys): every
#: keyword of the builders in :mod:`qsmprep.dl.models` that is not taken from the dataset
#: manifest (channels, crop, dimensionality, normalisation).
DEFAULT_MODEL_PARAMS: dict[str, dict[str, Any]] = {
    'modl': {'iterations': 3, 'denoiser': 'unet', 'width': 16, 'levels': 2, 'blocks': 8,
             'batchnorm': True, 'dropout': 0.0, 'residual': True, 'margin': 24,
             'multiple': 8, 'step_init': 1.0},
    'swin': {'embed_dim': 32, 'depths': [2, 2, 2, 2], 'heads': [2, 4, 8, 8], 'window': 8,
             'patch': 2, 'mlp_ratio': 2.0, 'conv_branch': True},
    'fcn': {'width': 8, 'depth': 3},
}

_SCHEDULES = ('cosine', 'constant', 'step', 'plateau')


def check_model_params(model: str, params) -> None:
    """Raise ValueError when ``params`` names a hyper-parameter ``model`` does not have.

    >>> check_model_params('fcn', {'width': 4})
    >>> check_model_params('fcn', {'widht': 4})
    Traceback (most recent call last):
    ...
    ValueError: widht is not a parameter of the fcn model; known parameters (defaults): ...
    """
    known = DEFAULT_MODEL_PARAMS.get(model, {})
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f'{", ".join(unknown)} is not a parameter of the {model} model; known '
                         f'parameters (defaults): {json.dumps(known)}')


def label_normalization(manifest: dict, channels: int) -> tuple[list[float], list[float]]:
    """``(mean, std)`` per label channel used to normalise iterates, outputs and the loss.

    Channel 0 (χ_app) uses the training statistics.  Channel 1 (the complementary field
    ``f``) uses ``max(std(f), std(field))``: in nearly isotropic tissue (and in simulations)
    ``f`` is tiny — 0.0007 ppm against a field spread of 0.012 ppm in the ``tiny`` cohort —
    and normalising by its own spread would multiply its errors and the network's inputs
    by ~75, letting a physically negligible channel dominate the loss.

    >>> m = {'normalization': {'field': {'mean': [0.0], 'std': [0.01]},
    ...                        'label': {'mean': [0.0, 0.0], 'std': [0.05, 0.001]}}}
    >>> label_normalization(m, 2)
    ([0.0, 0.0], [0.05, 0.01])
    """
    norm = manifest.get('normalization', {})
    lab = norm.get('label', {})
    mean = [float(v) for v in lab.get('mean', [0.0] * channels)][:channels]
    std = [float(v) for v in lab.get('std', [1.0] * channels)][:channels]
    mean += [0.0] * (channels - len(mean))
    std += [1.0] * (channels - len(std))
    if channels == 2:
        fstd = float(norm.get('field', {}).get('std', [0.0])[0])
        std[1] = max(std[1], fstd)
    return mean, std


@dataclasses.dataclass
class TrainConfig:
    """What to train and how.

    Attributes
    ----------
    model : {'modl', 'swin', 'fcn'}
        MoDL-QSM needs a 3D patch dataset, Swin-UNet a 2D slice dataset; the fully
        convolutional stand-in takes either.
    model_params : dict
        Keyword arguments of the builder (:mod:`qsmprep.dl.models`), merged over
        :data:`DEFAULT_MODEL_PARAMS`.
    epochs, steps_per_epoch, batch_size
        ``steps_per_epoch=None``: one pass over the training samples.
    learning_rate, lr_schedule, warmup_steps, min_lr, lr_decay, lr_step_epochs, patience
        ``cosine`` (default; to ``min_lr`` at the last step, after a linear warm-up),
        ``constant``, ``step`` (× ``lr_decay`` every ``lr_step_epochs``) or ``plateau``
        (× ``lr_decay`` after ``patience`` epochs without a better validation loss, as the
        original MoDL-QSM).
    early_stopping : int, optional
        Stop after this many epochs without a better validation loss.
    ssim_weight : float, optional
        Weight of ``1 − SSIM`` in the loss (default 0.05 for Swin-UNet, 0 otherwise).
    seed : int
        Weights initialisation and batch order.
    checkpoint_every : int
        Steps between checkpoints (also written at every epoch end and on SIGTERM/SIGINT).
    keep_checkpoints : int
        Checkpoints kept on disk (oldest removed).
    mixed_precision : {'auto', 'on', 'off'}
        ``auto``: on when a GPU is used (bfloat16 on compute capability ≥ 8, else float16
        with loss scaling); never on CPU.
    validation_batches : int, optional
        Limit the validation pass (default: the whole validation split).
    """

    model: str = 'modl'
    model_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 2
    learning_rate: float = 1e-3
    lr_schedule: str = 'cosine'
    warmup_steps: int = 0
    min_lr: float = 1e-5
    lr_decay: float = 0.5
    lr_step_epochs: int = 10
    patience: int = 3
    early_stopping: int | None = None
    ssim_weight: float | None = None
    seed: int = 0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    mixed_precision: str = 'auto'
    validation_batches: int | None = None

    def __post_init__(self):
        if self.model not in MODEL_KINDS:
            raise ValueError(f'model must be one of {MODEL_KINDS}; got {self.model!r}')
        check_model_params(self.model, self.model_params)
        if self.lr_schedule not in _SCHEDULES:
            raise ValueError(f'lr_schedule must be one of {_SCHEDULES}; got '
                             f'{self.lr_schedule!r}')
        if self.mixed_precision not in ('auto', 'on', 'off'):
            raise ValueError("mixed_precision must be 'auto', 'on' or 'off'")
        for name in ('epochs', 'batch_size', 'checkpoint_every', 'keep_checkpoints'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be >= 1; got {getattr(self, name)!r}')
        if self.steps_per_epoch is not None and int(self.steps_per_epoch) < 1:
            raise ValueError('steps_per_epoch must be >= 1')
        if not self.learning_rate > 0:
            raise ValueError('learning_rate must be > 0')

    @property
    def params(self) -> dict[str, Any]:
        """Builder keyword arguments: defaults of the model kind updated by ``model_params``."""
        return {**DEFAULT_MODEL_PARAMS.get(self.model, {}), **self.model_params}

    @property
    def loss_ssim_weight(self) -> float:
        if self.ssim_weight is not None:
            return float(self.ssim_weight)
        return 0.05 if self.model == 'swin' else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f'unknown training settings: {sorted(unknown)}')
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
