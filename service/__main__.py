"""`python -m service` is the same program as the `fac-backup` console script."""

from service.cli import main

raise SystemExit(main())
