"""Datasets with image-level labels: COCO JSON, folder per class, CSV; their errors."""

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_prm.data import VOC_CLASSES, TrainingImages, from_coco, from_csv, from_folders, load_dataset, voc_view
from napari_prm.io import IMAGE_SUFFIXES


@pytest.fixture(scope="module")
def coco128(shared_data) -> Path:
    return shared_data / "coco128"


@pytest.fixture(scope="module")
def train_json(coco128) -> Path:
    return coco128 / "annotations" / "instances_train2017.json"


@pytest.fixture(scope="module")
def coco_train(train_json):
    return from_coco(train_json)


def _rgb(seed, shape=(20, 24, 3)):
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def test_coco_labels_are_the_categories_present(coco_train, coco128):
    assert len(coco_train) == 128
    # 71 of the 80 categories occur in a non-crowd annotation of these images.
    assert len(coco_train.class_names) == 71
    assert "toaster" not in coco_train.class_names
    first = coco_train.image_paths.index(coco128 / "train2017" / "000000000009.jpg")
    present = [coco_train.class_names[j] for j in np.flatnonzero(coco_train.labels[first])]
    assert present == ["bowl", "orange", "broccoli"]
    assert coco_train.labels.shape == (128, 71)


def test_coco_instances_match_annotation_areas(coco_train):
    index = coco_train.image_ids.index(9)
    truth = coco_train.instances(index)
    assert truth.masks.shape == (8, 480, 640)
    areas = [a["area"] for a in coco_train.coco.imgToAnns[9]]
    np.testing.assert_allclose(truth.masks.sum((1, 2)), areas, rtol=0.01)
    assert [coco_train.class_names[c] for c in truth.class_indices[:1]] == ["bowl"]
    assert not truth.iscrowd.any()


def test_voc_view_keeps_voc_classes_and_labelled_images(coco_train):
    voc = voc_view(coco_train)
    # cow and sheep do not occur in coco128 train.
    assert voc.class_names == [c for c in VOC_CLASSES if c not in ("cow", "sheep")]
    assert len(voc) == 97
    assert (voc.labels.sum(1) > 0).all()
    assert voc.labels[:, voc.class_names.index("person")].sum() == 61
    truth = voc.instances(0)
    assert set(truth.class_indices.tolist()) <= set(range(18))


def test_coco_class_choice_and_errors(tmp_path, coco_train, coco128, train_json):
    chosen = from_coco(train_json, classes=["dog", "cat"])
    assert chosen.class_names == ["dog", "cat"]
    np.testing.assert_array_equal(chosen.labels[:, 0], coco_train.labels[:, coco_train.class_names.index("dog")])
    # Categories of the file outside the chosen ones are labelled from the annotations.
    widened = chosen.with_classes(["cat", "dog"])
    np.testing.assert_array_equal(widened.labels[:, 0], coco_train.labels[:, coco_train.class_names.index("cat")])
    assert widened.category_ids == [17, 18]
    with pytest.raises(ValueError, match=r"unknown class.*'unicorn'.*instances_train2017.json"):
        from_coco(train_json, classes=["dog", "unicorn"])
    with pytest.raises(ValueError, match=r"\['toaster'\] have no positive image in .*instances_train2017.json"):
        from_coco(train_json, classes=["dog", "toaster"])
    assert len(from_coco(train_json, classes="all", require_positives=False).class_names) == 80

    content = json.loads(train_json.read_text())
    content["images"] = content["images"][:2]
    content["images"][1]["file_name"] = "missing.jpg"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"image .*missing.jpg listed in .*broken.json \(image id 25\) does not exist"):
        from_coco(broken, image_dir=coco128 / "train2017")
    content["images"] = []
    broken.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"broken.json lists no images"):
        from_coco(broken)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read COCO annotations .*bad.json"):
        from_coco(tmp_path / "bad.json")


