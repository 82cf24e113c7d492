"""Alternative masks of an instance: the other proposals its PRM fits, larger around the
chosen mask or smaller inside it, for a user to swap in when retrieval took a part."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_prm
from napari_prm import build_model
from napari_prm.masks import mask_iou
from napari_prm.retrieval import retrieve_instances


def box(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows[0]: rows[1], cols[0]: cols[1]] = True
    return mask


@pytest.fixture
def part_of_an_object():
    """A 40x40 object whose PRM covers a 10x10 part of it (retrieval picks the part), and
    proposals: the part, the object, a near copy of the object, a region around the object, a
    sub-part, a neighbour that only touches the part, a region far away, and the part with a
    little more."""
    shape = (80, 80)
    prm = np.zeros(shape, np.float32)
    prm[20:30, 20:30] = 1.0
    prm /= prm.sum()
    proposals = np.stack([
        box(shape, (20, 30), (20, 30)),  # 0 the part: chosen
        box(shape, (20, 60), (20, 60)),  # 1 the object
        box(shape, (20, 60), (20, 58)),  # 2 near copy of the object (IoU .95 with 1)
        box(shape, (10, 70), (10, 70)),  # 3 around the object
        box(shape, (23, 27), (23, 27)),  # 4 a sub-part inside the part
        box(shape, (25, 45), (25, 45)),  # 5 overlaps the part by a quarter of it: not nested
        box(shape, (60, 78), (60, 78)),  # 6 far away
        box(shape, (20, 30), (20, 36)),  # 7 the part and a bit: 1.6x larger, IoU .62 with it
    ])
    return prm, proposals


def test_alternatives_are_the_nesting_proposals_best_first(part_of_an_object):
    prm, proposals = part_of_an_object
    crms = np.ones((1, *prm.shape), np.float32)
    plain, = retrieve_instances(prm[None], np.array([0]), crms, proposals, nms_threshold=None)
    assert plain.proposal == 0 and plain.alternatives == []
    instance, = retrieve_instances(prm[None], np.array([0]), crms, proposals, nms_threshold=None, alternatives=5)
    assert instance.proposal == 0
    # by score: the object (its contour holds the part's edge), the region around it, the
    # sub-part; the near copy of the object is left out (IoU .95 with an earlier alternative),
    # the part with a little more too (IoU .62 with the part itself, though it nests and
    # holds the PRM), and neither the neighbour nor the far region nests with the part
    assert instance.alternatives == [1, 3, 4]
    two, = retrieve_instances(prm[None], np.array([0]), crms, proposals, nms_threshold=None, alternatives=2)
    assert two.alternatives == [1, 3]
    chosen = proposals[instance.proposal]
    for j in instance.alternatives:
        inter = (proposals[j] & chosen).sum()
        assert inter >= 0.8 * min(proposals[j].sum(), chosen.sum())
        assert max(proposals[j].sum(), chosen.sum()) >= 1.5 * min(proposals[j].sum(), chosen.sum())
    with pytest.raises(ValueError, match=r"alternatives: expected an integer >= 0, got -1"):
        retrieve_instances(prm[None], np.array([0]), crms, proposals, alternatives=-1)


def test_alternatives_ignore_contain_but_keep_size_limits(part_of_an_object):
    prm, proposals = part_of_an_object
    crms = np.ones((1, *prm.shape), np.float32)
    # a size floor of 200 px leaves the object as the best choice
    floor = 200 / prm.size
    instance, = retrieve_instances(prm[None], np.array([0]), crms, proposals, nms_threshold=None,
                                   size_limits=(floor, 0.6), alternatives=5, contain="mass")
    assert instance.proposal == 1
    # its alternatives: the region around it, then the neighbour (inside the object, 4x
    # smaller); the part, the sub-part and the part with a little more are below the floor, and
    # the near copy is not 1.5x smaller. Nesting is all they need: contain='mass' restricts the choice, not them
    assert instance.alternatives == [3, 5]
    assert not proposals[5][np.unravel_index(prm.argmax(), prm.shape)]
    # a ceiling of half the image takes the region around the object out
    instance, = retrieve_instances(prm[None], np.array([0]), crms, proposals, nms_threshold=None,
                                   size_limits=(floor, 0.5), alternatives=5, contain="mass")
    assert instance.alternatives == [5]


def test_predict_gives_alternatives_indexing_the_predictors_proposals(shapes_scenes):
    torch.manual_seed(0)
    model = build_model("tiny", ["a", "b"], pretrained=False, input_size=(96, 96))
    with torch.no_grad():
        model.network.fcn.classifier.weight.normal_(std=0.5)
    image = shapes_scenes[0][0]
    predictor = napari_prm.PRMPredictor(model, class_threshold=-1e9, alternatives=3)
    predictor.set_image(image)
    prediction = predictor.predict()
    stack = np.asarray(predictor.proposals())
    assert prediction.instances
    assert any(instance.alternatives for instance in prediction.instances)
    for instance in prediction.instances:
        assert len(instance.alternatives) <= 3
        assert instance.proposal not in instance.alternatives
        np.testing.assert_array_equal(instance.mask, stack[instance.proposal])
        masks = predictor.alternative_masks(instance)
        assert len(masks) == len(instance.alternatives)
        for mask, j in zip(masks, instance.alternatives):
            np.testing.assert_array_equal(mask, stack[j])
        if instance.alternatives:
            overlaps = mask_iou(stack[instance.alternatives], stack[instance.alternatives])
            assert np.all(overlaps[~np.eye(len(instance.alternatives), dtype=bool)] < 0.5)
    # the same instances as without alternatives
    without = predictor.predict(alternatives=0)
    assert [i.proposal for i in without.instances] == [i.proposal for i in prediction.instances]
    assert all(i.alternatives == [] for i in without.instances)
    with_many = next(i for i in prediction.instances if i.alternatives)
    with_many.alternatives = [len(stack)]
    with pytest.raises(ValueError, match=rf"do not index this image's {len(stack)} proposals"):
        predictor.alternative_masks(with_many)
    with pytest.raises(ValueError, match=r"alternatives: expected an integer in \[0, 20\], got 21"):
        predictor.predict(alternatives=21)


@pytest.mark.parametrize("source", ["prm", "default+prm"])
def test_alternative_masks_of_proposals_made_from_the_prms(shapes_scenes, source):
    """PRM-guided proposals are made from a prediction's PRMs: the alternatives index the stack
    made from the prediction's, which alternative_masks makes again from it (it raised, asking
    for prms, though the instance had alternatives)."""
    torch.manual_seed(0)
    model = build_model("tiny", ["a", "b"], pretrained=False, input_size=(96, 96))
    with torch.no_grad():
        model.network.fcn.classifier.weight.normal_(std=0.5)
    predictor = napari_prm.PRMPredictor(model, class_threshold=-1e9, alternatives=3, proposals=source)
    predictor.set_image(shapes_scenes[0][0])
    prediction = predictor.predict()
    stack = predictor.proposals(prediction.prms, prediction)
    with_alternatives = [i for i in prediction.instances if i.alternatives]
    assert with_alternatives
    for instance in with_alternatives:
        np.testing.assert_array_equal(instance.mask, stack[instance.proposal])
        masks = predictor.alternative_masks(instance, prediction)
        assert len(masks) == len(instance.alternatives)
        for mask, j in zip(masks, instance.alternatives):
            np.testing.assert_array_equal(mask, stack[j])
    with pytest.raises(ValueError, match=r"made from the prediction's PRMs: pass the prediction"):
        predictor.alternative_masks(with_alternatives[0])


def test_alternatives_match_their_definition():
    """300 nested near-copies of one region (proposals often hold many): the alternatives are
    those of the definition, counted on dense masks (the seconds of the old and new loops are
    in the commit that made it one product per mask taken, not in a test)."""
    from napari_prm.retrieval import _alternatives, _sparse_masks

    rng = np.random.default_rng(0)
    shape = (448, 448)
    proposals = np.zeros((300, *shape), bool)
    for i in range(300):
        side, dy, dx = int(rng.integers(150, 160)), int(rng.integers(0, 20)), int(rng.integers(0, 20))
        proposals[i, 100 + dy: 100 + dy + side, 100 + dx: 100 + dx + side] = True
    proposals[0] = box(shape, (150, 170), (150, 170))
    proposals[1] = box(shape, (40, 400), (40, 400))  # a larger region, IoU < .5 with the near-copies
    inside, _ = _sparse_masks(proposals, 1)
    areas = np.diff(inside.indptr)
    scores = rng.random(300)
    flat = proposals.reshape(300, -1).astype(np.float64)
    overlaps = flat @ flat.T

    def expected(chosen, count):
        area = areas.astype(np.float64)
        iou = overlaps / (area[:, None] + area[None] - overlaps)
        picked = []
        for j in np.argsort(-scores, kind="stable"):
            nests = ((area[j] >= 1.5 * area[chosen] and overlaps[j, chosen] >= 0.8 * area[chosen])
                     or (area[chosen] >= 1.5 * area[j] and overlaps[j, chosen] >= 0.8 * area[j] > 0))
            if nests and len(picked) < count and all(iou[j, k] < 0.5 for k in [chosen, *picked]):
                picked.append(int(j))
        return picked

    for chosen in (0, 1, 5):
        for count in (0, 1, 3, 20):
            assert _alternatives(scores, chosen, inside, areas, count) == expected(chosen, count)
    assert len(_alternatives(scores, 0, inside, areas, 3)) == 2  # the region, one near-copy
