// samserve web page: open an image, click, see the mask.
//
// The image is embedded once (POST /api/embed). Each prompt is then decoded either here, with
// onnxruntime-web running the exported decoder over the tensor GetEmbedding returns (the paper's
// design: ~50 ms a click on the user's machine), or on the decoder service (POST /api/segment).
// ?decode=browser / ?decode=server force a mode. Every prompt is sent whole (all points and the
// box), with no mask_input, so both modes answer exactly what the SDK's segment() answers.
// Coordinates are the image's own pixels (after EXIF orientation) everywhere but the decoder's
// inputs, which use the official ResizeLongestSide(1024) frame.

const $ = (id) => document.getElementById(id);
const VENDOR = "/static/vendor/";
const COLORS = [[30, 144, 255], [255, 140, 0], [46, 184, 92]];

const state = {
  mode: "server", // "browser" | "server"
  imageId: null,
  width: 0,
  height: 0,
  fileName: "image",
  points: [], // [[x, y, label], ...] in image pixels
  box: null, // [x0, y0, x1, y1] in image pixels, or null
  history: [], // earlier {points, box} for undo
  result: null, // {masks: [Uint8Array row-major], rles, scores, chosen}
  embedding: null, // Float32Array (1, 256, 64, 64) in browser mode
  session: null, // ort.InferenceSession in browser mode
  decoderInfo: null, // model.json
  chain: Promise.resolve(),
};

// What tests and scripts read: the last result, in original-image pixels.
window.samserve = { mode: null, ready: false, imageId: null, last: null, seq: 0, error: null };

// ---- COCO RLE (pycocotools' compressed counts; samserve_client/web/rle.py is the twin) ----

function rleEncode(mask, h, w) {
  const counts = [];
  let run = 0;
  let value = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const v = mask[y * w + x];
      if (v !== value) {
        counts.push(run);
        run = 0;
        value = v;
      }
      run++;
    }
  }
  counts.push(run);
  let s = "";
  for (let i = 0; i < counts.length; i++) {
    let x = i > 2 ? counts[i] - counts[i - 2] : counts[i];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  }
  return { size: [h, w], counts: s };
}

function rleDecode(rle) {
  const [h, w] = rle.size;
  const counts = [];
  const s = rle.counts;
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++;
      k++;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const mask = new Uint8Array(h * w);
  let i = 0;
  counts.forEach((n, j) => {
    if (j % 2 === 1) {
      for (let t = i; t < i + n; t++) mask[(t % h) * w + Math.floor(t / h)] = 1;
    }
    i += n;
  });
  return mask;
}

// ---- the official decoder's conventions (model.json spells them out) ----

function preprocessShape(h, w, longSide) {
  const scale = longSide / Math.max(h, w);
  return [Math.floor(h * scale + 0.5), Math.floor(w * scale + 0.5)];
}

function decoderFeeds(points, box) {
  const { width: w, height: h } = state;
  const longSide = state.decoderInfo.image_size;
  const [nh, nw] = preprocessShape(h, w, longSide);
  const coords = [];
  const labels = [];
  for (const [x, y, label] of points) {
    coords.push(x * (nw / w), y * (nh / h));
    labels.push(label);
  }
  if (box) {
    coords.push(box[0] * (nw / w), box[1] * (nh / h), box[2] * (nw / w), box[3] * (nh / h));
    labels.push(2, 3);
  } else {
    coords.push(0, 0);
    labels.push(-1);
  }
  const n = labels.length;
  const [, , mh, mw] = state.decoderInfo.mask_input_shape;
  return {
    image_embeddings: new ort.Tensor("float32", state.embedding, state.decoderInfo.embedding_shape),
    point_coords: new ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
    point_labels: new ort.Tensor("float32", Float32Array.from(labels), [1, n]),
    mask_input: new ort.Tensor("float32", new Float32Array(mh * mw), [1, 1, mh, mw]),
    has_mask_input: new ort.Tensor("float32", new Float32Array([0]), [1]),
    orig_im_size: new ort.Tensor("float32", new Float32Array([h, w]), [2]),
  };
}

const HALF = (() => {
  const table = new Float32Array(65536);
  for (let i = 0; i < 65536; i++) {
    const sign = i & 0x8000 ? -1 : 1;
    const e = (i >> 10) & 0x1f;
    const f = i & 0x3ff;
    if (e === 0) table[i] = sign * 2 ** -14 * (f / 1024);
    else if (e === 31) table[i] = f ? NaN : sign * Infinity;
    else table[i] = sign * 2 ** (e - 15) * (1 + f / 1024);
  }
  return table;
})();

