/* crmkit admin — small vanilla JS, no dependencies. Every page works without it except live form
   conditions, autocomplete, drag & drop and the mobile menu. */
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  function notify(text, kind) {
    var main = $("#main");
    if (!main) return;
    var box = $(".messages", main);
    if (!box) {
      box = document.createElement("div");
      box.className = "messages";
      box.setAttribute("role", "status");
      box.setAttribute("aria-live", "polite");
      main.insertBefore(box, main.firstChild);
    }
    var p = document.createElement("p");
    p.className = "msg msg-" + (kind || "info");
    p.textContent = text;
    box.appendChild(p);
    setTimeout(function () { p.remove(); }, 6000);
  }

  function post(url, data) {
    var body = new FormData();
    Object.keys(data).forEach(function (k) { body.append(k, data[k]); });
    return fetch(url, {
      method: "POST", body: body, credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Accept": "application/json" }
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) { j.status = r.status; j.okay = r.ok; return j; });
    });
  }

  /* ---------- mobile menu ---------- */
  function initMenu() {
    var btn = $("[data-menu-toggle]");
    if (!btn) return;
    function set(open) {
      var was = document.body.classList.contains("nav-open");
      document.body.classList.toggle("nav-open", open);
      btn.setAttribute("aria-expanded", open ? "true" : "false");
      if (open && !was) { var first = $(".sidebar a"); if (first) setTimeout(function () { first.focus(); }, 50); }
      if (!open && was) btn.focus();
    }
    btn.addEventListener("click", function () { set(!document.body.classList.contains("nav-open")); });
    document.addEventListener("keydown", function (e) { if (e.key === "Escape" && document.body.classList.contains("nav-open")) set(false); });
    document.addEventListener("click", function (e) {
      if (document.body.classList.contains("nav-open") && !e.target.closest(".sidebar") && !e.target.closest("[data-menu-toggle]")) set(false);
    });
  }

  /* ---------- colours from data (stage colours) ---------- */
  var HEX = /^#[0-9a-fA-F]{6}$/;
  function initColors() {
    $$("[data-color]").forEach(function (el) {
      var c = el.getAttribute("data-color");
      if (HEX.test(c)) el.style.setProperty("--c", c);
    });
  }

  /* ---------- condition language (subset of crmkit.core.conditions, same semantics) ---------- */
  function fieldValue(form, name) {
    var wrap = form.querySelector('[data-field="' + name + '"]');
    if (!wrap) return undefined;
    var type = wrap.getAttribute("data-type");
    var els = $$('[name="' + name + '"]', wrap);
    if (!els.length) return undefined;
    if (type === "boolean") return els[0].checked;
    if (type === "multi_enum") return els.filter(function (e) { return e.checked; }).map(function (e) { return e.value; });
    if (els[0].type === "radio") {
      var c = els.filter(function (e) { return e.checked; })[0];
      return c && c.value !== "" ? c.value : null;
    }
    var v = els[0].value;
    return v === "" ? null : v;
  }
  function same(a, b) {
    if (a === null || a === undefined) return b === null || b === undefined;
    if (typeof b === "boolean") return a === b || String(a) === String(b);
    if (typeof b === "number") return parseFloat(a) === b;
    return String(a) === String(b);
  }
  function leaf(v, spec) {
    if (spec === null || typeof spec !== "object" || Array.isArray(spec)) spec = { eq: spec };
    var present = Array.isArray(v) ? v.length > 0 : v !== null && v !== undefined;
    var ok = true;
    Object.keys(spec).forEach(function (op) {
      var a = spec[op], r;
      var has = function (x) { return Array.isArray(v) ? v.some(function (y) { return same(y, x); }) : same(v, x); };
      switch (op) {
        case "eq": r = a === null ? !present : present && has(a); break;
        case "ne": r = !(a === null ? !present : present && has(a)); break;
        case "in": r = a.some(function (x) { return x === null ? !present : present && has(x); }); break;
        case "not_in": r = !a.some(function (x) { return x === null ? !present : present && has(x); }); break;
        case "is_null": r = (!present) === !!a; break;
        case "gt": r = present && parseFloat(v) > a; break;
        case "gte": r = present && parseFloat(v) >= a; break;
        case "lt": r = present && parseFloat(v) < a; break;
        case "lte": r = present && parseFloat(v) <= a; break;
        case "between": r = present && parseFloat(v) >= a[0] && parseFloat(v) <= a[1]; break;
        case "contains": r = present && (Array.isArray(v) ? has(a) : String(v).toLowerCase().indexOf(String(a).toLowerCase()) >= 0); break;
        case "startswith": r = present && String(v).toLowerCase().indexOf(String(a).toLowerCase()) === 0; break;
        default: r = null;
      }
      if (r === null) ok = ok === false ? false : null;
      else if (!r) ok = false;
    });
    return ok;
  }
  function evaluate(cond, get) {
    var result = true;
    Object.keys(cond).forEach(function (key) {
      var r;
      if (key === "all" || key === "any") {
        var parts = cond[key].map(function (c) { return evaluate(c, get); });
        if (key === "all") r = parts.indexOf(false) >= 0 ? false : parts.indexOf(null) >= 0 ? null : true;
        else r = parts.indexOf(true) >= 0 ? true : parts.indexOf(null) >= 0 ? null : false;
      } else if (key === "not") {
        r = evaluate(cond[key], get);
        r = r === null ? null : !r;
      } else if (key.indexOf(".") >= 0) {
        r = null; // paths through references: the server decides
      } else {
        var v = get(key);
        r = v === undefined ? null : leaf(v, cond[key]);
      }
      if (r === false) result = false;
      else if (r === null && result !== false) result = null;
    });
    return result;
  }
  function initConditions() {
    $$("[data-record-form]").forEach(function (form) {
      var visible = $$("[data-visible-if]", form), required = $$("[data-required-if]", form);
      if (!visible.length && !required.length) return;
      function get(name) { return fieldValue(form, name); }
      function apply() {
        visible.forEach(function (w) {
          var r = evaluate(JSON.parse(w.getAttribute("data-visible-if")), get);
          w.hidden = r === false;
        });
        required.forEach(function (w) {
          var r = evaluate(JSON.parse(w.getAttribute("data-required-if")), get) === true;
          w.classList.toggle("is-required", r);
          $$("input,select,textarea", w).forEach(function (el) {
            if (el.type !== "hidden") el.setAttribute("aria-required", r ? "true" : "false");
          });
        });
      }
      form.addEventListener("change", apply);
      form.addEventListener("input", apply);
      apply();
    });
  }

  /* ---------- enum selects: colour swatch ---------- */
  function initSwatches() {
    $$(".select-wrap").forEach(function (wrap) {
      var sel = $("select", wrap), sw = $("[data-swatch]", wrap);
      if (!sel || !sw || !$("option[data-color-class]", sel)) return;
      wrap.classList.add("has-swatch");
      function apply() {
        var opt = sel.options[sel.selectedIndex];
        sw.className = "swatch " + (opt && opt.getAttribute("data-color-class") || "");
      }
      sel.addEventListener("change", apply);
      apply();
    });
  }

  /* ---------- reference autocomplete (ARIA combobox) ---------- */
  var acSeq = 0;
  function initAutocomplete(root) {
    $$(".ac", root).forEach(function (box) {
      if (box.getAttribute("data-ready")) return;
      box.setAttribute("data-ready", "1");
      var input = $(".ac-input", box), hidden = $('input[type="hidden"]', box), url = box.getAttribute("data-ac");
      var list = document.createElement("ul"), items = [], active = -1, timer = null, lastQ = null;
      var id = "ac-list-" + (++acSeq);
      list.className = "ac-list";
      list.id = id;
      list.setAttribute("role", "listbox");
      list.hidden = true;
      box.appendChild(list);
      input.setAttribute("aria-controls", id);
      function close() { list.hidden = true; input.setAttribute("aria-expanded", "false"); active = -1; input.removeAttribute("aria-activedescendant"); }
      function highlight(i) {
        active = i;
        $$("li", list).forEach(function (li, j) { li.setAttribute("aria-selected", j === i ? "true" : "false"); });
        if (i >= 0 && list.children[i]) { input.setAttribute("aria-activedescendant", list.children[i].id); list.children[i].scrollIntoView({ block: "nearest" }); }
      }
      function choose(i) {
        var it = items[i];
        if (!it) return;
        input.value = it.title;
        hidden.value = it.id;
        hidden.dispatchEvent(new Event("change", { bubbles: true }));
        close();
      }
      function render() {
        list.innerHTML = "";
        if (!items.length) {
          var li = document.createElement("li");
          li.className = "ac-empty";
          li.textContent = document.body.getAttribute("data-lang") === "ja" ? "該当なし" : "No matches";
          list.appendChild(li);
        }
        items.forEach(function (it, i) {
          var li = document.createElement("li");
          li.id = id + "-" + i;
          li.setAttribute("role", "option");
          li.textContent = it.title;
          li.addEventListener("mousedown", function (e) { e.preventDefault(); choose(i); });
          list.appendChild(li);
        });
        list.hidden = false;
        input.setAttribute("aria-expanded", "true");
        highlight(items.length ? 0 : -1);
      }
      function search() {
        var q = input.value.trim();
        if (q === lastQ && !list.hidden) return;
        lastQ = q;
        fetch(url + "?q=" + encodeURIComponent(q), { headers: { Accept: "application/json" }, credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.json() : []; })
          .then(function (data) { if (input.value.trim() === q) { items = data; render(); } })
          .catch(function () {});
      }
      input.addEventListener("input", function () {
        hidden.value = "";
        hidden.dispatchEvent(new Event("change", { bubbles: true }));
        clearTimeout(timer);
        timer = setTimeout(search, 160);
      });
      input.addEventListener("focus", function () { if (!input.readOnly && !hidden.value) { lastQ = null; search(); } });
      input.addEventListener("keydown", function (e) {
        if (e.key === "ArrowDown") { e.preventDefault(); if (list.hidden) { lastQ = null; search(); } else highlight(Math.min(active + 1, items.length - 1)); }
        else if (e.key === "ArrowUp") { e.preventDefault(); highlight(Math.max(active - 1, 0)); }
        else if (e.key === "Enter" && !list.hidden && active >= 0) { e.preventDefault(); choose(active); }
        else if (e.key === "Escape") close();
      });
      input.addEventListener("blur", function () { setTimeout(close, 120); });
    });
  }

  /* ---------- many-to-many rows ---------- */
  function initRefs() {
    $$("[data-refs]").forEach(function (fs) {
      var tbody = $("[data-rows]", fs), tpl = $("template[data-row-template]", fs), add = $("[data-add-row]", fs);
      var next = tbody.children.length;
      if (add) add.addEventListener("click", function () {
        var html = tpl.innerHTML.replace(/__i__/g, String(next++));
        var tmp = document.createElement("tbody");
        tmp.innerHTML = html;
        var row = tmp.firstElementChild;
        tbody.appendChild(row);
        initAutocomplete(row);
        var first = $("input:not([type=hidden]),select", row);
        if (first) first.focus();
      });
      fs.addEventListener("click", function (e) {
        var btn = e.target.closest("[data-remove-row]");
        if (btn) btn.closest("tr").remove();
      });
    });
  }

  /* ---------- image preview ---------- */
  function initPreview() {
    $$("input[type=file][data-preview]").forEach(function (input) {
      input.addEventListener("change", function () {
        var f = input.files && input.files[0], old = input.parentNode.querySelector("img.preview");
        if (old) old.remove();
        if (!f || f.type.indexOf("image/") !== 0) return;
        var img = document.createElement("img");
        img.className = "thumb preview";
        img.alt = "";
        img.src = URL.createObjectURL(f);
        input.insertAdjacentElement("afterend", img);
      });
    });
  }

  /* ---------- list: selection and bulk actions ---------- */
  function initBulk() {
    var form = $("[data-bulk]");
    var all = $("[data-select-all]");
    if (all) all.addEventListener("change", function () {
      $$('input[name="ids"]').forEach(function (cb) { cb.checked = all.checked; });
    });
    if (!form) return;
    var action = $("[data-bulk-action]", form);
    function sync() {
      $$("[data-for-action]", form).forEach(function (el) { el.hidden = el.getAttribute("data-for-action") !== action.value; });
    }
    action.addEventListener("change", sync);
    sync();
    var field = $("[data-bulk-field]", form);
    if (field) {
      var value = $("#bulk-value", form);
      var syncValue = function () {
        var tpl = $('template[data-choices-for="' + field.value + '"]', form), cur = $("#bulk-value", form);
        var el;
        if (tpl) { el = document.createElement("select"); el.innerHTML = tpl.innerHTML; }
        else { el = document.createElement("input"); el.placeholder = value.placeholder; }
        el.id = "bulk-value"; el.name = "value";
        cur.replaceWith(el);
      };
      field.addEventListener("change", syncValue);
      syncValue();
    }
    form.addEventListener("submit", function (e) {
      if (!$$('input[name="ids"]:checked').length) {
        e.preventDefault();
        notify(document.body.getAttribute("data-lang") === "ja" ? "レコードを1件以上選択してください。" : "Select at least one record first.", "error");
      }
    });
  }

  /* ---------- kanban ---------- */
  function initBoard() {
    var board = $("[data-board]");
    if (!board || board.getAttribute("data-can-move") !== "1") return;
    var entity = board.getAttribute("data-board"), status = $("[data-board-status]");
    var dragged = null;
    function columns() { return $$(".col", board); }
    function count(col, delta) {
      var el = $("[data-count]", col);
      if (el) el.textContent = String(Math.max(0, parseInt(el.textContent, 10) + delta));
    }
    function move(card, col, focus) {
      var from = card.closest(".col");
      if (!col || col === from) return;
      var list = $("[data-drop]", col), oldNext = card.nextSibling, oldList = card.parentNode;
      list.insertBefore(card, list.firstChild);
      count(from, -1); count(col, 1);
      card.classList.add("moving");
      if (focus) card.focus();
      post("/admin/" + entity + "/" + card.getAttribute("data-id") + "/move",
        { value: col.getAttribute("data-value"), version: card.getAttribute("data-version") })
        .then(function (res) {
          card.classList.remove("moving");
          if (res.okay) {
            card.setAttribute("data-version", res.version);
            var msg = board.getAttribute("data-moved-msg").replace("{stage}", col.getAttribute("data-label"));
            if (status) status.textContent = msg;
          } else {
            oldList.insertBefore(card, oldNext);
            count(col, -1); count(from, 1);
            if (res.version) card.setAttribute("data-version", res.version);
            notify(board.getAttribute("data-failed-msg").replace("{message}", res.error || res.status), "error");
          }
        })
        .catch(function () {
          card.classList.remove("moving");
          oldList.insertBefore(card, oldNext);
          count(col, -1); count(from, 1);
        });
    }
    board.addEventListener("dragstart", function (e) {
      var card = e.target.closest && e.target.closest(".kcard");
      if (!card) return;
      dragged = card;
      card.classList.add("dragging");
      e.dataTransfer.effectAllowed = "move";
      e.dataTransfer.setData("text/plain", card.getAttribute("data-id"));
    });
    board.addEventListener("dragend", function () {
      if (dragged) dragged.classList.remove("dragging");
      dragged = null;
      $$(".drop-over", board).forEach(function (el) { el.classList.remove("drop-over"); });
    });
    columns().forEach(function (col) {
      col.addEventListener("dragover", function (e) { if (dragged) { e.preventDefault(); e.dataTransfer.dropEffect = "move"; $("[data-drop]", col).classList.add("drop-over"); } });
      col.addEventListener("dragleave", function (e) { if (!col.contains(e.relatedTarget)) $("[data-drop]", col).classList.remove("drop-over"); });
      col.addEventListener("drop", function (e) {
        e.preventDefault();
        $("[data-drop]", col).classList.remove("drop-over");
        var id = e.dataTransfer.getData("text/plain");
        var card = dragged || $('.kcard[data-id="' + id + '"]', board);
        if (card) move(card, col, false);
      });
    });
    board.addEventListener("keydown", function (e) {
      var card = e.target.closest && e.target.closest(".kcard");
      if (!card || e.target !== card) return;
      var cols = columns(), i = cols.indexOf(card.closest(".col"));
      if (e.key === "ArrowRight" && i < cols.length - 1) { e.preventDefault(); move(card, cols[i + 1], true); }
      else if (e.key === "ArrowLeft" && i > 0) { e.preventDefault(); move(card, cols[i - 1], true); }
      else if (e.key === "ArrowDown" && card.nextElementSibling) { e.preventDefault(); card.nextElementSibling.focus(); }
      else if (e.key === "ArrowUp" && card.previousElementSibling) { e.preventDefault(); card.previousElementSibling.focus(); }
      else if (e.key === "Enter") { var a = $("a", card); if (a) a.click(); }
    });
  }

  function init() {
    initMenu();
    initColors();
    initConditions();
    initSwatches();
    initAutocomplete(document);
    initRefs();
    initPreview();
    initBulk();
    initBoard();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
