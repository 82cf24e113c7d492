"""The result layers of a stack in µm (ZYX, TYX) and of a 2-D image beside one keep the image's world:
scale, translate, units and axis names, without napari's "Inconsistent units" (real runs, tiny model)."""

import contextlib
import warnings

import numpy as np
import pytest
import tifffile

from conftest import shapes_scene
from test_widget_predict import WAIT_MS, open_predict, peak_threshold_for, run_and_wait

ZYX = {"scale": (2.0, 0.5, 0.5), "translate": (4.0, 10.0, -4.0), "units": ("µm", "µm", "µm"),
       "axis_labels": ("z", "y", "x")}
TYX = {"scale": (3.0, 0.5, 0.5), "translate": (6.0, 10.0, -4.0), "units": ("s", "µm", "µm"),
       "axis_labels": ("t", "y", "x")}
PINT = {"µm": "micrometer", "s": "second"}


@pytest.fixture(scope="module")
def scenes():
    """Three frames of `shapes_scene` (RGB), their label images and the disc's centre on each."""
    made = [shapes_scene(seed) for seed in range(3)]
    return (np.stack([m[0] for m in made]), np.stack([m[1] for m in made]).astype(np.uint16),
            np.array([m[3][0] for m in made]))


def units_of(layer):
    return [str(unit) for unit in layer.units]


@contextlib.contextmanager
def napari_warned():
    """The warnings napari and napari-prm gave in the block: Python's (not the deprecations of their
    dependencies) and napari's notifications of a warning or error, such as "Inconsistent units
    across layers" (a notification, not a Python warning)."""
    from napari.utils.notifications import notification_manager

    said, start = [], len(notification_manager.records)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        yield said
    said += [str(w.message) for w in record if not issubclass(w.category, DeprecationWarning)]
    said += [str(n.message) for n in notification_manager.records[start:]
             if str(n.severity).lower() in ("warning", "error")]


