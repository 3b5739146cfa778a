#!/usr/bin/env node
// Play an HLS URL with hls.js in headless Chromium and report what happened, as ONE JSON object on stdout.
//
//   node play.mjs --url URL [--seconds N] [--level K | --switch-to lowest|highest|HEIGHT] [--switch-at S]
//                 [--low-latency true|false] [--hls-config JSON] [--timeout SECONDS] [--chromium PATH]
//
// --level K / --switch-to: S seconds into playback (--switch-at), set hls.currentLevel to level index K,
// or to the level chosen by height among those hls.js parsed (the lowest, the highest, or the one HEIGHT
// pixels tall). The report then has levelSwitchRequests (what was asked, and when), levelSwitches
// (every LEVEL_SWITCHED: level index + height), fragLoads (every FRAG_LOADED in order: which level,
// sn, part, and how many switch requests preceded it) and levels (what hls.js parsed).
//
// Exit status: 0 whenever the harness ran, even if playback failed (the caller judges the JSON);
// non-zero only when the harness itself failed (bad arguments, the browser did not start, the hard
// timeout fired). The browser is always closed with browser.close(): PID 1 on our machines does not
// reap orphans, so a killed Chromium leaves zombies behind.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const HLS_JS = join(HERE, 'node_modules', 'hls.js', 'dist', 'hls.min.js');
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  '--autoplay-policy=no-user-gesture-required',
];

function usage(message) {
  process.stderr.write(
    `play.mjs: ${message}\nusage: node play.mjs --url URL [--seconds N] ` +
      `[--level K | --switch-to lowest|highest|HEIGHT] [--switch-at S] ` +
      `[--low-latency true|false] [--hls-config JSON] [--timeout SECONDS] [--chromium PATH]\n`,
  );
  process.exit(64);
}

function parseArgs(argv) {
  const opts = {
    url: null,
    seconds: 30,
    level: null,
    switchTo: null,
    switchAt: null,
    lowLatency: true,
    hlsConfig: {},
    timeout: null,
    chromium: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const eq = arg.indexOf('=');
    const [name, inline] = arg.startsWith('--') && eq > 0 ? [arg.slice(0, eq), arg.slice(eq + 1)] : [arg, undefined];
    const value = () => {
      if (inline !== undefined) return inline;
      if (i + 1 >= argv.length) usage(`${name} needs a value`);
      return argv[++i];
    };
    const number = (v) => {
      const n = Number(v);
      if (!Number.isFinite(n)) usage(`${name}: not a number: ${v}`);
      return n;
    };
    switch (name) {
      case '--url': opts.url = value(); break;
      case '--seconds': opts.seconds = number(value()); break;
      case '--level': opts.level = Math.trunc(number(value())); break;
      case '--switch-to': {
        const v = value().toLowerCase();
        if (v === 'lowest' || v === 'highest') opts.switchTo = v;
        else {
          const h = Math.trunc(number(v));
          if (h <= 0) usage(`--switch-to: expected lowest, highest or a height in pixels, got ${v}`);
          opts.switchTo = h;
        }
        break;
      }
      case '--switch-at': opts.switchAt = number(value()); break;
      case '--low-latency': {
        const v = value().toLowerCase();
        if (!['true', 'false', '1', '0', 'yes', 'no'].includes(v)) usage(`--low-latency: expected true or false, got ${v}`);
        opts.lowLatency = ['true', '1', 'yes'].includes(v);
        break;
      }
      case '--hls-config':
        try { opts.hlsConfig = JSON.parse(value()); } catch (e) { usage(`--hls-config: ${e.message}`); }
        break;
      case '--timeout': opts.timeout = number(value()); break;
      case '--chromium': opts.chromium = value(); break;
      case '-h': case '--help': usage('help'); break;
      default: usage(`unknown argument ${arg}`);
    }
  }
  if (!opts.url) usage('--url is required');
  if (opts.seconds <= 0) usage('--seconds must be > 0');
  if (opts.level !== null && opts.switchTo !== null) usage('--level and --switch-to exclude each other');
  if ((opts.level === null && opts.switchTo === null) !== (opts.switchAt === null)) {
    usage('--switch-at goes with --level or --switch-to');
  }
  if (opts.switchAt !== null && (opts.switchAt < 0 || opts.switchAt >= opts.seconds)) {
    usage('--switch-at must be within [0, --seconds)');
  }
  // Launch + page setup + close take a few seconds; the rest is headroom.
  if (opts.timeout === null) opts.timeout = opts.seconds + 45;
  return opts;
}

