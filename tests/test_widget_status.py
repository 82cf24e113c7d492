"""The widgets' status lines wrap: a long message (a training warning) does not widen the dock."""

import pytest

LONG = ("Done: epoch 8, loss 0.0900 (2 training images, 1 held out); saved /tmp/tutorial/my_model.pt; "
        "it is offered in the Peak Response Maps widget. Warning: class(es) 'Egyptian cat' have no "
        "training image: their only image(s) are held out for validation (val_fraction), so the model "
        "does not learn them; add images of them or train on every image (--val-fraction 0)")


@pytest.mark.parametrize("name", ["Train PRM model", "Export instances", "Learn from corrections"])
def test_a_long_status_message_wraps_instead_of_widening_the_dock(make_napari_viewer, qtbot, prm_config,
                                                                   name):
    """After training with a warning, the Train dock's one-line status asked for ~2000 pixels:
    the window grew past the screen and napari's canvas shrank to a sliver beside it."""
    viewer = make_napari_viewer(show=True)  # a hidden window's layouts do not follow the label
    dock, widget = viewer.window.add_plugin_dock_widget("napari-prm", name)
    qtbot.wait(100)
    before = dock.minimumSizeHint().width()
    widget._status.value = LONG
    qtbot.wait(100)  # the layout takes the label's new size hint
    assert dock.minimumSizeHint().width() <= max(before, 600)
    assert widget._status.native.wordWrap()
