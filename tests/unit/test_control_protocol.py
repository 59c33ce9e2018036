"""The control socket: one JSON line each way, private, robust to garbage, cleaned up."""

from __future__ import annotations

import json
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest

from service import control
from service.control import MAX_LINE_BYTES, ControlServer, parse_request, send_request
from service.errors import ControlError, DaemonBusyError, ServiceError
from tests.fakes import trickle_until_closed


@pytest.fixture
def sock_dir():
    # Unix socket paths are limited to ~100 bytes: keep them short.
    with tempfile.TemporaryDirectory(prefix="ctl-", dir="/tmp") as d:
        yield Path(d)


class FakeDaemon:
    def __init__(self):
        self.requests = []

    def __call__(self, request):
        self.requests.append(request)
        if request["command"] == "trigger" and request["job"] == "s3_restore":
            raise ServiceError("s3_restore overwrites fac-db", hint="repeat with --confirm fac-db")
        if request["command"] == "jobs":
            raise RuntimeError("boom")
        return {"echo": request["command"]}


@pytest.fixture
def server(sock_dir):
    daemon = FakeDaemon()
    srv = ControlServer(sock_dir / "c.sock", daemon).start()
    srv.daemon = daemon
    yield srv
    srv.close()


def raw_exchange(path: Path, payload: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_socket_is_private_to_the_owner(server):
    """The socket file is created with mode 0600."""
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(server.path.stat().st_mode)


def test_request_and_reply_are_json_lines(server):
    """A request line gets one reply line with ok=true and the handler's fields."""
    reply = send_request(server.path, {"command": "status"})
    assert reply == {"ok": True, "echo": "status"}


def test_garbage_gets_an_error_reply_and_the_server_goes_on(server):
    """Non-JSON, non-objects and unknown commands are answered with errors; later requests work."""
    replies = raw_exchange(server.path, b"\xff\xfe not json\n[1,2]\n{\"command\": \"explode\"}\n"
                                        b"{\"command\": \"status\"}\n")
    assert [r["ok"] for r in replies] == [False, False, False, True]
    assert "JSON" in replies[0]["error"]
    assert "command" in replies[2]["error"]
    assert send_request(server.path, {"command": "pause"})["echo"] == "pause"


def test_overlong_line_is_refused_and_skipped(server):
    """A line longer than the bound gets one error reply; the next line is served normally."""
    replies = raw_exchange(server.path, b"x" * (MAX_LINE_BYTES * 3) + b"\n{\"command\": \"status\"}\n")
    assert len(replies) == 2
    assert replies[0]["ok"] is False and "longer" in replies[0]["error"]
    assert replies[1] == {"ok": True, "echo": "status"}


def test_trigger_request_shape_is_checked():
    """trigger needs a job name; args must be strings; options an object."""
    assert parse_request(b'{"command":"trigger","job":"media_sync"}')["args"] == []
    for bad in (b'{"command":"trigger"}', b'{"command":"trigger","job":"x","args":[1]}',
                b'{"command":"trigger","job":"x","options":[]}'):
        with pytest.raises(ControlError):
            parse_request(bad)


def test_a_refusal_travels_with_its_hint_and_exit_code(server):
    """A ServiceError from the handler becomes ok=false with message, hint and exit code."""
    reply = send_request(server.path, {"command": "trigger", "job": "s3_restore", "args": ["x"]})
    assert reply["ok"] is False
    assert reply["error"] == "s3_restore overwrites fac-db"
    assert reply["hint"] == "repeat with --confirm fac-db"
    assert reply["exit_code"] == 1


def test_a_crashing_handler_does_not_stop_the_server(server):
    """An unexpected exception is an internal-error reply; the server keeps serving."""
    reply = send_request(server.path, {"command": "jobs"})
    assert reply["ok"] is False and "internal error" in reply["error"]
    assert send_request(server.path, {"command": "status"})["ok"] is True


def test_stale_socket_is_replaced_and_removed_on_close(sock_dir):
    """A socket file nobody listens on is replaced at start; close removes it."""
    path = sock_dir / "c.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, as after a SIGKILL
    assert path.exists()
    srv = ControlServer(path, lambda r: {"fresh": True}).start()
    assert send_request(path, {"command": "status"})["fresh"] is True
    srv.close()
    assert not path.exists()


def test_a_live_daemon_socket_is_not_stolen(server):
    """A second server on the path of a live one is refused."""
    with pytest.raises(ControlError, match="already listening"):
        ControlServer(server.path, lambda r: {})
    assert send_request(server.path, {"command": "status"})["ok"] is True


def test_a_regular_file_in_the_way_is_refused(sock_dir):
    """A non-socket file at the path is left alone and reported."""
    path = sock_dir / "c.sock"
    path.write_text("keep me")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(path, lambda r: {})
    assert path.read_text() == "keep me"


def test_client_says_clearly_when_no_daemon_listens(sock_dir):
    """send_request raises ControlError naming the path and how to start the daemon."""
    with pytest.raises(ControlError) as info:
        send_request(sock_dir / "absent.sock", {"command": "status"})
    assert "no daemon is listening" in info.value.message
    assert "daemon" in info.value.hint


def test_ctl_cli_exits_non_zero_with_a_clear_error_without_a_daemon(sock_dir, capsys):
    """`ctl status` with no daemon prints the error and exits 6 (nothing was asked of a daemon)."""
    from service.cli import main

    assert main(["ctl", "--socket", str(sock_dir / "none.sock"), "status"]) == 6
    assert "no daemon is listening" in capsys.readouterr().err


def test_ctl_cli_prints_the_reply_and_passes_the_confirmation(server, capsys):
    """`ctl trigger JOB ARGS --confirm X` sends job, args and options; prints the reply."""
    from service.cli import main

    argv = ["ctl", "--socket", str(server.path), "trigger", "media_sync", "--confirm", "fac-db"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {"echo": "trigger"}
    request = server.daemon.requests[-1]
    assert request["job"] == "media_sync" and request["options"]["confirm"] == "fac-db"
    assert main(["ctl", "--socket", str(server.path), "trigger", "s3_restore", "x"]) == 1
    assert "--confirm fac-db" in capsys.readouterr().err


def fill_listen_queue(path: Path) -> list[socket.socket]:
    """Connect without being accepted until the kernel refuses (EAGAIN on a Unix socket)."""
    held = []
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(str(path))
        except BlockingIOError:
            s.close()
            return held
        held.append(s)
        assert len(held) < 10_000


def test_a_full_listen_queue_is_a_clear_error_with_exit_6(sock_dir, capsys, monkeypatch):
    """A daemon that does not accept (stuck, or flooded) and whose queue is full: `ctl status`
    tries again for a moment, then says so and exits 6; no traceback."""
    from service.cli import main

    monkeypatch.setattr(control, "CONNECT_RETRY_SECONDS", 0.3)
    stuck = ControlServer(sock_dir / "c.sock", lambda r: {})  # listening, never accepting
    held = fill_listen_queue(stuck.path)
    try:
        assert len(held) >= control.LISTEN_BACKLOG
        assert main(["ctl", "--socket", str(stuck.path), "status"]) == 6
        err = capsys.readouterr().err
        assert "queue stayed full" in err and "nothing was sent" in err and "Traceback" not in err
    finally:
        for s in held:
            s.close()
        stuck.server_close()


def test_a_client_trickling_bytes_is_cut_off_at_the_request_deadline(sock_dir):
    """A byte every 0.2 s never finishing a line: the server answers an error and closes once the
    whole-request deadline (1 s here, 30 s in the daemon) has passed, however often bytes arrive."""
    srv = ControlServer(sock_dir / "c.sock", lambda r: {"echo": True}, request_seconds=1.0).start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(srv.path))
            s.settimeout(0.2)
            data, closed_after = trickle_until_closed(s, b"{", 10)
        assert closed_after < 5, "the trickling client kept its connection"
        assert b"not complete within 1 s" in data
        assert send_request(srv.path, {"command": "status"}) == {"ok": True, "echo": True}
    finally:
        srv.close()


def test_clients_beyond_the_connection_cap_are_told_busy_at_once(sock_dir):
    """With every slot held by idle clients, one more gets a busy reply (exit 6) at once; when a
    slot frees, requests are served again."""
    srv = ControlServer(sock_dir / "c.sock", lambda r: {"echo": True}, max_connections=2).start()
    idle = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(srv.path))
            idle.append(s)
        started = time.monotonic()
        reply = send_request(srv.path, {"command": "status"})
        assert time.monotonic() - started < 2
        assert reply["ok"] is False and reply["exit_code"] == DaemonBusyError.exit_code == 6
        assert "2 control connections" in reply["error"]
        idle.pop().close()
        deadline = time.monotonic() + 5
        while (reply := send_request(srv.path, {"command": "status"}))["ok"] is False:
            assert time.monotonic() < deadline, "the freed slot was never reused"
            time.sleep(0.05)
        assert reply == {"ok": True, "echo": True}
    finally:
        for s in idle:
            s.close()
        srv.close()