function toFloat32(buffer, dtype) {
  if (dtype === "float32") return new Float32Array(buffer);
  const half = new Uint16Array(buffer);
  const out = new Float32Array(half.length);
  for (let i = 0; i < half.length; i++) out[i] = HALF[half[i]];
  return out;
}

// ---- the two decode modes: each returns {masks: [Uint8Array], rles, scores} ----

async function decodeInBrowser(points, box, multimask) {
  const started = performance.now();
  const out = await state.session.run(decoderFeeds(points, box));
  const runMs = performance.now() - started;
  const { width: w, height: h } = state;
  const logits = out.masks.data;
  const iou = out.iou_predictions.data;
  const threshold = state.decoderInfo.mask_threshold;
  const chosen = multimask ? [1, 2, 3] : [0];
  const masks = chosen.map((k) => {
    const mask = new Uint8Array(h * w);
    const base = k * h * w;
    for (let i = 0; i < h * w; i++) mask[i] = logits[base + i] > threshold ? 1 : 0;
    return mask;
  });
  return {
    masks, rles: masks.map((m) => rleEncode(m, h, w)), scores: chosen.map((k) => iou[k]), runMs,
  };
}

async function decodeOnServer(points, box, multimask) {
  const resp = await fetch("/api/segment", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ image_id: state.imageId, points, box, multimask }),
  });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return { masks: body.masks.map(rleDecode), rles: body.masks, scores: body.scores };
}

// ---- drawing ----

