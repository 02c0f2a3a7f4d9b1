"""Telling whether an HTTP client closed its connection, on real loopback TCP connections, without reading."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from gateway.sockets import peer_closed
from harness import wait_for


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A server's accepted connection and its client's end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
        server.settimeout(10)
        try:
            yield server, client
        finally:
            server.close()
            client.close()


def test_a_connected_client_is_there_and_what_it_sends_stays_unread(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    assert not peer_closed(server)
    client.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request: the client is still there
    wait_for(lambda: server.recv(64, socket.MSG_PEEK), timeout=10, what="the bytes to arrive")
    assert not peer_closed(server)
    assert server.recv(64) == b"GET /next HTTP/1.1\r\n"


def test_a_closed_or_reset_connection_is_gone(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(b"unread")
    client.close()
    wait_for(lambda: peer_closed(server), timeout=10, what="the close to be seen")


def test_a_reset_connection_is_gone(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    client.close()
    wait_for(lambda: peer_closed(server), timeout=10, what="the reset to be seen")


def test_a_socket_closed_here_counts_as_gone(pair: tuple[socket.socket, socket.socket]) -> None:
    server, _ = pair
    server.close()
    assert peer_closed(server)
