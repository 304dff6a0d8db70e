// LesionQC rating page: shows what the server's review controller says, sends what the rater does.
// Every decision (what is done, what comes next, what a key scores) is the server's; this page draws.
"use strict";

const $ = (id) => document.getElementById(id);
let state = null;          // the server's last answer
let queue = Promise.resolve();  // actions go one after another, each on the state the previous one left
let shownVolumes = "";     // the volumes in the viewer ("image|image2|mask")
let savedWindow = null;    // the scan's window/level, kept while the rater stays on one case

const nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: false, showLegend: false,
  isColorbar: false, multiplanarShowRender: 0, crosshairColor: [0.3, 0.6, 1, 0.6], crosshairWidth: 0.3 });

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  let answer = null;
  try { answer = await response.json(); } catch (error) { answer = null; }
  if (!answer) throw new Error(`the server answered ${response.status}`);
  return answer;
}

function render(next) {
  state = next;
  $("error").textContent = state.error || "";
  $("saved").textContent = state.saved || "";
  $("status").textContent = state.session_status || "";
  $("case-label").textContent = state.case_label;
  $("item-label").textContent = state.item_label;
  $("rater-label").textContent = state.rater ? `Rater ${state.rater}` : "";
  const fraction = state.item_count ? state.done_count / state.item_count : 0;
  $("progress-fill").style.width = `${(100 * fraction).toFixed(1)}%`;
  $("progress").setAttribute("aria-valuenow", String(state.done_count));
  $("progress").setAttribute("aria-valuemax", String(state.item_count));
  $("progress-text").textContent = `${state.done_count} / ${state.item_count} scored`;
  renderScale();
  $("previous").disabled = !state.can_go_previous;
  $("next").disabled = !state.can_go_next;
  $("next-open").disabled = !state.can_go_next_open;
  if (document.activeElement !== $("comment")) $("comment").value = state.comment;
  $("comment-row").hidden = !state.scale.comment;
  showVolumes();
}

function renderScale() {
  const scale = state.scale;
  $("scale-title").textContent = scale.title;
  const rows = scale.structures.map((structure) => {
    const row = document.createElement("div");
    row.className = "structure" + (structure.id === state.active_structure ? " active" : "");
    row.dataset.structure = structure.id;
    const title = document.createElement("h3");
    title.textContent = structure.label + (structure.required ? "" : " (optional)");
    const points = document.createElement("div");
    points.className = "points";
    for (const point of scale.points) {
      const button = document.createElement("button");
      button.type = "button";
      button.title = point.description;
      button.disabled = !state.rating_enabled;
      if (state.scores[structure.id] === point.value) button.className = "chosen";
      const value = document.createElement("b");
      value.textContent = String(point.value);
      button.append(value, point.anchor);
      button.addEventListener("click", () => act(() => ({ action: "score", value: point.value,
        structure: structure.id, comment: $("comment").value })));
      points.append(button);
    }
    row.append(title, points);
    return row;
  });
  $("structures").replaceChildren(...rows);
  const flags = scale.flags.map((flag) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.flags.includes(flag.id);
    box.disabled = !state.rating_enabled;
    box.title = flag.scope === "case" ? "Applies to every item of this case." : "";
    box.addEventListener("change", () => act(() => ({ action: "flag", flag: flag.id, checked: box.checked })));
    label.append(box, " " + flag.label);
    return label;
  });
  $("flags").replaceChildren(...flags);
}

function act(build) {
  queue = queue.then(async () => {
    if (!state || !state.item) return;
    try {
      render(await api("/api/action", { item: state.item, ...build() }));
    } catch (error) {
      $("error").textContent = `Not saved: ${error.message}`;
    }
  });
  return queue;
}

// -- the viewer -------------------------------------------------------------------------------

function labelColormap() {
  const map = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
  for (const label of state.labels) {
    map.R.push(Math.round(255 * label.color[0]));
    map.G.push(Math.round(255 * label.color[1]));
    map.B.push(Math.round(255 * label.color[2]));
    map.A.push(255);
    map.I.push(label.value);
    map.labels.push(label.name);
  }
  return map;
}

