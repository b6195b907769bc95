// Plays streams from `webrtc-egress serve` in Debian's Chromium through the built-in player page.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, existsSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root, chromiumPath, shots, waitFor, launchChromium, playing, decodesVideoAndAudio } from "./chromium.mjs";

const bin = process.env.WEBRTC_EGRESS_BIN || join(root, "target/debug/webrtc-egress");

function freePort() {
  return new Promise((ok) => {
    const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => ok(p)); });
  });
}

function manifest(udpPort, ids) {
  const procs = ids.map((id) => `    - id: ${id}
      inputs:
        - address: "testsrc2=size=640x360:rate=30"
          options: ["-re", "-f", "lavfi"]
        - address: "sine=frequency=440:sample_rate=48000"
          options: ["-re", "-f", "lavfi"]
      video: {codec: h264, bitrateKbps: 800}
      audio: {codec: opus}
`).join("");
  return `apiVersion: webrtc.dragonfork.io/v1alpha1
kind: WebRTCEgress
metadata: {name: browser}
spec:
  webrtc: {udpPort: ${udpPort}}
  processes:
${procs}`;
}

let server, base, manifestPath, udpPort, browser, otherOrigin, otherBase;

async function streams() {
  try { return (await (await fetch(`${base}/api/v1/streams`)).json()).streams; } catch { return null; }
}

before(async () => {
  assert.ok(existsSync(bin), `${bin} missing: build it first (cargo build)`);
  assert.ok(existsSync(chromiumPath), `${chromiumPath} missing: apt-get install chromium`);
  const dir = mkdtempSync(join(tmpdir(), "webrtc-egress-browser-"));
  manifestPath = join(dir, "egress.yaml");
  udpPort = await freePort();
  writeFileSync(manifestPath, manifest(udpPort, ["cam1", "cam2"]));
  const http = await freePort();
  base = `http://127.0.0.1:${http}`;
  server = spawn(bin, ["serve", "-f", manifestPath, "--listen", `127.0.0.1:${http}`, "--udp-bind", "127.0.0.1"],
    { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
  await waitFor("both streams live", async () => {
    const s = await streams();
    return s && s.length === 2 && s.every((x) => x.live);
  }, 60000);

  // A second origin that embeds the player and talks WHEP to the egress server across origins.
  const page = await (await fetch(`${base}/play/cam1`)).text();
  // `/later` is the same player for a process that does not exist yet.
  const later = page.replaceAll("cam1", "later");
  otherOrigin = createServer((req, res) => {
    res.setHeader("Content-Type", "text/html");
    res.end(req.url.startsWith("/later") ? later : page);
  });
  await new Promise((ok) => otherOrigin.listen(0, "127.0.0.1", ok));
  otherBase = `http://127.0.0.1:${otherOrigin.address().port}`;

  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  otherOrigin?.close();
  server?.kill();
});

test("the player page decodes video and receives audio", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${base}/play/cam1`);
  await decodesVideoAndAudio(page, "player");

  // Closing the page DELETEs its session.
  await waitFor("one subscriber", async () => (await streams()).find((s) => s.id === "cam1").subscribers === 1);
  await context.close();
  await waitFor("session deleted on close", async () => (await streams()).find((s) => s.id === "cam1").subscribers === 0, 10000);
});

test("a player on another origin plays through CORS", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${otherBase}/?server=${encodeURIComponent(base)}`);
  const result = await playing(page, 30);
  assert.notEqual(new URL(page.url()).origin, base);
  console.log(`cross-origin: ${result.frames} frames decoded`);
  await context.close();
});

test("removing a process while it plays shows it ended without an error storm", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const posts = [];
  page.on("request", (r) => { if (r.method() === "POST") posts.push(r.url()); });
  await page.goto(`${base}/play/cam2`);
  await playing(page, 30);
  writeFileSync(manifestPath, manifest(udpPort, ["cam1"]));
  const ended = await waitFor("page shows ended", () => page.evaluate(() => window.whepStatus.ended && document.getElementById("state").textContent), 30000);
  console.log(`removed: page shows "${ended}" after ${posts.length} POST(s)`);
  await new Promise((r) => setTimeout(r, 3000));
  assert.ok(posts.length <= 3, `no retry storm: ${posts.length} POSTs`);
  assert.match(ended, /ended/);
  await page.screenshot({ path: join(shots, "ended.png") });
  await context.close();
  writeFileSync(manifestPath, manifest(udpPort, ["cam1", "cam2"]));
});

test("a player started before its stream exists keeps retrying and plays once it is added", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${otherBase}/later?server=${encodeURIComponent(base)}`);
  await waitFor("a failed attempt", () => page.evaluate(() => window.whepStatus.attempts >= 2 && window.whepStatus.state === "waiting"));
  writeFileSync(manifestPath, manifest(udpPort, ["cam1", "cam2", "later"]));
  const result = await playing(page, 30);
  console.log(`late stream: playing after ${result.attempts} attempts`);
  assert.ok(result.attempts >= 2);
  await context.close();
  writeFileSync(manifestPath, manifest(udpPort, ["cam1", "cam2"]));
});
