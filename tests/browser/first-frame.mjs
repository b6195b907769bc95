// Time to first frame in Chromium, phase by phase: N fresh WHEP sessions against a running
// `serve`, each timed in the page from its POST. A benchmark (prints a table), run by
// scripts/bench-first-frame; with FIRST_FRAME_SMOKE=1 it exits non-zero when a session
// decodes no frame, which is all scripts/test asks of it.
//
//   node first-frame.mjs BASE_URL PROCESS N
import { launchChromium } from "./chromium.mjs";

const [base, process_, countArg] = process.argv.slice(2);
const count = Number(countArg || 10);
const parallel = Number(process.env.FIRST_FRAME_PARALLEL || 1);
const smoke = process.env.FIRST_FRAME_SMOKE === "1";
if (!base || !process_) {
  console.error("usage: node first-frame.mjs BASE_URL PROCESS [N]");
  process.exit(2);
}

// Runs in the page: one session, timed with performance.now() from the POST. getStats is
// polled every 5 ms until a frame is decoded; requestVideoFrameCallback gives the painted one.
async function session(endpoint) {
  const t = {};
  const now = () => performance.now();
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const video = document.createElement("video");
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  const stream = new MediaStream();
  pc.ontrack = (e) => {
    stream.addTrack(e.track);
    video.srcObject = stream;
    if (e.track.kind === "video") e.track.onunmute = () => { t.unmute ??= now(); };
  };
  pc.oniceconnectionstatechange = () => {
    if (pc.iceConnectionState === "connected" || pc.iceConnectionState === "completed") t.ice ??= now();
  };
  pc.onconnectionstatechange = () => { if (pc.connectionState === "connected") t.dtls ??= now(); };
  let painted;
  const paint = new Promise((ok) => video.requestVideoFrameCallback((at, meta) => {
    painted = { at: now(), receiveTime: meta.receiveTime, processing: meta.processingDuration, rtpTimestamp: meta.rtpTimestamp };
    ok();
  }));
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  t.post = now();
  const res = await fetch(endpoint, { method: "POST", body: offer.sdp, headers: { "Content-Type": "application/sdp" } });
  if (res.status !== 201) throw new Error(`POST ${endpoint}: HTTP ${res.status} ${await res.text()}`);
  const answer = await res.text();
  t.answer = now();
  const location = new URL(res.headers.get("Location"), endpoint).href;
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  video.play().catch(() => {});

  let inbound = null;
  const deadline = t.post + 10000;
  while (now() < deadline && t.decoded === undefined) {
    const stats = await pc.getStats();
    const at = now();
    stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") inbound = r; });
    if (inbound?.packetsReceived > 0) t.rtp ??= at;
    if (inbound?.framesReceived > 0) t.assembled ??= at;
    if (inbound?.framesDecoded > 0) t.decoded ??= at;
    await new Promise((r) => setTimeout(r, 5));
  }
  await Promise.race([paint, new Promise((r) => setTimeout(r, Math.max(0, deadline - now())))]);
  if (painted) t.painted = painted.at;
  // Two more seconds of playout: what the jitter buffer settles on.
  await new Promise((r) => setTimeout(r, 2000));
  (await pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") inbound = r; });
  const jb = inbound && inbound.jitterBufferEmittedCount > 0
    ? 1000 * inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount : null;
  const jbTarget = inbound && inbound.jitterBufferEmittedCount > 0
    ? 1000 * inbound.jitterBufferTargetDelay / inbound.jitterBufferEmittedCount : null;
  const phases = {};
  for (const k of ["answer", "ice", "dtls", "unmute", "rtp", "assembled", "decoded", "painted"]) {
    if (t[k] !== undefined) phases[k] = t[k] - t.post;
  }
  // The painted frame's own timeline: its last packet's arrival, then decoded.
  if (painted?.receiveTime) {
    phases.frameReceived = painted.receiveTime - t.post;
    if (painted.processing !== undefined) phases.frameDecoded = phases.frameReceived + 1000 * painted.processing;
  }
  fetch(location, { method: "DELETE" }).catch(() => {});
  pc.close();
  video.remove();
  return {
    phases, jitterBufferMs: jb, jitterBufferTargetMs: jbTarget,
    framesDecoded: inbound?.framesDecoded ?? 0, framesDropped: inbound?.framesDropped ?? 0,
    firstRtpTimestamp: painted?.rtpTimestamp ?? null, postEpochMs: performance.timeOrigin + t.post,
  };
}

const browser = await launchChromium();
const results = [];
let failures = 0;
try {
  let next = 0;
  const worker = async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    // Any page of the server: same origin as the WHEP endpoint.
    await page.goto(`${base}/`);
    while (next < count) {
      const i = next++;
      try {
        const r = await page.evaluate(session, `${base}/whep/${encodeURIComponent(process_)}`);
        results.push(r);
        const p = r.phases;
        const f = (k) => (p[k] === undefined ? "-" : p[k].toFixed(0));
        console.log(`session ${i + 1} (POST at ${new Date(r.postEpochMs).toISOString()}): answer ${f("answer")} ` +
          `ice ${f("ice")} dtls ${f("dtls")} unmute ${f("unmute")} received ${f("frameReceived")} ` +
          `decoded ${f("frameDecoded")} painted ${f("painted")} ms; jitter buffer ${r.jitterBufferMs?.toFixed(0)} ms ` +
          `(target ${r.jitterBufferTargetMs?.toFixed(0)}), ${r.framesDecoded} decoded, ${r.framesDropped} dropped`);
        if (p.decoded === undefined && p.painted === undefined) failures++;
      } catch (e) {
        console.log(`session ${i + 1}: failed: ${e.message}`);
        failures++;
      }
    }
    await context.close();
  };
  await Promise.all(Array.from({ length: Math.max(1, parallel) }, worker));
} finally {
  await browser.close();
}

