// clipadapt dashboard: one page, plain ES modules, no build step. It only calls the public API
// (same origin), so everything it shows is also available to curl.

const main = document.getElementById("main");
const KEY = "clipadapt.apiKey";
let pollTimer = null; // the job page's refresh; cleared on every navigation
const charts = [];    // uPlot instances of the current page, destroyed on navigation

// ------------------------------------------------------------------------------------ helpers

/** Build an element: h("td", {class: "num"}, "3", child...). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
const when = (t) => (t ? new Date(t).toLocaleString() : "–");
function duration(s) {
  if (s === null || s === undefined) return "unknown (no earlier epochs on this model)";
  if (s < 90) return `about ${Math.max(1, Math.round(s))} s`;
  if (s < 5400) return `about ${Math.round(s / 60)} min`;
  return `about ${(s / 3600).toFixed(1)} h`;
}

/** The API's error body ({error: {code, message, detail}}) as readable text. */
function errorText(body, status) {
  const e = body && body.error;
  if (!e) return `HTTP ${status}`;
  let text = e.message || e.code;
  if (Array.isArray(e.detail)) {
    text += "\n" + e.detail.map((d) => `• ${(d.loc || []).join(".")}: ${d.msg}`).join("\n");
  } else if (e.detail && typeof e.detail === "object") {
    text += "\n" + JSON.stringify(e.detail);
  }
  return text;
}

class ApiError extends Error {
  constructor(status, body) { super(errorText(body, status)); this.status = status; this.body = body; }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Ask for an API key (a modal dialog); resolves when one is entered. */
function askForKey() {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (input.value) sessionStorage.setItem(KEY, input.value.trim());
      input.value = "";
      resolve();
    }, { once: true });
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

/** fetch + JSON + the API key; a 401 asks for a key and tries again. */
async function api(path, options = {}) {
  for (;;) {
    const res = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
    if (res.status === 401) { sessionStorage.removeItem(KEY); await askForKey(); continue; }
    const body = res.status === 204 ? null : await res.json().catch(() => null);
    if (!res.ok) throw new ApiError(res.status, body);
    return body;
  }
}
const postJSON = (path, data) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });

/** Multipart upload through XHR, which (unlike fetch) reports upload progress. */
function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const send = () => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
      xhr.onerror = () => reject(new Error("network error during upload"));
      xhr.onload = async () => {
        if (xhr.status === 401) { sessionStorage.removeItem(KEY); await askForKey(); send(); return; }
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
        if (xhr.status >= 200 && xhr.status < 300) resolve(body); else reject(new ApiError(xhr.status, body));
      };
      xhr.send(form);
    };
    send();
  });
}

function page(title, ...children) {
  main.replaceChildren(h("h1", {}, title), ...children.filter((c) => c !== null && c !== undefined));
  document.title = `${title} · clipadapt`;
}
const errorBox = () => h("p", { class: "error", role: "alert" });
function showError(box, err) { box.textContent = err instanceof Error ? err.message : String(err); }

// ----------------------------------------------------------------------------------- datasets

async function datasetsPage() {
  const file = h("input", { type: "file", id: "ds-file", accept: ".zip,.tar,.tar.gz,.tgz", required: true });
  const name = h("input", { type: "text", id: "ds-name", maxlength: "255" });
  const bar = h("progress", { id: "ds-progress", max: "1", value: "0", hidden: true, "aria-label": "Upload progress" });
  const status = h("p", { id: "ds-status", role: "status" });
  const err = errorBox();
  const list = h("div", { id: "ds-list" });
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      if (!file.files.length) return;
      const data = new FormData();
      data.append("file", file.files[0]);
      if (name.value) data.append("name", name.value);
      err.textContent = ""; bar.hidden = false; bar.value = 0; status.textContent = "Uploading…";
      try {
        const ds = await upload("datasets", data, (f) => {
          bar.value = f;
          status.textContent = f < 1 ? `Uploading… ${Math.round(f * 100)}%` : "Validating every image…";
        });
        status.textContent = `Uploaded ${ds.name}: ${ds.class_ids.length} classes.`;
        form.reset();
        await renderDatasets(list, ds.id);
      } catch (x) { status.textContent = ""; showError(err, x); }
      bar.hidden = true;
    },
  },
  h("div", { class: "row" },
    h("div", {}, h("label", { for: "ds-file" }, "Dataset archive ", h("span", { class: "hint" }, "(.zip, .tar, .tar.gz: ImageFolder or manifest)")), file),
    h("div", {}, h("label", { for: "ds-name" }, "Name ", h("span", { class: "hint" }, "(optional)")), name),
    h("button", { type: "submit", id: "ds-upload" }, "Upload")),
  bar, status, err);
  page("Datasets", h("h2", {}, "Upload"), form, h("h2", {}, "Uploaded datasets"), list);
  await renderDatasets(list);
}