async function showVolumes() {
  const volumes = state.volumes;
  const wanted = volumes.image ? `${volumes.image}|${volumes.image2}|${volumes.mask}` : "";
  if (wanted === shownVolumes) return;
  const sameScan = shownVolumes.split("|")[0] === volumes.image;
  if (!sameScan) savedWindow = null;
  else if (nv.volumes.length) savedWindow = [nv.volumes[0].cal_min, nv.volumes[0].cal_max];
  shownVolumes = wanted;
  document.body.dataset.loaded = "";
  if (!wanted) return;
  // As in Slicer: the second image over the first, faded out until the rater fades it in.
  $("image2-row").hidden = !volumes.image2;
  const list = [{ url: volumes.image }];
  if (volumes.image2) list.push({ url: volumes.image2, opacity: Number($("image2-opacity").value) });
  list.push({ url: volumes.mask, opacity: overlayOpacity() });
  try {
    await nv.loadVolumes(list);
    if (shownVolumes !== wanted) return;  // the rater moved on while it loaded
    nv.volumes[overlayIndex()].setColormapLabel(labelColormap());
    if (savedWindow) [nv.volumes[0].cal_min, nv.volumes[0].cal_max] = savedWindow;
    nv.setSliceType(nv.sliceTypeMultiplanar);
    nv.updateGLVolume();
    document.body.dataset.loaded = state.item;
  } catch (error) {
    $("error").textContent = `Cannot show the images: ${error.message}`;
  }
}

function overlayOpacity() {
  return $("overlay-on").checked ? Number($("overlay-opacity").value) : 0;
}

function overlayIndex() {
  return nv.volumes.length - 1;  // the mask is always the last volume
}

function applyOverlay() {
  if (nv.volumes.length > 1) nv.setOpacity(overlayIndex(), overlayOpacity());
}

$("overlay-on").addEventListener("change", applyOverlay);
$("overlay-opacity").addEventListener("input", () => { $("overlay-on").checked = true; applyOverlay(); });
$("image2-opacity").addEventListener("input", () => {
  if (nv.volumes.length > 2) nv.setOpacity(1, Number($("image2-opacity").value));
});
$("reset-window").addEventListener("click", () => {
  if (!nv.volumes.length) return;
  nv.volumes[0].cal_min = nv.volumes[0].robust_min;
  nv.volumes[0].cal_max = nv.volumes[0].robust_max;
  nv.updateGLVolume();
});

// -- controls and keys --------------------------------------------------------------------------

for (const [id, where] of [["previous", "previous"], ["next", "next"], ["next-open", "next_open"]]) {
  $(id).addEventListener("click", () => act(() => ({ action: where, comment: $("comment").value })));
}
$("comment").addEventListener("change", () => act(() => ({ action: "comment", comment: $("comment").value })));

// Capture phase: the page's keys reach NiiVue's canvas (which moves the cross on j/k/arrows) no further.
window.addEventListener("keydown", (event) => {
  if (!state || !state.rating_enabled || event.ctrlKey || event.metaKey || event.altKey) return;
  const typing = event.target instanceof HTMLInputElement && event.target.type === "text";
  if (typing) {
    if (event.key === "Enter") {  // the comment is saved with the move
      event.preventDefault();
      act(() => ({ action: "next_open", comment: $("comment").value }));
    } else if (event.key === "Escape") {
      event.target.blur();
    }
    return;
  }
  const point = state.scale.points.find((p) => String(p.value) === event.key);
  const moves = { ArrowLeft: "previous", k: "previous", ArrowRight: "next", j: "next", Enter: "next_open" };
  if (point) {
    act(() => ({ action: "score", value: point.value, comment: $("comment").value }));
  } else if (moves[event.key]) {
    act(() => ({ action: moves[event.key], comment: $("comment").value }));
  } else if (event.key === "o") {
    $("overlay-on").checked = !$("overlay-on").checked;
    applyOverlay();
  } else {
    return;
  }
  event.preventDefault();
  event.stopPropagation();
}, true);

// -- start ----------------------------------------------------------------------------------------

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const answer = await api("/api/login", { rater: $("rater-id").value });
  if (answer.rater) {
    $("login").close();
    render(answer);
  } else {
    $("login-error").textContent = answer.error;
  }
});

async function start() {
  await nv.attachToCanvas($("gl"));
  const answer = await api("/api/state");
  render(answer);
  if (!answer.rater) $("login").showModal();
}

start().catch((error) => { $("error").textContent = `Cannot start: ${error.message}`; });
