"""Instance retrieval: proposal scoring, size limits, NMS and label images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_prm.proposals import load_proposals
from napari_prm.retrieval import Instance, instance_confidence, instances_to_labels, retrieve_instances


def box(shape, rows, cols) -> np.ndarray:
    """Bool mask with the half-open block rows[0]:rows[1], cols[0]:cols[1] set."""
    mask = np.zeros(shape, bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def flat_crms(n_classes: int, shape) -> np.ndarray:
    """Constant CRMs: their background mask is empty, so no penalty applies."""
    return np.ones((n_classes,) + tuple(shape), np.float32)


# ------------------------------------------------------------------ scoring


def test_score_is_balance_plus_contour_minus_background_penalty():
    shape = (12, 12)
    prm = np.zeros(shape, np.float32)
    prm[3, 3], prm[8, 8] = 1.0, 0.5
    crm = np.zeros(shape, np.float32)
    crm[:6] = 1.0  # min 0, mean 0.5: background is rows 6..11
    small = box(shape, (2, 5), (2, 5))  # holds (3, 3) in its eroded interior
    large = box(shape, (2, 10), (2, 10))  # holds both, 4 x 8 = 32 background pixels
    proposals = np.stack([small, large])

    found = retrieve_instances(prm[None], [0], crm[None], proposals, contour_width=3)
    assert len(found) == 1
    assert found[0].mask.tolist() == large.tolist()
    assert found[0].score == pytest.approx(0.8 * 1.5 - 1e-5 * 32, rel=1e-6)

    # A heavy penalty makes the background inside the large box count.
    found = retrieve_instances(prm[None], [0], crm[None], proposals, contour_width=3, penalty=0.1)
    assert found[0].mask.tolist() == small.tolist()
    assert found[0].score == pytest.approx(0.8, rel=1e-6)
    assert found[0].peak == 0 and found[0].class_index == 0


def test_contour_band_counts_response_just_outside_the_mask():
    shape = (12, 12)
    prm = np.zeros(shape, np.float32)
    prm[3, 5] = 1.0  # one row above the proposal
    proposal = box(shape, (4, 8), (4, 8))
    crms = flat_crms(1, shape)

    (found,) = retrieve_instances(prm[None], [0], crms, proposal[None], contour_width=3)
    assert found.score == pytest.approx(1.0)  # in the band only, not inside
    (found,) = retrieve_instances(prm[None], [0], crms, proposal[None], contour_width=1)
    assert found.score == pytest.approx(0.0)  # a 1x1 square has no band

    prm[3, 5], prm[5, 5] = 0.0, 1.0  # deep inside: eroded away, so not in the band
    (found,) = retrieve_instances(prm[None], [0], crms, proposal[None], contour_width=3)
    assert found.score == pytest.approx(0.8)
    prm[5, 5], prm[4, 5] = 0.0, 1.0  # on the inner edge: inside and in the band
    (found,) = retrieve_instances(prm[None], [0], crms, proposal[None], contour_width=3)
    assert found.score == pytest.approx(1.8)


def test_image_border_is_neutral_for_the_contour():
    shape = (10, 10)
    prm = np.zeros(shape, np.float32)
    prm[0, 0] = 1.0
    corner = box(shape, (0, 4), (0, 4))
    (found,) = retrieve_instances(prm[None], [0], flat_crms(1, shape), corner[None], contour_width=3)
    # Were the outside background, (0, 0) would be on the contour and score 1.8.
    assert found.score == pytest.approx(0.8)


def test_size_limits_lower_bound_inclusive_upper_exclusive():
    shape = (10, 10)  # 100 pixels
    prm = np.ones((1,) + shape, np.float32) / 100
    crms = flat_crms(1, shape)
    area25, area24, area4, area3 = (
        box(shape, (0, 5), (0, 5)),
        box(shape, (0, 4), (0, 6)),
        box(shape, (6, 8), (6, 8)),
        box(shape, (6, 7), (6, 9)),
    )
    limits = dict(size_limits=(0.04, 0.25), nms_threshold=None)

    (found,) = retrieve_instances(prm, [0], crms, np.stack([area25, area24, area4]), **limits)
    assert found.mask.sum() == 24
    assert retrieve_instances(prm, [0], crms, area25[None], **limits) == []
    (found,) = retrieve_instances(prm, [0], crms, area4[None], **limits)
    assert found.mask.sum() == 4
    assert retrieve_instances(prm, [0], crms, area3[None], **limits) == []


def test_only_the_first_proposal_count_proposals_are_used():
    shape = (10, 10)
    prm = np.zeros((1,) + shape, np.float32)
    prm[0, 7, 7] = 1.0
    miss, hit = box(shape, (0, 3), (0, 3)), box(shape, (6, 9), (6, 9))
    proposals = np.stack([miss, hit])
    crms = flat_crms(1, shape)
    (found,) = retrieve_instances(prm, [0], crms, proposals, proposal_count=2, contour_width=3)
    assert found.mask.tolist() == hit.tolist()
    (found,) = retrieve_instances(prm, [0], crms, proposals, proposal_count=1, contour_width=3)
    assert found.mask.tolist() == miss.tolist()
    assert found.score == 0.0


# ---------------------------------------------------------------------- NMS


def nms_case():
    """Peaks 0 and 1 pick boxes A and B (IoU exactly 0.5); peak 2 picks C apart."""
    shape = (6, 12)
    a, b, c = box(shape, (0, 6), (0, 3)), box(shape, (0, 6), (1, 4)), box(shape, (0, 6), (8, 11))
    prms = np.zeros((3,) + shape, np.float32)
    prms[0, :, 0] = 1.0 / 6  # column 0 lies in A only
    prms[1, :, 3] = 0.5 / 6  # column 3 lies in B only
    prms[2, :, 9] = 0.25 / 6
    return prms, np.array([0, 0, 1]), flat_crms(2, shape), np.stack([a, b, c])


def test_nms_drops_overlapping_instance_and_merges_its_prm():
    prms, classes, crms, proposals = nms_case()
    found = retrieve_instances(prms, classes, crms, proposals, contour_width=1, nms_threshold=0.5)
    assert [f.peak for f in found] == [0, 2]
    assert [f.score for f in found] == pytest.approx([0.8, 0.2])
    assert found[0].mask.tolist() == proposals[0].tolist()
    np.testing.assert_allclose(found[0].prm, prms[0] + prms[1])
    np.testing.assert_allclose(found[1].prm, prms[2])
    assert found[0].prm.dtype == np.float32
    prms_before = prms.copy()
    retrieve_instances(prms, classes, crms, proposals, contour_width=1)
    np.testing.assert_array_equal(prms, prms_before)  # merging never writes into the input


def test_nms_without_merging_and_threshold_above_iou():
    prms, classes, crms, proposals = nms_case()
    found = retrieve_instances(prms, classes, crms, proposals, contour_width=1, nms_threshold=0.5,
                               merge_peak_response=False)
    assert [f.peak for f in found] == [0, 2]
    np.testing.assert_allclose(found[0].prm, prms[0])
    found = retrieve_instances(prms, classes, crms, proposals, contour_width=1, nms_threshold=0.51)
    assert [f.peak for f in found] == [0, 1, 2]
    found = retrieve_instances(prms, classes, crms, proposals, contour_width=1, nms_threshold=None)
    assert [f.peak for f in found] == [0, 1, 2]


def test_duplicate_peaks_on_one_proposal_collapse_into_one_instance():
    shape = (8, 8)
    prms = np.zeros((3,) + shape, np.float32)
    prms[:, 3, 3] = [0.2, 0.6, 0.4]
    proposal = box(shape, (2, 5), (2, 5))
    found = retrieve_instances(prms, [0, 0, 0], flat_crms(1, shape), proposal[None], contour_width=3)
    assert len(found) == 1
    assert found[0].peak == 1 and found[0].score == pytest.approx(0.8 * 0.6)
    assert found[0].prm[3, 3] == pytest.approx(1.2)


def parts_case():
    """A body, an ear beside it, a patch inside it, another object, and a peak of another class.

    Peak 0 retrieves the body. Peak 1's PRM holds 0.7 on the ear and 0.3 inside the
    body, so it retrieves the ear. Peak 2 retrieves the patch inside the body. Peak 3,
    another object of class 0, puts 0.05 of its PRM in the body; peak 4 (class 1)
    puts 0.3 there but retrieves its own box.
    """
    shape = (20, 20)
    patch = box(shape, (4, 8), (4, 8))
    body = box(shape, (2, 18), (2, 11))
    ear = box(shape, (2, 8), (13, 18))
    other = box(shape, (12, 19), (13, 19))
    cup = box(shape, (9, 12), (13, 16))
    prms = np.zeros((5,) + shape, np.float32)
    prms[0, 12, 6] = 1.0
    prms[1, 4, 15], prms[1, 12, 6] = 0.7, 0.3
    prms[2, 5, 5] = 1.0
    prms[3, 15, 15], prms[3, 12, 6] = 0.95, 0.05
    prms[4, 10, 14], prms[4, 12, 6] = 0.7, 0.3
    classes = np.array([0, 0, 0, 0, 1])
    return prms, classes, flat_crms(2, shape), np.stack([patch, body, ear, other, cup])


def test_parts_of_one_object_merge_into_it():
    prms, classes, crms, proposals = parts_case()
    options = dict(contour_width=1, nms_threshold=0.3, size_limits=(0, 1))
    found = retrieve_instances(prms, classes, crms, proposals, **options)
    # each peak keeps its own proposal: the patch is inside the body, but IoU 16 / 144 < 0.3
    assert sorted(f.proposal for f in found) == [0, 1, 2, 3, 4]
    assert {f.peak: f.proposal for f in found} == {0: 1, 1: 2, 2: 0, 3: 3, 4: 4}

    # the patch lies wholly inside the body: merged by area
    found = retrieve_instances(prms, classes, crms, proposals, merge_contained=0.8, **options)
    body = next(f for f in found if f.peak == 0)
    assert body.merged_peaks == [2] and len(found) == 4
    np.testing.assert_allclose(body.prm, prms[0] + prms[2])
    assert body.mask.tolist() == proposals[1].tolist()

    # the ear lies outside, but 30 % of its PRM is in the body: merged by mass at 0.2, kept at 0.35;
    # the other object (5 %) and the other class (30 %) stay
    found = retrieve_instances(prms, classes, crms, proposals, merge_contained=0.8, merge_parts=0.2, **options)
    assert sorted(f.peak for f in found) == [0, 3, 4]
    assert sorted(next(f for f in found if f.peak == 0).merged_peaks) == [1, 2]
    found = retrieve_instances(prms, classes, crms, proposals, merge_contained=0.8, merge_parts=0.35, **options)
    assert sorted(f.peak for f in found) == [0, 1, 3, 4]
    found = retrieve_instances(prms, classes, crms, proposals, merge_parts=0.04, **options)
    assert sorted(f.peak for f in found) == [0, 4]  # at 4 % even the other object is a part
    with pytest.raises(ValueError, match="merge_parts"):
        retrieve_instances(prms, classes, crms, proposals, merge_parts=0.0, **options)


def test_a_whole_object_is_never_merged_into_its_part():
    """A part outranks the whole it lies in, and the whole's PRM puts 29 % in the part: both stay."""
    shape = (40, 40)
    part, whole = box(shape, (2, 14), (2, 14)), box(shape, (0, 40), (0, 40))
    prms = np.zeros((2,) + shape, np.float32)
    prms[0, 30, 30], prms[0, 8, 8] = 0.5, 0.2  # the whole's peak: 0.2 / 0.7 of its mass in the part
    prms[1, 8, 8] = 1.0  # the part's peak
    found = retrieve_instances(prms, [0, 0], flat_crms(1, shape), np.stack([part, whole]), contour_width=1,
                               size_limits=(0, 1.01), nms_threshold=0.3, merge_parts=0.2)
    # the part ranks first (0.8 against 0.8 x 0.7); the whole lies 9 % inside it: not contained
    assert [f.peak for f in found] == [1, 0]
    assert [int(f.mask.sum()) for f in found] == [144, 1600]
    # the part, lower-ranked, still folds into the whole when the whole ranks first
    prms[0] *= 2
    found = retrieve_instances(prms, [0, 0], flat_crms(1, shape), np.stack([part, whole]), contour_width=1,
                               size_limits=(0, 1.01), nms_threshold=0.3, merge_parts=0.2)
    assert [f.peak for f in found] == [0] and found[0].merged_peaks == [1]


