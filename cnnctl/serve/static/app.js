// The page of `cnnctl serve`: send images to /v1/predict and show what the model says.
// Every name (file, class) reaches the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let task = "classification";
let explainable = false;  // a Keras model: POST /v1/explain draws Grad-CAM

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function headers() {
  const key = $("apikey").value;
  return key ? { "X-API-Key": key } : {};
}

async function describe() {
  try {
    const response = await fetch("/v1/model", { headers: headers() });
    const model = await response.json();
    if (!response.ok) throw new Error(model.error || response.statusText);
    task = model.task;
    explainable = model.explain === true;
    $("model").textContent =
      `${model.task} model ${model.file} (${model.runtime}), ${model.class_names.length} ` +
      `outputs, input ${model.input_shape.slice(1).join("×")}`;
    $("model").className = "muted";
  } catch (error) {
    $("model").textContent = `cannot describe the model: ${error.message}`;
    $("model").className = "error";
  }
}

function card(file, prediction) {
  const box = element("div", "card");
  const image = element("img");
  image.alt = file.name;
  image.src = URL.createObjectURL(file);
  image.onload = () => URL.revokeObjectURL(image.src);
  box.appendChild(image);
  if (dataPng(prediction.overlay)) {
    const tinted = element("img", "overlay");  // segmentation: the mask's colours on the image
    tinted.alt = `${file.name}: predicted mask`;
    tinted.src = prediction.overlay;
    box.appendChild(tinted);
  }
  const rows = element("div", "rows");
  rows.appendChild(element("div", "name", file.name));
  for (const guess of prediction.top) {
    const row = element("div", "row");
    row.appendChild(element("span", "label", guess.label));
    const bar = element("div", "bar");
    const fill = element("div");
    const share = task === "regression" ? 1 : Math.max(0, Math.min(1, guess.probability));
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    bar.appendChild(fill);
    row.appendChild(bar);
    const value = task === "regression" ? guess.probability.toFixed(4)
      : `${(guess.probability * 100).toFixed(1)}%`;
    row.appendChild(element("span", "value", value));
    rows.appendChild(row);
  }
  if (!prediction.top.length) rows.appendChild(element("div", "muted", "no label above its threshold"));
  if (explainable) rows.appendChild(explainButton(file, box));
  box.appendChild(rows);
  return box;
}

function dataPng(value) {
  return typeof value === "string" && value.startsWith("data:image/png;base64,");
}

function explainButton(file, box) {
  const button = element("button", "explain", "Grad-CAM");
  button.type = "button";
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "drawing…";
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const response = await fetch("/v1/explain", { method: "POST", body: form, headers: headers() });
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error || response.statusText);
      if (!dataPng(answer.overlay)) throw new Error("no overlay in the answer");
      const figure = element("figure", "gradcam");
      const picture = element("img");
      picture.alt = `${file.name}: Grad-CAM of ${answer.label}`;
      picture.src = answer.overlay;
      const where = answer.layer ? ` at ${answer.layer}` : "";
      figure.append(picture, element("figcaption", "muted", `${answer.method} of ${answer.label}${where}`));
      box.after(figure);
      button.remove();
    } catch (error) {
      button.disabled = false;
      button.textContent = "Grad-CAM";
      box.appendChild(element("div", "error", `explain refused: ${error.message}`));
    }
  });
  return button;
}

async function send(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  const topK = parseInt($("topk").value, 10);  // empty: the task's default, as predict's
  const params = new URLSearchParams();
  if (topK >= 1) params.set("top_k", String(topK));
  if (task === "segmentation") params.set("overlay", "1");  // the mask's colours on the image
  $("status").textContent = `scoring ${files.length} image(s)…`;
  $("status").className = "muted";
  try {
    const response = await fetch(`/v1/predict?${params}`, {
      method: "POST", body: form, headers: headers(),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || JSON.stringify(answer.detail || answer));
    const results = $("results");
    answer.forEach((prediction, i) => results.prepend(card(files[i], prediction)));
    $("status").textContent = `scored ${files.length} image(s)`;
  } catch (error) {
    $("status").textContent = `refused: ${error.message}`;
    $("status").className = "error";
  }
}

$("files").addEventListener("change", (event) => send([...event.target.files]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  send([...event.dataTransfer.files].filter((file) => file.type.startsWith("image/")));
});
$("apikey").addEventListener("change", describe);
describe();
