"""`GET /port` and `GET /port/{port}/in-use` through the SDK's own toolbox client (`PortApi`, which the SDK's
preview helpers call), against listeners the test opens and closes."""

from __future__ import annotations

import socket

import pytest
from daytona_toolbox_api_client import PortApi
from daytona_toolbox_api_client.exceptions import ApiException, UnauthorizedException

from conftest import SANDBOX_NO_TOKEN_ID


def port_api(sandbox) -> PortApi:
    # The sandbox's toolbox client: the same base URL, headers and proxy signing as every other SDK call.
    return PortApi(sandbox._toolbox_api)  # noqa: SLF001 - the SDK exposes PortApi but no Sandbox method for it


def test_listening_ports_are_listed_and_in_use(sandbox):
    api = port_api(sandbox)
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as six, socket.socket() as four:
        four.bind(("127.0.0.1", 0))
        four.listen()
        six.bind(("::1" if socket.has_ipv6 else "127.0.0.1", 0))
        six.listen()
        p4, p6 = four.getsockname()[1], six.getsockname()[1]
        ports = api.get_ports().ports
        assert {p4, p6} <= set(ports)
        assert ports == sorted(set(ports))
        assert api.is_port_in_use(p4).is_in_use is True
        assert api.is_port_in_use(p6).is_in_use is True
    assert api.is_port_in_use(p4).is_in_use is False
    assert p4 not in api.get_ports().ports
    # A bound socket that does not listen is not in use.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        assert api.is_port_in_use(bound.getsockname()[1]).is_in_use is False


def test_bad_port_numbers_are_refused(sandbox):
    api = port_api(sandbox)
    for bad in (0, 70000):
        with pytest.raises(ApiException) as e:
            api.is_port_in_use(bad)
        assert e.value.status == 400
        assert "1 to 65535" in e.value.body


def test_ports_need_the_daemon_credential(daytona):
    api = port_api(daytona.get(SANDBOX_NO_TOKEN_ID))
    with pytest.raises(UnauthorizedException):
        api.get_ports()
    with pytest.raises(UnauthorizedException):
        api.is_port_in_use(3000)