@pytest.mark.parametrize("world", [ZYX, TYX], ids=["zyx-um", "tyx-s-um"])
@pytest.mark.parametrize("planes", ["current plane", "all planes"])
def test_a_stack_in_micrometres_keeps_its_world_in_every_result_layer(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, scenes, world, planes, tmp_path):
    """A stack whose plane spacing (2 µm, 3 s) is not its pixel size (0.5 µm), moved off the origin:
    the peaks, instances and PRMs layers (and the dims) carry its scale, translate, units and axis
    names, on a run of one plane and of all planes, and after a point added by hand on plane 2; the
    point sits on its object in the world. The exported label TIFF reopens in place, and is an ImageJ
    stack with the spacing (frame interval) Fiji reads: it gave Fiji no z spacing before."""
    from napari_prm._widgets.export import ExportWidget

    frames, candidates, discs = scenes
    viewer = make_napari_viewer()
    image = viewer.add_image(frames, name="t", rgb=True, **world)
    viewer.add_labels(candidates, name="candidates", **world)
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = viewer.layers["candidates"]
    widget.planes.value = planes
    widget.peak_threshold.value = peak_threshold_for(frames[0], tiny_checkpoint, 2)
    widget.class_threshold.value = -1e4
    viewer.dims.set_current_step(0, 2)  # plane 2 (before the PRMs put their peak axis in front)
    with napari_warned() as said:
        run_and_wait(widget, qtbot)
    assert not said
    peaks, instances, prms = (viewer.layers[f"t {kind}"] for kind in ("peaks", "instances", "PRMs"))
    assert len(peaks.data), widget.last_message
    units = [PINT[unit] for unit in world["units"]]
    for layer in (peaks, instances):
        np.testing.assert_allclose(layer.scale, world["scale"])
        np.testing.assert_allclose(layer.translate, world["translate"])
        assert units_of(layer) == units and layer.axis_labels == world["axis_labels"]
    np.testing.assert_allclose(prms.scale, (1.0, *world["scale"]))
    np.testing.assert_allclose(prms.translate, (0.0, *world["translate"]))
    assert units_of(prms) == ["pixel", *units] and prms.axis_labels == ("peak", *world["axis_labels"])
    assert viewer.dims.axis_labels == ("peak", *world["axis_labels"])
    assert [str(unit) for unit in viewer.layers.extent.units] == ["pixel", *units]  # None: napari warns
    run_planes = {0, 1, 2} if planes == "all planes" else {2}
    assert set(np.round(peaks.data[:, 0]).astype(int)) <= run_planes

    # a point added by hand on the disc of plane 2: its instance is that disc, where the image has it
    widget.correction.class_choice.value = "dog"
    cy, cx = discs[2]
    with napari_warned() as said:
        peaks.add([[2.0, cy, cx]])
        qtbot.waitUntil(lambda: not widget.running and peaks.features["label"].iloc[-1] > 0, timeout=WAIT_MS)
    assert not said
    label = int(peaks.features["label"].iloc[-1])
    np.testing.assert_array_equal(instances.data[2] == label, candidates[2] == 1)
    z0, y0, x0 = world["translate"]
    dz, dy, dx = world["scale"]
    expected = [z0 + 2 * dz, y0 + cy * dy, x0 + cx * dx]  # e.g. z 8 µm, y 10 + 0.5 cy µm
    np.testing.assert_allclose(peaks.data_to_world(peaks.data[-1]), expected)
    np.testing.assert_allclose(image.data_to_world([2, cy, cx]), expected)
    np.testing.assert_allclose(instances.data_to_world([2, cy, cx]), expected)
    row = len(peaks.data) - 1  # its PRM: slice `row` of the PRMs layer, on plane 2 only
    np.testing.assert_allclose(prms.data_to_world([row, 2, cy, cx])[1:], expected)
    assert np.asarray(prms.data[row])[2].sum() == pytest.approx(1.0, rel=1e-4)
    assert not np.asarray(prms.data[row])[[0, 1]].any()
    assert units_of(prms) == ["pixel", *units] and viewer.dims.axis_labels == ("peak", *world["axis_labels"])
    split = widget.correction.draw_split_line()  # the correction panel's Shapes layer, over the instances
    np.testing.assert_allclose(split.scale, world["scale"])
    np.testing.assert_allclose(split.translate, world["translate"])
    assert units_of(split) == units and split.axis_labels == world["axis_labels"]
    assert [str(unit) for unit in viewer.layers.extent.units] == ["pixel", *units]

    export = ExportWidget(viewer)
    export._layer.value = instances
    assert export.export(tmp_path, formats=["tiff"]), export._status.value
    (reopened,) = viewer.open(str(tmp_path / "t_labels.tif"), plugin="napari-prm")
    np.testing.assert_array_equal(reopened.data, instances.data)
    np.testing.assert_allclose(reopened.scale, world["scale"])
    np.testing.assert_allclose(reopened.translate, world["translate"])
    assert units_of(reopened) == units
    with tifffile.TiffFile(tmp_path / "t_labels.tif") as tif:  # Fiji's voxel depth, or frame interval
        axes, key = ("ZYX", "spacing") if world is ZYX else ("TYX", "finterval")
        assert tif.is_imagej and tif.series[0].axes == axes and tif.imagej_metadata["unit"] == "um"
        assert tif.imagej_metadata[key] == pytest.approx(world["scale"][0])
        assert tif.pages.first.get_resolution() == pytest.approx((2.0, 2.0))  # pixels per µm


def run_on_flat(viewer, qtbot, tiny_checkpoint, frame):
    """Open ``frame`` as the 2-D µm image "flat" (0.5 µm pixels, moved off the origin) and run on it
    without proposals, at the threshold that finds 3 peaks; return the widget, the image layer and
    the warnings napari gave during the run."""
    flat = viewer.add_image(frame, name="flat", scale=(0.5, 0.5), translate=(10.0, -4.0),
                            units=("µm", "µm"), axis_labels=("y", "x"))
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.image.value = flat
    widget.proposals.value = None
    widget.peak_threshold.value = peak_threshold_for(frame, tiny_checkpoint, 3)
    with napari_warned() as said:
        run_and_wait(widget, qtbot)
    assert len(viewer.layers["flat peaks"].data) == 3, widget.last_message
    return widget, flat, said


