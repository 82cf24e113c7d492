import numpy as np
import pytest

from napari_prm.edit import (
    add_instance,
    covered_instances,
    delete_instance,
    instance_table,
    merge_instances,
    remove_small,
    replace_mask,
    set_class,
    split_instance,
    sync_table,
)


@pytest.fixture
def scene():
    """Three instances: a 10x20 rectangle (1), a 5x5 square (2), a single pixel (3)."""
    labels = np.zeros((32, 40), dtype=np.uint16)
    labels[2:12, 5:25] = 1
    labels[20:25, 20:25] = 2
    labels[30, 38] = 3
    table = {
        "label": np.array([1, 2, 3]),
        "class_index": np.array([7, 8, 7]),
        "class_name": np.array(["cat", "dog", "cat"], dtype=object),
        "score": np.array([0.9, 0.5, 0.1], dtype=np.float32),
        "peak": np.array([0, 1, 2]),
    }
    return labels, table


def assert_consistent(labels, table):
    present = set(np.unique(labels)) - {0}
    assert present == set(table["label"].tolist())
    assert len(set(len(column) for column in table.values())) == 1


def test_delete_instance(scene):
    labels, table = scene
    out, new = delete_instance(labels, table, 2)
    assert not np.any(out == 2)
    assert np.array_equal(out == 1, labels == 1)
    assert new["label"].tolist() == [1, 3]
    assert new["class_name"].tolist() == ["cat", "cat"]
    assert np.any(labels == 2), "the input must stay untouched"
    assert_consistent(out, new)


def test_delete_unknown_label_is_refused(scene):
    labels, table = scene
    with pytest.raises(ValueError, match="label 9"):
        delete_instance(labels, table, 9)


def test_set_class_keeps_pixels(scene):
    labels, table = scene
    out, new = set_class(labels, table, 2, 281, "tabby cat")
    assert np.array_equal(out, labels)
    assert new["class_index"].tolist() == [7, 281, 7]
    assert new["class_name"].tolist() == ["cat", "tabby cat", "cat"]
    assert table["class_name"][1] == "dog"


def test_set_class_on_a_painted_label_adds_its_row(scene):
    labels, table = scene
    labels = labels.copy()
    labels[0, 0] = 4
    out, new = set_class(labels, table, 4, 1, "goldfish")
    assert new["label"].tolist() == [1, 2, 3, 4]
    assert new["class_name"][3] == "goldfish"
    assert np.isnan(new["score"][3]) and new["peak"][3] == -1
    assert_consistent(out, new)


def test_merge_instances(scene):
    labels, table = scene
    out, new = merge_instances(labels, table, [2, 1])
    assert np.count_nonzero(out == 2) == 10 * 20 + 5 * 5
    assert not np.any(out == 1)
    assert new["label"].tolist() == [2, 3]
    assert new["class_name"].tolist() == ["dog", "cat"]
    assert_consistent(out, new)
    with pytest.raises(ValueError, match="two different"):
        merge_instances(labels, table, [1, 1])


def test_split_instance_vertical_line(scene):
    labels, table = scene
    # A vertical line at x = 10 cuts the rectangle (x 5..24) into 5 and 14 columns + the line.
    out, new = split_instance(labels, table, 1, np.array([[0.0, 10.0], [15.0, 10.0]]))
    assert np.count_nonzero(out == 1) + np.count_nonzero(out == 4) == 200
    assert np.count_nonzero(out == 1) >= 14 * 10  # the larger piece keeps the label
    assert np.count_nonzero(out == 4) >= 5 * 10
    assert np.all(out[2:12, 5:10] == 4) and np.all(out[2:12, 11:25] == 1)
    assert new["label"].tolist() == [1, 2, 3, 4]
    assert new["class_name"][3] == "cat" and new["peak"][3] == -1 and new["peak"][0] == 0
    assert new["score"][3] == pytest.approx(0.9)
    assert_consistent(out, new)


def test_split_along_a_diagonal_polyline(scene):
    labels, table = scene
    line = np.array([[0.0, 3.0], [7.0, 15.0], [14.0, 27.0]])
    out, new = split_instance(labels, table, 1, line)
    assert len(new["label"]) == 4
    assert np.count_nonzero(np.isin(out, [1, 4])) == 200
    assert out[11, 5] != out[2, 24]  # opposite corners end up in different pieces


def test_split_that_misses_is_refused(scene):
    labels, table = scene
    with pytest.raises(ValueError, match="does not cut"):
        split_instance(labels, table, 1, np.array([[0.0, 30.0], [30.0, 30.0]]))