function percentile(values, p) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

// getStats results are cached by Chromium for up to 50 ms: its rows lag by that much. The
// track's unmute (first RTP packet) and the painted frame's metadata (requestVideoFrameCallback:
// receiveTime, processingDuration) are the precise ones.
const rows = [
  ["POST → answer", "answer"],
  ["→ ICE connected", "ice"],
  ["→ DTLS connected", "dtls"],
  ["→ first RTP (track unmuted)", "unmute"],
  ["→ first frame received (rVFC)", "frameReceived"],
  ["→ first frame decoded (rVFC)", "frameDecoded"],
  ["→ first frame painted (rVFC)", "painted"],
  ["→ first RTP (getStats, ≤50 ms late)", "rtp"],
  ["→ decoded (getStats, ≤50 ms late)", "decoded"],
];
const fmt = (v) => (v === null ? "-" : v.toFixed(0).padStart(6));
console.log(`\n${results.length} sessions (${parallel} at a time), ms after the POST:`);
console.log(`${"phase".padEnd(36)} ${"p50".padStart(6)} ${"p95".padStart(6)}`);
for (const [label, key] of rows) {
  const v = results.map((r) => r.phases[key]).filter((x) => x !== undefined);
  console.log(`${label.padEnd(36)} ${fmt(percentile(v, 50))} ${fmt(percentile(v, 95))}`);
}
const jb = results.map((r) => r.jitterBufferMs).filter((x) => x !== null);
const jbt = results.map((r) => r.jitterBufferTargetMs).filter((x) => x !== null);
console.log(`${"jitter buffer delay (2 s on)".padEnd(36)} ${fmt(percentile(jb, 50))} ${fmt(percentile(jb, 95))}`);
console.log(`${"jitter buffer target".padEnd(36)} ${fmt(percentile(jbt, 50))} ${fmt(percentile(jbt, 95))}`);
if (failures > 0) {
  console.error(`first-frame: ${failures} of ${count} sessions decoded no frame`);
  process.exit(1);
}
if (smoke) console.log("first-frame: every session decoded a frame");
