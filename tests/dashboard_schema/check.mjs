#!/usr/bin/env node
// Check Grafana dashboard JSON files against Grafana's own published types.
//
//   node check.mjs [--emit-schema FILE] DASHBOARD.json...
//
// Two JSON Schemas are generated with ts-json-schema-generator from @grafana/schema, the
// TypeScript form of the schemas Grafana itself is built from, and cached under
// node_modules/.cache/llm-probe-dashboard-schema/ (one file per package version):
//
//   * the `Dashboard` interface of the dashboard kind
//     (dist/esm/raw/dashboard/x/dashboard_types.gen.d.ts): every dashboard is checked
//     against it;
//   * the `Options` / `FieldConfig` interfaces of the core panel plugins
//     (dist/esm/raw/composable/<plugin>/panelcfg/x/*_types.gen.d.ts): a panel of one of
//     those types has its `options` and `fieldConfig.defaults.custom` checked against them.
//
// Both are relaxed where dashboards saved by a real Grafana differ from the types
// (RELAXATIONS below; each one was observed), and on top come explicit "current Grafana"
// rules the types cannot express (RULES below), which reject the legacy forms grafanalib
// emits by default.
//
// Output: one line per error, `FILE: /json/pointer: message`, on stdout; a summary on stderr.
// Exit status: 0 every file passed, 1 some file failed, 2 bad usage.

import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import Ajv from "ajv";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const CACHE_DIR = path.join(HERE, "node_modules", ".cache", "llm-probe-dashboard-schema");

const DASHBOARD_TYPES = "@grafana/schema/dist/esm/raw/dashboard/x/dashboard_types.gen.d.ts";
const DASHBOARD_TYPE = "Dashboard";

// Panel type -> the plugin's panelcfg module (and whether it declares a FieldConfig).
const PANEL_PLUGINS = {
  barchart: ["barchart", "BarChart", true],
  bargauge: ["bargauge", "BarGauge", false],
  gauge: ["gauge", "Gauge", false],
  heatmap: ["heatmap", "Heatmap", true],
  histogram: ["histogram", "Histogram", true],
  piechart: ["piechart", "PieChart", true],
  stat: ["stat", "Stat", false],
  "state-timeline": ["statetimeline", "StateTimeline", true],
  table: ["table", "Table", true],
  text: ["text", "Text", false],
  timeseries: ["timeseries", "TimeSeries", true],
};

// --- the generated schemas, cached per package version ----------------------------------

function packageVersion(name) {
  return JSON.parse(fs.readFileSync(require.resolve(`${name}/package.json`), "utf8")).version;
}

async function cached(name, build) {
  const key = [
    name,
    `grafana-schema-${packageVersion("@grafana/schema")}`,
    `tsjsg-${packageVersion("ts-json-schema-generator")}`,
  ].join("_");
  const file = path.join(CACHE_DIR, `${key}.json`);
  if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, "utf8"));
  // Imported only when a schema has to be built: loading TypeScript takes about a second.
  const { createGenerator } = await import("ts-json-schema-generator");
  const schema = build((config) =>
    createGenerator({
      topRef: true,
      jsDoc: "none",
      skipTypeCheck: true,
      // RELAXATION 1 (see below): the generator would otherwise close every object.
      additionalProperties: true,
      ...config,
    }).createSchema(config.type),
  );
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(schema, null, 2));
  fs.renameSync(tmp, file);
  return schema;
}

function dashboardSchema() {
  return cached(DASHBOARD_TYPE, (generate) =>
    generate({ path: require.resolve(DASHBOARD_TYPES), type: DASHBOARD_TYPE, expose: "export" }),
  );
}

function panelSchema() {
  return cached("PanelCfg", (generate) => {
    // One interface gathering every plugin's Options/FieldConfig; `expose: "none"` inlines
    // them, since every plugin names its types `Options` and `FieldConfig`.
    const lines = [];
    const members = [];
    for (const [type, [dir, prefix, hasFieldConfig]] of Object.entries(PANEL_PLUGINS)) {
      const alias = `p_${dir}`;
      const module = `@grafana/schema/dist/esm/raw/composable/${dir}/panelcfg/x/${prefix}PanelCfg_types.gen`;
      lines.push(`import type * as ${alias} from ${JSON.stringify(module)};`);
      const custom = hasFieldConfig ? ` custom: ${alias}.FieldConfig;` : "";
      members.push(`  ${JSON.stringify(type)}: { options: ${alias}.Options;${custom} };`);
    }
    const entry = path.join(CACHE_DIR, "panelcfg-entry.ts");
    fs.mkdirSync(CACHE_DIR, { recursive: true });
    fs.writeFileSync(entry, `${lines.join("\n")}\nexport interface PanelCfg {\n${members.join("\n")}\n}\n`);
    return generate({ path: entry, type: "PanelCfg", expose: "none" });
  });
}

