#!/usr/bin/env python3
"""A minimal loopback RTSP server for the GPU machine, which has no GStreamer: serves one
raw Annex-B H.264 file, looped, at a fixed frame rate, over RTP/AVP/TCP (interleaved),
packetization mode 1 (single NAL units and FU-A). Standard library only.

Usage: rtsp_serve.py PORT FILE.h264 [FPS]   -> rtsp://127.0.0.1:PORT/cam ; prints "ready".

Not a general server: one track, TCP only (UDP setups get 461), no authentication, RTP
timestamps in file order (serve clips without B-frames). The
agent's RTSP tests use GStreamer's server (tools/rtsp-server.py); this one exists so the
CUDA backend's live path can be run where GStreamer is not installed.
"""
import socket
import sys
import threading
import time

MTU = 1400


def nal_units(data):
    """Splits an Annex-B stream at its start codes."""
    out, i, start = [], 0, None
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0:
            if start is not None:
                out.append(data[start:].rstrip(b"\x00"))
            return [n for n in out if n]
        if start is not None:
            out.append(data[start:j].rstrip(b"\x00"))
        start = i = j + 3


def access_units(nals):
    """Groups NAL units into pictures: a new one starts at an AUD/SPS/PPS/SEI after a slice,
    or at a slice whose first_mb_in_slice is 0 (its first header bit is 1) after a slice."""
    aus, cur, has_vcl = [], [], False
    for n in nals:
        t = n[0] & 0x1F
        first_slice = t in (1, 5) and len(n) > 1 and n[1] & 0x80
        if has_vcl and (t in (6, 7, 8, 9) or first_slice):
            aus.append(cur)
            cur, has_vcl = [], False
        cur.append(n)
        has_vcl |= t in (1, 5)
    if cur:
        aus.append(cur)
    return aus


def rtp_packets(nal):
    """A NAL unit as RTP payloads: whole, or FU-A fragments."""
    if len(nal) <= MTU:
        return [nal]
    indicator = (nal[0] & 0xE0) | 28
    body, out = nal[1:], []
    for k in range(0, len(body), MTU):
        chunk = body[k:k + MTU]
        header = nal[0] & 0x1F
        if k == 0:
            header |= 0x80
        if k + MTU >= len(body):
            header |= 0x40
        out.append(bytes([indicator, header]) + chunk)
    return out


def serve(conn, aus, fps):
    lock = threading.Lock()
    playing = threading.Event()
    closed = threading.Event()

    def send(b):
        with lock:
            conn.sendall(b)

    def stream():
        seq, k = 0, 0
        t0 = time.monotonic()
        while not closed.is_set():
            au = aus[k % len(aus)]
            ts = (k * 90000 // fps) & 0xFFFFFFFF
            payloads = [p for n in au for p in rtp_packets(n)]
            for i, p in enumerate(payloads):
                marker = 0x80 if i == len(payloads) - 1 else 0
                rtp = bytes([0x80, marker | 96]) + (seq & 0xFFFF).to_bytes(2, "big") \
                    + ts.to_bytes(4, "big") + (0x4A45444F).to_bytes(4, "big") + p
                seq += 1
                try:
                    send(b"$\x00" + len(rtp).to_bytes(2, "big") + rtp)
                except OSError:
                    closed.set()
                    return
            k += 1
            delay = t0 + k / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    buf = b""

    def fill(n):
        """Reads until `buf` holds `n` bytes; False when the peer closed."""
        nonlocal buf
        while len(buf) < n:
            more = conn.recv(65536)
            if not more:
                return False
            buf += more
        return True

    try:
        while True:
            if not fill(1):
                return
            # Interleaved data from the client (RTCP receiver reports): '$', channel,
            # 16-bit length, payload. Skipped by its length.
            if buf[:1] == b"$":
                if not fill(4):
                    return
                n = int.from_bytes(buf[2:4], "big")
                if not fill(4 + n):
                    return
                buf = buf[4 + n:]
                continue
            while b"\r\n\r\n" not in buf:
                more = conn.recv(65536)
                if not more:
                    return
                buf += more
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, url = lines[0].split(" ")[:2]
            hdr = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip()
                   for l in lines[1:] if ":" in l}
            body_len = int(hdr.get("content-length", "0"))
            if not fill(body_len):
                return
            buf = buf[body_len:]
            cseq = hdr.get("cseq", "0")
            extra, body, status = "", "", "200 OK"
            if method == "OPTIONS":
                extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER\r\n"
            elif method == "DESCRIBE":
                body = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=aegis\r\nc=IN IP4 127.0.0.1\r\n"
                        "t=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
                        "a=fmtp:96 packetization-mode=1\r\na=control:track0\r\n")
                extra = f"Content-Base: {url.rstrip('/')}/\r\nContent-Type: application/sdp\r\n"
            elif method == "SETUP":
                if "TCP" not in hdr.get("transport", ""):
                    status = "461 Unsupported Transport"
                else:
                    extra = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 4242\r\n"
            elif method == "PLAY":
                extra = "Session: 4242\r\nRange: npt=0.000-\r\n"
            elif method == "TEARDOWN":
                extra = "Session: 4242\r\n"
            msg = f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n{extra}"
            msg += f"Content-Length: {len(body)}\r\n\r\n{body}"
            send(msg.encode())
            if method == "PLAY" and not playing.is_set():
                playing.set()
                threading.Thread(target=stream, daemon=True).start()
            if method == "TEARDOWN":
                return
    except OSError:
        return
    finally:
        closed.set()
        conn.close()


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    fps = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    with open(path, "rb") as f:
        aus = access_units(nal_units(f.read()))
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, aus, fps), daemon=True).start()


if __name__ == "__main__":
    main()
