"""`python -m virtkit` runs the command-line tool."""

from virtkit.cli.main import main

main()
