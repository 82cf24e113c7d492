"""A run of the "Peak Response Maps" widget on a multiscale (pyramid) image reads one level."""

import numpy as np
import pytest

from napari_prm._widgets import layers as layer_module
from napari_prm._widgets.layers import level_note, level_text, plane_reader, run_level, run_shape
from napari_prm._widgets.refine import layer_planes
from test_widget_predict import WAIT_MS, open_predict, peak_threshold_for, run_and_wait

SCALE, TRANSLATE = (0.5, 0.5), (10.0, -4.0)


def pyramid(cat):
    """Four levels of the cat: 4× (400×604), 2×, 1× (100×151, the cat itself) and about ½×
    (50×76: a factor that is not a whole number)."""
    return [cat.repeat(4, 0).repeat(4, 1), cat.repeat(2, 0).repeat(2, 1), cat, cat[::2, ::2]]


@pytest.fixture
def slide(make_napari_viewer, monkeypatch, small_cat):
    """A viewer with the cat's pyramid at 0.5 µm per pixel and a run limit of 160 px: level 2
    (151 px long, a quarter of level 0 each way) is the finest within it."""
    monkeypatch.setattr(layer_module, "MAX_RUN_SIDE", 160)
    viewer = make_napari_viewer()
    viewer.add_image(pyramid(small_cat), name="slide", multiscale=True, rgb=True, scale=SCALE,
                     translate=TRANSLATE)
    return viewer


#: Level 2 of the slide: 4 level-0 pixels a side, its pixel centres 1.5 level-0 pixels in.
LEVEL_SCALE = [4 * s for s in SCALE]
LEVEL_TRANSLATE = [t + 1.5 * s for t, s in zip(TRANSLATE, SCALE)]


def test_the_finest_level_within_the_limit_is_chosen(slide, monkeypatch, small_cat):
    layer = slide.layers["slide"]
    assert run_level(layer) == 2 and run_shape(layer) == (100, 151)  # RGB: less the channels
    assert level_text(layer) == "pyramid level 2 of 4, 100×151"
    np.testing.assert_array_equal(plane_reader(layer, ())(), small_cat)
    monkeypatch.setattr(layer_module, "MAX_RUN_SIDE", 302)
    assert run_level(layer) == 1
    monkeypatch.setattr(layer_module, "MAX_RUN_SIDE", 40)  # none is within: the coarsest
    assert run_level(layer) == 3
    assert level_note(layer) == ("Ran on pyramid level 3 of 4, 50×76 (no level is at most 40 px long: the "
                                 "coarsest); the result layers are at its resolution.")
    monkeypatch.setattr(layer_module, "MAX_RUN_SIDE", 4096)
    assert run_level(layer) == 0 and level_text(layer) == "pyramid level 0 of 4, 400×604"
    single = slide.add_image(small_cat, name="single")
    assert run_level(single) == 0 and level_text(single) == ""
    # a multiscale stack keeps level 0 (read a plane at a time)
    stack = slide.add_image([np.stack([level] * 2) for level in pyramid(small_cat)[:2]], name="stack",
                            multiscale=True, rgb=True)
    monkeypatch.setattr(layer_module, "MAX_RUN_SIDE", 160)
    assert run_level(stack) == 0 and level_text(stack) == "" and run_shape(stack) == (400, 604)
    assert plane_reader(stack, (1,))().shape == (400, 604, 3)


