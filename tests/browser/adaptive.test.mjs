// A Chromium viewer on a constrained link (tests/netns/topology, `tc` on the gateway) plays a
// process with a rendition ladder: it stays on the top rendition while the link carries it,
// moves to the low one within seconds of a 1 Mbit/s limit and keeps decoding there, and climbs
// back once the limit is lifted. The same limit on a single-bitrate process is the comparison.
// Run by scripts/test-adaptive, which builds the namespaces and the manifest.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join, resolve } from "node:path";
import { launchChromiumIn, readEnv, root, waitFor } from "./chromium.mjs";

const envFile = process.env.REACH_ENV;
assert.ok(envFile, "REACH_ENV unset: run scripts/test-adaptive, which builds the namespaces");
const env = readEnv(envFile);
const topology = join(root, "tests/netns/topology");
const dir = resolve(envFile, "..");
const LIMIT = "1mbit";

let browser;
before(async () => {
  execFileSync(topology, ["route", dir, "on"]);
  browser = await launchChromiumIn(env.LAPTOP_NS);
});
after(async () => {
  await browser?.close();
  execFileSync(topology, ["limit", dir, "off"]);
});

function limit(rate) {
  execFileSync(topology, ["limit", dir, rate]);
}

/// A process's counter from the server's /metrics, read inside the pod's namespace.
function metric(name, labels) {
  const text = execFileSync("ip", ["netns", "exec", env.POD_NS,
    "curl", "-sS", "--max-time", "5", "http://127.0.0.1:8080/metrics"]).toString();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`));
  assert.ok(line, `no ${name}{${labels}} on /metrics`);
  return Number(line.split(" ").pop());
}

/// What the page shows and Chromium counts for its video.
function sample(page) {
  return page.evaluate(async () => {
    const pc = window.whepPc && window.whepPc();
    const out = { rendition: window.whepStatus.rendition, state: window.whepStatus.state,
      framesDecoded: 0, freezes: 0, freezeSeconds: 0, height: 0 };
    if (!pc) return out;
    (await pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") {
        out.framesDecoded = r.framesDecoded || 0;
        out.freezes = r.freezeCount || 0;
        out.freezeSeconds = r.totalFreezesDuration || 0;
        out.height = r.frameHeight || 0;
      }
    });
    return out;
  });
}

async function open(path) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${env.FORWARD_URL}${path}`);
  await waitFor(`${path}: 30 decoded frames`, async () => (await sample(page)).framesDecoded >= 30, 45000);
  return { page, context };
}

/// Seconds until `predicate(sample)` holds.
async function secondsUntil(page, what, predicate, timeoutMs) {
  const start = Date.now();
  await waitFor(what, async () => predicate(await sample(page)), timeoutMs);
  return (Date.now() - start) / 1000;
}

/// Seconds until the page has shown `rendition` for `holdSeconds` in a row.
async function secondsUntilSteady(page, rendition, holdSeconds, timeoutMs) {
  const start = Date.now();
  let since = null;
  await waitFor(`steady on ${rendition}`, async () => {
    const now = Date.now();
    if ((await sample(page)).rendition !== rendition) since = null;
    else if (since === null) since = now;
    return since !== null && now - since >= holdSeconds * 1000;
  }, timeoutMs);
  return (since - start) / 1000;
}

/// The share of `seconds` spent on `rendition`, sampled twice a second.
async function shareOn(page, rendition, seconds) {
  let on = 0, all = 0;
  for (const end = Date.now() + seconds * 1000; Date.now() < end; all++) {
    if ((await sample(page)).rendition === rendition) on++;
    await new Promise((r) => setTimeout(r, 500));
  }
  return on / all;
}

/// Frames decoded and freezes over `seconds`.
async function over(page, seconds) {
  const a = await sample(page);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const b = await sample(page);
  return { fps: (b.framesDecoded - a.framesDecoded) / seconds, freezes: b.freezes - a.freezes,
    freezeSeconds: b.freezeSeconds - a.freezeSeconds, rendition: b.rendition, height: b.height };
}