async function renderDatasets(list, open = null) {
  const { data } = await api("datasets?limit=100");
  if (!data.length) { list.replaceChildren(h("p", {}, "No datasets yet.")); return; }
  list.replaceChildren(...data.map((ds) => {
    const splits = Object.keys(ds.split_counts);
    const body = h("div", {});
    const details = h("details", { class: "dataset", "data-id": ds.id, open: ds.id === open || (open === null && ds === data[0]) },
      h("summary", {}, `${ds.name} · ${ds.class_ids.length} classes · ${fmtInt(ds.size_bytes)} bytes · ${when(ds.created_at)}`),
      body);
    let loaded = false;
    const load = () => {
      if (loaded) return; loaded = true;
      const thumbsOf = Object.fromEntries(ds.class_ids.map((cid) => [cid, h("div", { class: "thumbs" })]));
      // One request for every class: the server extracts the archive once.
      api(`datasets/${ds.id}/thumbnails?limit=6`).then((t) => {
        for (const im of t.data) {
          const i = ds.class_ids.indexOf(im.class_id);
          thumbsOf[im.class_id].append(h("img", { src: im.data_url, alt: `${ds.classnames[i]}: ${im.name} (${im.split})`, title: `${im.name} (${im.split})` }));
        }
      }).catch((x) => body.append(h("p", { class: "error" }, `thumbnails: ${x.message}`)));
      const table = h("table", { class: "counts" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "class"), splits.map((s) => h("th", { scope: "col", class: "num" }, s)), h("th", { scope: "col" }, "samples"))),
        h("tbody", {}, ds.class_ids.map((cid, i) => h("tr", {}, h("th", { scope: "row" }, ds.classnames[i]),
          splits.map((s) => h("td", { class: "num" }, ds.split_counts[s][cid] ?? 0)), h("td", {}, thumbsOf[cid])))));
      body.append(h("p", {}, `id ${ds.id} · file ${ds.filename} · `, h("a", { href: `#/new?dataset=${ds.id}` }, "train a model on it")), table);
    };
    details.addEventListener("toggle", () => details.open && load());
    if (details.open) load();
    return details;
  }));
}

// ------------------------------------------------------------------------------------ new job

/** One recipe field as a labelled input, from its JSON-schema property. */
function schemaField(key, prop) {
  const id = `f-${key}`;
  const variants = prop.anyOf || [prop];
  const main_ = variants.find((v) => v.type !== "null") || prop;
  const nullable = variants.some((v) => v.type === "null");
  let input;
  if (main_.enum) {
    input = h("select", { id, name: key }, main_.enum.map((v) => h("option", { value: v, selected: v === prop.default }, v)));
  } else if (main_.type === "boolean") {
    input = h("input", { id, name: key, type: "checkbox", checked: prop.default === true });
  } else if (main_.type === "integer" || main_.type === "number") {
    input = h("input", {
      id, name: key, type: "number", step: main_.type === "integer" ? "1" : "any",
      min: main_.minimum ?? null, max: main_.maximum ?? null,
      value: prop.default ?? "", placeholder: nullable ? "default" : null,
    });
  } else if (main_.type === "array") {
    input = h("textarea", { id, name: key, rows: "2", placeholder: nullable ? "default (one per line)" : "one per line" });
  } else {
    input = h("input", { id, name: key, type: "text", value: prop.default ?? "" });
  }
  input.dataset.kind = main_.type === "array" ? "array" : main_.type || "string";
  input.dataset.nullable = nullable ? "1" : "";
  return h("div", { class: "field" },
    h("label", { for: id }, prop.title || key, " ", h("span", { class: "hint" }, prop.description || "")), input);
}

function readRecipe(form, method) {
  const recipe = { method };
  for (const el of form.querySelectorAll("[data-kind]")) {
    const { kind, nullable } = el.dataset;
    if (kind === "boolean") { recipe[el.name] = el.checked; continue; }
    const raw = el.value.trim();
    if (raw === "") { if (nullable) recipe[el.name] = null; continue; }
    if (kind === "integer" || kind === "number") recipe[el.name] = Number(raw);
    else if (kind === "array") recipe[el.name] = raw.split("\n").map((s) => s.trim()).filter(Boolean);
    else recipe[el.name] = raw;
  }
  return recipe;
}

