"""Errors about the user's input, as opposed to bugs in the pipeline."""


class PipelineInputError(Exception):
    """Input the user can fix; the command line reports it in one line, without a traceback."""


class DatasetFileError(PipelineInputError):
    """A data file or directory is missing, unreadable, or not what Fashion-MNIST ships."""


class DataValidationError(PipelineInputError):
    """The parsed data breaks the dataset's schema or its dataset-level checks."""


class PredictionInputError(PipelineInputError):
    """Prediction cannot start: no run or model to use, a model failing its manifest, no inputs."""
