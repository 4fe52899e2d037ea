"""What a job of each kind does: the handler's context, its outcomes, the kind registry.

This is the small public API for handler authors:

    async def handler(ctx: JobContext) -> Done | Retry | Fail | <any JSON value>

A plain return value is the job's result. `Retry` runs the job again later
(`charge_attempt=False` when it is not the job's fault); `Fail` ends it for
good. `RetryLater` and `PermanentFailure` say the same when raised from deep
inside; any other exception is a failed attempt, retried by the kind's policy.
"""

from interlock.domain import Done, Fail, PermanentFailure, Retry, RetryLater, Usage
from interlock.handlers.context import JobContext
from interlock.handlers.registry import Handler, Kind, KindRegistry

__all__ = [
    "Done",
    "Fail",
    "Handler",
    "JobContext",
    "Kind",
    "KindRegistry",
    "PermanentFailure",
    "Retry",
    "RetryLater",
    "Usage",
]