def test_coco_images_elsewhere_than_the_json_say_where_they_were_looked_for(tmp_path):
    """A COCO JSON beside an ``images/`` folder said only "image .../x.png listed in ... does
    not exist", not that images are looked for in the JSON's folder nor how to say where."""
    (tmp_path / "images").mkdir()
    iio.imwrite(tmp_path / "images" / "x.png", _rgb(1))
    coco = {"images": [{"id": 1, "file_name": "x.png", "height": 20, "width": 24}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "labels.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError) as error:
        from_coco(tmp_path / "labels.json")
    assert str(error.value) == (f"image {tmp_path / 'x.png'} listed in {tmp_path / 'labels.json'} (image id 1) "
                                f"does not exist; images are looked for in {tmp_path}: pass their folder as "
                                "image_dir (the command line's --image-dir)")
    assert from_coco(tmp_path / "labels.json", image_dir=tmp_path / "images").image_paths == [
        tmp_path / "images" / "x.png"]


def test_coco_names_every_missing_image_in_one_message(tmp_path):
    """A COCO JSON of two images gone (one a case typo) named the first only: fixed and run
    again, the next was named, one run per file. All are named at once, as a CSV's are."""
    for name in ("a.png", "c.png", "d.png"):
        iio.imwrite(tmp_path / name, _rgb(len(name)))
    names = ["a.png", "b.png", "c.png", "D.png", "e.png"]
    coco = {"images": [{"id": i, "file_name": n, "height": 20, "width": 24} for i, n in enumerate(names, 1)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 0}
                            for i in range(1, 6)],
            "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "labels.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError) as error:
        from_coco(tmp_path / "labels.json")
    assert str(error.value) == (
        f"3 of the 5 images listed in {tmp_path / 'labels.json'} do not exist: {tmp_path / 'b.png'} (image id 2), "
        f"{tmp_path / 'D.png'} (image id 4; d.png does: file names differ in upper and lower case here), "
        f"{tmp_path / 'e.png'} (image id 5)")
    for name in ("b.png", "e.png"):  # none near: the images' folder may be another
        (tmp_path / name).write_bytes((tmp_path / "a.png").read_bytes())
    (tmp_path / "d.png").rename(tmp_path / "x.png")
    (tmp_path / "c.png").rename(tmp_path / "y.png")
    with pytest.raises(ValueError) as error:
        from_coco(tmp_path / "labels.json")
    assert str(error.value) == (
        f"2 of the 5 images listed in {tmp_path / 'labels.json'} do not exist; images are looked for in {tmp_path}: "
        f"pass their folder as image_dir (the command line's --image-dir): {tmp_path / 'c.png'} (image id 3), "
        f"{tmp_path / 'D.png'} (image id 4)")


def test_folders_single_label_and_image_kinds(tmp_path):
    (tmp_path / "cells").mkdir()
    (tmp_path / "nuclei").mkdir()
    gray16 = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 100)
    tifffile.imwrite(tmp_path / "cells" / "a.tif", gray16)
    iio.imwrite(tmp_path / "cells" / "b.png", np.dstack([_rgb(1), np.full((20, 24), 255, np.uint8)]))
    iio.imwrite(tmp_path / "nuclei" / "c.png", _rgb(2)[..., 0])
    (tmp_path / "nuclei" / "notes.txt").write_text("not an image")
    dataset = load_dataset(tmp_path)
    assert dataset.class_names == ["cells", "nuclei"]
    assert [p.name for p in dataset.image_paths] == ["a.tif", "b.png", "c.png"]
    np.testing.assert_array_equal(dataset.labels, [[1, 0], [1, 0], [0, 1]])
    assert dataset.read_image(0).dtype == np.uint16
    rgb = dataset.read_rgb(0)
    assert rgb.shape == (20, 24, 3) and rgb.dtype == np.float32
    # uint16 is stretched between its 0.5 and 99.5 percentiles (239.5 and 47660.5 here)
    low, high = np.percentile(gray16, (0.5, 99.5))
    np.testing.assert_allclose(rgb[10, 12], (25200 - low) / (high - low), rtol=1e-5)
    assert rgb[0, 1].max() == 0 and rgb[-1, -1].min() == 1
    assert dataset.read_rgb(1).shape == (20, 24, 3)
    assert dataset.read_rgb(2).shape == (20, 24, 3)
    assert not dataset.has_masks

    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"class 'empty_class' has no positive image: folder .*empty_class"):
        from_folders(tmp_path)
    assert from_folders(tmp_path, require_positives=False).labels.sum(0).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"has no class sub-folders"):
        from_folders(tmp_path / "empty_class")


def test_folders_take_nested_images_and_say_what_they_leave_out(tmp_path):
    """A class folder's images in a sub-folder (``cat/2023/x.jpg``) were left out without a
    word, and so were files that are not images and images in no class folder. Nested images
    belong to their top folder's class (as torchvision's ImageFolder reads them); the rest is
    named in the dataset's warnings."""
    for relative in ("cat/a.png", "cat/2023/b.JPG", "cat/2023/deeper/c.png", "dog/Hund Ä.png", "stray.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(tmp_path / relative, _rgb(len(relative)), extension=".png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / "scan.czi").write_bytes(b"a format napari-prm does not read")
    (tmp_path / "cat" / ".hidden").mkdir()
    iio.imwrite(tmp_path / "cat" / ".hidden" / "d.png", _rgb(1))
    dataset = from_folders(tmp_path)
    assert dataset.class_names == ["cat", "dog"]
    assert [p.relative_to(tmp_path).as_posix() for p in dataset.image_paths] == [
        "cat/2023/b.JPG", "cat/2023/deeper/c.png", "cat/a.png", "dog/Hund Ä.png"]
    np.testing.assert_array_equal(dataset.labels, [[1, 0], [1, 0], [1, 0], [0, 1]])
    assert dataset.warnings == [
        f"{tmp_path}: left out 3 files that are not images ({', '.join(IMAGE_SUFFIXES)}) or lie in "
        "no class folder: dog/notes.txt, dog/scan.czi, stray.png"]
    assert from_folders(tmp_path / "cat").warnings[0].endswith("a.png")  # no class folder: a.png


