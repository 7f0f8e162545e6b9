"""The command-line front end: parses, calls ops, renders. No logic of its own."""
