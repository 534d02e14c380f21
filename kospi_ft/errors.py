"""Errors that stage entry points turn into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A user-facing failure: bad params, bad input data, missing artifact. The message names what is at fault."""


class ParamsError(PipelineError):
    """params.yaml (or a CLI flag) holds a missing, unknown or invalid value."""


class DataValidationError(PipelineError):
    """An input file breaks its documented schema. The message names the file and the column."""
