"""PASCAL VOC devkits as datasets (`napari_prm.data.from_voc`): a synthetic ``VOCdevkit/VOC2012``
with the real XML schema and palette segmentation PNGs, written in tmp_path."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data, transform

from napari_prm.cli import main
from napari_prm.data import GroundTruth, from_folders, from_voc, load_dataset, voc_colour_map, voc_view
from napari_prm.evaluate import evaluate
from napari_prm.predict import Prediction
from napari_prm.retrieval import Instance

SIZE = (48, 64)
#: Each image: its sample, its XML objects (name, difficult, VOC class number, box y0, y1, x0, x1);
#: the segmented ones (SegmentationObject value = the object's place in the XML) and the others.
IMAGES = {
    "2007_000001": ("chelsea", [("cat", 0, 8, 4, 30, 4, 30), ("person", 1, 15, 30, 44, 36, 60)]),
    "2007_000002": ("coffee", [("motorbike", 0, 14, 6, 24, 8, 40), ("cat", 0, 8, 28, 44, 30, 58)]),
    "2007_000003": ("astronaut", [("person", 0, 15, 2, 40, 2, 28), ("aeroplane", 1, 1, 10, 30, 34, 60)]),
    "2008_000004": ("rocket", [("aeroplane", 0, 1, 4, 40, 10, 50)]),
}
SEGMENTED = ("2007_000001", "2007_000002", "2007_000003")


def voc_palette() -> list[int]:
    """PASCAL VOC's colour map (index 255, void, is cream: 224, 224, 192)."""
    colours = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours += [red, green, blue]
    return colours


def _palette_png(values: np.ndarray, path: Path) -> None:
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    image.save(path)


def _xml(image_id: str, objects) -> str:
    parts = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, difficult, _, y0, y1, x0, x1 in objects)
    return (f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>"
            "<source><database>The VOC2007 Database</database></source>"
            f"<size><width>{SIZE[1]}</width><height>{SIZE[0]}</height><depth>3</depth></size>"
            f"<segmented>{int(image_id in SEGMENTED)}</segmented>{parts}</annotation>\n")


