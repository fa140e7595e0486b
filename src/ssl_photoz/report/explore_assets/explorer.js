// The galaxy explorer's script: vanilla JavaScript, no library, nothing fetched.
// The page's data (JSON in #explorer-data) is written by ssl_photoz.report.explore; objids are strings
// (SDSS objIDs exceed 2**53, beyond exact JavaScript numbers).
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  const GALAXIES = DATA.galaxies;
  const BY_ID = new Map(GALAXIES.map((g) => [g.objid, g]));
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
    "#17becf", "#7f7f7f", "#bcbd22"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  let model = DATA.default_model;
  let sortKey = null;
  let sortDir = 1;
  let selected = null;

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(value, digits) {
    return value === null || value === undefined ? "\u2013" : Number(value).toFixed(digits);
  }

  function picture(objid, cls) {
    const b64 = DATA.images[objid];
    const img = el("img", { class: cls, alt: "gri picture of " + objid, "data-objid": objid });
    if (b64) img.src = "data:image/jpeg;base64," + b64;
    return img;
  }

  function compareIds(a, b) {  // positive integers as strings
    return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
  }

  // -- the table ---------------------------------------------------------------------------------
  function columns() {
    const cols = [
      { key: "pic", label: "", sortable: false },
      { key: "objid", label: "objid", get: (g) => g.objid, id: true },
      { key: "ra", label: "ra", get: (g) => g.ra, digits: 5 },
      { key: "dec", label: "dec", get: (g) => g.dec, digits: 5 },
      { key: "z_spec", label: "z_spec", get: (g) => g.z_spec, digits: 4 },
    ];
    for (const m of DATA.models) {
      cols.push({ key: "zp:" + m, label: "z_p " + m, get: (g) => g.z_p[m], digits: 4 });
    }
    cols.push({ key: "dz", label: "dz", get: (g) => g.dz[model], digits: 4, chosen: true });
    cols.push({ key: "pit", label: "PIT", get: (g) => g.pit[model], digits: 3, chosen: true });
    cols.push({ key: "anomaly", label: "anomaly", get: (g) => g.anomaly, digits: 3 });
    return cols;
  }

  function sortedGalaxies(cols) {
    const list = GALAXIES.slice();
    const col = cols.find((c) => c.key === sortKey);
    if (!col) return list;
    list.sort((a, b) => {
      const x = col.get(a);
      const y = col.get(b);
      const xMissing = x === null || x === undefined;
      const yMissing = y === null || y === undefined;
      if (xMissing || yMissing) return xMissing - yMissing;  // missing values last, either way
      return sortDir * (col.id ? compareIds(x, y) : x - y);
    });
    return list;
  }

  function renderTable() {
    const cols = columns();
    const head = $("head");
    head.replaceChildren();
    for (const col of cols) {
      const th = el("th", { "data-key": col.key, scope: "col" }, col.label);
      if (col.chosen) th.classList.add("chosen");
      if (col.key === sortKey) th.classList.add(sortDir > 0 ? "sorted-asc" : "sorted-desc");
      if (col.sortable !== false) {
        th.title = "sort";
        th.addEventListener("click", () => {
          sortDir = sortKey === col.key ? -sortDir : 1;
          sortKey = col.key;
          renderTable();
        });
      }
      head.appendChild(th);
    }
    const body = $("rows");
    const rows = document.createDocumentFragment();
    for (const g of sortedGalaxies(cols)) {
      const tr = el("tr", { "data-objid": g.objid });
      if (g.objid === selected) tr.classList.add("selected");
      for (const col of cols) {
        if (col.key === "pic") {
          const td = el("td", { class: "pic" });
          td.appendChild(picture(g.objid, "thumb"));
          tr.appendChild(td);
        } else {
          const value = col.get(g);
          tr.appendChild(el("td", {}, col.id ? value : fmt(value, col.digits)));
        }
      }
      tr.addEventListener("click", () => show(g.objid));
      rows.appendChild(tr);
    }
    body.replaceChildren(rows);
  }

  // -- one galaxy --------------------------------------------------------------------------------
  function decodePdf(b64) {
    const raw = atob(b64);
    const out = new Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i) / 255;
    return out;
  }

  function pdfPlot(g) {
    const W = 440, H = 230, L = 46, R = 12, T = 12, B = 38;
    const zMin = DATA.bins.z_min, zMax = DATA.bins.z_max;
    const x = (z) => L + ((z - zMin) / (zMax - zMin)) * (W - L - R);
    const y = (p) => H - B - (p / 1.05) * (H - T - B);
    const plot = svg("svg", { id: "pdf-plot", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
      role: "img", "aria-label": "photo-z PDFs of " + g.objid });
    plot.appendChild(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B,
      fill: "white", stroke: "#999" }));
    for (let i = 0; i <= 4; i++) {
      const z = zMin + (i / 4) * (zMax - zMin);
      plot.appendChild(svg("line", { x1: x(z), x2: x(z), y1: H - B, y2: H - B + 4, stroke: "#333" }));
      plot.appendChild(svg("text", { x: x(z), y: H - B + 16, "text-anchor": "middle" }, z.toFixed(2)));
    }
    for (const p of [0, 0.5, 1]) {
      plot.appendChild(svg("line", { x1: L - 4, x2: L, y1: y(p), y2: y(p), stroke: "#333" }));
      plot.appendChild(svg("text", { x: L - 6, y: y(p) + 4, "text-anchor": "end" }, p.toFixed(1)));
    }
    plot.appendChild(svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, "z"));
    plot.appendChild(svg("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${(T + H - B) / 2})` }, "p(z) / peak"));
    const models = DATA.pdf_models.filter((m) => g.pdf[m]);
    models.forEach((m, k) => {
      const colour = COLOURS[k % COLOURS.length];
      const values = decodePdf(g.pdf[m]);
      const n = values.length;
      const points = values.map((v, i) => {
        const z = zMin + ((i + 0.5) / n) * (zMax - zMin);
        return x(z).toFixed(1) + "," + y(v).toFixed(1);
      });
      plot.appendChild(svg("polyline", { points: points.join(" "), fill: "none", stroke: colour,
        "stroke-width": m === model ? 2.2 : 1.2, "data-model": m }));
      if (g.z_p[m] !== null && g.z_p[m] !== undefined) {
        plot.appendChild(svg("line", { x1: x(g.z_p[m]), x2: x(g.z_p[m]), y1: T, y2: H - B,
          stroke: colour, "stroke-dasharray": "2 3" }));
      }
      plot.appendChild(svg("text", { x: W - R - 6, y: T + 14 + 13 * k, "text-anchor": "end",
        fill: colour }, m + (g.pit[m] !== undefined ? "  PIT " + fmt(g.pit[m], 3) : "")));
    });
    if (g.z_spec !== null) {
      plot.appendChild(svg("line", { x1: x(g.z_spec), x2: x(g.z_spec), y1: T, y2: H - B,
        stroke: "black", "stroke-width": 1.5, "stroke-dasharray": "6 3" }));
      plot.appendChild(svg("text", { x: x(g.z_spec) + 3, y: H - B - 5 }, "z_spec"));
    }
    if (!models.length) {
      plot.appendChild(svg("text", { x: (L + W - R) / 2, y: (T + H - B) / 2,
        "text-anchor": "middle" }, "no model gives a PDF"));
    }
    return plot;
  }

  function show(objid) {
    const g = BY_ID.get(objid);
    if (!g) return false;
    selected = objid;
    for (const tr of document.querySelectorAll("#rows tr.selected")) tr.classList.remove("selected");
    const row = document.querySelector(`#rows tr[data-objid="${objid}"]`);
    if (row) row.classList.add("selected");

    const detail = $("detail");
    detail.replaceChildren();
    detail.dataset.objid = objid;
    detail.appendChild(el("h2", {}, "objid " + objid));
    const top = el("div", { class: "detail-top" });
    top.appendChild(picture(objid, "big"));
    const facts = el("table", { class: "facts" });
    const line = (name, value) => {
      const tr = el("tr");
      tr.appendChild(el("td", {}, name));
      tr.appendChild(el("td", {}, value));
      facts.appendChild(tr);
    };
    line("ra, dec", fmt(g.ra, 5) + ", " + fmt(g.dec, 5));
    line("z_spec", fmt(g.z_spec, 4));
    for (const m of DATA.models) {
      if (g.z_p[m] === undefined) continue;
      const pit = g.pit[m] !== undefined ? ", PIT " + fmt(g.pit[m], 3) : "";
      line("z_p " + m, fmt(g.z_p[m], 4) + " (dz " + fmt(g.dz[m], 4) + pit + ")");
    }
    line("anomaly score", fmt(g.anomaly, 3) + " (distance to the " + DATA.anomaly_k +
      "th neighbour)");
    top.appendChild(facts);
    top.appendChild(pdfPlot(g));
    detail.appendChild(top);
    const pool = DATA.pool === "train" ? "training" : DATA.pool;
    detail.appendChild(el("h3", {}, `${DATA.k} nearest ${pool} galaxies in the embedding space`));
    const strip = el("div", { id: "neighbours" });
    g.neighbours.forEach((n, rank) => {
      const card = el("div", { class: "neighbour", "data-objid": n.objid,
        "data-z-spec": n.z_spec === null ? "" : String(n.z_spec), "data-distance": String(n.distance),
        "data-rank": String(rank + 1) });
      card.appendChild(picture(n.objid, "neighbour-pic"));
      card.appendChild(el("div", { class: "z" }, "z=" + fmt(n.z_spec, 4)));
      card.appendChild(el("div", { class: "d" }, "d=" + fmt(n.distance, 3)));
      card.appendChild(el("div", { class: "id" }, n.objid));
      strip.appendChild(card);
    });
    detail.appendChild(strip);
    detail.hidden = false;
    try {  // a link to this galaxy; some browsers refuse history on file:// pages
      if (location.hash !== "#" + objid) history.replaceState(null, "", "#" + objid);
    } catch (err) { /* the page works without it */ }
    detail.scrollIntoView({ block: "nearest" });
    return true;
  }

  // -- search ------------------------------------------------------------------------------------
  function separationArcsec(ra1, dec1, ra2, dec2) {
    const r = Math.PI / 180;
    const h = Math.sin(((dec2 - dec1) * r) / 2) ** 2 +
      Math.cos(dec1 * r) * Math.cos(dec2 * r) * Math.sin(((ra2 - ra1) * r) / 2) ** 2;
    return (2 * Math.asin(Math.sqrt(Math.min(1, Math.max(0, h)))) / r) * 3600;
  }

  function status(text, error) {
    const node = $("search-status");
    node.textContent = text;
    node.classList.toggle("error", Boolean(error));
  }

  function search(text) {
    const tokens = text.trim().split(/[\s,]+/).filter(Boolean);
    const onPage = DATA.sampled
      ? ` (a sample of ${DATA.n_shown} of the ${DATA.n_validation} validation galaxies)` : "";
    if (tokens.length === 1 && /^\d+$/.test(tokens[0])) {
      const objid = tokens[0].replace(/^0+(?=\d)/, "");
      if (show(objid)) return status("objid " + objid);
      return status(`objid ${objid} is not among the galaxies on this page${onPage}`, true);
    }
    const numbers = tokens.map(Number);
    if (tokens.length === 2 && numbers.every(Number.isFinite)) {
      const [ra, dec] = numbers;
      let best = null;
      let bestSep = Infinity;
      for (const g of GALAXIES) {
        const sep = separationArcsec(ra, dec, g.ra, g.dec);
        if (sep < bestSep) { best = g; bestSep = sep; }
      }
      if (best && bestSep <= DATA.match_radius_arcsec) {
        show(best.objid);
        return status(`objid ${best.objid}, ${bestSep.toFixed(2)} arcsec from (${ra}, ${dec})`);
      }
      return status(`no galaxy within ${DATA.match_radius_arcsec} arcsec of (${ra}, ${dec})` +
        (best ? `; the nearest, objid ${best.objid}, is ${bestSep.toFixed(1)} arcsec away` : "") +
        onPage, true);
    }
    return status('type an objid, or "ra dec" in degrees', true);
  }

  // -- page --------------------------------------------------------------------------------------
  function init() {
    $("summary").textContent =
      `${DATA.n_shown} validation galaxies, ${DATA.models.length} models ` +
      `(${DATA.models.join(", ")}); neighbours: the ${DATA.k} nearest ${DATA.pool} galaxies ` +
      `among ${DATA.n_embedded} embedded objects. Click a row, or search.`;
    if (DATA.sampled) {
      const note = $("sample-note");
      note.textContent = `This page shows a random sample of ${DATA.n_shown} of the ` +
        `${DATA.n_validation} validation galaxies (explore.max_galaxies = ${DATA.max_galaxies}, ` +
        `seed ${DATA.seed}).`;
      note.hidden = false;
    }
    const select = $("model");
    for (const m of DATA.models) select.appendChild(el("option", { value: m }, m));
    select.value = model;
    select.addEventListener("change", () => {
      model = select.value;
      renderTable();
      if (selected) show(selected);
    });
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      search($("search").value);
    });
    $("about").textContent =
      `dz = (z_p - z_spec) / (1 + z_spec). PIT = the model's photo-z PDF integrated up to ` +
      `z_spec (0 to 1; uniform over galaxies when the PDFs are calibrated); the colours-only ` +
      `kNN gives no PDF. PDFs are drawn relative to their peak over ${DATA.bins.n} bins in ` +
      `${DATA.bins.z_min} < z < ${DATA.bins.z_max}; dashed: z_spec (black) and each model's ` +
      `z_p. Anomaly score: the distance to the ${DATA.anomaly_k}th nearest embedded object ` +
      `(unit vectors, 0 to 2), as in results/similarity/anomalies.tsv. Neighbours: the ` +
      `${DATA.k} nearest ${DATA.pool} galaxies in the 128-d MoCo embedding space (what ` +
      `ssl-photoz similar ${DATA.embeddings} --objid OBJID prints), distance d between unit ` +
      `vectors. Pictures: the central ${DATA.thumb_px} x ${DATA.thumb_px} pixels (the ` +
      `networks' input), gri with the Lupton et al. (2004) asinh stretch, north up.`;
    renderTable();
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (wanted) search(wanted);
    document.body.dataset.ready = "1";
  }

  init();
})();
