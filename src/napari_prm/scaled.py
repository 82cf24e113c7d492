"""Stacks held at a working size and resized plane by plane when read.

An image's proposals and peak response maps are computed at a working size (a shrunk
copy, the network's grid) and stand for stacks at the image's size: 300 masks or 50 maps of
a 12-megapixel image take gigabytes there. `ScaledStack` holds the small planes and builds
only the planes that are read; its subclasses say how a plane is resized
(:class:`napari_prm.masks.ScaledMasks`: nearest neighbour; :class:`napari_prm.prm_maps.ScaledPRMs`:
bilinear, renormalised).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

__all__ = ["LazyArray", "ScaledStack", "split_index"]


def split_index(index, ndim: int) -> tuple:
    """``index`` of an ``ndim``-dimensional array as a tuple of ``ndim`` entries (``...`` expanded,
    missing trailing axes ``slice(None)``).

    Parameters
    ----------
    index : object
        An index as ``array[index]`` takes it (an int, a slice, an array, ``...`` or a tuple of them).
    ndim : int
        The number of axes of the array.

    Raises
    ------
    IndexError
        For ``None`` (a new axis), more than one ``...``, or more entries than axes.
    """
    index = index if isinstance(index, tuple) else (index,)
    if any(item is None for item in index):
        raise IndexError("a new axis (None) cannot index a lazily resized stack")
    ellipses = [at for at, item in enumerate(index) if item is Ellipsis]  # by identity: items may be arrays
    if len(ellipses) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if ellipses:
        at = ellipses[0]
        index = index[:at] + (slice(None),) * (ndim - len(index) + 1) + index[at + 1:]
    if len(index) > ndim:
        raise IndexError(f"too many indices: {len(index)} for a {ndim}-dimensional stack")
    return index + (slice(None),) * (ndim - len(index))


def _is_integer(item) -> bool:
    return isinstance(item, (int, np.integer)) and not isinstance(item, bool)


#: ``__dlpack_device__`` of an array in the CPU's memory: (kDLCPU, 0)
_CPU_DLPACK_DEVICE = (1, 0)


class LazyArray(NDArrayOperatorsMixin):
    """An array that is built when it is read: subclasses define `to_array`.

    ``np.asarray(lazy)``, the operators, ufuncs and the ndarray's other methods and properties
    (``lazy.sum()``, ``lazy.max(axis=0)``, ``lazy.T``) work on the array built for the call, and so
    do ``torch.as_tensor(lazy)`` and ``torch.from_dlpack(lazy)`` (through ``__dlpack__``);
    ``torch.from_numpy`` takes ndarrays only: ``torch.from_numpy(np.asarray(lazy))``. An
    in-place operator (``lazy += 1``) gives a new ndarray, bound to the name, and leaves the lazy
    array as it was: it is read-only.
    """

    def to_array(self) -> np.ndarray:
        """The whole array."""
        raise NotImplementedError

    def __array__(self, dtype=None, copy=None):
        # NumPy 2's signature: the array is built for the call, a new one each time, so that
        # ``copy`` asks for nothing more (np.asarray(lazy), np.array(lazy, copy=True) alike)
        array = self.to_array()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __dlpack__(self, **options):
        # torch.as_tensor(lazy), torch.tensor(lazy) and torch.from_dlpack(lazy) take the array built
        # for the call in one piece; without it, torch read a stack as a sequence of planes, item by
        # item, and warned "Creating a tensor from a list of numpy.ndarrays is extremely slow"
        options = {key: value for key, value in options.items() if value is not None}
        return self.to_array().__dlpack__(**options)

    def __dlpack_device__(self):
        return _CPU_DLPACK_DEVICE

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(item.to_array() if isinstance(item, LazyArray) else item for item in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(item.to_array() if isinstance(item, LazyArray) else item
                                  for item in kwargs["out"])
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getattr__(self, name: str):
        # the ndarray's other methods and properties (sum, max, reshape, astype, T, ...)
        if not name.startswith("_") and hasattr(np.ndarray, name):
            return getattr(self.to_array(), name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class ScaledStack(LazyArray):
    """An (N, H, W) stack held as (N, h, w) planes at a working size; a plane is resized when read.

    It reads as the (N, H, W) ndarray it stands for: ``stack[i]`` is plane ``i`` at ``(H, W)``;
    a slice, an integer or boolean array of planes gives another stack of the same kind
    (nothing is resized); a tuple index resizes the planes it selects and returns an ndarray;
    ``np.asarray(stack)``, the operators, ufuncs and the other ndarray methods
    (``stack.sum(axis=(1, 2))``) work on the whole stack, built for the call (N times H × W
    values; see `LazyArray`). Subclasses define `_resized`.

    Parameters
    ----------
    planes : (N, h, w) ndarray
    shape : (int, int)
        ``(H, W)``: the size the planes stand for.

    Attributes
    ----------
    planes : (N, h, w) ndarray
    shape : (int, int, int)
        ``(N, H, W)``, as an ndarray's.
    """

    #: dtype of the planes as read (None: that of ``planes``)
    read_dtype: np.dtype | None = None

    def __init__(self, planes: np.ndarray, shape: tuple[int, int]):
        planes = np.asarray(planes)
        if planes.ndim != 3:
            raise ValueError(f"{type(self).__name__}: expected an (N, h, w) stack, got shape {planes.shape}")
        height, width = (int(s) for s in shape)
        self.planes = planes
        self.shape = (len(planes), height, width)

    def _resized(self, planes: np.ndarray) -> np.ndarray:
        """(n, h, w) planes of ``self.planes`` → (n, H, W) ndarray."""
        raise NotImplementedError

    def with_planes(self, planes: np.ndarray) -> ScaledStack:
        """A stack of the same kind holding ``planes``.

        Parameters
        ----------
        planes : (n, h, w) ndarray
            The planes, at this stack's working size.
        """
        return type(self)(planes, self.shape[1:])

    def __len__(self) -> int:
        return len(self.planes)

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    @property
    def ndim(self) -> int:
        """3, as an (N, H, W) ndarray's."""
        return 3

    @property
    def size(self) -> int:
        """The number of elements: ``N * H * W``."""
        return int(np.prod(self.shape))

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the planes as read: ``read_dtype``, else that of ``planes``."""
        return np.dtype(self.read_dtype or self.planes.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes held (those of the working-size planes)."""
        return self.planes.nbytes

    def __getitem__(self, index):
        first, *rest = split_index(index, 3)
        if _is_integer(first):
            return self._resized(self.planes[first][None])[0][tuple(rest)]
        subset = self.with_planes(self.planes[first])
        if all(isinstance(item, slice) and item == slice(None) for item in rest):
            return subset
        return subset.to_array()[(slice(None), *rest)]

    def iter_planes(self, indices=None, *, max_bytes: int = 64 * 2**20):
        """Planes ``indices`` (default: all) at ``(H, W)``, in order, resized a few at a time:
        at most ``max_bytes`` of them at once (one at a time for a large image), as few calls
        as that allows (one call per plane is slow on a busy machine).

        Parameters
        ----------
        indices : sequence of int, optional
            The planes to give, in that order; None gives all.
        max_bytes : int
            How many bytes of resized planes to make at once (at least one plane).

        Yields
        ------
        (H, W) ndarray
        """
        indices = list(range(len(self)) if indices is None else indices)
        plane_bytes = self.dtype.itemsize * self.shape[1] * self.shape[2]
        step = max(1, int(max_bytes) // max(plane_bytes, 1))
        for start in range(0, len(indices), step):
            yield from self._resized(self.planes[indices[start:start + step]])

    def to_array(self) -> np.ndarray:
        """The whole (N, H, W) stack."""
        return self._resized(self.planes)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} planes of {self.planes.shape[1]}×{self.planes.shape[2]} "
                f"standing for {self.shape[1]}×{self.shape[2]})")
