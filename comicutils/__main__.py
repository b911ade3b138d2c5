"""``python -m comicutils ...`` - see :mod:`comicutils.cli`."""
from .cli import main

raise SystemExit(main())