def test_a_label_typo_is_a_warning(tmp_path):
    """A CSV with one ``dgo`` among the ``dog`` labels (or a ``Dog`` folder beside ``dog``)
    trained a third class from one image without a word."""
    for name in ("x.png", "y.png", "z.png", "w.png"):
        iio.imwrite(tmp_path / name, _rgb(len(name)))
    path = tmp_path / "labels.csv"
    path.write_text("image,labels\nx.png,dog\ny.png,dgo\nz.png,cat;dog\nw.png,cat\n")
    dataset = from_csv(path)
    assert dataset.class_names == ["cat", "dgo", "dog"]
    assert dataset.warnings == [f"class 'dgo' has 1 image ({path}:3): a typo of 'dog' (2 images)?"]
    path.write_text("image,labels\nx.png,dogs\ny.png,dog\nz.png,Cat\nw.png,cat\n")
    assert from_csv(path).warnings == [
        "classes 'Cat' and 'cat' differ only in case: one class written two ways?",
        f"class 'dog' has 1 image ({path}:3): a typo of 'dogs' (1 image)?"]
    path.write_text("image,labels\nx.png,cat\ny.png,dog\n")  # one image each, no near name: fine
    assert from_csv(path).warnings == []


COMPOSED, DECOMPOSED = "carr\u00e9", "carre\u0301"  # the same 'carré', é as one character or e + accent


def test_a_class_name_in_two_unicode_forms_is_one_class(tmp_path):
    """'carré' typed in one row and pasted from a macOS file name (e + combining accent) in
    another made two classes that every message showed alike, without a warning."""
    for name in ("x.png", "y.png", "z.png", "w.png"):
        iio.imwrite(tmp_path / name, _rgb(len(name)))
    path = tmp_path / "labels.csv"
    path.write_text(f"image,labels\nx.png,{COMPOSED}\ny.png,{DECOMPOSED}\nz.png,dog\nw.png,dog;{DECOMPOSED}\n",
                    encoding="utf-8")
    dataset = from_csv(path)
    assert dataset.class_names == [COMPOSED, "dog"]
    np.testing.assert_array_equal(dataset.labels, [[1, 0], [1, 0], [0, 1], [1, 1]])
    # classes given in either form take the rows of both, under the name as given
    ordered = from_csv(path, classes=["dog", DECOMPOSED])
    assert ordered.class_names == ["dog", DECOMPOSED]
    np.testing.assert_array_equal(ordered.labels[:, 1], [1, 1, 0, 1])


def test_a_class_folder_named_in_the_other_unicode_form_is_found(tmp_path):
    """A folder macOS named 'carre\u0301' was unknown to --classes 'carré' as typed ("unknown
    class(es) ['carré'] ...; it has ['carré', 'dog']; did you mean 'carré'?")."""
    for number, name in enumerate((DECOMPOSED, "dog")):
        (tmp_path / "data" / name).mkdir(parents=True)
        iio.imwrite(tmp_path / "data" / name / "0.png", _rgb(number))
    dataset = load_dataset(tmp_path / "data")
    assert dataset.class_names == [COMPOSED, "dog"]
    assert dataset.image_paths[0] == tmp_path / "data" / DECOMPOSED / "0.png"  # the file as it is
    chosen = dataset.with_classes(["dog", COMPOSED])
    np.testing.assert_array_equal(chosen.labels, [[0, 1], [1, 0]])
    # a model whose class name kept the other form (trained on the folder before) finds it too
    np.testing.assert_array_equal(dataset.with_classes([DECOMPOSED]).labels, [[1], [0]])
    # both forms as folders (Linux keeps a name's form): one class of their images, said
    (tmp_path / "data" / COMPOSED).mkdir()
    iio.imwrite(tmp_path / "data" / COMPOSED / "1.png", _rgb(5))
    both = load_dataset(tmp_path / "data")
    assert both.class_names == [COMPOSED, "dog"]
    np.testing.assert_array_equal(both.labels, [[1, 0], [1, 0], [0, 1]])
    assert len(both.warnings) == 1 and "are one class 'carré' (the same name in two Unicode forms)" in both.warnings[0]


def _write_csv(tmp_path, rows):
    for name in ("x.png", "y.png", "z.png"):
        iio.imwrite(tmp_path / name, _rgb(len(name)))
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(["image,labels"] + rows) + "\n")
    return path


def test_csv_multi_labels(tmp_path):
    path = _write_csv(tmp_path, ["x.png,cat;dog", "y.png,dog", "", "z.png,"])
    dataset = load_dataset(path)
    assert dataset.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(dataset.labels, [[1, 1], [0, 1], [0, 0]])
    assert dataset.origins == [f"{path}:2", f"{path}:3", f"{path}:5"]
    ordered = from_csv(path, classes=["dog", "cat", "bird"], require_positives=False)
    np.testing.assert_array_equal(ordered.labels, [[1, 1, 0], [1, 0, 0], [0, 0, 0]])


def test_with_classes_names_at_most_ten_missing_classes(tmp_path):
    """``calibrate --model imagenet`` on a CSV of three classes printed all 997 missing
    ImageNet classes (30 kB of error); the first ten and a count say the same."""
    dataset = load_dataset(_write_csv(tmp_path, ["x.png,cat", "y.png,dog"]))
    with pytest.raises(ValueError) as error:
        dataset.with_classes(["cat", *(f"class {n}" for n in range(997))])
    message = str(error.value)
    assert message.startswith("unknown class(es) ['class 0', 'class 1', ")
    assert "'class 9', ... (987 more)] for dataset " in message and "'class 10'" not in message
    assert message.endswith("; it has ['cat', 'dog']")
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['zebra'\] for dataset .*labels.csv; it has"):
        dataset.with_classes(["cat", "zebra"])