async function newJobPage(params) {
  const [schema, datasets, models] = await Promise.all([api("recipes/schema"), api("datasets?limit=500"), api("models")]);
  const variants = schema.properties.recipe.discriminator.mapping; // method -> "#/$defs/XConfig"
  const defOf = (m) => schema.$defs[variants[m].split("/").pop()];
  const dataset = h("select", { id: "job-dataset", required: true },
    datasets.data.map((d) => h("option", { value: d.id, selected: d.id === params.get("dataset") }, `${d.name} (${d.class_ids.length} classes)`)));
  const bases = models.data.filter((m) => m.kind === "base");
  const base = h("select", { id: "job-base" }, bases.map((m) => h("option", { value: m.name, title: m.description }, m.name)));
  const name = h("input", { type: "text", id: "job-name", maxlength: "255" });
  const method = h("select", { id: "job-method" }, Object.keys(variants).map((m) => h("option", { value: m, selected: m === "auto" }, m)));
  const methodHelp = h("p", { class: "hint", id: "method-help" });
  const fields = h("div", { class: "grid", id: "recipe-fields" });
  const estimate = h("div", { id: "estimate", role: "status", "aria-live": "polite" });
  const err = errorBox();

  let timer = null, latest = 0;
  const refreshEstimate = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (!dataset.value) return;
      const ticket = ++latest; // a slower, older answer must not overwrite a newer one
      estimate.textContent = "Estimating…";
      try {
        const e = await postJSON("recipes/estimate", { base_model: base.value, dataset_id: dataset.value, recipe: readRecipe(form, method.value) });
        if (ticket !== latest) return;
        estimate.replaceChildren(
          h("p", {}, h("strong", {}, "Trainable parameters: "), h("span", { id: "est-params" }, fmtInt(e.trainable_params)),
            e.error ? h("span", { class: "hint" }, ` (${e.error})`) : null),
          h("p", {}, h("strong", {}, "Run length: "), `${fmtInt(e.epochs)} epochs`,
            e.stages.length > 1 ? ` (${e.stages.map((s) => `${s.name} ${s.epochs}`).join(" + ")})` : "",
            e.train_images ? ` over ${fmtInt(e.train_images)} training images per epoch, ${fmtInt(e.stages.reduce((a, s) => a + s.steps, 0))} steps; ` : "; ",
            h("span", { id: "est-time" }, duration(e.seconds))));
      } catch (x) { if (ticket === latest) estimate.replaceChildren(h("p", { class: "error" }, x.message)); }
    }, 300);
  };
  const renderFields = () => {
    const def = defOf(method.value);
    methodHelp.textContent = def.description || "";
    fields.replaceChildren(...Object.entries(def.properties).filter(([k]) => k !== "method").map(([k, p]) => schemaField(k, p)));
    refreshEstimate();
  };
  method.addEventListener("change", renderFields);
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault(); err.textContent = "";
      try {
        const job = await postJSON("jobs", { dataset_id: dataset.value, base_model: base.value, name: name.value || null, recipe: readRecipe(form, method.value) });
        location.hash = `#/jobs/${job.id}`;
      } catch (x) { showError(err, x); }
    },
    oninput: refreshEstimate, onchange: refreshEstimate,
  },
  h("div", { class: "row" },
    h("div", {}, h("label", { for: "job-dataset" }, "Dataset"), dataset),
    h("div", {}, h("label", { for: "job-base" }, "Base model"), base),
    h("div", {}, h("label", { for: "job-name" }, "Job name ", h("span", { class: "hint" }, "(optional)")), name)),
  h("div", {}, h("label", { for: "job-method" }, "Method ", h("span", { class: "hint" }, "(auto picks one from the data)")), method, methodHelp),
  h("h2", {}, "Recipe"), fields, h("h2", {}, "Estimate"), estimate, err,
  h("button", { type: "submit", id: "job-submit" }, "Start training"));
  if (!datasets.data.length) {
    page("New job", h("p", {}, "Upload a dataset first: ", h("a", { href: "#/datasets" }, "Datasets"), "."));
    return;
  }
  page("New job", form);
  renderFields();
}

// ---------------------------------------------------------------------------------------- jobs

