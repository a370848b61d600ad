"""packwise.cli."""