def test_with_classes_takes_one_class_alone(tmp_path):
    # as predict(classes="cat") does; it was read as the classes 'c', 'a', 't' ("unknown class(es)")
    dataset = load_dataset(_write_csv(tmp_path, ["x.png,cat", "y.png,dog", "z.png,cat;dog"]))
    one = dataset.with_classes("dog")
    assert one.class_names == ["dog"]
    np.testing.assert_array_equal(one.labels, dataset.with_classes(["dog"]).labels)
    np.testing.assert_array_equal(one.labels, [[0], [1], [1]])
    assert len(dataset.with_classes("dog", drop_unlabeled=True)) == 2


def test_with_classes_suggests_no_class_that_is_asked_for_itself(tmp_path):
    """``imagenet-coco`` on a CSV of five of its classes said "did you mean 'toilet' for 'tie',
    'couch' for 'clock'?": 'toilet' and 'couch' are classes the model has too, not misspellings."""
    dataset = load_dataset(_write_csv(tmp_path, ["x.png,bear;couch", "y.png,toilet"]))
    with pytest.raises(ValueError) as error:
        dataset.with_classes(["bear", "clock", "couch", "tie", "toilet"])
    message = str(error.value)
    assert message.startswith("unknown class(es) ['clock', 'tie'] for dataset ")
    assert message.endswith("; it has ['bear', 'couch', 'toilet']") and "did you mean" not in message
    # a misspelling is still answered
    with pytest.raises(ValueError, match=r"; did you mean 'toilet'\?$"):
        dataset.with_classes(["bear", "toliet"])


def test_csv_errors_name_file_and_line(tmp_path):
    path = _write_csv(tmp_path, ["x.png,cat", "missing.png,dog"])
    with pytest.raises(ValueError, match=r"labels.csv:3: image .*missing.png does not exist"):
        from_csv(path)
    path = _write_csv(tmp_path, ["x.png,cat", "y.png,cat;zebra"])
    with pytest.raises(ValueError, match=r"labels.csv:3: unknown class\(es\) \['zebra'\]"):
        from_csv(path, classes=["cat", "dog"])
    with pytest.raises(ValueError, match=r"\['dog'\] have no positive image in .*labels.csv"):
        from_csv(path, classes=["cat", "dog", "zebra"])
    path.write_text("file,classes\nx.png,cat\n")
    with pytest.raises(ValueError, match=r"labels.csv:1: expected the header 'image,labels'"):
        from_csv(path)
    path.write_text("image,labels\n")
    with pytest.raises(ValueError, match=r"labels.csv lists no images"):
        from_csv(path)
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    path.write_text("image,labels\nx.png,cat\nbroken.png,cat\n")
    dataset = from_csv(path)
    with pytest.raises(ValueError, match=r"cannot read image .*broken.png \(declared at .*labels.csv:3\)"):
        dataset.read_image(1)
    with pytest.raises(ValueError, match=r"cannot tell the dataset format"):
        load_dataset(tmp_path / "x.png")



def test_a_one_hot_csv_is_refused_with_the_form_expected(tmp_path):
    """A CSV of one 0/1 column per class (``image,cat,dog``; pandas' ``get_dummies``) was refused
    with "expected the header 'image,labels'" only: the message names the layout and shows its first
    row in the form expected. A header of other columns (values not 0/1) gets no such hint."""
    path = _write_csv(tmp_path, [])
    path.write_text("image,cat,dog\n\na.png,1,0\nb.png,1,1\n")
    with pytest.raises(ValueError) as error:
        from_csv(path)
    assert str(error.value) == (
        f"{path}:1: expected the header 'image,labels'; got ['image', 'cat', 'dog']: this looks like one 0/1 column "
        "per class (cat, dog); write two columns instead, the header 'image,labels' and each image's classes "
        "separated by ';' (none: empty): line 3, a.png,1,0, is a.png,cat")
    path.write_text("Image, cat ,dog\nb.png,1,1\n")
    with pytest.raises(ValueError, match=r"line 2, b\.png,1,1, is b\.png,cat;dog$"):
        from_csv(path)
    path.write_text("image,cat,dog\nc.png,0,0\n")
    with pytest.raises(ValueError, match=r"line 2, c\.png,0,0, is c\.png,$"):
        from_csv(path)
    for other in ("image,label,notes\na.png,cat,good\n", "image,cat,dog\na.png,yes,no\n", "image,cat\n"):
        path.write_text(other)
        with pytest.raises(ValueError) as error:
            from_csv(path)
        assert str(error.value).startswith(f"{path}:1: expected the header 'image,labels'; got [")
        assert "0/1" not in str(error.value)


