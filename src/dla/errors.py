"""Errors that the command line reports as one line instead of a traceback."""


class DlaError(Exception):
    """A failure the user can fix; its message says what is wrong and what is valid."""

    exit_code = 1


class ConfigError(DlaError):
    """An unknown key, a wrong type or a bad value in an experiment config."""

    exit_code = 2


class DataError(DlaError):
    """A data set that is missing, incomplete or fails its checksum."""


class CheckpointError(DlaError):
    """A checkpoint that is missing or does not match the model."""


class TrainingDiverged(DlaError):
    """The loss became NaN or infinite."""


class WrongRunKind(DlaError):
    """A run directory of another kind than the command needs (e.g. a language model for `dla ood`)."""