function progressOf(job) {
  const p = job.progress;
  if (job.state === "succeeded") return 1;
  if (!p.epochs) return 0;
  return p.epoch / p.epochs;
}
function progressCell(job) {
  const p = job.progress;
  const label = p.epochs ? `${p.stage_name ?? "stage"}: epoch ${p.epoch} of ${p.epochs}` : job.state;
  return h("span", {}, h("progress", { max: "1", value: progressOf(job).toFixed(3), "aria-label": `Progress of job ${job.name || job.id}` }), " ", h("span", { class: "hint" }, label));
}
const stateEl = (s) => h("span", { class: `state state-${s}` }, s);
function methodText(job) {
  const r = job.resolved_recipe || job.recipe;
  const m = `${r.method}${r.layernorm && r.layernorm !== "none" ? ` + LayerNorm ${r.layernorm}` : ""}`;
  return job.recipe.method === "auto" ? `auto → ${job.resolved_recipe ? m : "deciding"}` : m;
}

async function jobsPage() {
  const { data } = await api("jobs?limit=100");
  const table = h("table", { id: "jobs" },
    h("thead", {}, h("tr", {}, ["job", "state", "progress", "method", "auto's decision", "val acc", "created"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, data.map((j) => h("tr", {},
      h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.name || j.id)), h("td", {}, stateEl(j.state)), h("td", {}, progressCell(j)),
      h("td", {}, methodText(j)), h("td", { class: "hint" }, j.auto_decision?.reason ?? ""),
      h("td", { class: "num" }, pct(j.val_metrics?.accuracy)), h("td", {}, when(j.created_at))))));
  page("Jobs", data.length ? table : h("p", {}, "No jobs yet: ", h("a", { href: "#/new" }, "start one"), "."));
  // Keep the list fresh while anything is still running.
  if (data.some((j) => j.state === "queued" || j.state === "running")) pollTimer = setTimeout(() => route(), 2000);
}

/** Line chart of per-epoch values, one series per stage; x counts epochs across stages. */
function lineChart(title, metrics, value, id) {
  const stages = [...new Map(metrics.map((m) => [m.stage, m.stage_name])).entries()].sort((a, b) => a[0] - b[0]);
  const xs = metrics.map((_, i) => i + 1);
  const ys = stages.map(([s]) => metrics.map((m) => (m.stage === s ? value(m) : null)));
  const colors = ["#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c"];
  const box = h("figure", { id, class: "chart" }, h("figcaption", {}, title));
  const opts = {
    width: 520, height: 240,
    scales: { x: { time: false } },
    // Whole epochs on the x axis (uPlot would otherwise tick at fractions on short runs).
    axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500] }, {}],
    series: [{ label: "epoch" }, ...stages.map(([, name], i) => ({ label: name, stroke: colors[i % 4], width: 2, points: { show: true } }))],
  };
  charts.push(new window.uPlot(opts, [xs, ...ys], box));
  return box;
}

function heatmap(matrix, names) {
  const max = Math.max(1, ...matrix.flat());
  return h("table", { class: "heatmap", id: "confusion", "aria-label": "Confusion matrix: rows are true classes, columns predicted classes" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "true \\ predicted"), names.map((n) => h("th", { scope: "col" }, n)))),
    h("tbody", {}, matrix.map((row, i) => h("tr", {}, h("th", { scope: "row" }, names[i]), row.map((v, j) => {
      const a = v / max;
      return h("td", { style: `background: rgba(${i === j ? "30,123,52" : "179,38,30"},${a.toFixed(3)}); color: ${a > 0.55 ? "#fff" : "inherit"}`, title: `${names[i]} → ${names[j]}: ${v}` }, v);
    })))));
}