def test_csv_as_spreadsheets_write_it_is_read_or_explained(tmp_path):
    """What Excel writes: a BOM and Windows line endings (read), a CSV in the Windows code page
    (the message was Python's "'utf-8' codec can't decode byte 0xe9"), one separated by ';' (the
    header was shown without a word on the separators), and labels joined by ',' (a class
    named 'cat,dog')."""
    path = _write_csv(tmp_path, [])
    path.write_bytes("\ufeffimage,labels\r\nx.png,cat\r\ny.png,\r\n".encode())
    dataset = from_csv(path)
    assert dataset.class_names == ["cat"] and dataset.labels.tolist() == [[1], [0]]
    path.write_bytes("image,labels\nx.png,chat\ny.png,caf\xe9\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"labels.csv is not UTF-8 text \(line 3\): save it as UTF-8 \(Excel: "
                                         r"'CSV UTF-8'\)"):
        from_csv(path)
    path.write_text("image;labels\nx.png;cat\n")
    with pytest.raises(ValueError, match=r"labels.csv:1: expected the header 'image,labels'; got \['image;labels'\]: "
                                         r"separate the two columns by ',' \(the labels by ';'\)"):
        from_csv(path)
    path.write_text("image\tlabels\nx.png\tcat\n")  # a spreadsheet's 'tab-delimited text' saved as .csv
    with pytest.raises(ValueError, match=r"got \['image\\tlabels'\]: separate the two columns by ','"):
        from_csv(path)
    path.write_text('image,labels\nx.png,"cat,dog"\ny.png,dog\n')
    assert from_csv(path).warnings[0] == (f"{path}:2: label 'cat,dog' holds a ',': labels are separated by ';' "
                                          "(cat;dog)")


def test_split_is_disjoint_and_seeded(coco_train):
    train, val = coco_train.split(0.25, seed=3)
    assert (len(train), len(val)) == (96, 32)
    assert not set(train.image_ids) & set(val.image_ids)
    assert set(train.image_ids) | set(val.image_ids) == set(coco_train.image_ids)
    again, _ = coco_train.split(0.25, seed=3)
    other, _ = coco_train.split(0.25, seed=4)
    assert again.image_ids == train.image_ids != other.image_ids
    index = val.image_ids[0]
    np.testing.assert_array_equal(val.labels[0], coco_train.labels[coco_train.image_ids.index(index)])


def test_split_of_datasets_whose_classes_all_train_is_the_plain_random_one(coco_train):
    """The benchmarks' VOC view of coco128 (0.2, seed 0: 78 trained, 19 held out) keeps its split."""
    voc = voc_view(coco_train)
    for fraction, seed in ((0.2, 0), (0.25, 3), (0.2, 1)):
        order = np.random.default_rng(seed).permutation(len(voc))
        held = int(round(fraction * len(voc)))
        train, val = voc.split(fraction, seed=seed)
        assert train.image_ids == [voc.image_ids[i] for i in sorted(order[held:])]
        assert val.image_ids == [voc.image_ids[i] for i in sorted(order[:held])]
        assert voc.untrained_classes(train) == []
    assert (len(voc.split(0.2, seed=0)[0]), len(voc.split(0.2, seed=0)[1])) == (78, 19)
    # all 71 classes at 0.2, seed 0: the plain split held out the only images of 'hot dog' and
    # 'scissors'; now every class trains, with as many images held out
    order = np.random.default_rng(0).permutation(len(coco_train))
    assert coco_train.untrained_classes(coco_train.subset(order[26:])) == ["hot dog", "scissors"]
    train, val = coco_train.split(0.2, seed=0)
    assert (len(train), len(val)) == (102, 26) and coco_train.untrained_classes(train) == []


def _class_csv(tmp_path, labels):
    rows = ["image,labels"]
    for i, label in enumerate(labels):
        iio.imwrite(tmp_path / f"{i}.png", _rgb(i))
        rows.append(f"{i}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return from_csv(tmp_path / "labels.csv")


def test_split_keeps_a_training_image_of_every_class(tmp_path):
    """5 cat images and 1 dog image, 1 held out: the dog image was held out for some seeds,
    so the model never saw a dog. It trains now, and a cat image is held out instead."""
    dataset = _class_csv(tmp_path, ["cat"] * 3 + ["dog"] + ["cat"] * 2)
    swapped = 0
    for seed in range(12):
        order = np.random.default_rng(seed).permutation(6)
        train, val = dataset.split(0.2, seed=seed)
        assert (len(train), len(val)) == (5, 1) and "3.png" in [Path(p).name for p in train.image_paths]
        assert dataset.untrained_classes(train) == [] and val.class_names == ["cat", "dog"]
        if order[0] == 3:  # the plain split held the dog out: the first cat of the permutation instead
            swapped += 1
            assert [Path(p).name for p in val.image_paths] == [f"{order[1]}.png"]
        else:
            assert [Path(p).name for p in val.image_paths] == [f"{order[0]}.png"]
    assert swapped == 5


def test_split_never_holds_out_the_only_image_of_a_class(tmp_path):
    """3 images of 3 classes (the tutorial's folder): one was held out, so its class (the cat)
    had no training image and was never learnt. Now none is held out."""
    dataset = _class_csv(tmp_path, ["cat", "dog", "bird"])
    for seed in range(4):
        train, val = dataset.split(0.2, seed=seed)
        assert (len(train), len(val)) == (3, 0) and dataset.untrained_classes(train) == []
    dataset = _class_csv(tmp_path, ["cat;dog", "bird", "fish"])
    for seed in range(4):
        assert [len(part) for part in dataset.split(0.5, seed=seed)] == [3, 0]
    # fewer than asked: 2 of 4 wanted, but only one of the two cat images can go
    dataset = _class_csv(tmp_path, ["cat", "dog", "cat", "bird"])
    for seed in range(6):
        train, val = dataset.split(0.5, seed=seed)
        assert (len(train), len(val)) == (3, 1) and dataset.untrained_classes(train) == []
        assert [Path(p).name for p in val.image_paths] in (["0.png"], ["2.png"])


def test_training_images_resize_and_seeded_flips(tmp_path):
    path = _write_csv(tmp_path, ["x.png,cat", "y.png,dog", "z.png,cat"])
    dataset = from_csv(path)
    plain = TrainingImages(dataset, (16, 12), (0, 0, 0), (1, 1, 1), hflip=False)
    image, labels = plain[0]
    assert tuple(image.shape) == (3, 16, 12)
    np.testing.assert_array_equal(labels.numpy(), [1, 0])
    flipping = TrainingImages(dataset, (16, 12), (0, 0, 0), (1, 1, 1), hflip=True, seed=0)
    flips = []
    for epoch in range(8):
        flipping.set_epoch(epoch)
        flipped = flipping[0][0]
        assert bool((flipped == image).all()) or bool((flipped == image.flip(-1)).all())
        flips.append(bool((flipped != image).any()))
    assert 0 < sum(flips) < 8
    flipping.set_epoch(5)
    assert (flipping[0][0] == flipping[0][0]).all()


def test_csv_names_every_missing_image_and_every_comma_label_in_one_message(tmp_path):
    """A CSV with two typo'd file names stopped at the first ("labels.csv:3: image … does not
    exist"): fix, rerun, fail at the next. Labels written 'cat, dog' gave one warning per line:
    300 lines in the Train widget's status line. Both now come as one message."""
    path = _write_csv(tmp_path, ["x.png,cat", "y.jpg,dog", "x.png,cat", "z.tiff,dog"])
    with pytest.raises(ValueError) as error:
        from_csv(path)
    assert str(error.value) == (f"2 of the 4 images listed in {path} do not exist: {path}:3: image "
                                f"{tmp_path / 'y.jpg'}, {path}:5: image {tmp_path / 'z.tiff'}")
    # none found: the images lie elsewhere
    path.write_text("image,labels\na.png,cat\nb.png,dog\n")
    with pytest.raises(ValueError, match=r"2 of the 2 images listed in .* do not exist; image paths are relative "
                                         r"to the CSV's folder .*: pass the images' folder as image_root \(the "
                                         r"command line's --image-dir\): "):
        from_csv(path)
    path.write_text('image,labels\nx.png,"cat, dog"\nx.png,cat\nx.png,"cat, dog"\nx.png,"dog,cat"\n')
    dataset = from_csv(path)
    assert dataset.warnings[0] == (f"{path}: 3 labels hold a ',' (lines 2, 4, 5; line 2: 'cat, dog'): labels are "
                                   "separated by ';' (cat;dog)")
    assert len([w for w in dataset.warnings if "','" in w]) == 1


def test_load_dataset_takes_the_images_folder_of_a_csv_or_coco_json(tmp_path):
    """One place maps the command line's --image-dir (and the Train widget's images folder) to
    the loader's argument; a folder per class given one said "from_folders() got an unexpected
    keyword argument 'image_root'"."""
    (tmp_path / "images").mkdir()
    _write_csv(tmp_path / "images", [])
    (tmp_path / "labels.csv").write_text("image,labels\nx.png,cat\ny.png,dog\n")
    dataset = load_dataset(tmp_path / "labels.csv", tmp_path / "images")
    assert [p.name for p in dataset.image_paths] == ["x.png", "y.png"] and dataset.class_names == ["cat", "dog"]
    assert dataset.image_paths[0].parent == tmp_path / "images"
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    iio.imwrite(tmp_path / "classes" / "cat" / "x.png", _rgb(1))
    with pytest.raises(ValueError, match=r"image_folder \(the command line's --image-dir\) .*images is for a COCO "
                                         r"JSON's or a CSV's images: the folder per class .*classes holds its own"):
        load_dataset(tmp_path / "classes", tmp_path / "images")
    # a mistyped folder was taken as given: every image of the CSV was named as missing in it
    with pytest.raises(ValueError) as error:
        load_dataset(tmp_path / "labels.csv", tmp_path / "imgs")
    assert str(error.value) == f"image_folder (the command line's --image-dir) {tmp_path / 'imgs'} does not exist"
    with pytest.raises(ValueError, match=r"--image-dir\) .*labels.csv is not a folder$"):
        load_dataset(tmp_path / "labels.csv", tmp_path / "labels.csv")


def test_a_file_browsers_files_in_class_folders_are_not_warned_of(tmp_path):
    """Windows leaves Thumbs.db and desktop.ini in picture folders (as macOS leaves .DS_Store,
    which was skipped): each was named in a warning, "left out 2 files that are not images",
    beside the user's real mistakes."""
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        iio.imwrite(tmp_path / name / "0.png", _rgb(len(name)))
    (tmp_path / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "dog" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (tmp_path / "DESKTOP.INI").write_text("[.ShellClassInfo]\n")
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    assert from_folders(tmp_path).warnings == []
    (tmp_path / "dog" / "notes.txt").write_text("the dogs of plate 2")
    assert from_folders(tmp_path).warnings == [
        f"{tmp_path}: left out 1 file that is not an image ({', '.join(IMAGE_SUFFIXES)}) or lies in no class "
        "folder: dog/notes.txt"]


def test_csv_columns_a_spreadsheet_adds_are_read_past(tmp_path):
    """Excel writes 'x.png,cat,' once a third column held something, and users keep a notes
    column: the header 'image,labels,' or 'image,labels,notes' was accepted, then every row was
    refused ("expected 2 columns"). Labels split by ',' without quotes still are, with the fix."""
    path = _write_csv(tmp_path, [])
    path.write_text("image,labels,\nx.png,cat,\ny.png,dog;cat,\nz.png,,\n")
    dataset = from_csv(path)
    assert dataset.class_names == ["cat", "dog"] and dataset.labels.tolist() == [[1, 0], [1, 1], [0, 0]]
    path.write_text("image,labels,notes\nx.png,cat,blurry\ny.png,dog,\n")
    assert from_csv(path).labels.tolist() == [[1, 0], [0, 1]]
    path.write_text("image,labels\nx.png,cat,dog\n")
    with pytest.raises(ValueError) as error:
        from_csv(path)
    assert str(error.value) == (f"{path}:2: expected 2 columns (image,labels); got 3: ['x.png', 'cat', 'dog']: labels "
                                "are separated by ';' (cat;dog)")
    path.write_text("image,labels,notes\nx.png,cat,blurry,dog\n")
    with pytest.raises(ValueError, match=r"labels.csv:2: expected 3 columns \(image,labels,notes\); got 4: "):
        from_csv(path)




def test_csv_missing_image_names_the_file_it_likely_means(tmp_path):
    """A CSV (or COCO JSON) typed on Windows or macOS (whose file names ignore case) names X.PNG for x.png, and
    a spreadsheet of sample ids names x for x.png: on Linux each "does not exist", with nothing
    to tell why."""
    path = _write_csv(tmp_path, ["X.PNG,cat", "y.png,dog"])
    with pytest.raises(ValueError) as error:
        from_csv(path)
    assert str(error.value) == (f"{path}:2: image {tmp_path / 'X.PNG'} does not exist; x.png does: file names "
                                "differ in upper and lower case here")
    path.write_text("image,labels\nX.PNG,cat\ny,dog\nw.png,cat\nz.png,\n")
    with pytest.raises(ValueError) as error:
        from_csv(path)
    assert str(error.value) == (
        f"3 of the 4 images listed in {path} do not exist: {path}:2: image {tmp_path / 'X.PNG'} (x.png does: file "
        f"names differ in upper and lower case here), {path}:3: image {tmp_path / 'y'} (y.png does: give the file "
        f"name with its suffix), {path}:4: image {tmp_path / 'w.png'}")
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "X.png", "width": 24, "height": 20}],
                                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4],
                                                 "area": 16, "iscrowd": 0}],
                                "categories": [{"id": 1, "name": "cat"}]}))
    with pytest.raises(ValueError) as error:
        from_coco(coco)
    assert str(error.value) == (f"image {tmp_path / 'X.png'} listed in {coco} (image id 1) does not exist; x.png "
                                "does: file names differ in upper and lower case here")

