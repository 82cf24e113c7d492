import pickle

from napari_prm._text import Worded, for_command_line, for_widget, in_front_end_words, plural, worded, worded_sentences


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


def test_a_worded_message_is_the_librarys_string_and_carries_the_command_lines():
    text = Worded("hold out more (val_fraction)", "hold out more (--val-fraction)")
    assert text == "hold out more (val_fraction)" and for_command_line(text) == "hold out more (--val-fraction)"
    assert for_command_line("plain") == "plain"
    both = worded_sentences([text, "plain"])
    assert both == "hold out more (val_fraction). Plain." and for_command_line(both) == (
        "hold out more (--val-fraction). Plain.")
    assert for_command_line(worded("with TTA, {}", text)) == "with TTA, hold out more (--val-fraction)"
    back = pickle.loads(pickle.dumps(text))  # a worker's result keeps both
    assert back == text and for_command_line(back) == text.command_line


def test_a_worded_message_carries_the_widgets_wording_through_sentences_and_templates():
    """Advice naming settings the widgets do not have (``val_fraction``) was shown there as the library
    words it: a third wording, the widgets', goes with the message as the command line's does."""
    text = Worded("hold out more (val_fraction)", "hold out more (--val-fraction)", "add images (Train)")
    assert text == "hold out more (val_fraction)" and for_widget(text) == "add images (Train)"
    assert for_widget(Worded("same", "--same")) == "same" and for_widget("plain") == "plain"
    both = worded_sentences([text, "plain"])
    assert for_widget(both) == "add images (Train). Plain." and for_command_line(both).startswith("hold out more (--")
    assert for_widget(worded("with TTA, {}", text)) == "with TTA, add images (Train)"
    back = pickle.loads(pickle.dumps(text))
    assert for_widget(back) == "add images (Train)" and for_command_line(back) == text.command_line


def test_in_front_end_words_names_whole_arguments_as_the_front_end_does():
    """The one rewriting of the library's notes for the widget (its field labels) and the command line
    (its options): a value given with ``=`` follows the name, and only whole names are rewritten."""
    options = {"peak_threshold": "--peak-threshold", "max_peaks": "--max-peaks"}
    note = "kept (max_peaks=50). Raise max_peaks or lower peak_threshold; my_max_peaks.tif"
    assert in_front_end_words(note, options) == ("kept (--max-peaks 50). Raise --max-peaks or lower --peak-threshold; "
                                                 "my_max_peaks.tif")
    paths = "max_peaks.tif, data/max_peaks/a.png, C:\\peak_threshold\\b.png: raise max_peaks."
    assert in_front_end_words(paths, options) == paths.replace("raise max_peaks", "raise --max-peaks")
    assert in_front_end_words(note, {"max_peaks": "max peaks"}).startswith("kept (max peaks 50). Raise max peaks or "
                                                                           "lower peak_threshold")
    assert in_front_end_words(note, {}) == note