// Runs inside the page (serialised by page.evaluate): creates hls.js and records its events.
function setupPlayer({ url, hlsConfig }) {
  const t0 = performance.now();
  const now = () => Math.round(performance.now() - t0) / 1000;
  const rec = {
    t0Wall: Date.now(),
    hlsVersion: window.Hls ? Hls.version : null,
    hlsSupported: window.Hls ? Hls.isSupported() : false,
    errors: [],
    frags: { fragments: 0, parts: 0, firstAt: null },
    levelDetails: { first: null, last: null, loaded: 0, updated: 0, endlist: false },
    manifest: null,
    levelSwitches: [],
    switchRequests: [],
    fragLoads: [],
    fragLoadsDropped: 0,
    levelsUpdated: [],
    video: { playingAt: null, firstFrameAt: null, waiting: 0, rebuffers: 0, stalledEvents: 0, playRejected: null },
    mediaSupport: {},
  };
  window.__rec = rec;
  for (const type of ['video/mp4; codecs="avc1.64001f,mp4a.40.2"', 'video/mp4; codecs="avc1.42e01e"']) {
    rec.mediaSupport[type] = window.MediaSource ? MediaSource.isTypeSupported(type) : false;
  }
  const video = document.querySelector('video');
  video.addEventListener('playing', () => { if (rec.video.playingAt === null) rec.video.playingAt = now(); });
  video.addEventListener('waiting', () => {
    rec.video.waiting++;
    if (rec.video.playingAt !== null) rec.video.rebuffers++; // ran dry after playback had started
  });
  video.addEventListener('stalled', () => { rec.video.stalledEvents++; });
  video.addEventListener('loadeddata', () => { if (rec.video.firstFrameAt === null) rec.video.firstFrameAt = now(); });
  if (!rec.hlsSupported) return rec;

  const hls = new Hls({ ...hlsConfig });
  window.__hls = hls;
  const E = Hls.Events;
  const describe = (d) => ({
    live: d.live,
    type: d.type ?? null,
    version: d.version ?? null,
    canBlockReload: d.canBlockReload,
    canSkipUntil: d.canSkipUntil,
    canSkipDateRanges: d.canSkipDateRanges,
    partTarget: d.partTarget,
    partHoldBack: d.partHoldBack,
    holdBack: d.holdBack,
    partListLength: d.partList ? d.partList.length : 0,
    targetduration: d.targetduration,
    fragmentCount: d.fragments ? d.fragments.length : 0,
    startSN: d.startSN,
    endSN: d.endSN,
    endPart: d.partList && d.partList.length ? d.partList[d.partList.length - 1].index : null,
    totalduration: d.totalduration,
    hasProgramDateTime: d.hasProgramDateTime,
    deltaUpdateFailed: d.deltaUpdateFailed ?? null,
    skippedSegments: d.skippedSegments ?? 0,
  });
  const onLevel = (kind) => (_e, data) => {
    const d = data.details;
    rec.levelDetails[kind]++;
    if (!d.live) rec.levelDetails.endlist = true;
    const info = { t: now(), event: kind === 'loaded' ? 'LEVEL_LOADED' : 'LEVEL_UPDATED', level: data.level, ...describe(d) };
    if (rec.levelDetails.first === null) rec.levelDetails.first = info;
    rec.levelDetails.last = info;
  };
  hls.on(E.LEVEL_LOADED, onLevel('loaded'));
  hls.on(E.LEVEL_UPDATED, onLevel('updated'));
  hls.on(E.MANIFEST_PARSED, (_e, data) => {
    rec.manifest = {
      t: now(),
      levels: data.levels.map((l) => ({
        width: l.width,
        height: l.height,
        bitrate: l.bitrate,
        codecs: l.attrs && l.attrs.CODECS ? l.attrs.CODECS : [l.videoCodec, l.audioCodec].filter(Boolean).join(','),
        videoCodec: l.videoCodec ?? null,
        audioCodec: l.audioCodec ?? null,
        name: l.name ?? null,
        url: Array.isArray(l.url) ? l.url[0] : l.url,
      })),
      audioTracks: data.audioTracks ? data.audioTracks.length : 0,
    };
    const p = video.play();
    if (p && p.catch) p.catch((err) => { rec.video.playRejected = String(err); });
  });
  const heightOf = (index) => (hls.levels && hls.levels[index] ? hls.levels[index].height : null);
  hls.on(E.LEVEL_SWITCHED, (_e, data) => {
    rec.levelSwitches.push({
      t: now(), level: data.level, height: heightOf(data.level), afterRequests: rec.switchRequests.length,
    });
  });
  hls.on(E.FRAG_LOADED, (_e, data) => {
    if (rec.frags.firstAt === null) rec.frags.firstAt = now();
    if (data.part) rec.frags.parts++;
    else rec.frags.fragments++;
    // Which level each fragment / part belongs to, in load order (bounded: ~10 loads/s in LL mode).
    if (rec.fragLoads.length >= 5000) { rec.fragLoadsDropped++; return; }
    const frag = data.frag;
    rec.fragLoads.push({
      t: now(),
      type: frag.type, // 'main' (our muxed video+audio), 'audio', 'subtitle'
      level: frag.level,
      height: heightOf(frag.level),
      sn: frag.sn,
      part: data.part ? data.part.index : null,
      independent: data.part ? !!data.part.independent : null,
      afterRequests: rec.switchRequests.length,
    });
  });
  // hls.js drops levels that fail for good (LEVELS_UPDATED): indices after that would mean something else.
  hls.on(E.LEVELS_UPDATED, (_e, data) => {
    rec.levelsUpdated.push({ t: now(), heights: data.levels.map((l) => l.height) });
  });
  hls.on(E.ERROR, (_e, data) => {
    if (rec.errors.length >= 200) return;
    rec.errors.push({
      t: now(),
      type: data.type,
      details: data.details,
      fatal: !!data.fatal,
      reason: data.reason ?? (data.error ? String(data.error.message || data.error) : null),
      url: (data.frag && data.frag.url) || (data.context && data.context.url) || null,
      responseCode: data.response ? data.response.code : null,
    });
  });
  hls.loadSource(url);
  hls.attachMedia(video);
  return { hlsVersion: rec.hlsVersion, hlsSupported: rec.hlsSupported };
}

