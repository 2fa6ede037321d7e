"use strict";
// The web form: reads the form schema (features, training ranges, categories, real example
// rows) from the server, and sends one v2 infer request with predict_proba for the typed-in
// case: one tensor for an all-numeric model, KServe's pandas codec (one tensor per column, by
// name) for a table with categorical columns. A server that answers labels (KServe's
// sklearnserver without PREDICT_PROBA ignores predict_proba) gets its label shown as a label.
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
    for (const input of document.querySelectorAll(".feature input, .feature select")) input.removeAttribute("aria-invalid");
    for (const hint of document.querySelectorAll(".feature small")) {
      hint.textContent = hint.dataset.hint;
      hint.classList.remove("field-error");
    }
  }

  function short(value) {
    return Number.isFinite(value) ? String(Number(value.toPrecision(4))) : "?";
  }

  // The class's display name (metadata class_names), else the label itself.
  function className(label) {
    const classes = schema.classes || [];
    const names = schema.class_names || [];
    const index = classes.findIndex((c) => String(c) === String(label));
    return index >= 0 && index < names.length ? String(names[index]) : String(label);
  }

  function categorical(feature) {
    return feature.type === "categorical";
  }

  // A choice list of the categories seen in training; "(missing)" sends null, which the
  // model's imputer fills in.
  function choiceList(feature, index) {
    const select = document.createElement("select");
    select.id = "feature-" + index;
    select.dataset.feature = feature.name;
    const missing = document.createElement("option");
    missing.value = "";
    missing.textContent = "(missing)";
    select.append(missing);
    for (const category of feature.categories || []) {
      const option = document.createElement("option");
      option.value = category;
      option.textContent = category;
      select.append(option);
    }
    return select;
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
      const hint = document.createElement("small");
      hint.id = "hint-" + index;
      if (categorical(feature)) {
        const select = choiceList(feature, index);
        hint.textContent = (feature.categories || []).length + " categories seen in training";
        hint.dataset.hint = hint.textContent;
        select.setAttribute("aria-describedby", hint.id);
        cell.append(label, select, hint);
        box.append(cell);
        return;
      }
      const input = document.createElement("input");
      input.id = "feature-" + index;
      input.type = "text";
      input.inputMode = "decimal";
      input.autocomplete = "off";
      input.dataset.feature = feature.name;
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
      option.textContent = "a training row of class " + className(example.label);
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
      const value = example.values[index];
      const field = $("feature-" + index);
      field.value = value === null || value === undefined ? "" : String(value);
      if (categorical(feature) && field.value !== "" && field.value !== String(value)) {
        // A category kept out of the display list (only the first 50 are listed).
        const option = document.createElement("option");
        option.value = option.textContent = String(value);
        field.append(option);
        field.value = String(value);
      }
    });
  }

  // The typed-in row, or an Error naming the first field that is not a finite number.
  // A categorical value is its category's text, or null for "(missing)".
  function readRow() {
    return schema.features.map((feature, index) => {
      const input = $("feature-" + index);
      if (categorical(feature)) return input.value === "" ? null : input.value;
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
    const request =
      schema.input_kind === "dataframe"
        ? {
            // KServe's pandas codec: one tensor per column, named as the column, in the
            // model's column order (kserve python/kserve/kserve/utils/utils.py get_predict_input).
            inputs: schema.features.map((feature, index) => ({
              name: feature.name,
              shape: [1],
              datatype: categorical(feature) ? "BYTES" : "FP64",
              data: [row[index]],
            })),
            parameters: { content_type: "pd", predict_proba: true },
          }
        : {
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
      const answer = readAnswer(body.outputs && body.outputs[0]);
      $("predicted-class").textContent = answer.label;
      $("probability").textContent = answer.probability;
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

  // What the first output says: probabilities only when it is a floating-point
  // [rows, classes] tensor; anything else (one value per row) is the label itself.
  // KServe's sklearnserver answers labels (INT64, BYTES, BOOL, or FP64 of shape [rows]) unless
  // it runs with PREDICT_PROBA=true; its label is never read as a probability.
  function readAnswer(output) {
    if (!output || !Array.isArray(output.data) || output.data.length === 0) {
      throw new Error("the server answered no prediction");
    }
    const classes = schema.classes || [];
    const shape = output.shape || [];
    const floating = output.datatype === "FP64" || output.datatype === "FP32";
    if (floating && shape.length === 2 && shape[1] > 1) {
      const probabilities = output.data.slice(0, shape[1]);
      let best = 0;
      probabilities.forEach((p, i) => {
        if (p > probabilities[best]) best = i;
      });
      const label = shape[1] === classes.length ? className(classes[best]) : "class index " + best;
      return { label, probability: (100 * probabilities[best]).toFixed(1) + " %" };
    }
    return {
      label: className(output.data[0]),
      probability: "not reported: the server answered the label only",
    };
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
    for (const input of document.querySelectorAll(".feature input, .feature select")) input.value = "";
  });
  $("token-form").addEventListener("submit", saveToken);
  $("forget-token").addEventListener("click", forgetToken);
  loadSchema();
})();