# --------------------------------------------------------- per-class params


def per_class_case():
    """Mass at (5, 5): P1 holds it inside (0.8 x balance); P2 has it in its band (1.0)."""
    shape = (12, 12)
    prms = np.zeros((2,) + shape, np.float32)
    prms[:, 5, 5] = 1.0
    inner = box(shape, (4, 7), (4, 7))
    beside = box(shape, (6, 9), (6, 9))
    return prms, np.array([0, 1]), flat_crms(2, shape), np.stack([inner, beside])


@pytest.mark.parametrize("balance", [[1.5, 0.8], np.array([1.5, 0.8]), {0: 1.5}])
def test_per_class_balance(balance):
    prms, classes, crms, proposals = per_class_case()
    found = retrieve_instances(prms, classes, crms, proposals, contour_width=3, balance=balance,
                               nms_threshold=None)
    by_class = {f.class_index: f for f in found}
    assert by_class[0].mask.tolist() == proposals[0].tolist()
    assert by_class[0].score == pytest.approx(1.5)
    assert by_class[1].mask.tolist() == proposals[1].tolist()
    assert by_class[1].score == pytest.approx(1.0)


def test_per_class_penalty_and_background_threshold_with_resized_crms():
    shape = (16, 16)
    prms = np.zeros((2,) + shape, np.float32)
    prms[:, 3, 3] = 1.0
    small = box(shape, (1, 6), (1, 6))
    tall = box(shape, (1, 15), (1, 6))  # reaches into the bottom half
    proposals = np.stack([tall, small])
    prms[:, 12, 3] = 0.1  # only the tall box holds this
    # 2x2 CRMs resized to 16x16: high in the top half, low (background) in the bottom.
    crms = np.array([[[1.0, 1.0], [0.0, 0.0]]] * 2, np.float32)

    found = retrieve_instances(prms, [0, 1], crms, proposals, penalty=[0.0, 0.1], nms_threshold=None)
    by_class = {f.class_index: f.mask.sum() for f in found}
    assert by_class == {0: tall.sum(), 1: small.sum()}

    # Same penalty for both: a bg_threshold of 0 empties the background of class 0 only.
    found = retrieve_instances(prms, [0, 1], crms, proposals, penalty=0.1, bg_threshold={0: 0.0},
                               nms_threshold=None)
    by_class = {f.class_index: f.mask.sum() for f in found}
    assert by_class == {0: tall.sum(), 1: small.sum()}


