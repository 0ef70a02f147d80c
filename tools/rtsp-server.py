#!/usr/bin/python3
"""Loopback RTSP test server: serves MP4 files (H.264) over RTSP with GStreamer's rtsp-server.

Usage: rtsp-server.py PORT MOUNT=FILE [MOUNT=FILE ...] [--user USER:PASS]

FILE is an MP4 with H.264, or a raw Annex-B `.h264` stream.

Each MOUNT is served at rtsp://127.0.0.1:PORT/MOUNT (TCP-interleaved or UDP, as the client
asks). With --user, every mount requires that account (digest authentication). Prints "ready" on
stdout once listening. Used by the end-to-end tests; run it with Debian's /usr/bin/python3,
which has the GObject bindings.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main():
    Gst.init(None)
    port = sys.argv[1]
    mounts = [a for a in sys.argv[2:] if "=" in a and not a.startswith("--")]
    user = None
    if "--user" in sys.argv:
        user = sys.argv[sys.argv.index("--user") + 1]
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    if user:
        name, password = user.split(":", 1)
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "camera")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(name, password), token)
        auth.add_digest(name, password, token)
        # Digest, as IP cameras use (the bindings take one method, not a combination).
        gi.require_version("GstRtsp", "1.0")
        from gi.repository import GstRtsp

        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        server.set_auth(auth)
    for m in mounts:
        mount, path = m.split("=", 1)
        factory = GstRtspServer.RTSPMediaFactory()
        # MP4 files are demuxed; raw Annex-B .h264 files (which may change resolution
        # mid-stream) are parsed directly.
        demux = "" if path.endswith(".h264") else "! qtdemux "
        factory.set_launch(
            f'( filesrc location="{path}" {demux}! h264parse config-interval=-1 '
            f"! rtph264pay name=pay0 pt=96 )"
        )
        # One pipeline per client: every client starts at the beginning of the file, and
        # GStreamer 1.22's shared media can abort (gst_rtsp_media_get_rates assertion) when
        # many clients join at once.
        factory.set_shared(False)
        if user:
            perms = GstRtspServer.RTSPPermissions()
            perms.add_permission_for_role("camera", "media.factory.access", True)
            perms.add_permission_for_role("camera", "media.factory.construct", True)
            factory.set_permissions(perms)
        server.get_mount_points().add_factory("/" + mount, factory)
    if server.attach(None) == 0:
        print("cannot listen", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
