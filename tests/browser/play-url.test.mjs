// Plays one stream of an already running webrtc-egress (a container, a pod) in Debian's Chromium
// through its player page. scripts/test-image runs it against the image:
//   PLAY_URL=http://127.0.0.1:8080/play/cam1 SCREENSHOT=name node --test play-url.test.mjs
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromiumPath, shots, waitFor, launchChromium, audioPacketsReceived, playing } from "./chromium.mjs";

const url = process.env.PLAY_URL;
let browser;
after(async () => { await browser?.close(); });

test(`Chromium decodes video and receives audio from ${url}`, async () => {
  assert.ok(url, "PLAY_URL (http://HOST:PORT/play/PROCESS) is required");
  assert.ok(existsSync(chromiumPath), `${chromiumPath} missing: apt-get install chromium`);
  browser = await launchChromium();
  const page = await browser.newPage();
  await page.goto(url);
  const result = await playing(page, 60);
  const audio = await waitFor("audio packets", async () => (await audioPacketsReceived(page)) > 50 && audioPacketsReceived(page));
  console.log(`chromium: ${result.frames} frames decoded, first frame ${result.firstFrameMs?.toFixed(0)} ms after POST, ${audio} audio packets`);
  assert.ok(result.frames >= 60);
  assert.ok(result.firstFrameMs !== null, "requestVideoFrameCallback saw a frame");
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, `${process.env.SCREENSHOT || "play-url"}.png`) });
});
