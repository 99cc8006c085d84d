"""One error type for bad simulation/evaluation input; the CLIs print it as one line and exit 2."""


class SimEvalError(ValueError):
    """Bad input to the simulation recorder or evaluator (unknown suite/task, unfit checkpoint, no renderer)."""
