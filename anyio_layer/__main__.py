"""``python -m anyio_layer``: the ``anyio-layer`` command (see :mod:`anyio_layer.inspect.cli`)."""

from __future__ import annotations

import sys

from .inspect.cli import main

if __name__ == "__main__":
    sys.exit(main())
