// Chromium in the "laptop" namespace of tests/netns/topology plays the egress in the "pod"
// namespace through what a real viewer has: a TCP forward of the HTTP port (a TCP load
// balancer's shape), the `kubectl port-forward` shape (127.0.0.1 in the laptop, tunnelled over
// a unix socket), and, once the gateway routes, plain UDP. Run by scripts/test-reachability.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { launchChromiumIn, readEnv, root, shots, waitFor } from "./chromium.mjs";

const envFile = process.env.REACH_ENV;
assert.ok(envFile, "REACH_ENV unset: run scripts/test-reachability, which builds the namespaces");
const env = readEnv(envFile);
const topology = join(root, "tests/netns/topology");
const reachDir = resolve(envFile, "..");

let browser;

before(async () => {
  browser = await launchChromiumIn(env.LAPTOP_NS);
});

after(async () => {
  await browser?.close();
});

/// Opens the player at `base`, waits for decoded frames, returns them and the winning pair.
async function play(base, name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${base}/play/cam1`);
  const result = await waitFor(`${name}: 60 decoded frames`, () => page.evaluate(async () => {
    const q = document.getElementById("video").getVideoPlaybackQuality();
    const pc = window.whepPc && window.whepPc();
    if (!pc || q.totalVideoFrames < 60) return null;
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        const p = stats.get(s.selectedCandidatePairId);
        const l = stats.get(p.localCandidateId), r = stats.get(p.remoteCandidateId);
        pair = { local: `${l.protocol} ${l.candidateType} ${l.address}:${l.port}`,
          remote: `${r.protocol} ${r.candidateType} ${r.address}:${r.port}`, protocol: r.protocol };
      }
    });
    return { frames: q.totalVideoFrames, firstFrameMs: window.whepStatus.firstFrameMs, pair };
  }), 45000);
  console.log(`${name}: ${result.frames} frames, first frame ${result.firstFrameMs?.toFixed(0)} ms after POST, ` +
    `pair ${result.pair?.local} -> ${result.pair?.remote}`);
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, `reach-${name}.png`) });
  await context.close();
  return result;
}

test("the laptop cannot reach the pod: no route, UDP dropped", () => {
  assert.throws(() => execFileSync("ip", ["netns", "exec", env.LAPTOP_NS,
    "curl", "-sS", "--max-time", "3", `http://${env.POD_IP}:8080/healthz`], { stdio: "pipe" }),
  "the pod's address must be unreachable from the laptop");
});

test("through a TCP forward on the laptop's link, the page plays over ICE-TCP", async () => {
  const r = await play(env.FORWARD_URL, "tcp-forward");
  assert.equal(r.pair.protocol, "tcp");
  assert.match(r.pair.remote, /10\.77\.2\.1:8080/);
});

test("addressed by a host name, the page plays over ICE-TCP to the address the name resolves to", async () => {
  const r = await play(env.NAMED_URL, "host-name");
  assert.equal(r.pair.protocol, "tcp");
  assert.match(r.pair.remote, /10\.77\.2\.1:8080/);
});

test("through kubectl port-forward's shape (127.0.0.1 over a unix socket), the page plays over ICE-TCP", async () => {
  const r = await play(env.PORT_FORWARD_URL, "port-forward");
  assert.equal(r.pair.protocol, "tcp");
  assert.match(r.pair.remote, /127\.0\.0\.1:8080/);
});

test("when the network routes UDP, the same page plays over UDP", async () => {
  execFileSync(topology, ["route", reachDir, "on"]);
  try {
    const r = await play(env.FORWARD_URL, "udp");
    assert.equal(r.pair.protocol, "udp");
    assert.match(r.pair.remote, new RegExp(`${env.POD_IP.replaceAll(".", "\\.")}:`));
  } finally {
    execFileSync(topology, ["route", reachDir, "off"]);
  }
});
