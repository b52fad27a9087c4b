"""Times MQTT wildcard SUBSCRIBEs: connects (MQTT 3.1.1, the user and password in
MQTT_BENCH_USERNAME / MQTT_BENCH_PASSWORD), sends N SUBSCRIBEs one at a time, each for a
filter `dev/<i>/+/cmd` that matches no topic, and prints the SUBACK times as one JSON object.

Usage: python3 bench/subscribe_timer.py HOST:PORT N
Used by bench/topic-churn.sh. Standard library only; a read timeout of 30 s bounds it.
"""

import json
import os
import socket
import struct
import sys
import time


def remaining_length(n):
    out = b""
    while True:
        byte, n = n % 128, n // 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def packet(kind, body):
    return bytes([kind]) + remaining_length(len(body)) + body


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise SystemExit("the broker closed the connection")
        data += chunk
    return data


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    count = int(sys.argv[2])
    user = os.environ.get("MQTT_BENCH_USERNAME", "")
    password = os.environ.get("MQTT_BENCH_PASSWORD", "")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    flags = 0x02 | (0xC0 if user else 0)
    body = string("MQTT") + bytes([4, flags]) + struct.pack(">H", 60) + string("subscribe-timer")
    if user:
        body += string(user) + string(password)
    sock.sendall(packet(0x10, body))
    connack = read_exactly(sock, 4)
    if connack[0] != 0x20 or connack[3] != 0:
        raise SystemExit(f"connection refused: {connack.hex()}")
    times = []
    for i in range(count):
        body = struct.pack(">H", i + 1) + string(f"dev/{i}/+/cmd") + bytes([0])
        start = time.perf_counter()
        sock.sendall(packet(0x82, body))
        suback = read_exactly(sock, 5)
        times.append(time.perf_counter() - start)
        if suback[0] != 0x90 or suback[4] != 0:
            raise SystemExit(f"subscription refused: {suback.hex()}")
    sock.sendall(bytes([0xE0, 0]))
    sock.close()
    times.sort()
    print(json.dumps({
        "subscribes": count,
        "median_ms": times[len(times) // 2] * 1000,
        "max_ms": times[-1] * 1000,
    }))


if __name__ == "__main__":
    main()
