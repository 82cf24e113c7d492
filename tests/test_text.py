from napari_prm._text import plural


def test_plural_is_singular_for_one():
    """Messages said "1 instances", "1 peaks"."""
    assert [plural(n, "instance") for n in (0, 1, 2)] == ["0 instances", "1 instance", "2 instances"]
    assert plural(1, "class") == "1 class" and plural(3, "class") == "3 classes"
    assert plural(2, "hand-placed peak") == "2 hand-placed peaks"
    assert plural(2, "child", "children") == "2 children"


def test_plural_of_epoch():
    """`refine` ended with "checkpoint: refined.pt (2 epoches)": the "es after ch" rule is
    wrong where "ch" sounds like "k"."""
    assert plural(2, "epoch") == "2 epochs"
    assert plural(2, "batch") == "2 batches"
