"""Which layers are the plugin's: result layers found by a mark in their metadata, not by name.

A run names its layers after the image (``<image> peaks``, ``<image> PRMs``, ``<image>
instances``, ``<image> CRM <class>``), and the user may rename them. Each layer the plugin makes
therefore carries ``metadata["napari_prm"]`` (`MARKER`): its role, and the name and napari
``unique_id`` of its image layer (a split-line layer: of its Labels layer). The widgets find a
layer by that mark first, and by its default name only when no layer carries the mark (a layer
opened from a file, or made before the mark existed); a layer marked for another image or role
is never taken by its name.
"""

from __future__ import annotations

#: The metadata key of the layers the plugin makes (`mark`).
MARKER = "napari_prm"
#: What a run's instances layer adds to its image layer's name (`layer_names`).
INSTANCES_SUFFIX = " instances"
#: Name of the copy of a corrected instances layer that a new run keeps (`keep_corrections`).
KEPT_SUFFIX = " (corrected)"
#: The roles of the layers of an image's run; ``kept`` is a copy of corrections a run kept.
ROLES = ("peaks", "prms", "instances", "crm", "kept")


def layer_names(image_name: str) -> dict[str, str]:
    """Default names of the result layers of an image layer (the CRM's: a prefix, the class follows)."""
    return {
        "peaks": f"{image_name} peaks",
        "prms": f"{image_name} PRMs",
        "instances": f"{image_name}{INSTANCES_SUFFIX}",
        "crm": f"{image_name} CRM ",
        "split": f"{image_name} split line",
    }


def layer_id(layer) -> str:
    """The napari ``unique_id`` of ``layer`` as text (it lives as long as the layer object)."""
    return str(layer.unique_id)


def mark(role: str, owner, key: str = "") -> dict:
    """The metadata entry that marks a layer of ``role`` made for ``owner`` (an image layer; for a
    split line, its Labels layer); ``key`` tells apart layers of one role (a CRM's class)."""
    entry = {"role": role, "image_layer": owner.name, "image_id": layer_id(owner)}
    if key:
        entry["key"] = key
    return {MARKER: entry}


def marker_of(layer) -> dict:
    """The plugin's mark of ``layer`` (`mark`), ``{}`` for a layer it did not make."""
    entry = (getattr(layer, "metadata", None) or {}).get(MARKER)
    return entry if isinstance(entry, dict) else {}


def remarked(layer, role: str) -> dict:
    """``layer``'s metadata with its mark given another ``role`` (the copy of corrections a run keeps)."""
    metadata = dict(layer.metadata or {})
    if marker_of(layer):
        metadata[MARKER] = {**marker_of(layer), "role": role}
    return metadata


def is_marked(layer, owner, role: str | None = None) -> bool:
    """Whether ``layer`` carries the mark of a layer made for ``owner`` (of ``role``, if given)."""
    entry = marker_of(layer)
    return bool(entry) and entry.get("image_id") == layer_id(owner) and role in (None, entry.get("role"))


def find_results(viewer, image_layer, role: str, *, name: str | None = None) -> dict[str, object]:
    """The layers of ``viewer`` of ``role`` made for ``image_layer``, by key (``""``; a CRM's class).

    Marked layers first; an unmarked layer by its default name only for a key no marked layer
    holds: ``name`` (of a CRM: the prefix its class follows), by default the one `layer_names`
    gives ``image_layer``'s name (a split line of a run's Labels layer is named after the run's
    image instead: its context gives ``name``).
    """
    found = {}
    for layer in viewer.layers:
        if is_marked(layer, image_layer, role):
            found.setdefault(marker_of(layer).get("key", ""), layer)
    default = layer_names(image_layer.name).get(role) if name is None else name
    for layer in viewer.layers:
        if marker_of(layer) or default is None:
            continue
        if role == "crm" and layer.name.startswith(default):
            found.setdefault(layer.name[len(default):], layer)
        elif role != "crm" and layer.name == default:
            found.setdefault("", layer)
    return found


def find_result(viewer, image_layer, role: str, key: str = "", *, name: str | None = None):
    """The layer of ``role`` (and ``key``) made for ``image_layer``, None when there is none (`find_results`;
    ``name``: an unmarked layer's default name)."""
    return find_results(viewer, image_layer, role, name=name).get(key)


def marked_image(viewer, layer):
    """The image layer of ``viewer`` a marked ``layer`` was made for (by ``unique_id``: it may
    have been renamed); None for an unmarked layer, or when that image has left the viewer."""
    image_id = marker_of(layer).get("image_id")
    return next((other for other in viewer.layers if image_id and layer_id(other) == image_id), None)
