"""`python -m kvactors` is the `kvactors` command."""

from kvactors.cli import main

raise SystemExit(main())
