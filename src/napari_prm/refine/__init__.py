"""The refinement head: a mask head learnt from PRM's pseudo-instances and from corrected masks.

PRM's instances are only as good as the segment proposals they are picked from. A light
decoder on the frozen backbone's features learns, for a peak (prompted by its peak
response map, its position and its class's response), the mask of the instance the peak
stands for. It learns from two sources: the instances PRM retrieves on images with
image-level labels (self-training, with what is uncertain ignored) and the masks a user
corrected (full supervision). At prediction time each PRM peak seeds one instance, cut by
the head (``predict(..., proposals="refined")``, the default for a model with a head).

==========================================  ==============================================
module                                      holds
==========================================  ==============================================
``napari_prm.refine.features``              `find_stages`, `StageFeatures`: backbone maps
                                            by output stride, found with forward hooks
``napari_prm.refine.prompts``               `peak_prompts`: what the head is told of a peak
``napari_prm.refine.head``                  `RefineHead` (the decoder), its saved form
``napari_prm.refine.targets``               `pseudo_targets`, `correction_targets`
``napari_prm.refine.corrections``           `Correction`, `load_corrections` (COCO JSON,
                                            label images + instance CSV), napari layers,
                                            `match_corrections` (to a dataset's images)
``napari_prm.refine.samples``               features, prompts and targets per image; cache
``napari_prm.refine.training``              `refine`: training, checkpoints, resume
``napari_prm.refine.instances``             `head_instances`: one instance per peak
``napari_prm.refine.inference``             `head_logits`, `refined_instances`
==========================================  ==============================================
"""

from .corrections import Correction, correction_from_layer, load_corrections, match_corrections
from .features import Stage, StageFeatures, find_stages
from .head import RefineHead
from .inference import head_logits, refined_instances, stage_features
from .instances import head_instances
from .prompts import peak_prompts
from .samples import Sample, prepare_samples
from .targets import IGNORE, correction_targets, pseudo_targets
from .training import RefineEpoch, RefineProgress, RefineResult, refine

__all__ = [
    "IGNORE", "Correction", "RefineEpoch", "RefineHead", "RefineProgress", "RefineResult", "Sample", "Stage",
    "StageFeatures", "correction_from_layer", "correction_targets", "find_stages", "head_instances", "head_logits",
    "load_corrections", "match_corrections", "peak_prompts", "prepare_samples", "pseudo_targets", "refine",
    "refined_instances", "stage_features",
]