def test_the_prms_of_a_2d_image_beside_a_micrometre_stack_keep_the_units(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, scenes):
    """napari lines up axes from the last: the PRMs layer (peaks, y, x) of a 2-D µm image put its peak
    axis, in 'pixel', on the z axis of a µm stack open beside it. napari found the units inconsistent
    (its warning; extent units None: scale bar in pixels) and named the stack's z slider 'peak'. The
    peak axis now takes the stack's unit, spacing and origin there, and the slider is 'z / peak';
    deleting a point (the correction panel redoes the PRMs layer) keeps it so."""
    frames, _, _ = scenes
    viewer = make_napari_viewer()
    viewer.add_image(frames[..., 0], name="stack", **ZYX)
    widget, flat, said = run_on_flat(viewer, qtbot, tiny_checkpoint, frames[0])
    assert not said
    peaks, prms = viewer.layers["flat peaks"], viewer.layers["flat PRMs"]
    for layer in (peaks, viewer.layers["flat instances"]):
        np.testing.assert_allclose(layer.scale, [0.5, 0.5])
        np.testing.assert_allclose(layer.translate, [10.0, -4.0])
        assert units_of(layer) == ["micrometer"] * 2 and layer.axis_labels == ("y", "x")
    for _ in range(2):  # the run's layer, then the one the correction panel redoes
        np.testing.assert_allclose(prms.scale, [2.0, 0.5, 0.5])  # a peak per z-plane of the stack
        np.testing.assert_allclose(prms.translate, [4.0, 10.0, -4.0])
        assert units_of(prms) == ["micrometer"] * 3
        assert prms.axis_labels == ("z / peak", "y", "x")
        assert [str(unit) for unit in viewer.layers.extent.units] == ["micrometer"] * 3
        assert viewer.dims.axis_labels == ("z / peak", "y", "x")
        # peak k shows where the stack shows plane k; each point stays on its own pixels
        np.testing.assert_allclose(prms.data_to_world([1, 20, 30]), [6.0, 20.0, 11.0])
        np.testing.assert_allclose(peaks.data_to_world(peaks.data[0]), flat.data_to_world(peaks.data[0]))
        peaks.selected_data = {0}
        peaks.remove_selected()
        qtbot.wait(50)
        prms = viewer.layers["flat PRMs"]
        assert prms.data.shape[0] == len(peaks.data)


def test_the_prms_peak_axis_follows_a_stack_opened_or_removed_after_the_run(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, scenes):
    """Run on a 2-D µm image first, then open a µm stack: the PRMs layer kept its 'pixel' peak axis
    until the next Run (napari: "Inconsistent units", extent units None, the z slider named 'peak').
    It now follows the viewer's layers: the stack opened, its spacing changed, the stack removed
    (the plain peak axis again); the widget taken out of its dock stops following."""
    frames, _, _ = scenes
    viewer = make_napari_viewer()
    widget, _, _ = run_on_flat(viewer, qtbot, tiny_checkpoint, frames[0])
    prms = viewer.layers["flat PRMs"]

    def assert_plain():
        np.testing.assert_allclose(prms.scale, [1.0, 0.5, 0.5])
        np.testing.assert_allclose(prms.translate, [0.0, 10.0, -4.0])
        assert units_of(prms) == ["pixel", "micrometer", "micrometer"] and prms.axis_labels == ("peak", "y", "x")
        assert [str(unit) for unit in viewer.layers.extent.units] == ["pixel", "micrometer", "micrometer"]
        assert viewer.dims.axis_labels == ("peak", "y", "x")

    def assert_on_stack(spacing):
        np.testing.assert_allclose(prms.scale, [spacing, 0.5, 0.5])  # a peak per z-plane of the stack
        np.testing.assert_allclose(prms.translate, [4.0, 10.0, -4.0])
        assert units_of(prms) == ["micrometer"] * 3 and prms.axis_labels == ("z / peak", "y", "x")
        assert [str(unit) for unit in viewer.layers.extent.units] == ["micrometer"] * 3  # None: inconsistent
        assert viewer.dims.axis_labels == ("z", "y", "x")  # napari names it after the newest layer: the stack

    assert_plain()
    stack = viewer.add_image(frames[..., 0], name="stack", **ZYX)
    assert_on_stack(2.0)
    stack.scale = (3.0, 0.5, 0.5)
    assert_on_stack(3.0)
    viewer.layers.remove(stack)
    assert viewer.layers["flat PRMs"] is prms
    assert_plain()

    callbacks = len(viewer.layers.events.inserted.callbacks)
    viewer.window.remove_dock_widget(widget)  # out of its dock: it lets go of the viewer's events
    assert len(viewer.layers.events.inserted.callbacks) == callbacks - 1
    viewer.add_image(frames[..., 0], name="stack", **ZYX)
    np.testing.assert_allclose(prms.scale, [1.0, 0.5, 0.5])


