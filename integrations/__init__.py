"""Bridges to training frameworks.  ``packwise.integrations.hf``: Hugging Face ``Trainer`` and TRL
``SFTTrainer`` fed by packwise samplers and collators (needs the ``hf`` extra)."""

__all__: list[str] = []