test("a ladder viewer steps down on a 1 Mbit/s link, keeps decoding, and climbs back", async () => {
  const { page, context } = await open("/play/cam1");
  try {
    // No limit: the top rendition, and it stays there.
    await secondsUntil(page, "the top rendition", (s) => s.rendition === "hd", 15000);
    const free = await over(page, 6);
    console.log(`no limit: ${JSON.stringify(free)}`);
    assert.equal(free.rendition, "hd", "stays on the top rendition on a free link");

    limit(LIMIT);
    const down = await secondsUntil(page, "the low rendition", (s) => s.rendition === "sd", 60000);
    const before = await sample(page);
    const share = await shareOn(page, "sd", 20);
    const constrained = await sample(page);
    const fps = (constrained.framesDecoded - before.framesDecoded) / 20;
    const freezes = constrained.freezes - before.freezes;
    const frozen = constrained.freezeSeconds - before.freezeSeconds;
    console.log(`${LIMIT}: on sd ${down.toFixed(1)} s after the limit; over the next 20 s ` +
      `${(share * 100).toFixed(0)}% of the time on sd, ${fps.toFixed(1)} fps decoded, ` +
      `${freezes} freezes (${frozen.toFixed(1)} s frozen)`);
    // Probes up take some of the time (and a freeze or two); the viewer must keep coming back.
    assert.ok(share >= 0.35, `back on the low rendition between probes: ${share}`);
    assert.ok(fps >= 10, `keeps decoding under the limit: ${fps} fps`);

    limit("off");
    const up = await secondsUntilSteady(page, "hd", 8, 120000);
    const after = await over(page, 4);
    console.log(`limit lifted: steady on hd ${up.toFixed(1)} s later; then ${JSON.stringify(after)}`);
    assert.equal(after.rendition, "hd");
    assert.ok(after.fps >= 10, `decodes on the top rendition again: ${after.fps} fps`);

    // Chromium took up the goog-remb we answered with and sends its estimate.
    const estimates = metric("webrtc_egress_process_bandwidth_estimates_total", 'process="cam1"');
    const downs = metric("webrtc_egress_process_rendition_switches_total", 'process="cam1",direction="down"');
    console.log(`bandwidth estimates read: ${estimates}; switches down: ${downs}`);
    assert.ok(estimates > 0, "Chromium sent no REMB");
  } finally {
    limit("off");
    await context.close();
  }
});

test("the player's quality menu pins a rendition, and auto hands the choice back", async () => {
  const { page, context } = await open("/play/cam1");
  try {
    await waitFor("the quality menu", () => page.isVisible("#quality"), 10000);
    const options = await page.$$eval("#quality option", (os) => os.map((o) => o.value));
    assert.deepEqual(options, ["", "hd", "sd"], "auto, then the ladder");
    await Promise.all([page.waitForURL(/rendition=sd/), page.selectOption("#quality", "sd")]);
    await secondsUntil(page, "the pinned low rendition", (s) => s.rendition === "sd", 20000);
    // A free link would take an adaptive viewer to hd; a pinned one stays.
    const pinned = await over(page, 5);
    assert.equal(pinned.rendition, "sd", "stays on the pinned rendition");
    assert.equal(await page.inputValue("#quality"), "sd");
    await Promise.all([page.waitForURL((u) => !u.search.includes("rendition")),
      page.selectOption("#quality", "")]);
    await secondsUntil(page, "the top rendition again", (s) => s.rendition === "hd", 20000);
  } finally {
    await context.close();
  }
});

test("for comparison: the same limit on a single-bitrate process", async () => {
  const { page, context } = await open("/play/flat");
  try {
    const free = await over(page, 4);
    limit(LIMIT);
    const constrained = await over(page, 15);
    console.log(`single bitrate: no limit ${JSON.stringify(free)}; ${LIMIT}: ${JSON.stringify(constrained)}`);
    assert.ok(free.fps >= 10, `plays without a limit: ${free.fps} fps`);
  } finally {
    limit("off");
    await context.close();
  }
});
