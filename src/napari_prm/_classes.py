"""Class names: the 20 PASCAL VOC classes under COCO's and PASCAL VOC's own spellings, and how a
model's class meets a dataset's (`class_in`). Free of torch, so that `napari_prm.io` can match
classes as `napari_prm.data` does (`napari_prm.io.match_exports`); `napari_prm.data` gives these
names too."""

from __future__ import annotations

import unicodedata
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


def composed(name: str) -> str:
    """Class name ``name`` in Unicode's composed form (NFC): ``é`` one character, not ``e`` and a
    combining accent.

    The two forms look the same, but are different strings: macOS's older file systems give
    folder names decomposed (``carre\u0301``), a name typed or pasted elsewhere is mostly
    composed (``carr\u00e9``). A dataset's class names are read in this form (a CSV's labels, a
    folder per class's folder names), so that the two are one class.

    Examples
    --------
    >>> composed("carre\u0301") == "carr\u00e9"
    True
    """
    return unicodedata.normalize("NFC", name)


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
        (``motorbike`` for ``motorcycle`` and back: `VOC_SPELLINGS`), else the name ``names``
        holds that is ``name`` in another Unicode form (`composed`: ``carre\u0301`` and
        ``carr\u00e9``), else None.

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
    if other in names:
        return other
    forms = {composed(n): n for n in names}
    return forms.get(composed(name))