def test_a_run_reads_one_level_and_its_layers_overlay_the_image(slide, qtbot, monkeypatch, prm_config,
                                                                tiny_checkpoint, small_cat, tmp_path):
    from napari_prm._widgets.export import ExportWidget

    viewer = slide
    image = viewer.layers["slide"]
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = "prm"
    widget.add_crms.value = True
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 3)
    assert widget.run() is not None
    assert widget.status.text() == "Running on 'slide' (pyramid level 2 of 4, 100×151)…"
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert ("Ran on pyramid level 2 of 4, 100×151 (the finest level at most 160 px long); the result layers "
            "are at its resolution.") in widget.last_message
    peaks, prms, instances = (viewer.layers[f"slide {kind}"] for kind in ("peaks", "PRMs", "instances"))
    assert len(peaks.data) == 3, widget.last_message
    assert instances.data.shape == (100, 151) and prms.data.shape == (3, 100, 151)
    for layer in (peaks, instances):
        np.testing.assert_allclose(layer.scale, LEVEL_SCALE)
        np.testing.assert_allclose(layer.translate, LEVEL_TRANSLATE)
    np.testing.assert_allclose(prms.scale, [1.0, *LEVEL_SCALE])
    np.testing.assert_allclose(prms.translate, [0.0, *LEVEL_TRANSLATE])
    # the run's maps are of level 2: another limit (another level) does not re-threshold them
    assert widget.can_rethreshold()
    monkeypatch.setattr(layer_module, "MAX_RUN_SIDE", 302)
    assert not widget.can_rethreshold()
    monkeypatch.setattr(layer_module, "MAX_RUN_SIDE", 160)
    assert widget.can_rethreshold()

    # the same pixels as a single-scale layer placed where level 2 lies give the same layers
    viewer.add_image(small_cat, name="level", scale=LEVEL_SCALE, translate=LEVEL_TRANSLATE)
    widget.image.value = viewer.layers["level"]
    run_and_wait(widget, qtbot)
    reference = viewer.layers["level instances"]
    np.testing.assert_array_equal(instances.data, reference.data)
    np.testing.assert_allclose(viewer.layers["level peaks"].data, peaks.data)
    crm, reference_crm = (next(layer for layer in viewer.layers if layer.name.startswith(f"{name} CRM "))
                          for name in ("slide", "level"))
    np.testing.assert_allclose(crm.scale, reference_crm.scale)
    np.testing.assert_allclose(crm.translate, reference_crm.translate)

    # a world point lies on the same pixel of the cat in the image (level 0) and the labels
    label = int(instances.data.max())
    assert label > 0
    ys, xs = np.nonzero(instances.data == label)
    for y, x in zip(ys[::7], xs[::7]):
        for corner in ((-0.49, -0.49), (0.0, 0.0), (0.49, 0.49)):  # anywhere in the labels' pixel
            world = instances.data_to_world((y + corner[0], x + corner[1]))
            assert instances.get_value(instances.world_to_data(world)) == label
            y0, x0 = np.round(image.world_to_data(world)).astype(int)
            assert (y0 // 4, x0 // 4) == (y, x)  # the block of level 0 that the pixel spans
            np.testing.assert_array_equal(image.data[0][y0, x0], small_cat[y, x])

    # Export writes level 2, its pixel size the labels layer's
    export = ExportWidget(viewer)
    export._layer.value = instances
    assert export.export(tmp_path, formats=["tiff"]), export._status.value
    (reopened,) = viewer.open(str(tmp_path / "slide_labels.tif"), plugin="napari-prm")
    np.testing.assert_array_equal(reopened.data, instances.data)
    np.testing.assert_allclose(reopened.scale, LEVEL_SCALE)
    np.testing.assert_allclose(reopened.translate, LEVEL_TRANSLATE)

    # Learn from corrections reads the image at the labels' level; labels of no level's size: refused
    (read, labels, _, _), = layer_planes(viewer, instances)
    np.testing.assert_array_equal(read(), small_cat)
    np.testing.assert_array_equal(labels, instances.data)
    painted = viewer.add_labels(np.zeros((400, 604), np.uint16), name="slide - Labels")
    painted.data[:40, :40] = 1
    (read, _, _, _), = layer_planes(viewer, painted)
    assert read().shape == (400, 604, 3)
    odd = viewer.add_labels(np.ones((90, 90), np.uint16), name="odd", metadata={"image_layer": "slide"})
    with pytest.raises(ValueError, match=r"'odd' is 90×90 pixels; no level of its multiscale image 'slide'"):
        layer_planes(viewer, odd)


def test_a_point_added_on_a_slide_gets_the_instance_where_it_was_put(slide, qtbot, prm_config, tiny_checkpoint,
                                                                     small_cat):
    viewer = slide
    image = viewer.layers["slide"]
    candidates = np.zeros(small_cat.shape[:2], np.uint16)  # at level 2's size, where it lies
    candidates[10:50, 10:60] = 1
    candidates[55:95, 80:140] = 2
    viewer.add_labels(candidates, name="candidates", scale=LEVEL_SCALE, translate=LEVEL_TRANSLATE)
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = viewer.layers["candidates"]
    widget.peak_threshold.value = peak_threshold_for(small_cat, tiny_checkpoint, 2)
    run_and_wait(widget, qtbot)
    peaks, instances = viewer.layers["slide peaks"], viewer.layers["slide instances"]
    count = len(peaks.data)
    widget.correction.class_choice.value = "dog"
    # a click on candidate 2, at level 0's pixel (300, 440): level 2's (75, 110)
    world = image.data_to_world((300.0, 440.0))
    candidates_layer = viewer.layers["candidates"]
    assert candidates_layer.get_value(candidates_layer.world_to_data(world)) == 2
    peaks.add([peaks.world_to_data(world)])
    qtbot.waitUntil(lambda: not widget.running and len(peaks.data) == count + 1
                    and peaks.features["label"].iloc[-1] > 0, timeout=WAIT_MS)
    np.testing.assert_allclose(peaks.data[-1], [(300 - 1.5) / 4, (440 - 1.5) / 4])
    label = int(peaks.features["label"].iloc[-1])
    assert np.array_equal(instances.data == label, candidates == 2)
    assert instances.get_value(instances.world_to_data(world)) == label


def test_labels_of_a_levels_size_go_with_the_pyramid_and_a_prediction_of_another_size_is_refused(
        slide, qtbot, prm_config, tiny_checkpoint, small_cat):
    from napari_prm import load_model, predict
    from napari_prm._widgets.layers import image_layer_of

    viewer = slide
    image = viewer.layers["slide"]
    assert image_layer_of(viewer, viewer.add_labels(np.zeros((50, 76), np.uint16), name="Labels")) is image
    assert image_layer_of(viewer, viewer.add_labels(np.zeros((60, 76), np.uint16), name="other")) is None
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    model = load_model(tiny_checkpoint)
    whole = predict(pyramid(small_cat)[1], model, proposals=None)  # level 1: not the level a run reads
    with pytest.raises(ValueError, match=r"level 2 \(100×151\) a run reads .* of a 200×302 image: predict on "
                                         r"image_layer.data\[2\]"):
        widget.show_prediction(image, whole, model)
    layers = widget.show_prediction(image, predict(small_cat, model, proposals=None), model)
    np.testing.assert_allclose(layers["instances"].scale, LEVEL_SCALE)
    np.testing.assert_allclose(layers["instances"].translate, LEVEL_TRANSLATE)


def test_proposals_of_level_0s_size_are_refused_with_the_level_run(slide, qtbot, prm_config, tiny_checkpoint):
    viewer = slide
    viewer.add_labels(np.ones((400, 604), np.uint16), name="big candidates")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.image.value = viewer.layers["slide"]
    widget.proposals.value = viewer.layers["big candidates"]
    assert widget.run() is None
    assert widget.last_message == (
        "Cannot run on 'slide': the proposals 'big candidates' are 400×604 pixels, and a run of this pyramid "
        "reads its level 2 (100×151); give proposals of that size, or another proposals source.")
    assert "slide peaks" not in viewer.layers
