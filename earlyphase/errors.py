"""One exception type for mistakes a user can fix: the CLI prints its message on one line, exits 2."""


class UserError(Exception):
    """Bad input (config, data, checkpoint, store) that the user can fix; the message says how."""


class NonFiniteLoss(ArithmeticError):
    """A run's training loss became NaN or infinite: the run is marked failed at that step (never
    stored as done); the CLI prints the message on one line."""

    def __init__(self, step: int) -> None:
        super().__init__(f"the training loss became NaN or infinite at step {step}; the run is marked failed there. "
                         "lower train.lr (or weight_decay, gamma) and run again")
        self.step = step
