"""RFC 7807 problems: the one exception type the service raises and the app turns into JSON."""

from __future__ import annotations

from collections.abc import Mapping

VALIDATION_TYPE = "https://tools.ietf.org/html/rfc9110#section-15.5.1"
TYPES = {
    400: VALIDATION_TYPE,
    401: "https://tools.ietf.org/html/rfc9110#section-15.5.2",
    402: "https://tools.ietf.org/html/rfc9110#section-15.5.3",
    403: "https://tools.ietf.org/html/rfc9110#section-15.5.4",
    404: "https://tools.ietf.org/html/rfc9110#section-15.5.5",
    405: "https://tools.ietf.org/html/rfc9110#section-15.5.6",
    409: "https://tools.ietf.org/html/rfc9110#section-15.5.10",
    415: "https://tools.ietf.org/html/rfc9110#section-15.5.16",
    429: "https://tools.ietf.org/html/rfc6585#section-4",
    500: "https://tools.ietf.org/html/rfc9110#section-15.6.1",
    502: "https://tools.ietf.org/html/rfc9110#section-15.6.3",
    503: "https://tools.ietf.org/html/rfc9110#section-15.6.4",
}
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class Problem(Exception):
    """An HTTP error answer: status, title, detail, optional field `errors` and extra headers.

    With `errors` it renders as a ValidationProblemDetails, otherwise as a ProblemDetails.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: Mapping[str, list[str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.title = title or TITLES.get(status, "Error")
        self.errors = dict(errors) if errors is not None else None
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        """The problem+json body."""
        body: dict[str, object] = {
            "type": TYPES.get(self.status, "about:blank"),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def validation_problem(errors: Mapping[str, list[str]]) -> Problem:
    """The 400 ValidationProblemDetails the service answers an invalid body with."""
    fields = ", ".join(sorted(errors))
    return Problem(
        400,
        f"Invalid field(s): {fields}",
        title="One or more validation errors occurred.",
        errors=errors,
    )
