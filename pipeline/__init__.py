"""packwise.pipeline."""