// --- RELAXATIONS: where the published types are stricter than what Grafana itself saves -----
//
// Each was needed for a dashboard saved by a real Grafana (10.3 to 11.6) to pass, except 5,
// which the exports README records; anything not listed here is checked as the types say.
//
// 1. Additional properties are allowed everywhere. Exports carry keys the types do not
//    list: `__inputs`, `__requires`, `__elements`, `datasource.default`, options of older
//    plugin versions... (a generator option, above).
// 2. `Threshold.value` is optional: Grafana writes the base step of a threshold list either
//    as `"value": null` or without a `value` key at all. Its type stays `number | null`, so
//    the string "null" grafanalib writes is still rejected.
// 3. `VariableModel.current` may be the empty object: variables that were never set are
//    saved as `"current": {}`. A non-empty `current` must still be a VariableOption.
// 4. `DashboardLink` only requires `title` and `type`: Grafana saves links with just the
//    keys that were set (no `asDropdown`, `includeVars`, `keepTime`, `tooltip`).
// 5. Optional scalar properties of Dashboard, Panel and RowPanel (`gnetId`, `timeFrom`,
//    `timeShift`, `interval`, ...) may be null: exports contain such null-valued keys and
//    Grafana drops them on the next save. Not `datasource` (see rule 4), not required keys.
// 6. Panel plugin options and field config have no required properties: Grafana fills
//    every missing option from the plugin's defaults, so saved panels list only some.
//    Types and enum values are still checked.
// 7. The table footer's `fields` may be a string: Grafana 10 saves `"fields": ""` (all
//    numeric fields) where the type says `string[]`.
//
// And one tightening that keeps the check from being looser than the type means:
//
// T1. `panels[]` is `Panel | RowPanel`, generated as `anyOf`. Since `Panel.type` is any
//     string and extra keys are allowed, a row would always match `Panel` and the panels
//     inside it would never be checked. The union is discriminated instead: an item with
//     `"type": "row"` must be a RowPanel (so its `panels` are checked), any other a Panel.

function mustHave(defs, name) {
  if (!defs[name]) throw new Error(`@grafana/schema: type ${name} not found; update check.mjs`);
  return defs[name];
}

function relaxDashboard(schema) {
  const defs = schema.definitions;
  // 2
  const threshold = mustHave(defs, "Threshold");
  threshold.required = threshold.required.filter((k) => k !== "value");
  // 3
  mustHave(defs, "VariableModel").properties.current = {
    anyOf: [{ $ref: "#/definitions/VariableOption" }, { type: "object", maxProperties: 0 }],
  };
  // 4
  mustHave(defs, "DashboardLink").required = ["title", "type"];
  // 5
  for (const name of ["Dashboard", "Panel", "RowPanel"]) {
    const def = mustHave(defs, name);
    const required = new Set(def.required ?? []);
    for (const [key, prop] of Object.entries(def.properties)) {
      if (required.has(key) || key === "datasource" || !prop.type) continue;
      const types = Array.isArray(prop.type) ? prop.type : [prop.type];
      if (types.every((t) => ["string", "number", "boolean"].includes(t))) {
        prop.type = [...new Set([...types, "null"])];
      }
    }
  }
  // T1
  mustHave(defs, DASHBOARD_TYPE).properties.panels.items = {
    if: { type: "object", properties: { type: { const: "row" } }, required: ["type"] },
    then: { $ref: "#/definitions/RowPanel" },
    else: { $ref: "#/definitions/Panel" },
  };
  return schema;
}

function relaxPanels(schema) {
  // 6
  const dropRequired = (node) => {
    if (Array.isArray(node)) node.forEach(dropRequired);
    else if (node && typeof node === "object") {
      delete node.required;
      Object.values(node).forEach(dropRequired);
    }
  };
  dropRequired(schema);
  const plugins = mustHave(schema.definitions, "PanelCfg").properties;
  // 7
  const footer = plugins.table?.properties.options.properties.footer;
  if (!footer?.properties?.fields) throw new Error("@grafana/schema: table footer.fields not found");
  footer.properties.fields = { anyOf: [footer.properties.fields, { type: "string" }] };
  return plugins;
}