// Runs inside the page: sets hls.currentLevel, to index `level` or to the level chosen by height
// (`to`: 'lowest', 'highest' or a height), and records the request (from then on, fragLoads and
// levelSwitches count it in afterRequests).
function requestLevel({ level, to }) {
  const hls = window.__hls;
  const rec = window.__rec;
  const levels = hls && hls.levels ? hls.levels : [];
  const state = () => ({
    currentLevel: hls.currentLevel, loadLevel: hls.loadLevel, autoLevelEnabled: hls.autoLevelEnabled,
  });
  const before = hls ? state() : {};
  let index = level;
  if (to !== null && to !== undefined) {
    const heights = levels.map((l) => l.height);
    if (to === 'lowest') index = heights.length ? heights.indexOf(Math.min(...heights)) : -1;
    else if (to === 'highest') index = heights.length ? heights.indexOf(Math.max(...heights)) : -1;
    else index = heights.indexOf(to);
  }
  const request = {
    seq: rec.switchRequests.length + 1,
    to: to ?? null,
    level: index,
    height: levels[index] ? levels[index].height : null,
    before,
    fragLoadsBefore: rec.fragLoads.length,
    currentTime: document.querySelector('video').currentTime,
    done: false,
  };
  if (hls && index >= 0 && index < levels.length) {
    rec.switchRequests.push(request); // first, so the loads this triggers already count it
    hls.currentLevel = index;
    request.done = true;
    request.after = state();
  } else {
    request.error = `no such level (${levels.length} levels: heights ${levels.map((l) => l.height).join(',')})`;
    rec.switchRequests.push(request);
  }
  return request;
}