def test_two_prms_layers_let_go_of_the_stack_together(make_napari_viewer, scenes):
    """The PRMs layers of two 2-D µm images both fitted to a µm stack: removed, the stack takes their
    fitted axis with it (each of them counted the other as a layer beside it, and kept its µm)."""
    from napari_prm._widgets.layers import PeakAxisFollower, mark, prm_world_kwargs

    frames, _, _ = scenes
    viewer = make_napari_viewer()
    stack = viewer.add_image(frames[..., 0], name="stack", **ZYX)
    prms = []
    for name in ("a", "b"):
        image = viewer.add_image(frames[0, ..., 0], name=name, scale=(0.5, 0.5), units=("µm", "µm"))
        prms.append(viewer.add_image(np.zeros((2, *frames.shape[1:3]), np.float32), name=f"{name} PRMs",
                                     metadata=mark("prms", image), **prm_world_kwargs(viewer, image)))
    follower = PeakAxisFollower(viewer)
    follower.connect()
    assert [units_of(layer)[0] for layer in prms] == ["micrometer"] * 2
    assert [layer.scale[0] for layer in prms] == [2.0, 2.0]
    viewer.layers.remove(stack)
    assert [units_of(layer)[0] for layer in prms] == ["pixel"] * 2
    assert [layer.scale[0] for layer in prms] == [1.0, 1.0]
    assert [layer.axis_labels[0] for layer in prms] == ["peak"] * 2
    follower.disconnect()


def test_result_layers_follow_a_pixel_size_and_position_set_on_the_image_after_the_run(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, scenes):
    """A pixel size (µm) and stage position set on the image after a run (left out when it was
    opened, fixed in its layer properties): only the PRMs layer followed it; the peaks, instances, CRM
    and split-line layers stayed at the old scale and place, so the instances lay off their objects
    (at half their size here) and a point put on the disc in the image landed on another pixel of
    the peaks layer and was retrieved there. They now follow the image; the corrected copy a run
    keeps too."""
    frames, candidates, discs = scenes
    viewer = make_napari_viewer()
    image = viewer.add_image(frames[0], name="f", rgb=True)
    viewer.add_labels(candidates[0], name="candidates")
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = viewer.layers["candidates"]
    widget.peak_threshold.value = peak_threshold_for(frames[0], tiny_checkpoint, 2)
    widget.class_threshold.value = -1e4
    widget.add_crms.value = True
    run_and_wait(widget, qtbot)
    instances, peaks = viewer.layers["f instances"], viewer.layers["f peaks"]
    instances.data_setitem(np.nonzero(candidates[0] == 2), 7)  # a correction: a run keeps a copy of it
    run_and_wait(widget, qtbot)
    kept = viewer.layers["f instances (corrected)"]
    split = widget.correction.draw_split_line()
    crms = [layer for layer in viewer.layers if layer.name.startswith("f CRM ")]
    assert crms, widget.last_message
    crm_before = [(layer.data_to_world([0, 0]), layer.data_to_world([1, 1])) for layer in crms]

    world = {"scale": (0.5, 0.25), "translate": (10.0, -4.0), "units": ("µm", "µm")}
    with napari_warned() as said:
        for name, value in world.items():
            setattr(image, name, value)
    assert not said
    for layer in (peaks, instances, kept, split):
        np.testing.assert_allclose(layer.scale, world["scale"], err_msg=layer.name)
        np.testing.assert_allclose(layer.translate, world["translate"], err_msg=layer.name)
        assert units_of(layer) == ["micrometer"] * 2, layer.name
    np.testing.assert_allclose(viewer.layers["f PRMs"].scale[1:], world["scale"])
    for layer, (origin, step) in zip(crms, crm_before):  # each CRM cell over the same image pixels
        np.testing.assert_allclose(layer.data_to_world([0, 0]), image.data_to_world(origin))
        np.testing.assert_allclose(layer.data_to_world([1, 1]), image.data_to_world(step))
        assert units_of(layer) == ["micrometer"] * 2

    # a point put on the disc as the image shows it now: its instance is the disc
    widget.correction.class_choice.value = "dog"
    disc = image.data_to_world(discs[0])
    peaks.add([peaks.world_to_data(disc)])
    qtbot.waitUntil(lambda: not widget.running and peaks.features["label"].iloc[-1] > 0, timeout=WAIT_MS)
    np.testing.assert_allclose(peaks.data[-1], discs[0])
    label = int(peaks.features["label"].iloc[-1])
    np.testing.assert_array_equal(instances.data == label, candidates[0] == 1)