def instance_masks(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The instances of a segmented image (boxes, later ones over earlier) and its void ring."""
    objects = np.zeros(SIZE, np.uint8)
    for number, (_, _, _, y0, y1, x0, x1) in enumerate(IMAGES[image_id][1], 1):
        objects[y0:y1, x0:x1] = number
    void = np.zeros(SIZE, bool)
    for number in range(1, len(IMAGES[image_id][1]) + 1):  # a 1-pixel outline, as VOC's 5-pixel one
        inside = objects == number
        grown = inside.copy()
        grown[1:] |= inside[:-1]
        grown[:-1] |= inside[1:]
        grown[:, 1:] |= inside[:, :-1]
        grown[:, :-1] |= inside[:, 1:]
        void |= grown & (objects == 0)
    masks = np.array([objects == n for n in range(1, len(IMAGES[image_id][1]) + 1)])
    return masks, void


def write_voc_devkit(parent: Path) -> Path:
    """``parent/VOCdevkit/VOC2012`` with 4 images, 3 of them segmented; returns the year folder."""
    root = parent / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationObject",
                   "SegmentationClass"):
        (root / folder).mkdir(parents=True)
    for image_id, (sample, objects) in IMAGES.items():
        image = getattr(data, sample)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
        small = (transform.resize(image, SIZE, anti_aliasing=True) * 255).astype(np.uint8)
        Image.fromarray(small).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, objects))
        if image_id in SEGMENTED:
            masks, void = instance_masks(image_id)
            values = np.zeros(SIZE, np.uint8)
            classes = np.zeros(SIZE, np.uint8)
            for number, (mask, item) in enumerate(zip(masks, objects), 1):
                values[mask], classes[mask] = number, item[2]
            values[void] = classes[void] = 255
            _palette_png(values, root / "SegmentationObject" / f"{image_id}.png")
            _palette_png(classes, root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{i}\n" for i in SEGMENTED))
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i in IMAGES))
    return root


@pytest.fixture
def devkit(tmp_path) -> Path:
    return write_voc_devkit(tmp_path)


def test_labels_of_a_split_list_and_of_the_year_folder(devkit):
    val = load_dataset(devkit / "ImageSets" / "Segmentation" / "val.txt")
    # VOC's own spelling, in VOC's order; a difficult object is there: its class is a label (2007_000001's
    # person, 2007_000003's aeroplane), as WILDCAT's training of the VOC lists' 0 (difficult) as present
    assert val.class_names == ["aeroplane", "cat", "motorbike", "person"]
    assert val.labels.tolist() == [[0, 1, 0, 1], [0, 1, 1, 0], [1, 0, 0, 1]]
    assert [p.name for p in val.image_paths] == [f"{i}.jpg" for i in SEGMENTED]
    assert val.origins[1] == f"{devkit / 'ImageSets' / 'Segmentation' / 'val.txt'}:2"
    assert val.read_rgb(0).shape == (*SIZE, 3)
    plain = from_voc(devkit / "ImageSets" / "Segmentation" / "val.txt", include_difficult=False)
    assert plain.class_names == ["cat", "motorbike", "person"]  # 'aeroplane' of val is difficult only
    assert plain.labels.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    for every in (load_dataset(devkit), load_dataset(devkit / "ImageSets" / "Main" / "train.txt")):
        assert [p.stem for p in every.image_paths] == list(IMAGES)  # the year folder: every image with an XML
        assert every.class_names == ["aeroplane", "cat", "motorbike", "person"]
        assert every.labels.tolist() == [[0, 1, 0, 1], [0, 1, 1, 0], [1, 0, 0, 1], [1, 0, 0, 0]]
    assert load_dataset(devkit).origins[3] == str(devkit / "Annotations" / "2008_000004.xml")
    assert voc_view(load_dataset(devkit)).class_names == ["aeroplane", "cat", "motorbike", "person"]


def test_a_built_in_models_coco_names_take_the_voc_spelt_classes(devkit):
    val = load_dataset(devkit / "ImageSets" / "Segmentation" / "val.txt")
    named = val.with_classes(["airplane", "motorcycle", "cat", "cow"])  # cow: a VOC class no image shows
    assert named.labels.tolist() == [[0, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0]]  # 2007_000003's aeroplane: difficult
    truth = named.instances(1)  # motorbike (SegmentationClass 14) is the model's 'motorcycle'
    assert truth.class_indices.tolist() == [1, 2]
    assert named.instances(2).class_indices.tolist() == [0]  # the aeroplane; the person is no class of these
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['giraffe'\] for dataset .*val.txt"):
        val.with_classes(["cat", "giraffe"])


def test_instances_from_the_segmentation_pngs(devkit):
    val = load_dataset(devkit / "ImageSets" / "Segmentation" / "val.txt")
    assert val.has_masks and val.images_without_masks() == []
    for index, image_id in enumerate(SEGMENTED):
        truth = val.instances(index)
        masks, void = instance_masks(image_id)
        names = [item[0] for item in IMAGES[image_id][1]]
        keep = [k for k, name in enumerate(names) if name in val.class_names]
        np.testing.assert_array_equal(truth.masks, masks[keep])
        assert truth.class_indices.tolist() == [val.class_names.index(names[k]) for k in keep]
        np.testing.assert_array_equal(truth.ignore, void)
        assert void.sum() > 0 and not truth.iscrowd.any()
    everything = load_dataset(devkit)
    assert everything.images_without_masks() == [3]
    with pytest.raises(ValueError, match=r"2008_000004.jpg \(declared at .*2008_000004.xml\) has no instance masks"):
        everything.instances(3)
    assert everything.subset([3]).has_masks is False
    assert everything.subset([3, 0]).images_without_masks() == [0]



def test_segmentation_pngs_saved_as_rgb_colours_are_read_through_the_colour_map(devkit):
    """Some converters save VOC's segmentation PNGs as RGB colours, not palette indices: they were
    refused ("expected a 2-D label image"); they give the same instances and void as the palette PNGs."""
    assert voc_colour_map().ravel().tolist() == voc_palette()  # the tests' own writing of VOC's colour map
    val = load_dataset(devkit / "ImageSets" / "Segmentation" / "val.txt")
    before = val.instances(1)
    for folder in ("SegmentationObject", "SegmentationClass"):
        path = devkit / folder / "2007_000002.png"
        Image.open(path).convert("RGB").save(path)
        assert np.asarray(Image.open(path)).ndim == 3
    after = val.instances(1)
    np.testing.assert_array_equal(after.masks, before.masks)
    np.testing.assert_array_equal(after.class_indices, before.class_indices)
    np.testing.assert_array_equal(after.ignore, before.ignore)
    assert len(after.masks) == 2 and after.ignore.any()
    path = devkit / "SegmentationObject" / "2007_000002.png"
    rgb = np.asarray(Image.open(path)).copy()
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    with pytest.raises(ValueError, match=r"SegmentationObject/2007_000002.png: an RGB segmentation PNG whose colours "
                                         r"are not all PASCAL VOC's colour map \(1 others: \(1, 2, 3\)\)"):
        val.instances(1)

def _prediction(truth: GroundTruth, class_names, masks=None, classes=None) -> Prediction:
    """A prediction of ``masks`` (default: the ground truth's), one instance (score 1) and one peak each."""
    masks = truth.masks if masks is None else masks
    classes = truth.class_indices if classes is None else np.asarray(classes)
    prms = (masks / np.maximum(masks.sum((1, 2), keepdims=True), 1)).astype(np.float32)
    peaks = np.array([np.argwhere(m)[len(np.argwhere(m)) // 2] for m in masks], np.float64).reshape(-1, 2)
    instances = [Instance(int(c), 1.0, m, p, k) for k, (m, c, p) in enumerate(zip(masks, classes, prms))]
    scores = np.where(np.isin(np.arange(len(class_names)), classes), 1.0, -1.0).astype(np.float32)
    return Prediction(class_names=list(class_names), scores=scores, crms=np.zeros((len(class_names), 2, 2), np.float32),
                      peaks=peaks, peak_classes=classes, peak_values=np.ones(len(classes), np.float32),
                      prms=prms.reshape((-1,) + SIZE), instances=instances)


def test_evaluate_scores_predictions_against_the_voc_instances(devkit):
    dataset = load_dataset(devkit)  # 2008_000004 has no segmentation: left out
    truths = [dataset.instances(i) if i < 3 else GroundTruth(np.zeros((0, *SIZE), bool), np.zeros(0, int),
                                                              np.zeros(0, bool)) for i in range(4)]
    exact = evaluate([_prediction(t, dataset.class_names) for t in truths], dataset)
    assert exact["num_images"] == 3 and exact["num_instances"] == 6 == exact["num_predicted_instances"]
    assert exact["mAP_r"] == pytest.approx({0.25: 1.0, 0.5: 1.0, 0.75: 1.0}) and exact["ABO"] == pytest.approx(1.0)
    # the void outline is ignored: a prediction that covers it still matches its instance exactly
    voids = [instance_masks(i)[1] for i in SEGMENTED]
    grown = [_prediction(t, dataset.class_names, masks=t.masks | v) for t, v in zip(truths, voids)] + [
        _prediction(truths[3], dataset.class_names)]
    assert evaluate(grown, dataset)["ABO"] == pytest.approx(1.0)
    assert evaluate(grown, dataset)["mAP_r"][0.75] == pytest.approx(1.0)
    # a wrong class: cat for every instance (cat's instances are found, no other class's)
    cat = dataset.class_names.index("cat")
    wrong = [_prediction(t, dataset.class_names, classes=np.full(len(t.masks), cat)) for t in truths]
    results = evaluate(wrong, dataset)
    assert results["AP_r_per_class"]["person"][0.5] == 0.0 and results["AP_r_per_class"]["motorbike"][0.5] == 0.0
    everything_wrong = [_prediction(t, dataset.class_names, classes=(t.class_indices + 1) % 4) for t in truths]
    assert evaluate(everything_wrong, dataset)["mAP_r"][0.5] == 0.0


def test_errors_name_the_file(devkit):
    val = devkit / "ImageSets" / "Segmentation" / "val.txt"
    (devkit / "ImageSets" / "Segmentation" / "broken.txt").write_text("2007_000001\n2009_000099\n")
    with pytest.raises(ValueError, match=r"1 image id of .*broken.txt has no annotation file: .*broken.txt:2: "
                                         r".*Annotations/2009_000099.xml"):
        load_dataset(devkit / "ImageSets" / "Segmentation" / "broken.txt")
    (devkit / "JPEGImages" / "2007_000002.jpg").unlink()
    with pytest.raises(ValueError, match=r"1 image of .*val.txt does not exist: .*val.txt:2: .*JPEGImages/"
                                         r"2007_000002.jpg"):
        load_dataset(val)
    (devkit / "Annotations" / "2007_000003.xml").write_text("<annotation><object><name>cat</name></object>")
    with pytest.raises(ValueError, match=r"cannot read PASCAL VOC annotation .*Annotations/2007_000003.xml: "):
        load_dataset(val)
    (devkit / "Annotations" / "2007_000003.xml").write_text("<annotation><object><pose>x</pose></object>"
                                                            "</annotation>")
    with pytest.raises(ValueError, match=r"PASCAL VOC annotation .*2007_000003.xml: object 1 has no <name>"):
        load_dataset(val)
    (devkit / "SegmentationClass" / "2007_000001.png").unlink()
    with pytest.raises(ValueError, match=r"SegmentationObject/2007_000001.png has no companion .*SegmentationClass/"
                                         r"2007_000001.png"):
        load_dataset(devkit / "ImageSets" / "Main" / "train.txt")
    with pytest.raises(ValueError, match=r"--image-dir\) .* is for a COCO JSON's or a CSV's images: the PASCAL VOC "
                                         r"dataset .*val.txt holds its own"):
        load_dataset(val, devkit / "JPEGImages")


def test_a_palette_png_instance_of_an_unknown_class_names_the_file(devkit):
    path = devkit / "SegmentationClass" / "2007_000001.png"
    values = np.array(Image.open(path))
    values[values == 8] = 21
    _palette_png(values, path)
    dataset = load_dataset(devkit / "ImageSets" / "Segmentation" / "val.txt")
    with pytest.raises(ValueError, match=r"SegmentationClass/2007_000001.png: class 21 is none of the 20 VOC classes"):
        dataset.instances(0)


def test_a_voc_devkit_is_no_folder_per_class(devkit, capsys):
    """A devkit folder was read as a folder per class: VOCdevkit as one class 'VOC2012' of every
    JPEG and segmentation PNG (6 images), VOC2012's folders as classes ('Annotations' refused only
    for holding no image)."""
    for folder in (devkit.parent, devkit):
        with pytest.raises(ValueError, match=r"is no folder per class: .*VOC2012 is a PASCAL VOC devkit's year folder"):
            from_folders(folder)
    with pytest.raises(ValueError, match=r"VOCdevkit is no folder per class: .*VOC2012 is a PASCAL VOC devkit's"):
        load_dataset(devkit.parent)
    assert len(load_dataset(devkit)) == 4  # the year folder is a PASCAL VOC dataset
    assert main(["train", str(devkit.parent), "--model", "tiny", "--out", str(devkit.parent / "m.pt")]) == 2
    assert "VOC2012 is a PASCAL VOC devkit's year folder; give it (or a split list" in capsys.readouterr().err


def test_cli_evaluate_on_a_voc_year_folder_says_which_images_lack_masks(devkit, tiny_checkpoint, capsys):
    """The tiny model's classes are cat, dog and bird: only the cat instances are scored."""
    report = devkit.parent / "report.json"
    assert main(["evaluate", str(devkit), "--model", str(tiny_checkpoint), "--proposals", "prm",
                 "--json", str(report)]) == 0
    captured = capsys.readouterr()
    assert ("1 of the dataset's 4 images has no instance masks (no SegmentationObject PNG), left out: "
            "2008_000004.jpg") in captured.err + captured.out
    results = json.loads(report.read_text())
    assert results["num_images"] == 3 and results["num_instances"] == 2  # the two cats


def test_cli_evaluate_of_imagenet_voc_on_a_voc_split(devkit, capsys):
    """The built-in model names VOC's classes as COCO does ('motorcycle'); the devkit as VOC does."""
    report = devkit.parent / "report.json"
    assert main(["evaluate", str(devkit / "ImageSets" / "Segmentation" / "val.txt"), "--model", "imagenet-voc",
                 "--proposals", "prm", "--json", str(report)]) == 0
    results = json.loads(report.read_text())
    # 2 cats, the motorbike and the difficult aeroplane (the model has no person)
    assert results["num_images"] == 3 and results["num_instances"] == 4
    assert "motorcycle" in results["classes"] and "motorbike" not in results["classes"]
    assert 0 < results["classification_AP"]["motorcycle"] <= 1  # 2007_000002 is its positive
    assert results["classification_AP"]["cow"] is None  # no cow: no AP


def test_fine_tuning_a_built_in_model_keeps_its_rows_of_the_voc_spelt_classes():
    """train --model imagenet-voc on a devkit kept the rows of 'cat' only: 'aeroplane' and
    'motorbike' (the built-in model's 'airplane', 'motorcycle') started from scratch."""
    from napari_prm import load_model
    from napari_prm.train import _start_model, builtin_start_note, kept_classes

    classes = ["aeroplane", "cat", "motorbike", "person"]
    builtin = load_model("imagenet-voc")
    assert kept_classes(builtin.class_names, classes) == ["aeroplane", "cat", "motorbike"]
    model = _start_model("imagenet-voc", classes, None, 0)
    rows, old = model.network.fcn.classifier.weight, builtin.network.fcn.classifier.weight
    for row, name in ((0, "airplane"), (1, "cat"), (2, "motorcycle")):
        np.testing.assert_array_equal(rows[row].detach().numpy(), old[builtin.class_names.index(name)].detach().numpy())
    assert not np.allclose(rows[3].detach().numpy(), old[0].detach().numpy())
    assert builtin_start_note(classes).startswith("3 of the dataset's 4 classes ('aeroplane', 'cat', 'motorbike') are")


def test_a_voc_devkit_gives_corrections_with_its_void_ignored(devkit, tmp_path):
    """refine/evaluate --masks VOC2012 was refused (no <stem>_labels.tif in it): its segmentation
    PNGs are corrections, void their ignored pixels; scored as such they give evaluate's figures."""
    from napari_prm.refine import IGNORE, correction_targets, match_corrections

    images = load_dataset(devkit / "ImageSets" / "Main" / "train.txt")  # 4 images, one not segmented
    classes = ["cat", "motorcycle", "dog"]  # a model's: motorcycle is the devkit's motorbike
    matched, unmatched = match_corrections(devkit, classes, images.image_paths)
    assert sorted(matched) == [0, 1, 2] and unmatched == []  # 2008_000004 has no PNG: no correction
    for index, image_id in enumerate(SEGMENTED):
        correction = matched[index]
        masks, void = instance_masks(image_id)
        np.testing.assert_array_equal(correction.ignore, void)
        assert correction.image_path == images.image_paths[index]
        names = [item[0] for item in IMAGES[image_id][1]]
        expected = [{"cat": 0, "motorbike": 1}.get(name, -1) for name in names]
        assert [correction.label_classes[n] for n in range(1, len(names) + 1)] == expected
        np.testing.assert_array_equal(correction.labels[void], 0)
        truth = correction.instances()
        keep = [k for k, c in enumerate(expected) if c >= 0]
        np.testing.assert_array_equal(truth.masks, masks[keep])
        np.testing.assert_array_equal(truth.ignore, void)
    # a split list gives its images only; images of no DATASET image are unmatched, by file name
    val = devkit / "ImageSets" / "Segmentation" / "val.txt"
    partial, unmatched = match_corrections(val, classes, images.image_paths[1:2])
    assert list(partial) == [0] and unmatched == ["2007_000001.jpg", "2007_000003.jpg"]
    # evaluated against them, predictions that cover the void score as against the devkit itself
    dataset = load_dataset(val).with_classes(classes)
    grown = [_prediction(dataset.instances(i), classes, masks=dataset.instances(i).masks | instance_masks(image_id)[1])
             for i, image_id in enumerate(SEGMENTED)]
    direct = evaluate(grown, dataset)
    corrected = evaluate(grown, dataset, ground_truth=match_corrections(val, classes, dataset.image_paths)[0])
    assert direct["ABO"] == pytest.approx(1.0) == corrected["ABO"]
    assert corrected["mAP_r"] == direct["mAP_r"] == pytest.approx({0.25: 1.0, 0.5: 1.0, 0.75: 1.0})
    # the head learns nothing on the void
    correction = matched[0]
    targets = correction_targets(correction.labels, correction.label_classes, np.ones((1, *SIZE), np.float32) *
                                 (correction.labels == 1)[None], [0], SIZE, ignore=correction.ignore)
    assert (targets[0][correction.ignore] == IGNORE).all() and targets[0][correction.labels == 1].all()


def test_a_prm_on_an_object_and_its_void_outline_is_the_objects(devkit):
    """A peak whose PRM lay on an object and on its void outline counted the outline as background:
    with more of its mass there, the peak stood for the background, so it learnt nothing (an empty
    mask with negatives) and its object got a peak added as unrepresented. Void counts for none."""
    from napari_prm.refine import IGNORE, correction_targets, match_corrections
    from napari_prm.refine.targets import peak_owners

    classes = ["cat", "motorcycle"]
    (correction,) = match_corrections(devkit, classes, [devkit / "JPEGImages" / "2007_000001.jpg"])[0].values()
    cat = correction.labels == 1  # 26×26 pixels
    # 169 on the cat, 8 on each void pixel (the outlines of the cat and of the person): most on the void
    prm = np.where(correction.ignore, 8.0, 0.0) + np.where(cat, 0.25, 0.0)
    prms = prm[None].astype(np.float32)
    assert prm[cat].sum() == 169 and prm[correction.ignore].sum() > 169
    owners, shares = peak_owners(prms, correction.labels, ignore=correction.ignore)
    assert owners.tolist() == [1] and shares.tolist() == [1.0]
    assert peak_owners(prms, correction.labels)[0].tolist() == [0]  # the outline as background
    for negatives in (False, True):
        (target,) = correction_targets(correction.labels, correction.label_classes, prms, [0], SIZE,
                                       negatives=negatives, ignore=correction.ignore)
        np.testing.assert_array_equal(target[cat], 1)
        np.testing.assert_array_equal(target[correction.ignore], IGNORE)
        np.testing.assert_array_equal(target[~cat & ~correction.ignore], 0)


def test_cli_refine_takes_a_voc_devkit_as_masks(devkit, tiny_checkpoint, capsys):
    """The repro: refine DS --masks VOCdevkit/VOC2012 said it held no <stem>_labels.tif."""
    out = devkit.parent / "refined.pt"
    assert main(["refine", str(devkit / "ImageSets" / "Main" / "train.txt"), "--model", str(tiny_checkpoint),
                 "--masks", str(devkit), "--no-self-training", "--epochs", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "3 corrected image(s)" in captured.err + captured.out and out.is_file()


def test_a_segmentation_png_of_another_size_than_its_jpeg_is_named(devkit, tiny_checkpoint):
    """evaluate said 'masks differ in size: (24, 32) and (48, 64)', naming no file."""
    for folder in ("SegmentationObject", "SegmentationClass"):
        path = devkit / folder / "2007_000002.png"
        Image.open(path).resize((32, 24), Image.Resampling.NEAREST).save(path)
    dataset = load_dataset(devkit / "ImageSets" / "Segmentation" / "val.txt")
    with pytest.raises(ValueError, match=r"image .*2007_000002.jpg is 48×64 but its instance masks "
                                         r"\(.*SegmentationObject/2007_000002.png\) are 24×32"):
        evaluate(str(tiny_checkpoint), dataset, proposals="prm")
    # predictions given (evaluate --predictions) said the image was the PNG's size: "image ...jpg is (24, 32)"
    predictions = [_prediction(GroundTruth(np.zeros((0, *SIZE), bool), np.zeros(0, np.int64), np.zeros(0, bool)),
                               dataset.class_names) for _ in range(len(dataset))]
    with pytest.raises(ValueError, match=r"prediction 1 is 48×64 but the instance masks of image .*2007_000002.jpg "
                                         r"\(.*SegmentationObject/2007_000002.png\) are 24×32"):
        evaluate(predictions, dataset)


def test_a_split_list_that_repeats_ids_takes_each_image_once(devkit):
    """A list repeating ids (lists concatenated) gave the image twice: counted twice by evaluate,
    and possibly held out and trained on."""
    lists = devkit / "ImageSets" / "Segmentation"
    (lists / "trainval.txt").write_text("2007_000001\n2007_000002\n2007_000001\n2007_000003\n2007_000002\n")
    dataset = load_dataset(lists / "trainval.txt")
    assert [p.stem for p in dataset.image_paths] == list(SEGMENTED)
    assert dataset.origins[2] == f"{lists / 'trainval.txt'}:4"
    assert dataset.warnings == [f"{lists / 'trainval.txt'} lists 2 image ids again, each image taken once (a repeat "
                                "would count twice in evaluation, and could be held out and trained on): "
                                "2007_000001 at line 3 (first at line 1), 2007_000002 at line 5 (first at line 2)"]
    assert load_dataset(lists / "val.txt").warnings == []


def test_voc_keeps_a_devkit_image_of_difficult_objects_only(devkit):
    """--voc dropped the images whose objects are all difficult (no label), and with them their
    instances from evaluation; without --voc they were evaluated."""
    xml = devkit / "Annotations" / "2007_000003.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>"))
    val = load_dataset(devkit / "ImageSets" / "Segmentation" / "val.txt", include_difficult=False)
    assert val.labels[2].sum() == 0  # person and aeroplane both difficult: no label
    view = voc_view(val)
    assert [p.stem for p in view.image_paths] == list(SEGMENTED) and view.class_names == ["cat", "motorbike"]
    assert len(view.with_classes(["cat", "motorbike", "person"]).instances(2).masks) == 1  # its person
    assert [p.stem for p in voc_view(val, drop_unlabeled=False).image_paths] == list(SEGMENTED)


def test_a_class_name_written_two_ways_in_the_xmls_is_warned_of(devkit):
    xml = devkit / "Annotations" / "2007_000003.xml"
    xml.write_text(xml.read_text().replace("<name>person</name>", "<name>Person</name>"))
    dataset = load_dataset(devkit, include_difficult=False)
    assert dataset.class_names == ["aeroplane", "cat", "motorbike", "Person"]  # 2007_000001's person is difficult
    (devkit / "ImageSets" / "Main" / "two.txt").write_text("2007_000001\n2007_000003\n")
    xml = devkit / "Annotations" / "2007_000001.xml"
    xml.write_text(xml.read_text().replace("<difficult>1</difficult>", "<difficult>0</difficult>"))
    dataset = load_dataset(devkit / "ImageSets" / "Main" / "two.txt")
    assert dataset.warnings == ["classes 'person' and 'Person' differ only in case: one class written two ways?"]
    # VOC's own classes one edit apart (a car in one image, cats in two) are no typo
    xml = devkit / "Annotations" / "2008_000004.xml"
    xml.write_text(xml.read_text().replace("<name>aeroplane</name>", "<name>car</name>"))
    assert load_dataset(devkit).class_names == ["aeroplane", "car", "cat", "motorbike", "person", "Person"]
    assert load_dataset(devkit).warnings == ["classes 'person' and 'Person' differ only in case: one class written "
                                             "two ways?"]


def test_cli_evaluate_of_a_main_list_without_segmentations_says_where_they_are(devkit, tiny_checkpoint, capsys):
    (devkit / "ImageSets" / "Main" / "unsegmented.txt").write_text("2008_000004\n")
    assert main(["evaluate", str(devkit / "ImageSets" / "Main" / "unsegmented.txt"), "--model",
                 str(tiny_checkpoint)]) == 0
    captured = capsys.readouterr()
    assert (f"image-level labels only (none of its images has a SegmentationObject PNG: the devkit segments those "
            f"of {devkit / 'ImageSets' / 'Segmentation'}'s lists)") in captured.err + captured.out


def test_masks_of_a_devkit_list_without_segmentations_says_where_they_are(devkit, tiny_checkpoint, capsys):
    """evaluate/refine --masks of an ImageSets/Main list of unsegmented images said that no export
    matched an image of the dataset, followed by an empty list of names."""
    unsegmented = devkit / "ImageSets" / "Main" / "unsegmented.txt"
    unsegmented.write_text("2008_000004\n")
    assert main(["evaluate", str(devkit / "ImageSets" / "Main" / "train.txt"), "--model", str(tiny_checkpoint),
                 "--masks", str(unsegmented)]) == 2
    captured = capsys.readouterr()
    assert (f"--masks: PASCAL VOC {unsegmented}: none of its 1 image(s) has a SegmentationObject PNG (the devkit "
            f"segments those of {devkit / 'ImageSets' / 'Segmentation'}'s lists)") in captured.err


def test_masks_of_a_devkit_name_the_first_ten_images_of_no_dataset_image(devkit, tiny_checkpoint, capsys):
    """--masks VOC2012 on a DATASET of a few of its images named each of the devkit's other segmented
    images in the warning (a devkit's thousands); the first ten are named, and how many more."""
    import shutil

    copies = [f"2009_{n:06d}" for n in range(12)]
    for image_id in copies:  # 2007_000001 again under other ids
        for folder, suffix in (("JPEGImages", "jpg"), ("Annotations", "xml"), ("SegmentationObject", "png"),
                               ("SegmentationClass", "png")):
            shutil.copy(devkit / folder / f"2007_000001.{suffix}", devkit / folder / f"{image_id}.{suffix}")
    (devkit / "ImageSets" / "Main" / "one.txt").write_text("2007_000002\n")
    assert main(["evaluate", str(devkit / "ImageSets" / "Main" / "one.txt"), "--model", str(tiny_checkpoint),
                 "--masks", str(devkit), "--proposals", "prm"]) == 0
    unmatched = ["2007_000001.jpg", "2007_000003.jpg", *(f"{i}.jpg" for i in copies)]  # 14, in id order
    assert (f"warning: --masks: 14 exports match no image of the dataset, left out: {', '.join(unmatched[:10])}, "
            "... (4 more)\n") in capsys.readouterr().err


def test_masks_of_a_devkit_list_say_what_its_reading_warns_of(devkit, tiny_checkpoint, capsys):
    """evaluate --masks LIST of a devkit list repeating ids said nothing of it (from_voc's warnings were
    read only for DATASET); they are said once, also when DATASET is the same list."""
    from napari_prm.refine import load_corrections

    lists = devkit / "ImageSets" / "Segmentation"
    (lists / "twice.txt").write_text("2007_000001\n2007_000002\n2007_000001\n")
    dataset = devkit / "ImageSets" / "Main" / "train.txt"
    assert main(["evaluate", str(dataset), "--model", str(tiny_checkpoint), "--masks", str(lists / "twice.txt"),
                 "--proposals", "prm"]) == 0
    said = (f"warning: --masks: {lists / 'twice.txt'} lists 1 image id again, each image taken once (a repeat "
            "would count twice in evaluation, and could be held out and trained on): 2007_000001 at line 3 "
            "(first at line 1)")
    assert said in capsys.readouterr().err
    assert main(["evaluate", str(lists / "twice.txt"), "--model", str(tiny_checkpoint), "--masks",
                 str(lists / "twice.txt"), "--proposals", "prm"]) == 0
    err = capsys.readouterr().err
    assert err.count("lists 1 image id again") == 1 and said not in err
    # in Python: a list to collect them, else a UserWarning
    collected = []
    load_corrections(lists / "twice.txt", ["cat"], warnings_to=collected)
    assert collected == [said.removeprefix("warning: --masks: ")]
    with pytest.warns(UserWarning, match="lists 1 image id again"):
        load_corrections(lists / "twice.txt", ["cat"])
