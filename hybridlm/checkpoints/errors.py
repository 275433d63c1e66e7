"""The one error type for anything wrong with a checkpoint on disk."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or uses something hybridlm does not support.

    The message is one line a user can act on; the CLI prints it without a traceback.
    """
