"""packwise.selection."""
