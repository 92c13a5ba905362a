"""The control API: request/answer encoding, and the Unix-socket server with its client."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from pathlib import Path

import pytest

from rainctl.daemon.control import (
    ControlError,
    ControlRequest,
    ControlServer,
    JsonObject,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_result,
    request,
)


def test_request_round_trip() -> None:
    line = encode_request("status")
    assert line.endswith(b"\n")
    assert json.loads(line) == {"command": "status"}
    assert decode_request(line) == ControlRequest("status", {})


def test_request_arguments_round_trip() -> None:
    line = encode_request("pin", {"vip": "198.18.0.100", "node": 2})
    assert decode_request(line) == ControlRequest("pin", {"vip": "198.18.0.100", "node": 2})
    with pytest.raises(ControlError, match="'command' cannot be an argument name"):
        encode_request("pin", {"command": "x"})


def test_argument_accessors_refuse_wrong_types_and_unknown_names() -> None:
    pin = ControlRequest("pin", {"vip": "198.18.0.100", "node": 2, "flag": True})
    assert pin.integer("node") == 2
    assert pin.text("vip") == "198.18.0.100"
    with pytest.raises(ControlError, match="pin: argument 'flag' must be an integer, got True"):
        pin.integer("flag")
    with pytest.raises(ControlError, match="pin: argument 'node' must be a string, got 2"):
        pin.text("node")
    with pytest.raises(ControlError, match="pin: argument 'missing' must be an integer, got None"):
        pin.integer("missing")
    with pytest.raises(ControlError, match=r"unknown argument\(s\) flag \(allowed: vip, node\)"):
        pin.expect("vip", "node")
    pin.expect("vip", "node", "flag")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json\n", "not JSON"),
        (b"\xff\n", "not JSON"),
        (b"[1]\n", "JSON object"),
        (b'{"command": 1}\n', "JSON object"),
        (b"{}\n", "JSON object"),
    ],
)
def test_bad_requests_are_refused(line: bytes, message: str) -> None:
    with pytest.raises(ControlError, match=message):
        decode_request(line)


def test_response_round_trip() -> None:
    assert decode_response(encode_result({"a": [1, None]})) == {"a": [1, None]}


def test_a_refusal_carries_the_daemons_message() -> None:
    with pytest.raises(ControlError, match="the daemon refused: unknown command 'x'"):
        decode_response(encode_error("unknown command 'x'"))


@pytest.mark.parametrize("line", [b"", b"garbage", b"[]", b'{"ok": true}', b'{"ok": 1}'])
def test_malformed_answers_are_errors(line: bytes) -> None:
    with pytest.raises(ControlError):
        decode_response(line)


def _answer(request: ControlRequest) -> JsonObject:
    if request.command == "status":
        return {"node_id": 1, **request.arguments}
    raise ControlError(f"unknown command {request.command!r}")


def _serve_and_ask(path: Path, commands: list[str]) -> list[JsonObject | str]:
    async def scenario() -> list[JsonObject | str]:
        server = await ControlServer.start(path, _answer)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        answers: list[JsonObject | str] = []
        try:
            for command in commands:
                try:
                    answers.append(await asyncio.to_thread(request, path, command))
                except ControlError as exc:
                    answers.append(str(exc))
        finally:
            server.close()
        assert not path.exists()
        return answers

    return asyncio.run(scenario())


def test_server_answers_one_request_per_connection(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.sock"
    assert _serve_and_ask(path, ["status", "bogus", "status"]) == [
        {"node_id": 1},
        "the daemon refused: unknown command 'bogus'",
        {"node_id": 1},
    ]


def test_arguments_reach_the_handler(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def scenario() -> JsonObject:
        server = await ControlServer.start(path, _answer)
        try:
            return await asyncio.to_thread(request, path, "status", 2.0, {"extra": [1]})
        finally:
            server.close()

    assert asyncio.run(scenario()) == {"node_id": 1, "extra": [1]}


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: what a killed daemon leaves behind
    assert _serve_and_ask(path, ["status"]) == [{"node_id": 1}]


def test_a_live_socket_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(ControlError, match="another daemon is listening"):
            asyncio.run(ControlServer.start(path, _answer))


def test_a_regular_file_in_the_way_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("")
    with pytest.raises(ControlError, match="not a socket"):
        asyncio.run(ControlServer.start(path, _answer))


def test_an_unreachable_daemon_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match=r"cannot reach the daemon at .*missing\.sock"):
        request(tmp_path / "missing.sock", "status")
