"""Training: checkpoints (model_io), learning-rate schedules and the DeepSpeed training loop."""
