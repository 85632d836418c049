"""WebSocketFunction: the WebSocket API's $connect, subscribe, $default and $disconnect."""

from frontdesk.push import socket

handler = socket.make_handler()
