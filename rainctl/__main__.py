"""`python -m rainctl`: the same as the `rainctl` console script (used by tests that must run
the interpreter they run under)."""

from rainctl.cli.app import main

main()