def test_next_instance_by_score_looks_at_it_in_3d_and_in_a_transposed_view(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, scenes):
    """*Next instance by score* (N) centres the camera on the instance: it set the camera's centre to
    the instance's (y, x) whatever the axes shown. In 3-D the centre's z was left at 0 (this stack
    lies at z 4-8 µm: the view turned about a point off the stack), and in a transposed view (z, x
    shown, y on the slider) its y went to the z axis and the slider stayed where it was, so the
    instance was not in view. It now looks at the instance along the axes shown, its other axes'
    sliders on it."""
    frames, candidates, _ = scenes
    viewer = make_napari_viewer()
    viewer.add_image(frames, name="t", rgb=True, **ZYX)
    viewer.add_labels(candidates, name="candidates", **ZYX)
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = viewer.layers["candidates"]
    widget.planes.value = "all planes"
    widget.peak_threshold.value = peak_threshold_for(frames[0], tiny_checkpoint, 2)
    widget.class_threshold.value = -1e4
    run_and_wait(widget, qtbot)
    instances = viewer.layers["t instances"]
    assert viewer.dims.ndim == 4  # the PRMs' peak axis in front of z, y, x

    def centre_of(label):
        where = np.argwhere(np.asarray(instances.data) == label)
        return instances.data_to_world((where.min(axis=0) + where.max(axis=0)) / 2)

    viewer.dims.ndisplay = 3
    label = widget.correction.select_next_by_score()
    assert label is not None, widget.last_message
    np.testing.assert_allclose(viewer.camera.center, centre_of(label))  # z, y, x

    viewer.dims.ndisplay = 2
    viewer.dims.order = (0, 2, 1, 3)  # z and x shown, y on a slider
    label = widget.correction.select_next_by_score()
    z, y, x = centre_of(label)
    np.testing.assert_allclose(viewer.camera.center[-2:], (z, x))
    assert viewer.dims.point[2] == pytest.approx(y, abs=ZYX["scale"][1])  # the y slider at the instance
    pixel = tuple(np.round(instances.world_to_data([z, viewer.dims.point[2], x])).astype(int))
    assert instances.data[pixel] == label  # under the camera's centre, on the plane the slider shows


def test_a_run_of_the_current_plane_in_a_3d_view_says_which_plane_it_ran_on(
        make_napari_viewer, qtbot, prm_config, tiny_checkpoint, scenes):
    """In a 3-D view every plane of the stack is shown, and no slider says which is current: a run of
    the current plane ran on the plane the slider was last on and said only "2 peaks, 2 instances",
    as if of the stack, while the other planes got nothing. It now names the plane and the way to
    run on all."""
    frames, candidates, _ = scenes
    viewer = make_napari_viewer()
    viewer.add_image(frames, name="t", rgb=True, **ZYX)
    viewer.add_labels(candidates, name="candidates", **ZYX)
    widget = open_predict(viewer, qtbot, tiny_checkpoint)
    widget.proposals.value = viewer.layers["candidates"]
    widget.peak_threshold.value = peak_threshold_for(frames[2], tiny_checkpoint, 2)
    widget.class_threshold.value = -1e4
    viewer.dims.set_current_step(0, 2)
    viewer.dims.ndisplay = 3
    run_and_wait(widget, qtbot)
    instances = np.asarray(viewer.layers["t instances"].data)
    assert instances[2].any() and not instances[[0, 1]].any()
    assert "Ran on plane 2 only" in widget.last_message and "'all planes'" in widget.last_message
    viewer.dims.ndisplay = 2  # shown plane by plane: the slider says which
    run_and_wait(widget, qtbot)
    assert "Ran on plane" not in widget.last_message, widget.last_message
