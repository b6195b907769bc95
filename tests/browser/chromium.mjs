// What the browser tests share: Debian's Chromium through playwright-core, and the checks that
// a player page is really playing (frames decoded, audio packets received).
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

export const root = resolve(import.meta.dirname, "../..");
export const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
export const shots = join(root, "target/screenshots");

export async function waitFor(what, probe, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/// Debian's Chromium, or `executablePath` (e.g. a wrapper that runs it in a network namespace).
export function launchChromium(executablePath = chromiumPath) {
  return chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--autoplay-policy=no-user-gesture-required"],
  });
}

/// Chromium inside network namespace `netns` (tests/netns/topology); playwright talks to it
/// over a pipe, so the namespace needs no route to us.
export function launchChromiumIn(netns) {
  const dir = mkdtempSync(join(tmpdir(), "webrtc-egress-netns-"));
  const wrapper = join(dir, "chromium-in-netns");
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${netns} ${chromiumPath} "$@"\n`);
  chmodSync(wrapper, 0o755);
  return launchChromium(wrapper);
}

/// The KEY=VALUE lines of a topology's env file.
export function readEnv(file) {
  return Object.fromEntries(readFileSync(file, "utf8").trim().split("\n").map((l) => l.split("=")));
}

export async function audioPacketsReceived(page) {
  return page.evaluate(async () => {
    const pc = window.whepPc();
    if (!pc) return 0;
    let n = 0;
    (await pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "audio") n += r.packetsReceived; });
    return n;
  });
}

// Resolves once the player page has decoded `minFrames` video frames.
export async function playing(page, minFrames) {
  return waitFor(`${minFrames} decoded frames`, () => page.evaluate((min) => {
    const q = document.getElementById("video").getVideoPlaybackQuality();
    const s = window.whepStatus;
    return s.state === "playing" && q.totalVideoFrames >= min
      ? { frames: q.totalVideoFrames, firstFrameMs: s.firstFrameMs, attempts: s.attempts } : null;
  }, minFrames));
}

/// Asserts the page decodes 60 frames and receives audio, then saves a screenshot `name`.png.
export async function decodesVideoAndAudio(page, name) {
  const result = await playing(page, 60);
  const audio = await waitFor("audio packets", async () => (await audioPacketsReceived(page)) > 50 && audioPacketsReceived(page));
  console.log(`chromium: ${result.frames} frames decoded, first frame ${result.firstFrameMs?.toFixed(0)} ms after POST, ${audio} audio packets`);
  assert.ok(result.frames >= 60);
  assert.ok(result.firstFrameMs !== null, "requestVideoFrameCallback saw a frame");
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, `${name}.png`) });
}