def test_csv_image_on_several_lines_is_one_image_with_the_labels_of_all(tmp_path):
    """One row per (image, class), as a long-format table is written, or rows pasted twice: each
    row was an image of its own, so x.png trained twice (as a cat, then as a dog: each row told the
    loss the other class was absent) and could be held out and trained on at once."""
    path = _write_csv(tmp_path, ["x.png,cat", "y.png,dog", "x.png,dog", "./y.png,dog", "z.png,"])
    dataset = from_csv(path)
    assert [p.name for p in dataset.image_paths] == ["x.png", "y.png", "z.png"]
    assert dataset.labels.tolist() == [[1, 1], [0, 1], [0, 0]]
    assert dataset.origins == [f"{path}:2", f"{path}:3", f"{path}:6"]
    assert dataset.warnings == [f"{path} lists 2 images again, each image taken once with the labels of all its "
                                "lines (a repeat would be trained on twice, and could be held out and trained on): "
                                "x.png at line 4 (first at line 2; labels cat;dog), y.png at line 5 (first at line 3)"]
    path.write_text("image,labels\nx.png,cat\ny.png,dog\n")
    assert from_csv(path).warnings == []

def _voc_spelled(train_json, coco128, tmp_path) -> Path:
    """coco128 train with its categories named as PASCAL VOC names them (a VOC set converted to COCO)."""
    data = json.loads(Path(train_json).read_text())
    voc = {"airplane": "aeroplane", "dining table": "diningtable", "motorcycle": "motorbike",
           "potted plant": "pottedplant", "couch": "sofa", "tv": "tvmonitor"}
    for category in data["categories"]:
        category["name"] = voc.get(category["name"], category["name"])
    path = tmp_path / "instances_voc_names.json"
    path.write_text(json.dumps(data))
    return path