// --- RULES: "current Grafana" forms the types cannot express --------------------------------
//
// Every dashboard a current Grafana saves follows these; grafanalib's defaults break most.
//
// 1. `schemaVersion` >= 39: what Grafana 10.3 and later write (11.x writes 39 to 41).
//    grafanalib's default is 12.
// 2. No top-level `rows` array: the pre-5.0 layout. Rows are `"type": "row"` panels in
//    `panels`.
// 3. No Angular-only panel types (`graph`, `singlestat`, `table-old`, the old pie chart and
//    world map plugins): Angular support is deprecated in 11 and removed in 12.
// 4. Every `datasource` (dashboard panels, row panels, targets, variables, annotations) is
//    a reference object `{type, uid}`, never a data source name string (the pre-8.3 form)
//    nor null. The type says so for panels; targets are untyped there, hence the rule.
// 5. Every panel, also inside rows, has a `gridPos` (Grafana writes one for each panel;
//    without it a panel has no place in the grid).
// 6. Panel ids are unique in the dashboard (the type's own doc for `id`).
// 7. Thresholds (in `fieldConfig.defaults` and in `thresholds` overrides): the first step
//    has `value` null or absent (it stands for -Infinity, per the type's doc), every later
//    step a number, in increasing order.
// 8. Every target has a string `refId`, unique within its panel.

const MIN_SCHEMA_VERSION = 39;
const LEGACY_PANEL_TYPES = new Set([
  "graph",
  "singlestat",
  "table-old",
  "grafana-piechart-panel",
  "grafana-worldmap-panel",
]);

function* walkPanels(dashboard) {
  const top = Array.isArray(dashboard.panels) ? dashboard.panels : [];
  for (const [i, panel] of top.entries()) {
    yield [panel, `/panels/${i}`];
    if (panel && Array.isArray(panel.panels)) {
      for (const [j, inner] of panel.panels.entries()) yield [inner, `/panels/${i}/panels/${j}`];
    }
  }
}

function checkDatasource(value, where, errors) {
  if (value === undefined) return;
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    errors.push([where, `datasource must be a reference object {"type": ..., "uid": ...}, got ${JSON.stringify(value)}`]);
  }
}

function checkThresholds(thresholds, where, errors) {
  if (!thresholds || typeof thresholds !== "object" || !Array.isArray(thresholds.steps)) return;
  let previous = -Infinity;
  thresholds.steps.forEach((step, k) => {
    const at = `${where}/steps/${k}/value`;
    const value = step?.value;
    if (k === 0) {
      if (value !== null && value !== undefined) {
        errors.push([at, `the first threshold step stands for -Infinity: value must be null or absent, got ${JSON.stringify(value)}`]);
      }
    } else if (typeof value !== "number") {
      errors.push([at, `threshold value must be a number, got ${JSON.stringify(value)}`]);
    } else {
      if (value < previous) errors.push([at, `threshold steps must increase (${value} after ${previous})`]);
      previous = value;
    }
  });
}

function currentGrafanaRules(dashboard) {
  const errors = [];
  // 1
  if (typeof dashboard.schemaVersion === "number" && dashboard.schemaVersion < MIN_SCHEMA_VERSION) {
    errors.push(["/schemaVersion", `schemaVersion ${dashboard.schemaVersion} is legacy: current Grafana writes ${MIN_SCHEMA_VERSION} or later`]);
  }
  // 2
  if ("rows" in dashboard) {
    errors.push(["/rows", 'legacy `rows` layout: put row panels ("type": "row") in `panels`']);
  }
  const ids = new Map();
  for (const [panel, where] of walkPanels(dashboard)) {
    if (!panel || typeof panel !== "object") continue;
    // 3
    if (LEGACY_PANEL_TYPES.has(panel.type)) {
      errors.push([`${where}/type`, `legacy Angular panel type "${panel.type}" (use timeseries, stat, table, piechart, geomap)`]);
    }
    // 4
    checkDatasource(panel.datasource, `${where}/datasource`, errors);
    // 5
    if (!panel.gridPos) errors.push([where, "panel has no gridPos"]);
    // 6
    if (panel.id !== undefined && panel.id !== null) {
      if (ids.has(panel.id)) errors.push([`${where}/id`, `panel id ${panel.id} is also used at ${ids.get(panel.id)}`]);
      else ids.set(panel.id, where);
    }
    // 7
    const fieldConfig = panel.fieldConfig ?? {};
    checkThresholds(fieldConfig.defaults?.thresholds, `${where}/fieldConfig/defaults/thresholds`, errors);
    (Array.isArray(fieldConfig.overrides) ? fieldConfig.overrides : []).forEach((override, o) => {
      (Array.isArray(override?.properties) ? override.properties : []).forEach((prop, p) => {
        if (prop?.id === "thresholds") {
          checkThresholds(prop.value, `${where}/fieldConfig/overrides/${o}/properties/${p}/value`, errors);
        }
      });
    });
    // 4 and 8
    const refIds = new Set();
    (Array.isArray(panel.targets) ? panel.targets : []).forEach((target, t) => {
      const at = `${where}/targets/${t}`;
      if (!target || typeof target !== "object") return;
      checkDatasource(target.datasource, `${at}/datasource`, errors);
      if (typeof target.refId !== "string" || target.refId === "") errors.push([at, "target has no refId"]);
      else if (refIds.has(target.refId)) errors.push([`${at}/refId`, `refId "${target.refId}" is used twice in this panel`]);
      else refIds.add(target.refId);
    });
  }
  // 4
  (Array.isArray(dashboard.templating?.list) ? dashboard.templating.list : []).forEach((variable, v) => {
    checkDatasource(variable?.datasource, `/templating/list/${v}/datasource`, errors);
  });
  (Array.isArray(dashboard.annotations?.list) ? dashboard.annotations.list : []).forEach((annotation, a) => {
    checkDatasource(annotation?.datasource, `/annotations/list/${a}/datasource`, errors);
  });
  return errors;
}

