"""Training: the DeepSpeed training loop, learning-rate schedules and training checkpoints
(``checkpointing``; ``model_io`` keeps the original library's module name)."""
