"""Firefox (Debian's firefox-esr, driven by Selenium and geckodriver) plays an egress stream:
our player page, and a minimal WHEP player of its own on another origin. Prints frames,
time to first frame and the winning candidate pair; exits non-zero when either does not play
or media did not take the transport expected.

Firefox offers H.264 over WebRTC only with the two prefs below; it then decodes through the
system's libavcodec (no OpenH264 plugin here)."""

import argparse
import http.server
import json
import sys
import threading
import time

from selenium import webdriver
from selenium.webdriver.firefox.options import Options
from selenium.webdriver.firefox.service import Service

MINIMAL_PLAYER = """<!doctype html><meta charset=utf-8><title>minimal WHEP player</title>
<video id=video autoplay muted playsinline></video>
<script>
const pc = new RTCPeerConnection();
window.whepPc = () => pc;
pc.addTransceiver("video", {direction: "recvonly"});
pc.addTransceiver("audio", {direction: "recvonly"});
pc.ontrack = (e) => { video.srcObject = e.streams[0] || new MediaStream([e.track]); };
(async () => {
  await pc.setLocalDescription(await pc.createOffer());
  const res = await fetch(new URLSearchParams(location.search).get("whep"), {
    method: "POST", headers: {"Content-Type": "application/sdp"}, body: pc.localDescription.sdp});
  await pc.setRemoteDescription({type: "answer", sdp: await res.text()});
})();
</script>"""

STATE = """
const done = arguments[arguments.length - 1];
(async () => {
  const video = document.getElementById("video");
  const pc = window.whepPc && window.whepPc();
  let pair = null, frames = 0;
  if (pc) {
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") frames = s.framesDecoded || 0;
      if (s.type === "candidate-pair" && s.selected) {
        const l = stats.get(s.localCandidateId), r = stats.get(s.remoteCandidateId);
        pair = {local: `${l.protocol} ${l.candidateType} ${l.address}:${l.port}`,
                remote: `${r.protocol} ${r.candidateType} ${r.address}:${r.port}`,
                protocol: r.protocol};
      }
    });
  }
  // Headless Firefox leaves getVideoPlaybackQuality() at 0; the decoder's count and the
  // element's size and clock show the page plays.
  done({frames, width: video.videoWidth, time: video.currentTime, pair,
        page: window.whepStatus ? window.whepStatus.state : null,
        ice: pc ? pc.iceConnectionState : null});
})();
"""


def serve_minimal_player():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = MINIMAL_PLAYER.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


def firefox(geckodriver):
    options = Options()
    options.binary_location = "/usr/bin/firefox-esr"
    options.add_argument("-headless")
    for pref, value in {
        "media.webrtc.hw.h264.enabled": True,
        "gfx.blacklist.webrtc.hw.acceleration.h264": 1,
        "media.autoplay.default": 0,
        "media.autoplay.blocking_policy": 0,
        "media.peerconnection.ice.obfuscate_host_addresses": False,
        "network.proxy.type": 0,
    }.items():
        options.set_preference(pref, value)
    return webdriver.Firefox(options=options, service=Service(executable_path=geckodriver))


def play(driver, page_url, name, expect, min_frames=60, timeout=45):
    started = time.monotonic()
    driver.get(page_url)
    state = None
    while time.monotonic() - started < timeout:
        state = driver.execute_async_script(STATE)
        if state["frames"] >= min_frames and state["pair"] and state["width"] > 0 \
                and state["time"] > 1.0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"firefox {name}: did not play: {json.dumps(state)}")
    pair = state["pair"]
    print(f"firefox {name}: {state['frames']} frames decoded, {state['width']} px wide, "
          f"playing {state['time']:.1f} s after {time.monotonic() - started:.1f} s, "
          f"pair {pair['local']} -> {pair['remote']}")
    if pair["protocol"] != expect:
        raise AssertionError(f"firefox {name}: media over {pair['protocol']}, expected {expect}")


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--geckodriver", required=True)
    args.add_argument("--url", required=True, help="egress base URL as the laptop sees it")
    args.add_argument("--expect", choices=["tcp", "udp"], required=True)
    args.add_argument("--name", required=True)
    opts = args.parse_args()
    minimal = serve_minimal_player()
    driver = firefox(opts.geckodriver)
    try:
        play(driver, f"{opts.url}/play/cam1", f"{opts.name} player page", opts.expect)
        driver.get("about:blank")
        play(driver, f"{minimal}?whep={opts.url}/whep/cam1", f"{opts.name} minimal player",
             opts.expect)
    finally:
        driver.quit()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
