"""The refinement head: a mask head learnt from PRM's pseudo-instances and from corrected masks.

PRM's instances are only as good as the segment proposals they are picked from. A light
decoder on the frozen backbone's features learns class maps and instance boundaries from
two sources: the instances PRM retrieves on images with image-level labels (self-training,
with what is uncertain ignored) and the masks a user corrected (full supervision). At
prediction time each PRM peak seeds one instance, cut from the head's maps
(``predict(..., proposals="refined")``, the default for a model with a head).

==========================================  ==============================================
module                                      holds
==========================================  ==============================================
``napari_prm.refine.features``              `find_stages`, `StageFeatures`: backbone maps
                                            by output stride, found with forward hooks
``napari_prm.refine.head``                  `RefineHead` (the decoder), its saved form
``napari_prm.refine.targets``               `pseudo_target`, `correction_target`
``napari_prm.refine.corrections``           `Correction`, `load_corrections` (COCO JSON,
                                            label images + instance CSV), napari layers
``napari_prm.refine.training``              `refine`: cached features, training, resume
``napari_prm.refine.instances``             `head_instances`: one instance per peak
``napari_prm.refine.inference``             `head_maps`, `refined_instances`
==========================================  ==============================================
"""

from .corrections import Correction, correction_from_layer, load_corrections
from .features import Stage, StageFeatures, find_stages
from .head import RefineHead
from .inference import head_maps, refined_instances
from .instances import HeadMaps, head_instances
from .targets import IGNORE, HeadTarget, correction_target, pseudo_target
from .training import RefineEpoch, RefineProgress, RefineResult, refine

__all__ = [
    "IGNORE", "Correction", "HeadMaps", "HeadTarget", "RefineEpoch", "RefineHead", "RefineProgress",
    "RefineResult", "Stage", "StageFeatures", "correction_from_layer", "correction_target", "find_stages",
    "head_instances", "head_maps", "load_corrections", "pseudo_target", "refine", "refined_instances",
]