def test_per_class_parameter_of_wrong_length_is_refused():
    prms, classes, crms, proposals = per_class_case()
    with pytest.raises(ValueError, match="balance: expected a scalar, a dict or a sequence of length 2"):
        retrieve_instances(prms, classes, crms, proposals, balance=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="penalty: class index 5 out of range"):
        retrieve_instances(prms, classes, crms, proposals, penalty={5: 1.0})


# ---------------------------------------------------------------- checking


def test_input_shapes_are_checked():
    prms, classes, crms, proposals = per_class_case()
    with pytest.raises(ValueError, match=r"prms: expected a \(K, H, W\) array"):
        retrieve_instances(prms[0], classes, crms, proposals)
    with pytest.raises(ValueError, match=r"proposals: expected an \(N, 12, 12\) mask stack"):
        retrieve_instances(prms, classes, crms, proposals[:, :10])
    with pytest.raises(ValueError, match=r"peak_classes: expected integers in \[0, 2\)"):
        retrieve_instances(prms, [0, 2], crms, proposals)
    with pytest.raises(ValueError, match=r"peak_classes: expected shape \(2,\)"):
        retrieve_instances(prms, [0], crms, proposals)
    with pytest.raises(ValueError, match="size_limits"):
        retrieve_instances(prms, classes, crms, proposals, size_limits=(0.5, 0.1))
    assert retrieve_instances(prms[:0], classes[:0], crms, proposals) == []
    assert retrieve_instances(prms, classes, crms, proposals[:0]) == []


