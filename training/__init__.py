"""Training side: base-model preparation, datasets, SFT (TRL + PEFT), adapters."""
