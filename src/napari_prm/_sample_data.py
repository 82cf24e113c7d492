"""Sample images the built-in ImageNet model finds objects in (from scikit-image)."""

from __future__ import annotations

from skimage import data


def chelsea() -> list[tuple]:
    """Chelsea the cat, 300x451 RGB (ImageNet classes 'tabby cat', 'Egyptian cat')."""
    return [(data.chelsea(), {"name": "chelsea", "rgb": True}, "image")]


def coffee() -> list[tuple]:
    """A cup of coffee, 400x600 RGB (ImageNet classes 'espresso', 'cup', 'coffee mug')."""
    return [(data.coffee(), {"name": "coffee", "rgb": True}, "image")]
