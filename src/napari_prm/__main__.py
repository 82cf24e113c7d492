"""``python -m napari_prm``: the same as the ``napari-prm`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
