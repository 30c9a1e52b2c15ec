"""The one error type of checkpoint reading and loading."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""