# ----------------------------------------------------------- label images


def test_instances_to_labels_higher_score_wins_overlaps():
    shape = (6, 6)
    low = Instance(class_index=1, score=0.5, mask=box(shape, (0, 4), (0, 4)), prm=np.zeros(shape), peak=3)
    high = Instance(class_index=0, score=0.9, mask=box(shape, (2, 6), (2, 6)), prm=np.zeros(shape), peak=7)
    labels, table = instances_to_labels([low, high], shape, class_names=["cat", "dog"])
    assert labels.dtype == np.uint16
    assert labels[3, 3] == 2  # the overlap goes to the higher score, listed second
    assert labels[0, 0] == 1 and labels[5, 5] == 2
    assert (labels == 1).sum() == 16 - 4 and (labels == 2).sum() == 16
    assert table["label"].tolist() == [1, 2]
    assert table["class_index"].tolist() == [1, 0]
    assert table["class_name"].tolist() == ["dog", "cat"]
    assert table["score"].tolist() == [0.5, 0.9]
    assert table["peak"].tolist() == [3, 7]

    labels, table = instances_to_labels([], shape)
    assert labels.shape == shape and not labels.any()
    assert all(len(column) == 0 for column in table.values())
    _, table = instances_to_labels([low], shape)
    assert table["class_name"].tolist() == [""]


