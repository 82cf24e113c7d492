"""Labels layers no run made, for the correction panel.

A Labels layer painted from scratch (napari's *New labels layer*), a label image opened from a
file (an export of the plugin opened again, with its classes from the CSV beside it) or the
instances of another tool get the same correction tools as a run's instances layer. The panel
works on such a layer through a `PaintedContext`: it has no peaks or maps, only the layer, its
classes and a ``features`` table completed by :func:`napari_prm.edit.instance_table`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import edit
from .._writer import layer_table
from ..io.tables import UNKNOWN_CLASS
from .layers import instance_features


@dataclass(eq=False)
class PaintedContext:
    """What the correction panel works on for a Labels layer no run made (no peaks, no maps).

    ``class_names`` are the classes its instances may get (``class_index`` is a position in
    them, as the layer's ``metadata["class_names"]`` records); `UNKNOWN_CLASS` (index -1) is
    the class of labels no one named.
    """

    layers: dict  # 'instances' -> the Labels layer
    class_names: list = field(default_factory=list)
    merged_into: dict = field(default_factory=dict)  # no peaks: nothing is merged into another's
    image_layer = None  # no run of an image: `CorrectionPanel.context_of` never finds it
    unnamed_class = UNKNOWN_CLASS  # the class of labels no one named

    @property
    def split_name(self) -> str:
        """The name of the Shapes layer split lines are drawn in."""
        return f"{self.layers['instances'].name} split line"

    def choices(self) -> list[str]:
        """The classes the panel offers: ``class_names``, then `UNKNOWN_CLASS`."""
        return [*self.class_names, UNKNOWN_CLASS]

    def class_index(self, class_name: str) -> int:
        """The ``class_index`` of ``class_name`` (-1 for `UNKNOWN_CLASS`)."""
        return self.class_names.index(class_name) if class_name in self.class_names else -1

    def refresh_classes(self, model_class_names) -> None:
        """Take up the classes of the model now loaded (and those the layer's table names)."""
        layer = self.layers["instances"]
        self.class_names = class_names_of(layer, model_class_names)
        if list((layer.metadata or {}).get("class_names", ())) != self.class_names:
            layer.metadata = {**(layer.metadata or {}), "class_names": list(self.class_names)}


def can_correct(layer) -> bool:
    """Whether the correction panel can take up ``layer`` as a Labels layer no run made.

    Not a layer a run made (its metadata names the run's ``image_layer``: a run's instances
    layer whose peaks were removed, or the hidden copy of corrections a new run kept): such a
    layer goes with its run, and a new run of its image brings the tools back. Nor a layer whose
    pixels are not in memory (a lazy stack, such as *Run on a folder*'s results, or a multiscale
    pyramid): the edits write numpy arrays. Nor a uint64 layer with labels beyond 2**63 - 1
    (hashed ids of another tool): the edits count labels in int64.
    """
    from napari.layers import Labels

    if not (isinstance(layer, Labels) and isinstance(layer.data, np.ndarray)
            and not (layer.metadata or {}).get("image_layer") and np.issubdtype(layer.data.dtype, np.integer)):
        return False
    return layer.data.dtype != np.uint64 or not layer.data.size or int(layer.data.max()) <= np.iinfo(np.int64).max


def class_names_of(labels_layer, model_class_names) -> list[str]:
    """The classes a Labels layer's instances may get: those its metadata records (an export's,
    whose ``class_index`` they index), then the model's, then any other its table names."""
    table = layer_table({"features": labels_layer.features}) or {}
    named = [str(name) for name in table.get("class_name", ())]
    names = [*(labels_layer.metadata or {}).get("class_names", ()), *model_class_names, *named]
    return [name for name in dict.fromkeys(map(str, names)) if name not in ("", UNKNOWN_CLASS, "nan")]


def painted_context(labels_layer, model_class_names) -> PaintedContext:
    """Make ``labels_layer`` ready for the correction panel: a complete instance table in its
    ``features`` (a row per label, class `UNKNOWN_CLASS` where it has none) and its classes in
    ``metadata["class_names"]`` (Export writes them beside the class indices); each row's
    ``class_index`` is its ``class_name``'s position there (by its index in the classes the
    metadata recorded before, for a row without a name)."""
    data = np.asarray(labels_layer.data)
    recorded = (labels_layer.metadata or {}).get("class_names")
    context = PaintedContext({"instances": labels_layer})
    context.refresh_classes(model_class_names)
    # a row without a name: its index's, as recorded; then the names decide (the recorded list
    # loses repeats and 'unknown'): class_index a position in the classes recorded now, as
    # Export writes it
    table = edit.instance_table(data, layer_table({"features": labels_layer.features}), class_name=UNKNOWN_CLASS,
                                class_names=context.class_names, index_names=list(recorded or ()))
    features = instance_features(table)
    if not features.equals(labels_layer.features):
        labels_layer.features = features
    return context
