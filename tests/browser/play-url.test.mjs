// Plays one stream of an already running webrtc-egress (a container, a pod) in Debian's Chromium
// through its player page. scripts/test-image runs it against the image:
//   PLAY_URL=http://127.0.0.1:8080/play/cam1 SCREENSHOT=name node --test play-url.test.mjs
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromiumPath, launchChromium, decodesVideoAndAudio } from "./chromium.mjs";

const url = process.env.PLAY_URL;
let browser;
after(async () => { await browser?.close(); });

test(`Chromium decodes video and receives audio from ${url}`, async () => {
  assert.ok(url, "PLAY_URL (http://HOST:PORT/play/PROCESS) is required");
  assert.ok(existsSync(chromiumPath), `${chromiumPath} missing: apt-get install chromium`);
  browser = await launchChromium();
  const page = await browser.newPage();
  await page.goto(url);
  await decodesVideoAndAudio(page, process.env.SCREENSHOT || "play-url");
});
