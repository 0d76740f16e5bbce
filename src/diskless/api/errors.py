"""How expected failures become HTTP answers: a status code and a ``detail`` for the operator.

* :class:`InvalidFieldError` → 422 shaped like FastAPI's own validation errors (``detail`` is a
  list of ``{loc, msg, type}``), so a client finds the bad field the same way either way;
* :class:`NotFoundError` → 404, :class:`ConflictError` → 409 (``field`` added when known), a busy
  disk → 409 saying what holds it;
* any other :class:`DisklessError` → 400, a :class:`StorageError` (damaged data) → 500.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from diskless.errors import ConflictError, DisklessError, NotFoundError
from diskless.inventory.errors import InvalidFieldError
from diskless.observe.log import get_logger
from diskless.storage.errors import ImageBusyError, StorageError

__all__ = ["install_error_handlers", "invalid"]

_log = get_logger("diskless.api")


def invalid(location: str, field: str, message: str) -> RequestValidationError:
    """A 422 naming ``field`` in ``location`` (``path``, ``query`` or ``body``)."""
    return RequestValidationError(
        [{"loc": (location, *field.split(".")), "msg": message, "type": "value_error"}]
    )


def _status(exc: DisklessError) -> int:
    if isinstance(exc, InvalidFieldError | ValueError):
        return 422
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, StorageError):
        return 500
    return 400


async def _diskless_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DisklessError)
    status = _status(exc)
    if isinstance(exc, InvalidFieldError):
        loc = ["body", *exc.field.split(".")]
        body: dict[str, object] = {
            "detail": [{"loc": loc, "msg": exc.reason, "type": "value_error"}]
        }
    elif isinstance(exc, ImageBusyError):
        body = {
            "detail": (
                f"{exc} (the disk is busy: its machine is running, or another command is "
                "using it; shut the machine down, then retry)"
            )
        }
    else:
        body = {"detail": str(exc)}
        field = getattr(exc, "field", None)
        if isinstance(field, str):
            body["field"] = field
    if status >= 500:
        _log.error("api request failed", path=request.url.path, error=str(exc))
    return JSONResponse(body, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DisklessError, _diskless_error)
