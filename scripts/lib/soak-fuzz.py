#!/usr/bin/env python3
"""Fuzzed WHEP offers for scripts/soak: mutated SDP offers, wrong content types, garbage
bodies, unknown paths, PATCH/DELETE on made-up sessions, at RATE requests a second until
SECONDS pass. A session that does get created is deleted at once. Every few seconds the
counts of status classes go to COUNTS_FILE as JSON (5xx ones listed with their reason).

usage: soak-fuzz.py BASE_URL PROCESS RATE SECONDS COUNTS_FILE
"""
import http.client
import json
import random
import sys
import time
import urllib.parse

base, process, rate, seconds, counts_file = sys.argv[1:6]
rate, seconds = float(rate), float(seconds)
url = urllib.parse.urlsplit(base)

OFFER = "\r\n".join([
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=msid-semantic: WMS",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
    "a=setup:actpass",
    "a=mid:0",
    "a=recvonly",
    "a=rtcp-mux",
    "a=rtpmap:96 H264/90000",
    "a=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "c=IN IP4 0.0.0.0",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
    "a=setup:actpass",
    "a=mid:1",
    "a=recvonly",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "",
])


def mutate(text):
    lines = text.split("\r\n")
    for _ in range(random.randint(1, 4)):
        op = random.random()
        i = random.randrange(len(lines))
        if op < 0.25:
            del lines[i]
        elif op < 0.45:
            lines.insert(i, lines[random.randrange(len(lines))])
        elif op < 0.65 and lines[i]:
            j = random.randrange(len(lines[i]))
            lines[i] = lines[i][:j] + chr(random.randint(0, 0x2FF)) + lines[i][j + 1:]
        elif op < 0.8:
            lines[i] = lines[i][: random.randint(0, len(lines[i]))]
        elif op < 0.9:
            lines[i] += "x" * random.randint(1, 3000)
        else:
            lines[i] = "a=" + "".join(chr(random.randint(32, 126)) for _ in range(40))
    return "\r\n".join(lines)


def request():
    roll = random.random()
    path = f"/whep/{process}"
    headers = {"Content-Type": "application/sdp"}
    method = "POST"
    if roll < 0.6:
        body = mutate(OFFER).encode("utf-8", "surrogatepass")
    elif roll < 0.65:
        body = OFFER.encode()  # well formed: a session, deleted at once
    elif roll < 0.75:
        body = bytes(random.getrandbits(8) for _ in range(random.randint(0, 4000)))
    elif roll < 0.82:
        body = OFFER.encode()
        headers["Content-Type"] = random.choice(["text/plain", "application/json", "", "application/sdp; x=" + "y" * 300])
    elif roll < 0.9:
        method = random.choice(["PATCH", "DELETE"])
        path = f"/whep/{process}/{random.getrandbits(64):x}"
        headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": '"x"'}
        body = b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n"
    else:
        path = random.choice(["/whep/", "/whep/nope", "/whep/%00", "/whep/" + "a" * 2000, "/play/x", "/api/v1/streams"])
        method = random.choice(["POST", "GET", "PUT", "OPTIONS"])
        body = OFFER.encode()
    return method, path, headers, body


counts = {"requests": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "errors": 0, "5xx_reasons": {}}


def save():
    with open(counts_file + ".tmp", "w") as f:
        json.dump(counts, f)
    import os
    os.replace(counts_file + ".tmp", counts_file)


deadline = time.monotonic() + seconds
last_save = 0.0
conn = None
while time.monotonic() < deadline:
    started = time.monotonic()
    method, path, headers, body = request()
    try:
        if conn is None:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
        counts["requests"] += 1
        klass = f"{resp.status // 100}xx"
        counts[klass] = counts.get(klass, 0) + 1
        if resp.status >= 500:
            key = f"{resp.status} {method} {path[:40]}: {text[:80]!r}"
            counts["5xx_reasons"][key] = counts["5xx_reasons"].get(key, 0) + 1
        location = resp.getheader("Location")
        if resp.status == 201 and location:
            conn.request("DELETE", location)
            conn.getresponse().read()
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = None
    except (OSError, http.client.HTTPException):
        counts["errors"] += 1
        if conn is not None:
            conn.close()
        conn = None
    if started - last_save > 2:
        save()
        last_save = started
    time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))
save()