def test_voc_view_takes_pascal_vocs_own_spelling(train_json, coco128, tmp_path):
    dataset = from_coco(_voc_spelled(train_json, coco128, tmp_path), coco128 / "train2017")
    voc = voc_view(dataset)
    # all 18 VOC classes coco128 train shows are kept (6 of them were dropped without a word), in VOC's order
    assert voc.class_names == [{"airplane": "aeroplane", "dining table": "diningtable", "motorcycle": "motorbike",
                                "potted plant": "pottedplant", "couch": "sofa", "tv": "tvmonitor"}.get(c, c)
                               for c in VOC_CLASSES if c not in ("cow", "sheep")]
    assert len(voc) == 97
    np.testing.assert_array_equal(voc.labels, voc_view(from_coco(train_json)).labels)


def test_a_model_class_spelt_otherwise_is_the_datasets_class_of_that_spelling(train_json, coco128, tmp_path):
    """A built-in model names the VOC classes as COCO does: evaluate and calibrate of it on a JSON in
    PASCAL VOC's spelling were refused ("rename its categories"); the classes are the same."""
    voc_spelled = from_coco(_voc_spelled(train_json, coco128, tmp_path), coco128 / "train2017")
    coco_spelled = from_coco(train_json)
    asked = ["cat", "motorcycle", "tv", "airplane"]
    relabelled, expected = voc_spelled.with_classes(asked), coco_spelled.with_classes(asked)
    assert relabelled.class_names == asked
    np.testing.assert_array_equal(relabelled.labels, expected.labels)
    assert relabelled.labels.sum(0).tolist() == [4, 4, 2, 5]  # coco128 train: cat, motorcycle, tv, airplane
    assert relabelled.category_ids == expected.category_ids  # the JSON's ids of 'motorbike', 'tvmonitor', ...
    index = int(np.flatnonzero(relabelled.labels[:, 1])[0])
    truth = relabelled.instances(index)
    np.testing.assert_array_equal(truth.masks, expected.instances(index).masks)
    assert 1 in truth.class_indices.tolist()  # its motorbike, as the model's 'motorcycle'
    # either spelling again, and through voc_view (which keeps the dataset's)
    np.testing.assert_array_equal(relabelled.with_classes(["tvmonitor"]).labels[:, 0], expected.labels[:, 2])
    np.testing.assert_array_equal(voc_view(voc_spelled).with_classes(["tv"]).labels[:, 0],
                                  voc_view(coco_spelled).with_classes(["tv"]).labels[:, 0])
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['giraffes'\] for dataset "):
        voc_spelled.with_classes(["cat", "giraffes"])


