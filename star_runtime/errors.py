"""The two ways a run ends on purpose: bad settings or input (ConfigError) and a failed worker
(WorkerFailure). Each message is one line naming the problem and, where there is one, the fix."""


class ConfigError(ValueError):
    """A bad setting or bad input. Its message is one line that names the problem and the fix."""


class WorkerFailure(RuntimeError):
    """A worker died, raised or stalled; the run stops instead of hanging in a collective."""