def test_split_in_a_stack_uses_the_line_plane():
    labels = np.zeros((3, 8, 8), dtype=np.uint8)
    labels[:, 1:7, 1:7] = 1
    table = {"label": np.array([1]), "class_name": np.array(["a"])}
    out, new = split_instance(labels, table, 1, np.array([[1, 0, 4], [1, 8, 4]]))
    assert set(np.unique(out[1])) == {0, 1, 2}
    assert set(np.unique(out[0])) == {0, 1} and set(np.unique(out[2])) == {0, 1}
    assert new["label"].tolist() == [1, 2] and new["class_name"].tolist() == ["a", "a"]
    with pytest.raises(ValueError, match="different planes"):
        split_instance(labels, table, 1, np.array([[0, 0, 4], [1, 8, 4]]))


def test_remove_small(scene):
    labels, table = scene
    out, new = remove_small(labels, table, 25)
    assert set(np.unique(out)) == {0, 1, 2}  # the 5x5 square has exactly 25 pixels
    assert new["label"].tolist() == [1, 2]
    out, new = remove_small(labels, table, 26)
    assert set(np.unique(out)) == {0, 1}
    assert_consistent(out, new)


def test_add_instance_paints_over_and_drops_covered(scene):
    labels, table = scene
    mask = np.zeros(labels.shape, bool)
    mask[18:27, 18:27] = True  # covers instance 2 completely
    out, new = add_instance(labels, table, mask, class_index=3, class_name="shark", score=0.7)
    assert np.all(out[mask] == 4)
    assert new["label"].tolist() == [1, 3, 4]
    assert new["class_name"][-1] == "shark" and new["peak"][-1] == -1
    assert_consistent(out, new)


def test_add_instance_replaces_an_existing_label(scene):
    labels, table = scene
    mask = np.zeros(labels.shape, bool)
    mask[0:2, 0:2] = True
    out, new = add_instance(labels, table, mask, label=2, class_index=8, class_name="dog", peak=5)
    assert np.count_nonzero(out == 2) == 4
    assert new["label"].tolist() == [1, 3, 2] and new["peak"].tolist() == [0, 2, 5]


def test_replace_mask_keeps_the_row_and_takes_over_pixels(scene):
    labels, table = scene
    mask = np.zeros(labels.shape, bool)
    mask[15:31, 15:39] = True  # around instance 2, and over instance 3's one pixel
    out, new = replace_mask(labels, table, 2, mask)
    assert np.count_nonzero(out == 2) == 16 * 24
    assert np.all(out[2:12, 5:25] == 1) and out[30, 38] == 2
    # the row stays where it was, with its class, score and peak; instance 3 lost its pixel and row
    assert new["label"].tolist() == [1, 2] and new["class_name"].tolist() == ["cat", "dog"]
    assert new["score"].tolist() == [np.float32(0.9), np.float32(0.5)] and new["peak"].tolist() == [0, 1]
    assert_consistent(out, new)
    # a smaller mask: the old pixels outside it become background
    inside = np.zeros(labels.shape, bool)
    inside[21:23, 21:23] = True
    out, new = replace_mask(labels, table, 2, inside)
    assert np.count_nonzero(out == 2) == 4 and np.count_nonzero(out[20:25, 20:25]) == 4
    with pytest.raises(ValueError, match="mask is empty"):
        replace_mask(labels, table, 2, np.zeros(labels.shape, bool))
    with pytest.raises(ValueError, match="label 9 is neither"):
        replace_mask(labels, table, 9, mask)
    with pytest.raises(ValueError, match=r"mask shape \(2, 2\) does not match"):
        replace_mask(labels, table, 2, np.ones((2, 2), bool))


def test_add_instance_widens_the_dtype():
    labels = np.zeros((4, 4), dtype=np.uint8)
    labels[0, 0] = 255
    out, new = add_instance(labels, {"label": np.array([255])}, labels == 0)
    assert out.dtype == np.uint32 and out[1, 1] == 256


def test_sync_table_after_hand_painting(scene):
    labels, table = scene
    painted = labels.copy()
    painted[painted == 3] = 0  # erased by hand
    painted[0:2, 0:2] = 9  # painted by hand
    new = sync_table(painted, table)
    assert new["label"].tolist() == [1, 2, 9]
    assert new["class_index"].tolist() == [7, 8, -1]
    assert new["class_name"].tolist() == ["cat", "dog", ""]
    assert_consistent(painted, new)


