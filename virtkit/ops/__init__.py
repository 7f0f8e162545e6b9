"""Orchestration: one module per verb family; each operation is a sequence of steps with undo on failure."""
