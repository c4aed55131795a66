"""`python -m ketch.cli ...`: the `ketch` command (how `ketch up` starts its processes, so
they run the same code as the `ketch` that started them)."""

from ketch.cli.entry import main

main()