def test_sync_table_names_the_rows_it_adds(scene):
    labels, table = scene
    painted = labels.copy()
    painted[0:2, 0:2] = 9
    new = sync_table(painted, table, class_name="unknown")
    assert new["class_name"].tolist() == ["cat", "dog", "cat", "unknown"]
    assert new["class_index"].tolist() == [7, 8, 7, -1]


def test_instance_table_of_a_label_image_made_without_one(scene):
    labels, table = scene
    made = instance_table(labels, class_name="unknown")  # painted from scratch: no table at all
    assert made["label"].tolist() == [1, 2, 3]
    assert made["class_index"].tolist() == [-1, -1, -1] and made["peak"].tolist() == [-1, -1, -1]
    assert made["class_name"].tolist() == ["unknown"] * 3 and np.isnan(made["score"]).all()
    assert_consistent(labels, made)
    # what another tool knew is kept; unnamed rows, missing labels and missing columns are filled
    known = {"label": np.array([3, 2, 5]), "class_name": np.array(["cat", None, "dog"], dtype=object)}
    made = instance_table(labels, known, class_name="unknown")
    assert made["label"].tolist() == [1, 2, 3]
    assert made["class_name"].tolist() == ["unknown", "unknown", "cat"]
    assert made["class_index"].tolist() == [-1, -1, -1]
    # a complete table comes back as it was
    same = instance_table(labels, table)
    assert all(np.array_equal(same[name], table[name]) for name in table)


def test_bad_inputs_say_what_arrived():
    with pytest.raises(ValueError, match="float64"):
        delete_instance(np.zeros((4, 4)), {"label": np.array([1])}, 1)
    with pytest.raises(ValueError, match="'label' column"):
        delete_instance(np.zeros((4, 4), int), {"id": np.array([1])}, 1)


def test_instance_table_makes_class_index_and_class_name_agree(scene):
    """An export writes ``class_names[class_index]``, Learn goes by ``class_name``: the pair must agree."""
    labels, _ = scene
    known = {"label": np.array([1, 2, 3]), "class_index": np.array([0.0, np.nan, 1.0]),
             "class_name": np.array(["bird", None, "unknown"], dtype=object)}
    made = instance_table(labels, known, class_name="unknown", class_names=["cat", "dog", "bird"])
    # named: its position; unnamed with an index: the index's name; unnamed without one: unknown
    assert made["class_name"].tolist() == ["bird", "unknown", "dog"]
    assert made["class_index"].tolist() == [2, -1, 1]
    made = instance_table(labels, {"label": np.array([1]), "class_name": np.array(["zebra"], dtype=object)},
                          class_name="unknown", class_names=["cat"])
    assert made["class_name"].tolist() == ["zebra", "unknown", "unknown"]
    assert made["class_index"].tolist() == [-1, -1, -1]


def test_a_missing_cell_is_missing_whatever_its_float_type(scene):
    """Two rules said which cells of an instance table are missing: `napari_prm.io.tables` took
    None and NaN of any float type, `instance_table` (and `correction_from_layer`) only a
    Python float's NaN, so a float32 NaN stayed a class name ('nan') and, as a label, raised
    "cannot convert float NaN to integer". One rule now (`napari_prm.io.tables.missing_cell`)."""
    from napari_prm.refine import correction_from_layer

    labels, _ = scene
    known = {"label": np.array([1, 2, 3]),
             "class_name": np.array(["dog", np.float32("nan"), ""], dtype=object)}
    made = instance_table(labels, known, class_name="unknown", class_names=["dog", "bird"])
    assert made["class_name"].tolist() == ["dog", "unknown", "unknown"]
    assert made["class_index"].tolist() == [0, -1, -1]
    features = {"label": np.array([1, np.nan, 3], np.float32),
                "class_name": np.array(["bird", "dog", np.float32("nan")], dtype=object)}
    correction = correction_from_layer(np.zeros(labels.shape), labels, features, ["dog", "bird"])
    assert correction.label_classes == {1: 1, 3: -1}


