// refseg web page: choose a photo, send expressions to POST /segment, draw masks and heat maps.
// Plain JavaScript, no build step and no external resources.
"use strict";

const PALETTE = [
  { name: "red", rgb: [230, 25, 75] },
  { name: "green", rgb: [60, 180, 75] },
  { name: "blue", rgb: [0, 130, 200] },
  { name: "orange", rgb: [245, 130, 48] },
  { name: "purple", rgb: [145, 30, 180] },
  { name: "cyan", rgb: [70, 240, 240] },
  { name: "magenta", rgb: [240, 50, 230] },
  { name: "yellow", rgb: [255, 225, 25] },
];

const $ = (id) => document.getElementById(id);
const state = {
  photo: null,      // Blob sent to the server
  photoName: "photo",
  width: 0,
  height: 0,
  results: [],      // {text, color, confidence, empty, areaFraction, mask: Uint8Array (row-major), heat: Uint8ClampedArray}
  selected: -1,
  busy: false,
};

// ---------- server ----------

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.detail) return `${body.detail} (HTTP ${response.status})`;
  } catch (_) { /* not JSON */ }
  return `the server answered HTTP ${response.status} ${response.statusText}`;
}

async function loadHealth() {
  try {
    const response = await fetch("/health");
    if (!response.ok) throw new Error(await errorMessage(response));
    const info = await response.json();
    const model = info.model || {};
    const parts = [model.name, model.checkpoint, model.runtime].filter(Boolean);
    $("model-info").textContent = parts.length ? `Model: ${parts.join(" · ")}` : "Model loaded.";
  } catch (err) {
    $("model-info").textContent = `Server not reachable: ${err.message}`;
  }
}

async function loadSamples() {
  const response = await fetch("/samples");
  if (!response.ok) return;
  for (const sample of await response.json()) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.dataset.name = sample.name;
    button.textContent = sample.name;
    button.title = `Sample photo "${sample.name}" (${sample.licence})`;
    button.addEventListener("click", () => chooseSample(sample));
    $("samples").appendChild(button);
  }
}

async function chooseSample(sample) {
  hideError();
  const response = await fetch(`/samples/${encodeURIComponent(sample.name)}`);
  if (!response.ok) return showError(await errorMessage(response));
  await setPhoto(await response.blob(), sample.name);
  showSuggestions(sample.expressions);
}

async function segment(text) {
  const form = new FormData();
  form.append("image", state.photo, state.photoName);
  form.append("text", text);
  const threshold = $("threshold-input").value;
  if (threshold) form.append("threshold", threshold); // empty: the model's own threshold
  form.append("heatmap", "true");
  const response = await fetch("/segment", {
    method: "POST",
    body: form,
    headers: { Accept: "application/json" },
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

// ---------- decoding ----------

// COCO compressed RLE string → run lengths (pycocotools' rleFrString).
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1, c = 0;
    while (more) {
      c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// RLE (column-major, runs of 0 then 1 alternating) → row-major Uint8Array of 0/1.
function decodeRle(rle) {
  const [h, w] = rle.size;
  const mask = new Uint8Array(h * w);
  let index = 0, value = 0;
  for (const run of rleCounts(rle.counts)) {
    if (value) {
      for (let i = index; i < index + run; i++) {
        mask[(i % h) * w + Math.floor(i / h)] = 1;
      }
    }
    index += run;
    value = 1 - value;
  }
  return mask;
}

function decodePng(base64) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = img.width;
      canvas.height = img.height;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const rgba = ctx.getImageData(0, 0, img.width, img.height).data;
      const gray = new Uint8ClampedArray(img.width * img.height);
      for (let i = 0; i < gray.length; i++) gray[i] = rgba[4 * i];
      resolve(gray);
    };
    img.onerror = () => reject(new Error("the heat map could not be decoded"));
    img.src = `data:image/png;base64,${base64}`;
  });
}

// ---------- drawing ----------