async function jobPage(id) {
  const [job, metrics, events] = await Promise.all([api(`jobs/${id}`), api(`jobs/${id}/metrics`), api(`jobs/${id}/events`)]);
  while (charts.length) charts.pop().destroy();
  const live = job.state === "queued" || job.state === "running";
  const err = errorBox();
  const head = h("div", {},
    h("p", {}, stateEl(job.state), " · ", progressCell(job), " · ", methodText(job), " · base ", job.base_model,
      " · trainable parameters ", h("span", { id: "job-params" }, fmtInt(job.trainable_params))),
    job.auto_decision ? h("p", { id: "auto-decision" }, h("strong", {}, "auto: "), job.auto_decision.reason) : null,
    job.error ? h("p", { class: "error" }, `${job.error.code}: ${job.error.message}`) : null,
    h("div", { class: "row" },
      live ? h("button", { type: "button", id: "job-cancel", class: "secondary", onclick: async () => {
        try { await api(`jobs/${id}/cancel`, { method: "POST" }); route(); } catch (x) { showError(err, x); }
      } }, job.cancel_requested_at ? "Cancelling…" : "Cancel job") : null,
      job.artifact_available ? h("button", { type: "button", id: "job-artifact", class: "secondary", onclick: () => download(id).catch((x) => showError(err, x)) }, "Download artifact (.tar.gz)") : null,
      job.state === "succeeded" ? h("a", { href: `#/predict?job=${id}` }, "Predict with it") : null),
    err);
  const parts = [head, h("h2", {}, "Training curves")];
  parts.push(metrics.data.length
    ? h("div", { class: "charts" },
      lineChart("Train loss", metrics.data, (m) => m.train_loss, "chart-loss"),
      lineChart("Validation accuracy", metrics.data, (m) => m.val.accuracy ?? null, "chart-val"))
    : h("p", { class: "hint" }, live ? "Waiting for the first epoch…" : "No epochs were recorded."));
  const tm = job.test_metrics || job.val_metrics;
  if (tm) {
    const which = job.test_metrics ? "Test" : "Validation";
    const ds = job.dataset_id ? await api(`datasets/${job.dataset_id}`).catch(() => null) : null;
    const names = ds ? ds.classnames : Object.keys(tm.per_class_accuracy || {});
    parts.push(h("h2", {}, `${which} metrics`),
      h("p", { id: "test-metrics" }, `accuracy ${pct(tm.accuracy)} · macro-F1 ${pct(tm.macro_f1)} · ${fmtInt(tm.count)} images`));
    if (tm.confusion_matrix) parts.push(h("h2", {}, "Confusion matrix"), heatmap(tm.confusion_matrix, names));
    if (tm.per_class_accuracy) {
      parts.push(h("h2", {}, "Per-class accuracy"), h("ul", { class: "bars", id: "per-class" },
        Object.entries(tm.per_class_accuracy).map(([n, a]) => h("li", {}, h("span", {}, n), h("div", { class: "bar", style: `width:${(100 * a).toFixed(1)}%` }), h("span", { class: "num" }, pct(a))))));
    }
  }
  parts.push(h("h2", {}, "Events"), h("div", { class: "events", id: "events", tabindex: "0", "aria-label": "Events log" },
    h("ul", {}, events.data.map((e) => h("li", {}, `${when(e.created_at)} · ${e.state ? `[${e.state}] ` : ""}${e.message}`)))));
  const focused = main.contains(document.activeElement) ? document.activeElement.id : null;
  page(`Job ${job.name || job.id}`, ...parts);
  // The page is rebuilt every poll: give keyboard focus back to the control that had it.
  if (focused) document.getElementById(focused)?.focus();
  if (live) pollTimer = setTimeout(() => jobPage(id).catch(fail), 2000);
}

