"""``python -m router``: the command line (router.cli)."""

from router.cli import main

raise SystemExit(main())