def test_instances_to_labels_checks_shapes_and_names():
    shape = (4, 4)
    inst = Instance(class_index=2, score=1.0, mask=np.ones(shape, bool), prm=np.zeros(shape), peak=0)
    with pytest.raises(ValueError, match="class index 2"):
        instances_to_labels([inst], shape, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"mask shape \(4, 4\) does not match shape \(5, 4\)"):
        instances_to_labels([inst], (5, 4))


# ------------------------------------------------------ original demo data


def test_retrieval_on_demo_proposals_finds_the_proposal_a_prm_outlines(shared_data):
    demo = shared_data / "prm_demo"
    proposals = load_proposals(demo / "sample0.json")
    height, width = proposals.shape[1:]
    # A PRM spread evenly over the outline of proposal 12 (the kind of response
    # peak backpropagation gives) retrieves a mask close to proposal 12.
    target = proposals[12]
    from scipy import ndimage as ndi

    outline = target & ~ndi.binary_erosion(target, iterations=2)
    prm = (outline / outline.sum()).astype(np.float32)
    crms = np.ones((1, 14, 14), np.float32)
    (found,) = retrieve_instances(prm[None], [0], crms, proposals)
    overlap = (found.mask & target).sum() / (found.mask | target).sum()
    assert found.mask.shape == (height, width)
    assert overlap > 0.8


@pytest.mark.slow
def test_demo_proposals_end_to_end_with_the_imagenet_model(shared_data):
    demo = shared_data / "prm_demo"
    from napari_prm import load_model, predict
    from napari_prm.io import read_image

    image = read_image(demo / "sample0.jpg")
    proposals = load_proposals(demo / "sample0.json")
    assert proposals.shape == (200,) + image.shape[:2]
    prediction = predict(image, load_model("imagenet"), proposals=proposals)
    assert len(prediction.prms) == len(prediction.peak_classes) > 0
    assert prediction.prms.shape[1:] == image.shape[:2]
    assert prediction.instances
    first_100 = proposals[:100].reshape(100, -1)
    for instance in prediction.instances:
        assert instance.mask.shape == image.shape[:2]
        assert 0 <= instance.peak < len(prediction.prms)
        assert instance.class_index == prediction.peak_classes[instance.peak]
        # Every instance is one of the first 100 proposals.
        assert (first_100 == instance.mask.reshape(1, -1)).all(axis=1).any()
    scores = [instance.score for instance in prediction.instances]
    assert scores == sorted(scores, reverse=True)