/** The artifact is behind the API key, so a plain link cannot carry it: fetch, then save. */
async function download(id) {
  const res = await fetch(`jobs/${id}/artifact`, { headers: authHeaders() });
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  const url = URL.createObjectURL(await res.blob());
  const a = h("a", { href: url, download: `clipadapt-${id}.tar.gz` });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ------------------------------------------------------------------------------------- predict

function modelChooser(prefix, jobs, bases, preselect) {
  const sel = h("select", { id: `${prefix}-model` },
    h("optgroup", { label: "Fine-tuned" }, jobs.map((j) => h("option", { value: `job:${j.job_id}`, selected: j.job_id === preselect }, `${j.description || j.job_id} (${j.method})`))),
    h("optgroup", { label: "Base model, zero-shot" }, bases.map((b) => h("option", { value: `base:${b.name}` }, b.name))));
  const classes = h("input", { type: "text", id: `${prefix}-classes`, placeholder: "cat, dog, bird" });
  const classBox = h("div", {}, h("label", { for: `${prefix}-classes` }, "Class names ", h("span", { class: "hint" }, "(comma-separated; zero-shot only)")), classes);
  const sync = () => { classBox.hidden = !sel.value.startsWith("base:"); };
  sel.addEventListener("change", sync); sync();
  const box = h("div", { class: "row" }, h("div", {}, h("label", { for: `${prefix}-model` }, prefix === "a" ? "Model" : "Compare with"), sel), classBox);
  return { box, sel, classes };
}

async function predictPage(params) {
  const { data } = await api("models");
  const jobs = data.filter((m) => m.kind === "fine-tuned"), bases = data.filter((m) => m.kind === "base");
  const jobName = (id) => jobs.find((j) => j.job_id === id)?.description || id;
  const a = modelChooser("a", jobs, bases, params.get("job"));
  const b = modelChooser("b", jobs, bases, null);
  const compare = h("input", { type: "checkbox", id: "compare" });
  b.box.hidden = true;
  compare.addEventListener("change", () => { b.box.hidden = !compare.checked; });
  const topk = h("input", { type: "number", id: "topk", min: "1", max: "20", value: "3" });
  const files = h("input", { type: "file", id: "images", accept: "image/*", multiple: true });
  const drop = h("div", { class: "drop", id: "drop" }, "Drop images here, or ", h("label", { for: "images", class: "inline" }, "choose files: "), files);
  const err = errorBox();
  const results = h("div", { id: "results" });
  let chosen = [];
  const setFiles = (list) => { chosen = [...list].filter((f) => f.type.startsWith("image/") || /\.(png|jpe?g|webp|bmp|gif)$/i.test(f.name)); drop.firstChild.textContent = `${chosen.length} image(s) chosen. Drop more, or `; };
  files.addEventListener("change", () => setFiles(files.files));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); setFiles(e.dataTransfer.files); });

  const run = async (chooser) => {
    const form = new FormData();
    for (const f of chosen) form.append("images", f, f.name);
    const [kind, name] = chooser.sel.value.split(/:(.*)/s);
    if (kind === "job") form.append("job_id", name);
    else { form.append("base_model", name); form.append("classnames", chooser.classes.value); }
    form.append("top_k", topk.value || "3");
    return api("predict", { method: "POST", body: form });
  };
  const column = (res) => h("div", {}, h("h2", {}, res.model.kind === "fine-tuned" ? `fine-tuned: ${jobName(res.model.job_id)}` : `${res.model.base_model} zero-shot`),
    h("div", { class: "cards" }, res.predictions.map((p, i) => h("div", { class: "card prediction" },
      h("img", { src: URL.createObjectURL(chosen[i]), alt: p.filename }), h("strong", {}, p.filename),
      h("ul", { class: "bars" }, p.labels.map((l) => h("li", {}, h("span", { class: "label" }, l.label), h("div", { class: "bar", style: `width:${(100 * l.probability).toFixed(1)}%` }), h("span", { class: "num" }, pct(l.probability)))))))));
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault(); err.textContent = "";
      if (!chosen.length) { err.textContent = "Choose or drop at least one image."; return; }
      results.replaceChildren(h("p", {}, "Predicting…"));
      try {
        const out = await Promise.all(compare.checked ? [run(a), run(b)] : [run(a)]);
        results.replaceChildren(h("div", { class: out.length > 1 ? "compare" : "" }, out.map(column)));
      } catch (x) { results.replaceChildren(); showError(err, x); }
    },
  }, a.box, h("div", { class: "row" }, h("div", {}, compare, " ", h("label", { for: "compare", class: "inline" }, "Compare two models side by side")),
    h("div", {}, h("label", { for: "topk" }, "Top k"), topk)), b.box, drop, err, h("button", { type: "submit", id: "predict-submit" }, "Predict"));
  page("Predict", form, results);
}

// -------------------------------------------------------------------------------------- sweeps

const sweepActive = (s) => s.state === "running" || s.state === "finishing"; // the API's SweepState.active
const numbers = (text) => text.split(",").map((x) => x.trim()).filter(Boolean).map(Number);

