"""The daemon's error envelope as the SDK's generated client parses it.

For statuses the OpenAPI map declares as `ErrorResponse`, the generated client deserializes the body into
`daytona_toolbox_api_client.ErrorResponse` (required: statusCode, message, path, timestamp) and hands it to the
SDK as `ApiException.data`; the DaytonaError the user sees keeps that exception as `__cause__`. If the body does
not validate, `data` is silently None (pydantic's ValidationError is swallowed), so this is checked explicitly.
"""

from __future__ import annotations

import pytest
from daytona import (
    DaytonaBadRequestError,
    DaytonaNotFoundError,
    DaytonaProcessExecutionTimeoutError,
    SessionExecuteRequest,
)
from daytona_toolbox_api_client import DaemonErrorCode, ErrorResponse
from daytona_toolbox_api_client.exceptions import ApiException


def api_exception(err: BaseException) -> ApiException:
    e: BaseException | None = err
    while e is not None and not isinstance(e, ApiException):
        e = e.__cause__
    assert e is not None, f"no ApiException behind {err!r}"
    return e


def check_envelope(err: BaseException, status: int, path_suffix: str) -> ErrorResponse:
    api = api_exception(err)
    assert api.status == status
    assert isinstance(api.data, ErrorResponse), (
        f"the {status} body does not validate as the SDK's ErrorResponse "
        f"(required: statusCode, message, path, timestamp): {api.body}"
    )
    data = api.data
    assert data.status_code == status
    assert data.message
    assert data.source == "DAYTONA_DAEMON"
    assert data.path.endswith(path_suffix), data.path
    assert data.timestamp
    return data


def test_not_found_envelope(sandbox):
    with pytest.raises(DaytonaNotFoundError) as excinfo:
        sandbox.process.get_session("pytest-no-such-session")
    check_envelope(excinfo.value, 404, "/process/session/pytest-no-such-session")


def test_timeout_envelope(sandbox):
    with pytest.raises(DaytonaProcessExecutionTimeoutError) as excinfo:
        sandbox.process.exec("sleep 5", timeout=1)
    data = check_envelope(excinfo.value, 408, "/process/execute")
    assert data.code == DaemonErrorCode.CodeProcessExecutionTimeout
    assert excinfo.value.code == "PROCESS_EXECUTION_TIMEOUT"
    assert excinfo.value.source == "DAYTONA_DAEMON"


def test_bad_request_envelope(sandbox):
    with pytest.raises(DaytonaBadRequestError) as excinfo:
        sandbox.process.exec("   ")
    check_envelope(excinfo.value, 400, "/process/execute")


def test_session_exec_unknown_session_envelope(sandbox):
    with pytest.raises(DaytonaNotFoundError) as excinfo:
        sandbox.process.execute_session_command("pytest-no-such-session", SessionExecuteRequest(command="true"))
    assert api_exception(excinfo.value).status == 404