function draw() {
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  const { width: w, height: h } = state;
  ctx.clearRect(0, 0, w, h);
  const r = state.result;
  if (r) {
    const mask = r.masks[r.chosen];
    const image = ctx.createImageData(w, h);
    const [cr, cg, cb] = COLORS[r.chosen % COLORS.length];
    for (let i = 0, j = 0; i < mask.length; i++, j += 4) {
      if (!mask[i]) continue;
      const x = i % w;
      // A white outline keeps the mask visible on shapes of its own colour.
      const edge = x === 0 || x === w - 1 || i < w || i >= mask.length - w ||
        !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
      image.data[j] = edge ? 255 : cr;
      image.data[j + 1] = edge ? 255 : cg;
      image.data[j + 2] = edge ? 255 : cb;
      image.data[j + 3] = edge ? 230 : 115;
    }
    ctx.putImageData(image, 0, 0);
  }
  // Marks keep the same size on screen whatever the image's resolution.
  const unit = w / $("image").getBoundingClientRect().width;
  if (state.box) {
    const [x0, y0, x1, y1] = state.box;
    ctx.lineWidth = 2 * unit;
    ctx.strokeStyle = "#1e90ff";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  for (const [x, y, label] of state.points) {
    ctx.beginPath();
    ctx.arc(x, y, 5 * unit, 0, 2 * Math.PI);
    ctx.fillStyle = label === 1 ? "#2eb85c" : "#e5484d";
    ctx.fill();
    ctx.lineWidth = 1.5 * unit;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  }
}

function showResult() {
  const r = state.result;
  const choices = $("choices");
  choices.replaceChildren();
  $("score").textContent = r ? r.scores[r.chosen].toFixed(3) : "–";
  if (r && r.masks.length > 1) {
    r.scores.forEach((s, k) => {
      const b = document.createElement("button");
      b.textContent = `mask ${k + 1} · ${s.toFixed(3)}`;
      b.className = k === r.chosen ? "chosen" : "";
      b.onclick = () => {
        r.chosen = k;
        window.samserve.last.best = k;
        showResult();
        draw();
      };
      choices.append(b);
    });
  }
  const has = state.points.length > 0 || state.box !== null;
  $("undo").disabled = state.history.length === 0;
  $("reset").disabled = !has;
  $("download-png").disabled = !r;
  $("download-coco").disabled = !r;
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
  if (error) window.samserve.error = text;
}

// ---- prompts ----

function decode(t0) {
  const points = state.points.map((p) => [...p]);
  const box = state.box ? [...state.box] : null;
  const multimask = $("multimask").checked;
  state.chain = state.chain.then(async () => {
    if (points.length === 0 && box === null) {
      state.result = null;
      draw();
      showResult();
      const ms = performance.now() - t0;
      window.samserve.last = { points, box, masks: [], scores: [], ms, mode: state.mode, best: 0 };
      window.samserve.seq += 1;
      setStatus(`${state.width}×${state.height} · no prompt`);
      return;
    }
    try {
      const fn = state.mode === "browser" ? decodeInBrowser : decodeOnServer;
      const started = performance.now();
      const r = await fn(points, box, multimask);
      const decodeMs = performance.now() - started;
      let best = 0;
      r.scores.forEach((s, k) => {
        if (s > r.scores[best]) best = k;
      });
      state.result = { ...r, chosen: best };
      draw();
      const ms = performance.now() - t0;
      $("latency").textContent = `${ms.toFixed(1)} ms (${state.mode})`;
      showResult();
      window.samserve.last = {
        points, box, masks: r.rles, scores: Array.from(r.scores), ms, mode: state.mode, best,
        decode_ms: decodeMs, run_ms: r.runMs ?? null,
      };
      window.samserve.seq += 1;
      setStatus(`${state.width}×${state.height} · ${points.length} point(s)${box ? " + box" : ""}`);
    } catch (e) {
      setStatus(`decode failed: ${e.message}`, true);
    }
  });
}

function change(update, t0) {
  state.history.push({ points: state.points.map((p) => [...p]), box: state.box });
  update();
  decode(t0);
}

function imagePixel(event) {
  const rect = $("image").getBoundingClientRect();
  const x = ((event.clientX - rect.left) * state.width) / rect.width;
  const y = ((event.clientY - rect.top) * state.height) / rect.height;
  return [Math.min(Math.max(x, 0), state.width - 1), Math.min(Math.max(y, 0), state.height - 1)];
}

function bindPointer() {
  const img = $("image");
  const draft = $("draft");
  let down = null;
  img.addEventListener("contextmenu", (e) => e.preventDefault());
  img.addEventListener("pointerdown", (e) => {
    if (!state.imageId) return;
    img.setPointerCapture(e.pointerId);
    down = { x: e.clientX, y: e.clientY, at: imagePixel(e), button: e.button, shift: e.shiftKey };
  });
  img.addEventListener("pointermove", (e) => {
    if (!down || down.button !== 0) return;
    if (Math.hypot(e.clientX - down.x, e.clientY - down.y) < 5) return;
    const stage = $("stage").getBoundingClientRect();
    draft.hidden = false;
    draft.style.left = `${Math.min(down.x, e.clientX) - stage.left}px`;
    draft.style.top = `${Math.min(down.y, e.clientY) - stage.top}px`;
    draft.style.width = `${Math.abs(e.clientX - down.x)}px`;
    draft.style.height = `${Math.abs(e.clientY - down.y)}px`;
  });
  img.addEventListener("pointerup", (e) => {
    if (!down) return;
    const t0 = performance.now();
    const start = down;
    down = null;
    draft.hidden = true;
    const dragged = Math.hypot(e.clientX - start.x, e.clientY - start.y) >= 5;
    if (start.button === 0 && dragged) {
      const [x1, y1] = imagePixel(e);
      const [x0, y0] = start.at;
      const box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
      change(() => (state.box = box), t0);
    } else if (start.button === 0 || start.button === 2) {
      const label = start.button === 2 || start.shift ? 0 : 1;
      change(() => state.points.push([...start.at, label]), t0);
    }
  });
}

// ---- images ----

async function fetchEmbedding() {
  const resp = await fetch(`/api/embedding/${state.imageId}`);
  if (!resp.ok) throw new Error((await resp.json()).error || resp.statusText);
  const modelId = resp.headers.get("X-Samserve-Model-Id");
  if (modelId !== state.decoderInfo.model_id) {
    throw new Error(
      `the exported decoder is ${state.decoderInfo.model_id}, the service runs ${modelId}`,
    );
  }
  state.embedding = toFloat32(await resp.arrayBuffer(), resp.headers.get("X-Samserve-Dtype"));
}

async function openImage(file) {
  window.samserve.ready = false;
  setStatus(`embedding ${file.name}…`);
  const resp = await fetch("/api/embed", {
    method: "POST",
    headers: { "Content-Type": "application/octet-stream" },
    body: await file.arrayBuffer(),
  });
  const body = await resp.json();
  if (!resp.ok) {
    setStatus(`embed failed: ${body.error}`, true);
    return;
  }
  Object.assign(state, {
    imageId: body.image_id, width: body.width, height: body.height, fileName: file.name,
    points: [], box: null, history: [], result: null, embedding: null,
  });
  if (state.mode === "browser") {
    try {
      await fetchEmbedding();
    } catch (e) {
      setStatus(`browser decoding unavailable (${e.message}); decoding on the server`, true);
      setMode("server");
    }
  }
  const img = $("image");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  await img.decode();
  $("overlay").width = state.width;
  $("overlay").height = state.height;
  $("stage").hidden = false;
  $("hint").hidden = true;
  draw();
  showResult();
  setStatus(`${state.width}×${state.height} · ${body.cached ? "cached" : "embedded"}`);
  Object.assign(window.samserve, { imageId: state.imageId, last: null, ready: true });
}

// ---- downloads ----

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function downloadPng() {
  const r = state.result;
  const canvas = document.createElement("canvas");
  canvas.width = state.width;
  canvas.height = state.height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(state.width, state.height);
  r.masks[r.chosen].forEach((v, i) => {
    image.data.fill(v ? 255 : 0, 4 * i, 4 * i + 3);
    image.data[4 * i + 3] = 255;
  });
  ctx.putImageData(image, 0, 0);
  canvas.toBlob((blob) => save(blob, `${state.fileName}.mask.png`), "image/png");
}

function downloadCoco() {
  const r = state.result;
  const mask = r.masks[r.chosen];
  const { width: w, height: h } = state;
  let area = 0;
  let [x0, y0, x1, y1] = [w, h, -1, -1];
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    const x = i % w;
    const y = Math.floor(i / w);
    area++;
    x0 = Math.min(x0, x);
    y0 = Math.min(y0, y);
    x1 = Math.max(x1, x);
    y1 = Math.max(y1, y);
  }
  const coco = {
    images: [{ id: 1, file_name: state.fileName, width: w, height: h, samserve_id: state.imageId }],
    annotations: [{
      id: 1, image_id: 1, category_id: 1, iscrowd: 0, segmentation: r.rles[r.chosen], area,
      bbox: area ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : [0, 0, 0, 0],
      predicted_iou: r.scores[r.chosen], point_coords: state.points, box: state.box,
    }],
    categories: [{ id: 1, name: "object" }],
  };
  save(new Blob([JSON.stringify(coco)], { type: "application/json" }), `${state.fileName}.coco.json`);
}

