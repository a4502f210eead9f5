//! The HTTP API reference of the guide (`docs/src/http-api.md`), rendered as
//! Markdown from the OpenAPI document, so that the two cannot drift apart: a
//! test compares the committed chapter with [`markdown`]'s output.

use std::fmt::Write;

use serde_json::Value;
use utoipa::OpenApi;

use crate::docs::ApiDoc;

/// The HTTP methods in the order the reference lists them.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The reference chapter: every operation, grouped by tag, with its
/// credential, parameters, body fields (with the limits the API enforces)
/// and responses.
pub fn markdown() -> String {
    let doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document is JSON");
    let mut out = String::new();
    let _ = writeln!(out, "# HTTP API reference of the demo\n");
    let _ = writeln!(
        out,
        "<!-- Generated from the demo's OpenAPI document: do not edit. After changing \
         the API, run\n     HIDRA_BLESS=1 cargo test -p hidra-demo --test api_reference -->\n"
    );
    let _ = writeln!(out, "{}\n", text(&doc["info"]["description"]));
    let _ = writeln!(
        out,
        "The running demo serves the same document at `/docs/openapi.json` and \
         renders it at `/docs`. Limits below are enforced by the API: a request \
         outside them gets `422 validation_failed` naming the field. Errors have \
         the body `{{\"error\": \"<code>\", \"message\": \"…\"}}`.\n"
    );
    for tag in doc["tags"].as_array().into_iter().flatten() {
        let name = text(&tag["name"]);
        let _ = writeln!(out, "## {name}\n\n{}\n", text(&tag["description"]));
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in METHODS {
                let op = &item[method];
                let tagged = op["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t.as_str() == Some(name.as_str())));
                if tagged {
                    operation(&mut out, &doc, method, path, op);
                }
            }
        }
    }
    out
}

fn operation(out: &mut String, doc: &Value, method: &str, path: &str, op: &Value) {
    let _ = writeln!(out, "### `{} {path}`\n", method.to_uppercase());
    let summary = [&op["summary"], &op["description"]]
        .into_iter()
        .map(text)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n");
    if !summary.is_empty() {
        let _ = writeln!(out, "{summary}\n");
    }
    let schemes: Vec<String> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_object())
        .flat_map(|s| s.keys().cloned())
        .collect();
    let credential = match schemes.as_slice() {
        [] => "none".to_owned(),
        s => s
            .iter()
            .map(|s| match s.as_str() {
                "bearer" => "a user's token (`Authorization: Bearer …`)".to_owned(),
                "api_key" => "an API key (`X-API-Key: hk_…`)".to_owned(),
                "admin_token" => "the operator token (`Authorization: Bearer …`)".to_owned(),
                other => format!("`{other}`"),
            })
            .collect::<Vec<_>>()
            .join(" or "),
    };
    let _ = writeln!(out, "Credential: {credential}.\n");

    let params = op["parameters"].as_array().cloned().unwrap_or_default();
    if !params.is_empty() {
        let _ = writeln!(
            out,
            "| parameter | in | type | required | limits | description |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for p in &params {
            let schema = resolve(doc, &p["schema"]);
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} |",
                text(&p["name"]),
                text(&p["in"]),
                type_of(doc, &schema),
                yes_no(p["required"].as_bool().unwrap_or(false)),
                cell(&limits(&schema)),
                cell(&text(&p["description"])),
            );
        }
        let _ = writeln!(out);
    }

    let body = &op["requestBody"]["content"]["application/json"]["schema"];
    if !body.is_null() {
        let schema = resolve(doc, body);
        let _ = writeln!(out, "Body (JSON, `{}`):\n", schema_name(body));
        fields(out, doc, &schema);
        // The objects inside it, such as an order's items.
        for (name, field) in schema["properties"].as_object().into_iter().flatten() {
            let inner = if field["type"] == "array" {
                &field["items"]
            } else {
                field
            };
            if inner["$ref"].is_string() {
                let _ = writeln!(out, "`{name}` (`{}`):\n", schema_name(inner));
                fields(out, doc, &resolve(doc, inner));
            }
        }
    }

    let _ = writeln!(out, "Responses:\n");
    for (status, response) in op["responses"].as_object().into_iter().flatten() {
        let schema = &response["content"]["application/json"]["schema"];
        let body = if schema.is_null() {
            String::new()
        } else {
            format!(" (`{}`)", schema_name(schema))
        };
        let description = text(&response["description"]);
        let description = description.trim();
        let sep = if description.is_empty() { "" } else { ": " };
        let _ = writeln!(out, "- `{status}`{body}{sep}{description}");
    }
    let _ = writeln!(out);
}

