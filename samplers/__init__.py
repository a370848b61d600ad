"""packwise.samplers."""
