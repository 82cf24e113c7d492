"""The manifest's menu contribution: Layers > Segment opens the Peak Response Maps widget."""

from test_widget_predict import WAIT_MS


def test_layers_segment_menu_opens_the_predict_widget(make_napari_viewer, qtbot, prm_config):
    viewer = make_napari_viewer()
    (segment,) = [action.menu() for action in viewer.window.layers_menu.actions()
                  if action.text() == "Segment"]
    (entry,) = [action for action in segment.actions() if action.text().startswith("Peak Response Maps")]
    entry.trigger()
    docked = [name for name in viewer.window.dock_widgets if name.startswith("Peak Response Maps")]
    assert docked, list(viewer.window.dock_widgets)
    widget = viewer.window.dock_widgets[docked[0]]
    qtbot.waitUntil(lambda: widget.classes_loaded, timeout=WAIT_MS)
    assert type(widget).__name__ == "PredictWidget"
