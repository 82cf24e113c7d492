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


def test_plugins_menu_has_every_widget_the_manifest_comment_counts(make_napari_viewer):
    """The manifest's comment said the Plugins menu 'has all three' of its four widgets."""
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[1] / "src" / "napari_prm" / "napari.yaml").read_text()
    widgets = [entry["display_name"] for entry in yaml.safe_load(text)["contributions"]["widgets"]]
    viewer = make_napari_viewer()
    (plugin,) = [action.menu() for action in viewer.window.plugins_menu.actions()
                 if action.text() == "Peak Response Maps"]
    assert [action.text() for action in plugin.actions()] == [f"{name} (Peak Response Maps)" for name in widgets]
    (count,) = re.findall(r"the Plugins menu has all (\w+)", text)
    assert count == ["one", "two", "three", "four", "five", "six"][len(widgets) - 1]