def test_instance_table_names_rows_by_the_classes_their_index_counted(scene):
    """A painted layer's rows without a name take it from the classes the layer recorded before
    (``index_names``); then each row's class_index is its name's place in the classes now."""
    labels, _ = scene
    known = {"label": np.array([1, 2, 3]), "class_index": np.array([1, 0, 5]),
             "class_name": np.array([None, "dog", ""], dtype=object)}
    made = instance_table(labels, known, class_name="unknown", class_names=["dog", "bird"],
                          index_names=["cat", "bird"])
    assert made["class_name"].tolist() == ["bird", "dog", "unknown"]
    assert made["class_index"].tolist() == [1, 0, -1]
    made = instance_table(labels, known, class_name="unknown", class_names=["dog", "bird"], index_names=[])
    assert made["class_name"].tolist() == ["unknown", "dog", "unknown"]
    assert made["class_index"].tolist() == [-1, 0, -1]


def test_covered_instances_counts_what_add_instance_paints_over(scene):
    """The instances a new mask paints over, with the pixels it covers and their areas: the one
    covered entirely is the one `add_instance` drops; ``ignore`` leaves out the instance redone."""
    labels, table = scene
    mask = np.zeros(labels.shape, bool)
    mask[10:26, 20:30] = True  # rows 10:12 of instance 1 (2 x 5 pixels) and all of instance 2
    assert covered_instances(labels, mask) == {1: (10, 200), 2: (25, 25)}
    assert covered_instances(labels, mask, ignore=2) == {1: (10, 200)}
    out, made = add_instance(labels, table, mask)
    assert made["label"].tolist() == [1, 3, 4] and int((out == 1).sum()) == 190
    background = np.zeros(labels.shape, bool)
    background[0, 0] = True
    assert covered_instances(labels, background) == {}


def test_split_cuts_where_the_line_is_drawn_away_from_the_image_origin():
    """The split works in the instance's bounding box (fast on a large image): a vertex half-way between
    pixels is rounded where it was drawn (x 35.5 is column 36, as on the whole image), not in the box."""
    labels = np.zeros((50, 60), np.uint16)
    labels[11:21, 31:41] = 4  # columns 31..40
    labels[30:40, 0:10] = 2
    out, table = split_instance(labels, {"label": np.array([2, 4])}, 4, np.array([[0.0, 35.5], [49.0, 35.5]]))
    (new,) = set(table["label"]) - {2, 4}
    new_columns = set(np.nonzero(out == new)[1].tolist())
    # the line is column 36: 31..35 keep label 4 (with the line's pixels, equally near both pieces), 37..40
    # are the new piece (rounded in the box, 4.5 is 4: the line was column 35, and 36..40 the new piece)
    assert new_columns == {37, 38, 39, 40}
    assert set(np.nonzero(out == 4)[1].tolist()) == {31, 32, 33, 34, 35, 36}
    assert np.array_equal(out == 2, labels == 2) and np.count_nonzero(out) == np.count_nonzero(labels)


@pytest.mark.parametrize("huge", [False, True])
def test_remove_small_counts_areas_alike_by_look_up_and_for_huge_labels(huge):
    """Areas are counted by look-up (fast on a large image), or sorted when a label is too large to index."""
    labels = np.zeros((2, 20, 20), np.uint64)
    labels[0, :10, :10] = 1  # 100 pixels
    labels[0, 15, 15:18] = 2  # 3 pixels
    labels[1, 5:7, 5:10] = 7  # 10 pixels, on the other plane
    big = 2**40 if huge else 9
    labels[1, 19, 19] = big  # 1 pixel
    out, table = remove_small(labels, {"label": np.array([1, 2, 7, big, 30]), "score": np.arange(5.0)}, 5)
    assert sorted(np.unique(out).tolist()) == [0, 1, 7] and out.dtype == np.uint64
    assert np.array_equal(out[labels == 1], np.ones(100)) and np.count_nonzero(out == 7) == 10
    assert table["label"].tolist() == [1, 7] and table["score"].tolist() == [0.0, 2.0]  # label 30: no pixel


def test_a_split_where_the_instance_has_no_pixel_is_refused_as_a_miss():
    """The split works in the instance's bounding box: an instance absent from the line's plane of a stack
    (or only in the table) has none, and failed with an IndexError instead of saying that the line misses it."""
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 2:6, 2:6] = 1
    with pytest.raises(ValueError, match=r"does not cut instance 1 .*no pixel in plane \(1,\)"):
        split_instance(labels, {"label": np.array([1])}, 1, np.array([[1, 0, 4], [1, 7, 4]]))
    with pytest.raises(ValueError, match=r"does not cut instance 2 .*no pixel in the label image"):
        split_instance(labels[0], {"label": np.array([1, 2])}, 2, np.array([[0, 4], [7, 4]]))
