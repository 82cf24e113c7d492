"""Class names: the 20 PASCAL VOC classes under COCO's and PASCAL VOC's own spellings, and how a
model's class meets a dataset's (`class_in`). Free of torch, so that `napari_prm.io` can match
classes as `napari_prm.data` does (`napari_prm.io.match_exports`); `napari_prm.data` gives these
names too."""

from __future__ import annotations

from collections.abc import Iterable

#: The 20 PASCAL VOC classes under their COCO names, in VOC's order.
VOC_CLASSES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorcycle", "person", "potted plant", "sheep", "couch",
    "train", "tv",
)

#: PASCAL VOC's own spelling of the VOC classes COCO names otherwise (VOC name: COCO name).
VOC_SPELLINGS = {
    "aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
    "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv",
}
#: The other way round (COCO name: VOC name).
_VOC_NAME = {coco: voc for voc, coco in VOC_SPELLINGS.items()}
#: The VOC classes as PASCAL VOC names them, in VOC's order: class ``k + 1`` of its
#: ``SegmentationClass`` PNGs.
_VOC_OWN_NAMES = tuple(_VOC_NAME.get(name, name) for name in VOC_CLASSES)


def _other_spelling(name: str) -> str | None:
    """The VOC class ``name`` under PASCAL VOC's or COCO's other name (``motorbike`` for
    ``motorcycle`` and back), else None."""
    return VOC_SPELLINGS.get(name) or _VOC_NAME.get(name)


def class_in(name: str, names: Iterable[str]) -> str | None:
    """The name class ``name`` has among ``names``: itself, else a VOC class's other spelling.

    How a model's classes meet a dataset's (`napari_prm.data.LabeledImageDataset.with_classes`,
    fine-tuning's kept classifier rows, `napari_prm.io.match_exports`).

    Parameters
    ----------
    name : str
        A class name, as a model or a dataset spells it.
    names : iterable of str
        The names to find it among (a set, a dict's keys, a list).

    Returns
    -------
    str or None
        ``name`` if ``names`` holds it, else its other spelling if ``names`` holds that
        (``motorbike`` for ``motorcycle`` and back: `VOC_SPELLINGS`), else None.

    Examples
    --------
    >>> class_in("motorcycle", ["cat", "motorbike"])
    'motorbike'
    >>> class_in("cat", ["cat", "motorbike"])
    'cat'
    >>> class_in("giraffe", ["cat"]) is None
    True
    """
    names = names if isinstance(names, (set, frozenset, dict)) else set(names)
    if name in names:
        return name
    other = _other_spelling(name)
    return other if other in names else None
