"""`python -m virtkit` runs the command-line tool."""

from virtkit.cli.entry import main

main()