def test_voc_view_refuses_a_class_under_both_spellings(train_json, coco128, tmp_path):
    """A JSON with both 'motorcycle' and 'motorbike' kept only 'motorcycle': the images labelled
    'motorbike' alone lost their motorbike (2 of coco128 train's 4 here)."""
    data = json.loads(Path(train_json).read_text())
    motorcycle = next(c["id"] for c in data["categories"] if c["name"] == "motorcycle")
    data["categories"].append({"id": 999, "name": "motorbike", "supercategory": "vehicle"})
    images = sorted({a["image_id"] for a in data["annotations"] if a["category_id"] == motorcycle})
    assert len(images) == 4
    for annotation in data["annotations"]:
        if annotation["category_id"] == motorcycle and annotation["image_id"] in images[:2]:
            annotation["category_id"] = 999
    path = tmp_path / "both.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"has one VOC class under two names \('motorcycle' and 'motorbike': "):
        voc_view(from_coco(path, coco128 / "train2017"))


def test_stratified_split_holds_out_every_class(tmp_path):
    """8 images, 4 'round' and 4 'long', 2 held out: the random split held out two images of one
    class for some seeds, so that no class's validation AP was defined on any epoch. The split
    ``train`` (and ``calibrate --held-out``) makes holds out one of each, the same for a seed."""
    from napari_prm.train import checkpoint_held_out, training_split

    dataset = _class_csv(tmp_path, ["round", "long"] * 4)
    one_class = 0
    for seed in range(10):
        split = training_split(dataset, 0.2, seed)
        held = split.held_out
        assert len(held) == 2 and held.labels.sum(0).tolist() == [1, 1], seed
        assert training_split(dataset, 0.2, seed).held_out.image_paths == held.image_paths
        state = {"config": {"val_fraction": 0.2, "seed": seed}, "split_rule": split.split_rule}
        assert checkpoint_held_out(dataset, state).held_out.image_paths == held.image_paths
        one_class += dataset.split(0.2, seed=seed)[1].labels.sum(0).max() == 2  # the random split's
        # a checkpoint of split rule 2 (the random split) is resumed and calibrated on its own split
        rule_2 = checkpoint_held_out(dataset, state | {"split_rule": 2}).held_out.image_paths
        assert rule_2 == dataset.split(0.2, seed=seed)[1].image_paths
    assert one_class >= 3
    # a class with two images first, then each by its share, images of no class too; a class's only image never
    dataset = _class_csv(tmp_path, ["a", "a"] + ["b"] * 6 + ["c"] * 6 + [""] * 6 + ["d"])
    for seed in range(6):
        train, val = dataset.split(0.2, seed=seed, stratify=True)
        assert len(val) == 4 and val.labels.sum(0).tolist() == [1, 1, 1, 0], seed
        assert dataset.untrained_classes(train) == [] and (val.labels.sum(1) == 0).sum() == 1
        train, val = dataset.split(0.4, seed=seed, stratify=True)
        shares = val.labels.sum(0).tolist()[1:3] + [(val.labels.sum(1) == 0).sum()]
        assert len(val) == 8 and val.labels[:, 0].sum() == 1 and sorted(shares) == [2, 2, 3], seed
