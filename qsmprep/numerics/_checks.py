"""Input validation shared by the numerics (errors say what was wrong and what is expected)."""

from __future__ import annotations

import numpy as np


def as_volume(x, name: str, *, ndim: int = 3, dtype=None, allow_complex: bool = False):
    """Return ``x`` as a finite ``ndim``-D floating array or raise a clear error."""
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f'{name} must be a {ndim}-D array; got shape {arr.shape}')
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or (allow_complex and np.iscomplexobj(arr))
    ):
        kind = 'real or complex' if allow_complex else 'real'
        raise TypeError(f'{name} must be a {kind} numeric array; got dtype {arr.dtype}')
    if np.iscomplexobj(arr) and not allow_complex:
        raise TypeError(f'{name} must be real-valued; got dtype {arr.dtype}')
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    elif not np.issubdtype(arr.dtype, np.floating) and not np.iscomplexobj(arr):
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        n = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f'{name} contains {n} non-finite values (NaN/Inf); replace or mask them')
    return arr


def as_mask(mask, shape, name: str = 'mask'):
    """Return a boolean mask of ``shape`` (``None`` means everywhere)."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(
            f'{name} has shape {m.shape}; expected {tuple(shape)} (the grid of the data)')
    if m.dtype != bool:
        if not np.all(np.isfinite(m)):
            raise ValueError(f'{name} contains non-finite values')
        m = m != 0
    return m


def as_voxel_size(voxel_size, ndim: int = 3) -> np.ndarray:
    """Return a positive float array of ``ndim`` voxel sizes in mm."""
    vs = np.asarray(voxel_size, dtype=float).reshape(-1)
    if vs.size == 1:
        vs = np.repeat(vs, ndim)
    if vs.size != ndim or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise ValueError(
            f'voxel_size must be {ndim} positive finite numbers in mm; got {voxel_size!r}'
        )
    return vs


def as_direction(b0_direction, *, name: str = 'b0_direction', atol: float = 1e-3) -> np.ndarray:
    """Return a unit 3-vector; raise if it is not (close to) unit norm."""
    b = np.asarray(b0_direction, dtype=float).reshape(-1)
    if b.size != 3 or not np.all(np.isfinite(b)):
        raise ValueError(f'{name} must be 3 finite numbers; got {b0_direction!r}')
    n = np.linalg.norm(b)
    if abs(n - 1.0) > atol:
        raise ValueError(
            f'{name} must be a unit vector (norm 1); got norm {n:.6g} for {b.tolist()}. '
            'Normalise it first, e.g. b / np.linalg.norm(b).'
        )
    return b / n


def as_directions(b0_directions, *, minimum: int = 1, method: str = '') -> np.ndarray:
    """Return an ``(n, 3)`` array of unit vectors, checking ``n >= minimum``."""
    b = np.asarray(b0_directions, dtype=float)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 3:
        raise ValueError(f'b0_directions must have shape (n, 3); got {b.shape}')
    if b.shape[0] < minimum:
        what = f'{method} ' if method else ''
        raise ValueError(
            f'{what}needs at least {minimum} orientations; got {b.shape[0]}. '
            'Acquire more head orientations or use a method that needs fewer.'
        )
    return np.stack([as_direction(v, name=f'b0_directions[{i}]') for i, v in enumerate(b)])


def positive(value, name: str, unit: str) -> float:
    """Return ``value`` as a positive finite float or raise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f'{name} must be a number in {unit}; got {value!r}') from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f'{name} must be positive and finite (in {unit}); got {value!r}')
    return v


def positive_array(values, name: str, unit: str) -> np.ndarray:
    """Return a 1-D array of positive finite floats or raise."""
    v = np.atleast_1d(np.asarray(values, dtype=float))
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f'{name} must be a non-empty 1-D sequence in {unit}; got {values!r}')
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f'{name} must all be positive and finite (in {unit}); got {v.tolist()}')
    return v
