"""Grounded-SAM studio core: Grounding DINO, text handling, checkpoints, SAM stage and pipeline."""