// Runs inside the page once a second.
function sample() {
  const video = document.querySelector('video');
  const hls = window.__hls;
  const b = video.buffered;
  let bufferedEnd = null;
  for (let i = 0; i < b.length; i++) {
    if (b.start(i) <= video.currentTime + 0.1 && video.currentTime <= b.end(i)) bufferedEnd = b.end(i);
  }
  if (bufferedEnd === null && b.length) bufferedEnd = b.end(b.length - 1);
  const playingDate = hls && hls.playingDate ? hls.playingDate.getTime() : null;
  return {
    currentTime: video.currentTime,
    latency: hls ? hls.latency : null,
    targetLatency: hls ? hls.targetLatency : null,
    playingDate,
    wallLatency: playingDate === null ? null : (Date.now() - playingDate) / 1000,
    drift: hls ? hls.drift : null,
    bufferedEnd,
    bufferAhead: bufferedEnd === null ? null : bufferedEnd - video.currentTime,
    currentLevel: hls ? hls.currentLevel : null,
    loadLevel: hls ? hls.loadLevel : null,
    videoWidth: video.videoWidth,
    videoHeight: video.videoHeight,
    readyState: video.readyState,
    paused: video.paused,
    playbackRate: video.playbackRate,
  };
}

const round = (x, digits = 3) => (typeof x === 'number' && Number.isFinite(x) ? Math.round(x * 10 ** digits) / 10 ** digits : x);
const median = (xs) => {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : null;
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const opts = parseArgs(process.argv.slice(2));
const result = {
  harnessOk: false,
  harnessError: null,
  url: opts.url,
  seconds: opts.seconds,
  lowLatency: opts.lowLatency,
  browserVersion: null,
  hlsVersion: null,
  hlsSupported: null,
  mediaSupport: null,
  samples: [],
  summary: null,
  errors: [],
  fatalErrors: 0,
  frags: null,
  levelDetails: null,
  endlist: false,
  manifest: null,
  levels: null,
  levelsUpdated: [],
  levelSwitches: [],
  levelSwitchRequests: [],
  fragLoads: [],
  fragLoadsDropped: 0,
  video: null,
  console: [],
  pageErrors: [],
  pageCrashed: false,
  durationSeconds: null,
};

let browser = null;
let finished = false;
const started = Date.now();

async function closeBrowser() {
  if (!browser) return;
  const b = browser;
  browser = null;
  // browser.close() waits for Chromium to exit (and reaps it); bounded so a wedged browser cannot hang us.
  await Promise.race([b.close().catch(() => {}), sleep(15000)]);
}

async function finish(code) {
  if (finished) return;
  finished = true;
  await closeBrowser();
  result.durationSeconds = round((Date.now() - started) / 1000, 1);
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code));
}

// Our own hard timeout: stop sampling, close the browser, report, exit non-zero.
const hardTimer = setTimeout(() => {
  result.harnessError = `hard timeout after ${opts.timeout} s`;
  finish(3);
}, opts.timeout * 1000);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    result.harnessError = `interrupted by ${signal}`;
    finish(4);
  });
}