// ---- start ----

function setMode(mode) {
  state.mode = mode;
  window.samserve.mode = mode;
  $("mode").textContent = mode === "browser" ? "decoding in the browser" : "decoding on the server";
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src;
    s.onload = resolve;
    s.onerror = () => reject(new Error(`${src} did not load`));
    document.head.append(s);
  });
}

async function startBrowserDecoding() {
  await loadScript(`${VENDOR}ort.wasm.min.js`);
  ort.env.wasm.wasmPaths = VENDOR;
  // Threads need cross-origin isolation (the server's headers give it). Half the cores: on a
  // 2-core machine one thread decoded faster than two (measured). ?threads=N overrides.
  const asked = Number(new URLSearchParams(location.search).get("threads"));
  const half = Math.floor((navigator.hardwareConcurrency || 2) / 2);
  ort.env.wasm.numThreads = self.crossOriginIsolated ? asked || Math.min(4, Math.max(1, half)) : 1;
  const info = await fetch("/decoder/model.json");
  if (!info.ok) throw new Error("no model.json");
  state.decoderInfo = await info.json();
  state.session = await ort.InferenceSession.create("/decoder/decoder.onnx", {
    executionProviders: ["wasm"],
  });
}

async function start() {
  const forced = new URLSearchParams(location.search).get("decode");
  const config = await (await fetch("/api/config")).json();
  let mode = forced === "browser" || forced === "server" ? forced : config.browser ? "browser" : "server";
  if (mode === "browser") {
    try {
      if (!config.browser) throw new Error(config.browser_unavailable);
      await startBrowserDecoding();
    } catch (e) {
      if (forced === "browser") {
        setMode("browser");
        setStatus(`cannot decode in the browser: ${e.message}`, true);
        return;
      }
      mode = "server";
    }
  }
  setMode(mode);
  bindPointer();
  $("file").addEventListener("change", (e) => e.target.files[0] && openImage(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) openImage(file);
  });
  $("multimask").addEventListener("change", () => decode(performance.now()));
  $("undo").addEventListener("click", () => {
    const previous = state.history.pop();
    if (!previous) return;
    state.points = previous.points;
    state.box = previous.box;
    decode(performance.now());
  });
  $("reset").addEventListener("click", () => {
    state.history.push({ points: state.points, box: state.box });
    state.points = [];
    state.box = null;
    decode(performance.now());
  });
  $("download-png").addEventListener("click", downloadPng);
  $("download-coco").addEventListener("click", downloadCoco);
  window.addEventListener("resize", draw);
}

start().catch((e) => setStatus(`start failed: ${e.message}`, true));
