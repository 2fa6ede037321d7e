"use strict";
// The web form: reads the form schema (features, training ranges, real example rows) from
// the server, and sends one v2 infer request with predict_proba for the typed-in case.
(() => {
  const TOKEN_KEY = "mlops-serving-token";
  const SCHEMA_PATH = "/form/schema";
  const $ = (id) => document.getElementById(id);
  let schema = null;

  function authHeaders() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: "Bearer " + token } : {};
  }

  // fetch with the token; a readable Error for a non-2xx answer, the JSON body otherwise.
  async function call(path, options = {}) {
    let response;
    try {
      response = await fetch(path, {
        ...options,
        headers: { ...(options.headers || {}), ...authHeaders() },
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      throw new Error("the server did not answer (" + err.message + ")");
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      let detail = body && (body.error || body.detail);
      if (detail && typeof detail !== "string") detail = JSON.stringify(detail);
      const error = new Error(
        "the server answered " + response.status + ": " + (detail || text.slice(0, 300) || response.statusText)
      );
      error.status = response.status;
      throw error;
    }
    return { body, response };
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
    for (const input of document.querySelectorAll(".feature input")) input.removeAttribute("aria-invalid");
    for (const hint of document.querySelectorAll(".feature small")) {
      hint.textContent = hint.dataset.hint;
      hint.classList.remove("field-error");
    }
  }

  function short(value) {
    return Number.isFinite(value) ? String(Number(value.toPrecision(4))) : "?";
  }

  function renderFeatures() {
    const box = $("features");
    box.replaceChildren();
    schema.features.forEach((feature, index) => {
      const cell = document.createElement("div");
      cell.className = "feature";
      const label = document.createElement("label");
      label.htmlFor = "feature-" + index;
      label.textContent = feature.name;
      const input = document.createElement("input");
      input.id = "feature-" + index;
      input.type = "text";
      input.inputMode = "decimal";
      input.autocomplete = "off";
      input.dataset.feature = feature.name;
      const hint = document.createElement("small");
      hint.id = "hint-" + index;
      if (Number.isFinite(feature.min) && Number.isFinite(feature.max)) {
        hint.textContent = "training range " + short(feature.min) + " to " + short(feature.max);
        input.placeholder = short(feature.mean);
      } else {
        hint.textContent = "no training range recorded";
      }
      hint.dataset.hint = hint.textContent;
      input.setAttribute("aria-describedby", hint.id);
      cell.append(label, input, hint);
      box.append(cell);
    });
  }

  function renderExamples() {
    const select = $("example");
    select.replaceChildren();
    schema.examples.forEach((example, index) => {
      const option = document.createElement("option");
      option.value = String(index);
      option.textContent = "a training row of class " + example.label;
      select.append(option);
    });
    const any = schema.examples.length > 0;
    select.disabled = !any;
    $("fill-example").disabled = !any;
    if (!any) {
      $("fill-example").title = "this model version's metadata holds no example rows";
    }
  }

  async function loadSchema() {
    try {
      const { body } = await call(SCHEMA_PATH);
      schema = body;
    } catch (err) {
      if (err.status === 401) {
        $("token-box").open = true;
        $("schema-note").textContent = "This server needs its access token: enter it above.";
      } else {
        $("schema-note").textContent = "The model's features could not be loaded.";
      }
      showError(err.message);
      return;
    }
    clearError();
    $("token-box").open = false;
    $("model-name").textContent = schema.model;
    $("schema-note").textContent =
      schema.features.length + " features; ranges and examples from the training data of model version " +
      schema.version + ".";
    renderFeatures();
    renderExamples();
    $("predict").disabled = false;
  }

  function fillExample() {
    const example = schema.examples[Number($("example").value)];
    clearError();
    schema.features.forEach((feature, index) => {
      $("feature-" + index).value = String(example.values[index]);
    });
  }

  // The typed-in row, or an Error naming the first field that is not a finite number.
  function readRow() {
    return schema.features.map((feature, index) => {
      const input = $("feature-" + index);
      const text = input.value.trim();
      const value = Number(text);
      if (text === "" || !Number.isFinite(value)) {
        // Said beside the field too: the message box under the form may be out of view.
        const hint = $("hint-" + index);
        hint.textContent = text === "" ? "empty: enter a number" : "not a number";
        hint.classList.add("field-error");
        input.setAttribute("aria-invalid", "true");
        input.focus();
        throw new Error(
          "'" + feature.name + "' " + (text === "" ? "is empty" : "is not a number") + ": enter a number" +
            (Number.isFinite(feature.min) ? " (training range " + short(feature.min) + " to " + short(feature.max) + ")" : "")
        );
      }
      return value;
    });
  }

  async function predict(event) {
    event.preventDefault();
    clearError();
    $("result").hidden = true;
    let row;
    try {
      row = readRow();
    } catch (err) {
      showError(err.message);
      return;
    }
    const request = {
      inputs: [{ name: "input-0", shape: [1, row.length], datatype: "FP64", data: row }],
      parameters: { predict_proba: true },
    };
    $("predict").disabled = true;
    try {
      const path = "/v2/models/" + encodeURIComponent(schema.model) + "/infer";
      const { body, response } = await call(path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(request),
      });
      const probabilities = body.outputs[0].data;
      let best = 0;
      probabilities.forEach((p, i) => {
        if (p > probabilities[best]) best = i;
      });
      const classes = schema.classes || [];
      $("predicted-class").textContent = best < classes.length ? String(classes[best]) : "index " + best;
      $("probability").textContent = (100 * probabilities[best]).toFixed(1) + " %";
      const version = body.model_version || response.headers.get("x-mlops-model-version");
      $("model-version").textContent = version || "not reported by the server";
      $("result").hidden = false;
    } catch (err) {
      if (err.status === 401) $("token-box").open = true;
      showError(err.message);
    } finally {
      $("predict").disabled = false;
    }
  }

  function saveToken(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    loadSchema();
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
  }

  $("case-form").addEventListener("submit", predict);
  $("fill-example").addEventListener("click", fillExample);
  $("clear").addEventListener("click", () => {
    clearError();
    for (const input of document.querySelectorAll(".feature input")) input.value = "";
  });
  $("token-form").addEventListener("submit", saveToken);
  $("forget-token").addEventListener("click", forgetToken);
  loadSchema();
})();