async function setPhoto(blob, name) {
  const bitmap = await createImageBitmap(blob).catch(() => null);
  if (!bitmap) return showError("This file is not an image the browser can display.");
  state.photo = blob;
  state.photoName = name;
  state.width = bitmap.width;
  state.height = bitmap.height;
  for (const canvas of [$("photo-canvas"), $("overlay-canvas")]) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  $("photo-canvas").getContext("2d").drawImage(bitmap, 0, 0);
  $("photo-canvas").setAttribute("aria-label", `Photo ${name}, ${bitmap.width}×${bitmap.height}`);
  clearResults();
  $("figure").dataset.state = "photo";
  $("caption").textContent = `${name} — ${bitmap.width}×${bitmap.height} pixels`;
  $("segment-button").disabled = false;
  $("expression-input").focus();
}

const HEAT_STOPS = [  // probability → colour: dark blue, light blue, yellow, red
  [0.0, [20, 20, 120]], [0.35, [0, 150, 255]], [0.65, [255, 220, 0]], [1.0, [220, 0, 0]],
];

function heatColour(v) {  // v: 0..255
  const t = v / 255;
  for (let s = 1; s < HEAT_STOPS.length; s++) {
    const [t1, c1] = HEAT_STOPS[s];
    if (t <= t1 || s === HEAT_STOPS.length - 1) {
      const [t0, c0] = HEAT_STOPS[s - 1];
      const f = Math.min(1, Math.max(0, (t - t0) / (t1 - t0)));
      return c0.map((c, k) => Math.round(c + f * (c1[k] - c)));
    }
  }
  return HEAT_STOPS[0][1];
}

function render() {
  const canvas = $("overlay-canvas");
  const ctx = canvas.getContext("2d");
  const { width: w, height: h } = state;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.results.length) return;
  const image = ctx.createImageData(w, h);
  const px = image.data;
  const view = document.querySelector('input[name="view"]:checked').value;
  if (view === "heatmap" && state.selected >= 0) {
    const heat = state.results[state.selected].heat;
    for (let i = 0; i < heat.length; i++) {
      const [r, g, b] = heatColour(heat[i]);
      px.set([r, g, b, 90 + Math.round(heat[i] * 0.55)], 4 * i);
    }
  } else {
    for (const result of state.results) {
      const [r, g, b] = result.color.rgb;
      const m = result.mask;
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const i = y * w + x;
          if (!m[i]) continue;
          const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
            !m[i - 1] || !m[i + 1] || !m[i - w] || !m[i + w];
          px.set([r, g, b, edge ? 255 : 120], 4 * i);
        }
      }
    }
  }
  ctx.putImageData(image, 0, 0);
  if (state.selected >= 0) drawCandidates(ctx, state.results[state.selected]);
}

// Instance-aware models: the chosen candidate's box (solid) and the runner-up's (dashed).
function drawCandidates(ctx, result) {
  const chosen = result.candidates.find((c) => c.chosen);
  const runnerUp = result.candidates.find((c) => !c.chosen);
  ctx.lineWidth = Math.max(2, Math.round(state.width / 300));
  for (const [candidate, dash] of [[chosen, []], [runnerUp, [8, 6]]]) {
    if (!candidate) continue;
    const [x1, y1, x2, y2] = candidate.box;
    ctx.setLineDash(dash);
    ctx.strokeStyle = dash.length ? "rgba(255,255,255,0.9)" : `rgb(${result.color.rgb.join(",")})`;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  }
  ctx.setLineDash([]);
}

function candidateSummary(result) {
  const chosen = result.candidates.find((c) => c.chosen);
  const runnerUp = result.candidates.find((c) => !c.chosen);
  const parts = [];
  if (chosen) parts.push(`chose ${chosen.label} (${chosen.score.toFixed(2)})`);
  if (runnerUp) parts.push(`runner-up ${runnerUp.label} (${runnerUp.score.toFixed(2)}, dashed)`);
  return parts.length ? ` · ${parts.join(" · ")}` : "";
}

function renderLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  state.results.forEach((result, index) => {
    const item = document.createElement("li");
    item.className = index === state.selected ? "selected" : "";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${result.color.rgb.join(",")})`;
    swatch.setAttribute("aria-hidden", "true");
    const label = document.createElement("button");
    label.type = "button";
    label.className = "legend-text";
    label.setAttribute("aria-pressed", String(index === state.selected));
    label.textContent = `“${result.text}”`;
    label.title = "Select (the heat map shows the selected expression)";
    label.addEventListener("click", () => { state.selected = index; renderLegend(); render(); });
    const info = document.createElement("span");
    info.className = "legend-info";
    const found = result.empty ? "nothing found" : `${(100 * result.areaFraction).toFixed(1)}% of the photo`;
    info.textContent = `${result.color.name} · ${found} · confidence ${result.confidence.toFixed(2)}${candidateSummary(result)}`;
    const download = document.createElement("button");
    download.type = "button";
    download.textContent = "Download mask";
    download.setAttribute("aria-label", `Download the mask of “${result.text}” as PNG`);
    download.addEventListener("click", () => downloadMask([result], result.text));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove “${result.text}”`);
    remove.addEventListener("click", () => {
      state.results.splice(index, 1);
      state.selected = Math.min(state.selected, state.results.length - 1);
      refresh();
    });
    item.append(swatch, label, download, remove, info);
    legend.appendChild(item);
  });
}

function refresh() {
  renderLegend();
  render();
  const any = state.results.length > 0;
  $("download-union").disabled = !any;
  $("clear-results").disabled = !any;
  $("figure").dataset.state = any ? "result" : (state.photo ? "photo" : "empty");
}

function clearResults() {
  state.results = [];
  state.selected = -1;
  refresh();
}

function downloadMask(results, label) {
  const { width: w, height: h } = state;
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const on = results.some((r) => r.mask[i]) ? 255 : 0;
    image.data.set([on, on, on, 255], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
  canvas.toBlob((blob) => {
    const link = document.createElement("a");
    const slug = label.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "") || "mask";
    link.download = `${state.photoName.replace(/\.[^.]+$/, "")}-${slug}.png`;
    link.href = URL.createObjectURL(blob);
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, "image/png");
}

// ---------- messages ----------

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

function hideError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function showSuggestions(expressions) {
  const box = $("suggestions");
  box.replaceChildren();
  for (const text of expressions || []) {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.textContent = text;
    chip.setAttribute("aria-label", `Use the expression “${text}”`);
    chip.addEventListener("click", () => { $("expression-input").value = text; $("expression-input").focus(); });
    box.appendChild(chip);
  }
}

// ---------- events ----------

$("photo-input").addEventListener("change", async (event) => {
  hideError();
  const file = event.target.files[0];
  if (!file) return;
  showSuggestions([]);
  await setPhoto(file, file.name);
});

$("segment-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("expression-input").value.trim();
  if (!state.photo) return showError("Choose a photo first.");
  if (!text) return showError("Type an expression first.");
  if (state.busy) return;
  hideError();
  state.busy = true;
  $("segment-button").disabled = true;
  $("status").textContent = `Segmenting “${text}”…`;
  $("figure").dataset.state = "busy";
  try {
    const answer = await segment(text);
    for (const item of answer.results) {
      state.results.push({
        text: item.text,
        color: PALETTE[state.results.length % PALETTE.length],
        confidence: item.confidence,
        empty: item.empty,
        areaFraction: item.area_fraction,
        mask: decodeRle(item.rle),
        heat: await decodePng(item.heatmap_png),
        candidates: item.candidates || [],
      });
    }
    state.selected = state.results.length - 1;
    const missing = answer.results.filter((item) => item.empty).map((item) => `“${item.text}”`);
    const found = missing.length ? ` Nothing found for ${missing.join(", ")}.` : "";
    $("status").textContent = `Done in ${answer.elapsed_ms.toFixed(0)} ms.${found}`;
    $("expression-input").select();
  } catch (err) {
    showError(err.message);
  } finally {
    state.busy = false;
    $("segment-button").disabled = false;
    refresh();
  }
});

for (const radio of document.querySelectorAll('input[name="view"]')) {
  radio.addEventListener("change", render);
}
$("download-union").addEventListener("click", () => downloadMask(state.results, "all"));
$("clear-results").addEventListener("click", clearResults);

loadHealth();
loadSamples();