async function sweepsPage(params) {
  const [sweeps, datasets, models] = await Promise.all([api("sweeps?limit=100"), api("datasets?limit=100"), api("models")]);
  const bases = models.data.filter((m) => m.kind === "base");
  const err = errorBox();
  const field = (id, label, control, hint) => h("div", {}, h("label", { for: id }, label, hint ? h("span", { class: "hint" }, ` ${hint}`) : null), control);
  const dataset = h("select", { id: "sw-dataset", required: true }, datasets.data.map((d) => h("option", { value: d.id, selected: d.id === params.get("dataset") }, `${d.filename} (${d.id.slice(0, 8)})`)));
  const base = h("select", { id: "sw-base" }, bases.map((b) => h("option", { value: b.name }, b.name)));
  const preset = h("select", { id: "sw-preset" }, h("option", { value: "quick" }, "quick: section 6's three recipes"), h("option", { value: "paper" }, "paper: Table 1's grid (13 recipes)"));
  const lrs = h("input", { id: "sw-lrs", type: "text", value: "0.001" });
  const seeds = h("input", { id: "sw-seeds", type: "text", value: "0" });
  const epochs = h("input", { id: "sw-epochs", type: "number", min: "1", max: "1000", value: "9" });
  const name = h("input", { id: "sw-name", type: "text" });
  const form = h("form", { id: "sweep-form", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const sweep = await postJSON("sweeps", { dataset_id: dataset.value, base_model: base.value, name: name.value || null,
        space: { preset: preset.value, lrs: numbers(lrs.value), seeds: numbers(seeds.value), recipe: { epochs: Number(epochs.value) } } });
      location.hash = `#/sweeps/${sweep.id}`;
    } catch (x) { showError(err, x); }
  } },
    h("div", { class: "row" }, field("sw-dataset", "Dataset", dataset), field("sw-base", "Base model", base), field("sw-preset", "Recipes", preset)),
    h("div", { class: "row" }, field("sw-lrs", "Learning rates", lrs, "(comma-separated)"), field("sw-seeds", "Seeds", seeds, "(comma-separated)"),
      field("sw-epochs", "Epochs", epochs), field("sw-name", "Name", name, "(optional)")),
    h("div", { class: "row" }, h("button", { type: "submit", id: "sweep-submit", disabled: !datasets.data.length }, "Start sweep")), err);
  const table = h("table", { id: "sweeps" },
    h("thead", {}, h("tr", {}, ["sweep", "state", "trials", "base", "created"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, sweeps.data.map((s) => h("tr", {}, h("td", {}, h("a", { href: `#/sweeps/${s.id}` }, s.name || s.id)), h("td", {}, stateEl(s.state)),
      h("td", { class: "num" }, s.trials), h("td", {}, s.base_model), h("td", {}, when(s.created_at))))));
  page("Sweeps",
    h("p", { class: "hint" }, "A sweep trains a grid of recipes on one dataset (every trial an ordinary job), stops weak trials early with successive halving and selects the best by validation accuracy; only that one is scored on test."),
    h("h2", {}, "Start a sweep"), datasets.data.length ? form : h("p", {}, "Upload a dataset first: ", h("a", { href: "#/datasets" }, "Datasets"), "."),
    h("h2", {}, "Sweeps"), sweeps.data.length ? table : h("p", {}, "None yet."));
  if (sweeps.data.some(sweepActive)) pollTimer = setTimeout(() => route(), 2000);
}

/** Validation accuracy against trainable parameters (log scale), one point per recipe. */
function scatter(rows) {
  const points = rows.filter((r) => r.trainable_params && r.val_accuracy_mean !== null).sort((a, b) => a.trainable_params - b.trainable_params);
  const box = h("figure", { id: "chart-scatter", class: "chart" }, h("figcaption", {}, "Validation accuracy vs trainable parameters (one point per recipe)"));
  if (!points.length) { box.append(h("p", { class: "hint" }, "No finished epochs yet.")); return box; }
  const opts = {
    width: 520, height: 260,
    scales: { x: { time: false, distr: 3 }, y: { range: [0, 1] } },
    axes: [{ label: "trainable parameters" }, { label: "val accuracy" }],
    series: [{ label: "parameters" }, { label: "val accuracy", stroke: "#1f5fbf", paths: () => null, points: { show: true, size: 9, fill: "#1f5fbf" } }],
  };
  charts.push(new window.uPlot(opts, [points.map((r) => r.trainable_params), points.map((r) => r.val_accuracy_mean)], box));
  return box;
}

async function sweepPage(id) {
  const sweep = await api(`sweeps/${id}`);
  while (charts.length) charts.pop().destroy();
  const live = sweepActive(sweep);
  const err = errorBox();
  const pr = sweep.progress;
  const recipe = (r) => `${r.method}${r.layernorm !== "none" ? ` + LayerNorm ${r.layernorm}` : ""}`;
  const board = h("table", { id: "leaderboard" },
    h("thead", {}, h("tr", {}, ["#", "recipe", "lr", "shots", "val acc (mean ± std over seeds)", "trainable params", "run time", "trials", "stopped early"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, sweep.leaderboard.map((r, i) => h("tr", { class: r.best_job_id && r.best_job_id === sweep.best_job_id ? "best" : null },
      h("td", { class: "num" }, i + 1),
      h("td", {}, r.best_job_id ? h("a", { href: `#/jobs/${r.best_job_id}` }, recipe(r)) : recipe(r)),
      h("td", { class: "num" }, r.lr ?? "default"), h("td", { class: "num" }, r.shots ?? "all"),
      h("td", { class: "num" }, r.val_accuracy_mean === null ? "–" : `${pct(r.val_accuracy_mean)} ± ${pct(r.val_accuracy_std ?? 0)}`),
      h("td", { class: "num" }, fmtInt(r.trainable_params)), h("td", { class: "num" }, `${r.run_seconds.toFixed(1)} s`),
      h("td", {}, r.states.map(stateEl)), h("td", {}, r.stopped_early ? "yes" : "")))));
  const done = sweep.state === "succeeded";
  page(`Sweep ${sweep.name || sweep.id}`,
    h("p", {}, stateEl(sweep.state), " · ", h("progress", { max: String(pr.epochs_full_grid || 1), value: String(pr.epochs_trained), "aria-label": "Epochs trained of the full grid's" }),
      ` ${fmtInt(pr.epochs_trained)} of ${fmtInt(pr.epochs_full_grid)} grid epochs · ${pr.trials} trials · base ${sweep.base_model}`),
    sweep.error ? h("p", { class: "error" }, `${sweep.error.code}: ${sweep.error.message}`) : null,
    sweep.test_metrics ? h("p", { id: "sweep-test" }, `Best trial on test: accuracy ${pct(sweep.test_metrics.accuracy)} · macro-F1 ${pct(sweep.test_metrics.macro_f1)}`) : null,
    h("div", { class: "row" },
      live ? h("button", { type: "button", id: "sweep-cancel", class: "secondary", onclick: async () => {
        try { await api(`sweeps/${id}/cancel`, { method: "POST" }); route(); } catch (x) { showError(err, x); }
      } }, "Cancel sweep") : null,
      done && sweep.best_job_id && sweep.promoted_job_id !== sweep.best_job_id ? h("button", { type: "button", id: "sweep-promote", onclick: async () => {
        try { await postJSON(`sweeps/${id}/promote`, {}); route(); } catch (x) { showError(err, x); }
      } }, "Promote the best trial") : null,
      sweep.promoted_job_id ? h("span", { id: "sweep-promoted" }, "Promoted: ", h("a", { href: `#/predict?job=${sweep.promoted_job_id}` }, "predict with it")) : null),
    err,
    h("h2", {}, "Leaderboard"), sweep.leaderboard.length ? board : h("p", { class: "hint" }, "Waiting for the first trial…"),
    h("h2", {}, "Accuracy and size"), scatter(sweep.leaderboard));
  if (live) pollTimer = setTimeout(() => sweepPage(id).catch(fail), 2000);
}

// -------------------------------------------------------------------------------------- models

async function modelsPage() {
  const { data } = await api("models");
  const bases = data.filter((m) => m.kind === "base"), tuned = data.filter((m) => m.kind === "fine-tuned");
  page("Models",
    h("h2", {}, "Base models"),
    h("table", { id: "base-models" }, h("thead", {}, h("tr", {}, ["name", "architecture", "weights", "description"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, bases.map((m) => h("tr", {}, h("td", {}, m.name), h("td", {}, h("code", {}, m.model)), h("td", {}, m.pretrained ?? "random"), h("td", {}, m.description))))),
    h("h2", {}, "Fine-tuned models"),
    tuned.length ? h("table", { id: "tuned-models" }, h("thead", {}, h("tr", {}, ["job", "base", "method", "classes", "val acc", "test acc", "finished"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, tuned.map((m) => h("tr", {}, h("td", {}, h("a", { href: `#/jobs/${m.job_id}` }, m.description || m.job_id)), h("td", {}, m.base_model), h("td", {}, m.method),
        h("td", {}, (m.classnames || []).join(", ")), h("td", { class: "num" }, pct(m.val_metrics?.accuracy)), h("td", { class: "num" }, pct(m.test_metrics?.accuracy)), h("td", {}, when(m.created_at))))))
      : h("p", {}, "None yet: a succeeded job adds one."));
}

// -------------------------------------------------------------------------------------- router

function fail(x) { main.replaceChildren(h("h1", {}, "Something went wrong"), h("p", { class: "error", role: "alert" }, x.message)); }

async function route() {
  clearTimeout(pollTimer);
  const [path, query] = (location.hash.slice(1) || "/datasets").split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean);
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === `#/${parts[0]}`) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (!["jobs", "sweeps"].includes(parts[0]) || !parts[1]) while (charts.length) charts.pop().destroy();
  try {
    switch (parts[0]) {
      case "new": return await newJobPage(params);
      case "jobs": return await (parts[1] ? jobPage(parts[1]) : jobsPage());
      case "sweeps": return await (parts[1] ? sweepPage(parts[1]) : sweepsPage(params));
      case "predict": return await predictPage(params);
      case "models": return await modelsPage();
      default: return await datasetsPage();
    }
  } catch (x) { fail(x); }
}

window.addEventListener("hashchange", () => { route(); main.focus({ preventScroll: true }); });
route();