/// The fields table of an object schema.
fn fields(out: &mut String, doc: &Value, schema: &Value) {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let _ = writeln!(out, "| field | type | required | limits | description |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (name, field) in schema["properties"].as_object().into_iter().flatten() {
        let field = resolve(doc, field);
        let _ = writeln!(
            out,
            "| `{name}` | {} | {} | {} | {} |",
            type_of(doc, &field),
            yes_no(required.contains(&name.as_str())),
            cell(&limits(&field)),
            cell(&text(&field["description"])),
        );
    }
    let _ = writeln!(out);
}

/// A schema with its `$ref` (or a one-branch `oneOf`/`allOf` around one)
/// followed, keeping the outer description and limits.
fn resolve(doc: &Value, schema: &Value) -> Value {
    let mut resolved = schema.clone();
    for wrapper in ["oneOf", "allOf"] {
        if let Some(inner) = schema[wrapper]
            .as_array()
            .and_then(|v| v.iter().find(|s| s["type"] != "null"))
        {
            resolved = merge(resolve(doc, inner), schema);
        }
    }
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        resolved = merge(doc["components"]["schemas"][name].clone(), schema);
    }
    resolved
}

fn merge(mut target: Value, outer: &Value) -> Value {
    if let (Some(t), Some(o)) = (target.as_object_mut(), outer.as_object()) {
        for (k, v) in o {
            if !matches!(k.as_str(), "$ref" | "oneOf" | "allOf") {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    target
}

fn schema_name(schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        return r.rsplit('/').next().unwrap_or_default().to_owned();
    }
    if schema["type"] == "array" {
        return format!("{}[]", schema_name(&schema["items"]));
    }
    text(&schema["type"])
}

fn type_of(doc: &Value, schema: &Value) -> String {
    let types: Vec<String> = match &schema["type"] {
        Value::Array(t) => t.iter().map(text).filter(|t| t != "null").collect(),
        Value::String(t) => vec![t.clone()],
        _ if schema["$ref"].is_string() => vec![schema_name(schema)],
        _ => Vec::new(),
    };
    let mut out = types.join(" or ");
    if out == "array" {
        let item = resolve(doc, &schema["items"]);
        let item = if schema["items"]["$ref"].is_string() {
            schema_name(&schema["items"])
        } else {
            type_of(doc, &item)
        };
        out = format!("array of {item}");
    }
    if let Some(format) = schema["format"].as_str() {
        out = format!("{out} ({format})");
    }
    if out.is_empty() { "any".into() } else { out }
}

/// The limits a schema states, as one cell.
fn limits(schema: &Value) -> String {
    let mut parts = Vec::new();
    let num = |k: &str| schema[k].as_f64().map(|v| v.to_string());
    match (num("minLength"), num("maxLength")) {
        (Some(a), Some(b)) => parts.push(format!("{a}–{b} characters")),
        (Some(a), None) => parts.push(format!("at least {a} characters")),
        (None, Some(b)) => parts.push(format!("at most {b} characters")),
        (None, None) => {}
    }
    match (num("minimum"), num("maximum")) {
        (Some(a), Some(b)) => parts.push(format!("{a}–{b}")),
        (Some(a), None) => parts.push(format!("≥ {a}")),
        (None, Some(b)) => parts.push(format!("≤ {b}")),
        (None, None) => {}
    }
    if let Some(n) = num("minItems") {
        parts.push(format!("at least {n} item(s)"));
    }
    if let Some(p) = schema["pattern"].as_str() {
        parts.push(format!("matches `{p}`"));
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", text(v))).collect();
        parts.push(format!("one of {}", values.join(", ")));
    }
    parts.join("; ")
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Text fit for a table cell: one line, no column breaks.
fn cell(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}
