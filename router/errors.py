"""The one exception tree of edgeroute.

Library errors (pydantic, httpx, onnxruntime, diskcache, yaml) are mapped into these
classes where they cross into edgeroute code, so callers only ever catch `EdgerouteError`
subclasses. Every error that can reach a client carries an HTTP status, a stable
machine-readable `code`, a human `message` and, where it applies, the offending `field`.
"""

from __future__ import annotations

from dataclasses import dataclass


class EdgerouteError(Exception):
    """Base of every error raised by edgeroute."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, object]:
        """The JSON error body `{"code", "message", "field"}` sent to clients."""
        return {"code": self.code, "message": self.message, "field": self.field}


# --- request and input errors (4xx) -------------------------------------------------


class InputError(EdgerouteError):
    """A request body or field is invalid (shape, dtype, range, unknown field...)."""

    status = 422
    code = "invalid_input"


class MalformedRequest(InputError):
    """The body is not parseable JSON or not an object."""

    status = 400
    code = "malformed_json"


class RequestTooLarge(InputError):
    """The body exceeds the configured size limit."""

    status = 413
    code = "body_too_large"


class UnknownTask(InputError):
    """The request names a task that the active policy does not define."""

    code = "unknown_task"


class NotFound(EdgerouteError):
    """A resource (for example a request_id) is not known."""

    status = 404
    code = "not_found"


class RequestIdConflict(EdgerouteError):
    """A request_id already used for a different request (other task or inputs) came back:
    one id names one request, so it is refused instead of answered with the other's
    result."""

    status = 409
    code = "request_id_conflict"


class Unauthorized(EdgerouteError):
    """A bearer token is missing, wrong or revoked."""

    status = 401
    code = "unauthorized"


class RetryableRejection(EdgerouteError):
    """The request was not accepted now but may be retried after `retry_after_s` seconds."""

    status = 429
    code = "too_many_requests"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float,
        field: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message, field=field, code=code)
        self.retry_after_s = retry_after_s


class QueueFull(RetryableRejection):
    """The durable queue is at `queue.max_items` / `queue.max_bytes` and `on_full: reject`."""

    code = "queue_full"


class BudgetRejected(RetryableRejection):
    """The cost budget is exhausted and the policy says `on_budget_exhausted: reject`."""

    code = "budget_exhausted"


# --- configuration errors -------------------------------------------------------------


@dataclass(frozen=True)
class PolicyIssue:
    """One problem found in a policy file, located as precisely as the loader can."""

    path: str
    message: str
    source: str = "<policy>"
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class PolicyError(EdgerouteError):
    """A policy file is invalid. `issues` lists every problem found, not just the first."""

    status = 422
    code = "invalid_policy"

    def __init__(self, issues: list[PolicyIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues) or "invalid policy")


class RolloutError(PolicyError):
    """A rollout file is invalid (same issue list and locations as a policy's)."""

    code = "invalid_rollout"


class BundleError(EdgerouteError):
    """A model bundle is missing, corrupt, or does not match its manifest."""

    code = "invalid_bundle"


class ConfigError(EdgerouteError):
    """A command's setting cannot be used: a file it names cannot be read or written, a
    port is taken, a flag's value is out of range. `field` names the setting."""

    code = "invalid_config"


# --- cloud errors (mapped from httpx / HTTP statuses at the client boundary) -----------


class CloudError(EdgerouteError):
    """The cloud re-ranker could not give an answer. `retryable` says if trying again helps."""

    status = 502
    code = "cloud_error"
    retryable = True

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, code: str | None = None
    ):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class CloudUnavailable(CloudError):
    """Connection refused/reset, 5xx, 503/429 overload, or the breaker is open."""

    code = "cloud_unreachable"


class CloudTimeout(CloudError):
    """The cloud did not answer within the request's deadline."""

    status = 504
    code = "cloud_timeout"


class CloudRejected(CloudError):
    """The cloud answered with a non-retryable 4xx (bad item, auth): retrying will not help."""

    code = "cloud_rejected"
    retryable = False


class CloudUnauthorized(CloudRejected):
    """The cloud refused the node's credentials (401/403): a problem of the node's token,
    not of the items sent, so they are kept for when the credentials work again."""

    code = "cloud_unauthorized"
