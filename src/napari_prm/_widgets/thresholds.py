"""Threshold fields that show the model's calibrated value until the user edits them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from magicgui.widgets import FloatSpinBox

#: What a peak threshold field at its minimum ("none") passes on: below every CRM value.
NO_THRESHOLD = -float(np.finfo(np.float32).max)


class CalibratedThreshold:
    """A threshold field that shows what runs will use.

    Until the user edits it, the field shows the calibrated value (the chosen model's, or
    the preset's) and runs pass None, so that :class:`napari_prm.PRMPredictor` uses that
    value; once edited, the user's value is passed. Choosing another model shows its
    value again.

    Parameters
    ----------
    spin : magicgui FloatSpinBox
    on_edit : callable
        Called after the user edits the value.
    none_text : str, optional
        Shown at the field's minimum, which then means "no threshold" (for a model
        without a calibrated value, or chosen by the user).
    """

    def __init__(self, spin: FloatSpinBox, on_edit: Callable[[], None], *, none_text: str | None = None):
        self.spin = spin
        self.from_model = True
        self._on_edit = on_edit
        self._none_text = none_text
        self._showing = False
        self._pending: float | None = None
        if none_text:
            spin.native.setSpecialValueText(none_text)
        spin.changed.connect(self._edited)

    def _edited(self, *_) -> None:
        if not self._showing:
            self.from_model = False
            self._on_edit()

    def show_calibrated(self, value: float | None) -> None:
        """Show ``value`` (None: no threshold) as the one runs use; a value restored from
        saved settings (`restore`) then takes its place."""
        self._showing = True
        try:
            self.spin.value = self.spin.min if value is None else float(value)
        finally:
            self._showing = False
        self.from_model = True
        self._apply_pending()

    def restore(self, value: float | None, *, now: bool) -> None:
        """Put back a saved value (None: the calibrated one), ``now`` or when the model's is shown."""
        self._pending = value
        if value is None:
            self.from_model = True
        elif now:
            self._apply_pending()

    def _apply_pending(self) -> None:
        value, self._pending = self._pending, None
        if value is None:
            return
        try:
            self.spin.value = float(value)
        except (ValueError, TypeError):
            return
        self.from_model = False

    @property
    def saved(self) -> float | None:
        """What the settings file keeps: None while the calibrated value is shown."""
        return None if self.from_model else float(self.spin.value)

    @property
    def override(self) -> float | None:
        """What a run passes: None for the calibrated value, else the user's."""
        if self.from_model:
            return None
        value = float(self.spin.value)
        if self._none_text and value <= self.spin.min:
            return NO_THRESHOLD
        return value

    def describe(self) -> str:
        """The shown value as text ("none" at the minimum of a field that allows none)."""
        value = float(self.spin.value)
        if self._none_text and value <= self.spin.min:
            return "none"
        return f"{value:g}"
