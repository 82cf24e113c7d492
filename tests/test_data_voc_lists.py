"""PASCAL VOC split lists as users have them: written on Windows (a BOM, CRLF, blank lines) and given
by a relative path from inside the devkit (the synthetic devkit of test_data_voc)."""

import pytest

from napari_prm.cli import main
from napari_prm.data import load_dataset, voc_split_root
from test_data_voc import SEGMENTED, write_voc_devkit


@pytest.fixture
def devkit(tmp_path):
    return write_voc_devkit(tmp_path)


def test_a_list_saved_by_notepad_reads_as_the_plain_one(devkit):
    """A UTF-8 BOM made the first id '\\ufeff2007_000001', refused as an id without XML."""
    lists = devkit / "ImageSets" / "Segmentation"
    (lists / "notepad.txt").write_bytes(("\ufeff" + "\r\n".join(SEGMENTED[:2]) + "\r\n\r\n  \r\n"
                                         + f"  {SEGMENTED[2]} \r\n").encode("utf-8"))
    plain, notepad = load_dataset(lists / "val.txt"), load_dataset(lists / "notepad.txt")
    assert [p.name for p in notepad.image_paths] == [f"{i}.jpg" for i in SEGMENTED]
    assert notepad.class_names == plain.class_names and notepad.labels.tolist() == plain.labels.tolist()
    assert notepad.origins == [f"{lists / 'notepad.txt'}:{line}" for line in (1, 2, 5)]


def test_a_split_list_given_relative_to_its_own_folder(devkit, monkeypatch, capsys):
    """'val.txt' given in ImageSets/Segmentation (or 'Segmentation/val.txt' in ImageSets, '../Main/train.txt')
    reached no ImageSets in its path as given: 'cannot tell the dataset format'."""
    monkeypatch.chdir(devkit / "ImageSets" / "Segmentation")
    for given, count in (("val.txt", 3), ("../Main/train.txt", 4)):
        assert voc_split_root(given).resolve() == devkit.resolve()
        dataset = load_dataset(given)
        assert [p.stem for p in dataset.image_paths][:3] == list(SEGMENTED) and len(dataset) == count
        assert dataset.instances(0).masks.shape[0] == 2  # the cat and the (difficult) person of 2007_000001
    monkeypatch.chdir(devkit / "ImageSets")
    assert len(load_dataset("Segmentation/val.txt")) == 3
    assert main(["evaluate", "Segmentation/val.txt", "--predictions", "nowhere"]) == 2  # a VOC dataset all the same
    assert "nowhere does not exist" in capsys.readouterr().err
    assert voc_split_root("notes.txt") is None  # ImageSets itself holds no split list