// --- checking and reporting ----------------------------------------------------------------

function schemaErrors(validate, document, prefix, root) {
  if (validate(document)) return [];
  const lines = new Map();
  for (const e of validate.errors ?? []) {
    // "must match then/else schema" only repeats the errors of the branch itself.
    if (e.keyword === "if") continue;
    let message = e.message ?? e.keyword;
    if (e.keyword === "enum") message += `: ${e.params.allowedValues.map((v) => JSON.stringify(v)).join(", ")}`;
    if (e.keyword === "const") message += `: ${JSON.stringify(e.params.allowedValue)}`;
    if (e.keyword === "type") message += `, got ${shortJson(valueAt(document, e.instancePath))}`;
    const where = `${prefix}${e.instancePath}`;
    lines.set(`${where}\u0000${message}`, [where, `${message} (${root}${e.schemaPath.slice(1)})`]);
  }
  return [...lines.values()];
}

function valueAt(document, pointer) {
  let node = document;
  for (const part of pointer.split("/").slice(1)) node = node?.[part.replaceAll("~1", "/").replaceAll("~0", "~")];
  return node;
}

function shortJson(value) {
  const text = JSON.stringify(value) ?? "undefined";
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function checkDashboard(dashboard, validators) {
  if (!dashboard || typeof dashboard !== "object" || Array.isArray(dashboard)) {
    return [["", "a dashboard must be a JSON object"]];
  }
  const errors = schemaErrors(validators.dashboard, dashboard, "", DASHBOARD_TYPE);
  for (const [panel, where] of walkPanels(dashboard)) {
    const plugin = validators.panels[panel?.type];
    if (!plugin) continue;
    const name = PANEL_PLUGINS[panel.type][1];
    if (panel.options !== undefined) {
      errors.push(...schemaErrors(plugin.options, panel.options, `${where}/options`, `${name} Options`));
    }
    const custom = panel.fieldConfig?.defaults?.custom;
    if (plugin.custom && custom !== undefined) {
      errors.push(...schemaErrors(plugin.custom, custom, `${where}/fieldConfig/defaults/custom`, `${name} FieldConfig`));
    }
  }
  return [...errors, ...currentGrafanaRules(dashboard)];
}

async function main(argv) {
  const files = [];
  let emitSchema = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--emit-schema") {
      emitSchema = argv[++i];
      if (!emitSchema) return usage("--emit-schema needs a file");
    } else if (argv[i] === "-h" || argv[i] === "--help") {
      return usage(null);
    } else if (argv[i].startsWith("--")) {
      return usage(`unknown option ${argv[i]}`);
    } else {
      files.push(argv[i]);
    }
  }
  if (files.length === 0 && !emitSchema) return usage("no dashboard files given");

  const dashboard = relaxDashboard(await dashboardSchema());
  const panels = relaxPanels(await panelSchema());
  if (emitSchema) {
    fs.writeFileSync(emitSchema, `${JSON.stringify({ dashboard, panels }, null, 2)}\n`);
  }
  const ajv = new Ajv({ allErrors: true, strict: false });
  const validators = { dashboard: ajv.compile(dashboard), panels: {} };
  for (const [type, schema] of Object.entries(panels)) {
    validators.panels[type] = {
      options: ajv.compile(schema.properties.options),
      custom: schema.properties.custom ? ajv.compile(schema.properties.custom) : null,
    };
  }

  let failed = 0;
  for (const file of files) {
    let errors;
    try {
      errors = checkDashboard(JSON.parse(fs.readFileSync(file, "utf8")), validators);
    } catch (err) {
      errors = [["", `cannot read a JSON document: ${err.message}`]];
    }
    for (const [where, message] of errors) console.log(`${file}: ${where || "/"}: ${message}`);
    if (errors.length) failed++;
  }
  console.error(
    `dashboard check (@grafana/schema ${packageVersion("@grafana/schema")}): ` +
      `${files.length - failed} passed, ${failed} failed`,
  );
  return failed ? 1 : 0;
}

function usage(problem) {
  const text = "usage: node check.mjs [--emit-schema FILE] DASHBOARD.json...";
  if (problem) {
    console.error(`check.mjs: ${problem}\n${text}`);
    return 2;
  }
  console.log(text);
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
