"""Training: oracle labelling, stage-1 probes and stage-2 LoRA students."""
