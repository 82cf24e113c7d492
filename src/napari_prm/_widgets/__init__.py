"""The plugin's dock widgets and what they share.

With `napari_prm.cli` (its demo viewer, imported when shown), these are the only modules that
import napari, magicgui or Qt; ``models`` imports neither and ``layers`` napari only lazily.

=============  ===========================================================================
module         holds
=============  ===========================================================================
``predict``    `PredictWidget`: the "Peak Response Maps" dock widget
``correct``    `CorrectionPanel`: delete, merge, split, set class, remove small
``points``     `PointRetrieval`: a point added on the peaks layer becomes a PRM and instance
``layers``     the result layers: names, features, adding and reusing them
``models``     model choices, remembered checkpoints, the model cache, the triton guard
``train``      `TrainWidget`: the "Train PRM model" dock widget
``run_check``  `UnfinishedRunCheck`: the Train widget's unfinished-run check, cached by file
``export``     `ExportWidget`: the "Export instances" dock widget
``refine``     `RefineWidget`: the "Learn from corrections" dock widget
``relay``      `_Relay`: worker-thread progress to the Qt thread
``activity``   `ActivityProgress`: a run's bar in napari's activity dock, with cancel
``history``    `InstanceHistory`: edits as steps of the Labels layer's undo history
``settings``   widget settings kept between sessions
=============  ===========================================================================
"""