def test_prepared_proposals_give_the_same_instances():
    from napari_prm.retrieval import prepare_proposals

    rng = np.random.default_rng(7)
    shape = (60, 80)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    proposals = np.array([(yy - cy) ** 2 + (xx - cx) ** 2 < r**2
                          for cy, cx, r in rng.integers((5, 5, 4), (55, 75, 25), (40, 3))])
    prms = rng.random((6,) + shape).astype(np.float32) ** 8
    prms /= prms.sum(axis=(1, 2), keepdims=True)
    crms = rng.normal(size=(3, 8, 10)).astype(np.float32)
    classes = np.array([0, 1, 2, 0, 1, 2])
    plain = retrieve_instances(prms, classes, crms, proposals, proposal_count=30)
    prepared = prepare_proposals(proposals[:30])
    again = retrieve_instances(prms, classes, crms, prepared, proposal_count=30)
    assert [(i.peak, i.proposal, i.score) for i in plain] == [(i.peak, i.proposal, i.score) for i in again]
    with pytest.raises(ValueError, match="prepared with contour_width 5, not 3"):
        retrieve_instances(prms, classes, crms, prepared, contour_width=3)


def test_instance_confidence_weights_the_retrieval_score_by_the_class_and_peak_margins():
    sigmoid_2 = 1 / (1 + np.exp(-2.0))
    confidence = instance_confidence([0.5, 0.5, -0.2, 0.8], [0.0, 2.0, 5.0, -2.0], [0.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(confidence, [0.125, 0.25 * sigmoid_2, 0.0, 0.8 * (1 - sigmoid_2) * sigmoid_2],
                               rtol=1e-12)
    # without a peak threshold only the class margin weighs
    np.testing.assert_allclose(instance_confidence([0.5, 0.4], [0.0, 2.0]), [0.25, 0.4 * sigmoid_2], rtol=1e-12)
    # a surer class outranks an equally well retrieved but doubtful one
    sure, doubtful = instance_confidence([0.6, 0.6], [3.0, -1.0])
    assert sure > 0.5 > doubtful
    with pytest.raises(ValueError, match="class_margins: expected 2 values, got 3"):
        instance_confidence([0.5, 0.4], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="class_margins: expected 2 values, got 1"):
        instance_confidence([0.5, 0.4], [0.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="peak_margins: expected 2 values, got 1"):
        instance_confidence([0.5, 0.4], [0.0, 1.0], [1.0])
    # far below a threshold the weight is 0, without an overflow warning
    with np.errstate(over="raise"):
        np.testing.assert_array_equal(instance_confidence([0.5], [-1e4], [0.0]), [0.0])


def test_prepared_proposals_are_held_in_c_order():
    """The predictor's proposals at the network's grid came as a transposed (H, W, N) stack's view,
    so that each retrieval's flattening of the masks copied all of them (0.3-0.5 s of a 0.05 s
    re-threshold on a 512² image): they are held in C order, the same masks."""
    from napari_prm.masks import resize_nearest
    from napari_prm.retrieval import prepare_proposals

    stack = np.zeros((6, 40, 30), bool)
    for i in range(6):
        stack[i, 3 * i: 3 * i + 10, 2 * i: 2 * i + 8] = True
    resized = resize_nearest(stack, (80, 60))
    prepared = prepare_proposals(resized)
    assert prepared.masks.flags.c_contiguous
    np.testing.assert_array_equal(prepared.masks, resized)
    transposed = np.ascontiguousarray(stack.transpose(1, 2, 0)).transpose(2, 0, 1)  # a view, not C order
    assert not transposed.flags.c_contiguous
    assert prepare_proposals(transposed).masks.flags.c_contiguous