async function main() {
  if (!existsSync(HLS_JS)) throw new Error(`${HLS_JS} is missing: run npm ci in ${HERE}`);
  browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    // We close the browser ourselves on signals (gracefully, so nothing is left unreaped).
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
    timeout: 30000,
  });
  result.browserVersion = browser.version();
  const page = await browser.newPage();
  page.on('console', (msg) => {
    if (result.console.length < 200 && (msg.type() === 'error' || msg.type() === 'warning')) {
      result.console.push({ type: msg.type(), text: msg.text().slice(0, 500) });
    }
  });
  page.on('pageerror', (err) => { if (result.pageErrors.length < 50) result.pageErrors.push(String(err).slice(0, 500)); });
  page.on('crash', () => { result.pageCrashed = true; });

  await page.setContent(
    '<!doctype html><html><head><meta charset="utf-8"><title>sfstream hls.js</title></head>' +
      '<body style="margin:0;background:#000"><video id="v" muted autoplay playsinline width="640" height="360"></video></body></html>',
  );
  await page.addScriptTag({ path: HLS_JS });
  const hlsConfig = { lowLatencyMode: opts.lowLatency, ...opts.hlsConfig };
  const setup = await page.evaluate(setupPlayer, { url: opts.url, hlsConfig });
  result.hlsVersion = setup.hlsVersion;
  result.hlsSupported = setup.hlsSupported;

  const t0 = Date.now();
  let switched = false;
  for (let i = 1; i <= Math.round(opts.seconds); i++) {
    const due = t0 + i * 1000;
    if (due > Date.now()) await sleep(due - Date.now());
    if (finished || result.pageCrashed) break;
    const t = (Date.now() - t0) / 1000;
    if (!switched && opts.switchAt !== null && t >= opts.switchAt) {
      switched = true;
      const request = await page.evaluate(requestLevel, { level: opts.level, to: opts.switchTo });
      result.levelSwitchRequests.push({ t: round(t, 1), ...request });
    }
    const s = await page.evaluate(sample);
    const out = { t: round(t, 1) };
    for (const [k, v] of Object.entries(s)) out[k] = round(v);
    result.samples.push(out);
  }
  if (finished) return;

  const rec = await page.evaluate(() => window.__rec);
  result.mediaSupport = rec.mediaSupport;
  result.errors = rec.errors;
  result.fatalErrors = rec.errors.filter((e) => e.fatal).length;
  result.frags = rec.frags;
  result.levelDetails = rec.levelDetails;
  result.endlist = rec.levelDetails.endlist;
  result.manifest = rec.manifest;
  result.levelSwitches = rec.levelSwitches;
  result.fragLoads = rec.fragLoads;
  result.fragLoadsDropped = rec.fragLoadsDropped;
  result.levelsUpdated = rec.levelsUpdated;
  // The levels hls.js parsed, by index (hls.levels is sorted by bitrate; the manifest order may differ).
  result.levels = await page.evaluate(() =>
    (window.__hls && window.__hls.levels ? window.__hls.levels : []).map((l, index) => ({
      index, width: l.width, height: l.height, bitrate: l.bitrate, name: l.name ?? null,
      url: Array.isArray(l.url) ? l.url[0] : l.url,
    })),
  );
  result.video = rec.video;

  const first = result.samples[0];
  const last = result.samples[result.samples.length - 1];
  const playing = result.samples.filter((s) => s.latency !== null && s.currentTime > 0);
  const tail = playing.slice(Math.floor(playing.length / 2)); // the second half: after start-up
  result.summary = {
    currentTimeStart: first ? first.currentTime : null,
    currentTimeEnd: last ? last.currentTime : null,
    advanced: first && last ? round(last.currentTime - first.currentTime) : 0,
    latencyMedian: round(median(tail.map((s) => s.latency))),
    latencyMin: round(Math.min(...tail.map((s) => s.latency).filter(Number.isFinite))),
    latencyMax: round(Math.max(...tail.map((s) => s.latency).filter(Number.isFinite))),
    latencyLast: last ? last.latency : null,
    wallLatencyMedian: round(median(tail.map((s) => s.wallLatency))),
    bufferAheadMedian: round(median(tail.map((s) => s.bufferAhead))),
    rebuffers: rec.video.rebuffers,
  };
  for (const k of ['latencyMin', 'latencyMax']) if (!Number.isFinite(result.summary[k])) result.summary[k] = null;
  result.harnessOk = true;
}

main()
  .then(() => finish(0))
  .catch((err) => {
    if (finished) return; // the hard timeout or a signal got there first, and says why
    result.harnessError = String(err && err.stack ? err.stack : err).slice(0, 2000);
    return finish(result.pageCrashed ? 0 : 1);
  })
  .finally(() => clearTimeout(hardTimer));
