//! Holds every response of every test server to `openapi.json`, independently of the client
//! generated from it: is the status declared for that operation, is the content type the
//! declared one, are the declared headers there, does the body match the declared schema.
//!
//! OpenAPI 3.0 schemas are not quite JSON Schema, so they are translated for the validator
//! (`jsonschema`, draft 2020-12): `nullable: true` becomes a `null` alternative, and objects
//! refuse properties the document does not list, so that an undocumented field is caught too.
//! A request that is no operation of the document (an unknown route, a method a path does not
//! have, a CORS preflight, `HEAD`) is reported as such: the harness fails the test unless it
//! said it expects them (or it is `/docs`, `/openapi.json` or `/metrics`, which the document
//! does not describe on purpose).

use std::{collections::HashMap, sync::OnceLock};

use jsonschema::Validator;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Map, Value, json};

/// The committed document, as every test server serves it.
const DOCUMENT: &str = include_str!("../../openapi.json");

pub struct Contract {
    operations: Vec<Operation>,
}

struct Operation {
    id: String,
    method: String,
    /// `None` for a `{parameter}` segment.
    segments: Vec<Option<String>>,
    responses: HashMap<String, Response>,
}

struct Response {
    /// Media type → the body's validator.
    content: HashMap<String, Validator>,
    required_headers: Vec<String>,
}

impl Contract {
    /// The contract of the committed `openapi.json`, compiled once per test binary.
    pub fn get() -> &'static Contract {
        static CONTRACT: OnceLock<Contract> = OnceLock::new();
        CONTRACT.get_or_init(|| Contract::new(DOCUMENT).expect("openapi.json compiles"))
    }

    pub fn new(document: &str) -> Result<Self, String> {
        let document: Value = serde_json::from_str(document).map_err(|e| e.to_string())?;
        let schemas = translate(&document["components"]["schemas"]);
        let mut operations = Vec::new();
        for (path, item) in document["paths"].as_object().ok_or("no paths")? {
            for (method, operation) in item.as_object().ok_or("a path item is no object")? {
                let id = operation["operationId"].as_str().unwrap_or(method).to_owned();
                let mut responses = HashMap::new();
                for (status, response) in operation["responses"].as_object().ok_or("responses")? {
                    responses.insert(status.clone(), compile_response(response, &schemas)?);
                }
                let segments = path
                    .split('/')
                    .skip(1)
                    .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
                    .collect();
                operations.push(Operation {
                    id,
                    method: method.to_ascii_uppercase(),
                    segments,
                    responses,
                });
            }
        }
        Ok(Self { operations })
    }

    /// Checks one response to `method path`; `Ok(false)` when the request is no operation.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<bool, String> {
        let Some(operation) = self.operation(method, path) else { return Ok(false) };
        let id = &operation.id;
        let declared = operation
            .responses
            .get(&status.to_string())
            .or_else(|| operation.responses.get("default"))
            .ok_or_else(|| format!("{id}: status {status} is not declared"))?;
        for name in &declared.required_headers {
            if !headers.contains_key(name.as_str()) {
                return Err(format!("{id} {status}: the declared header {name} is missing"));
            }
        }
        if declared.content.is_empty() {
            return match body.is_empty() {
                true => Ok(true),
                false => Err(format!("{id} {status}: a body where none is declared")),
            };
        }
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
            .ok_or_else(|| format!("{id} {status}: no Content-Type"))?;
        let validator = declared.content.get(&content_type).ok_or_else(|| {
            format!("{id} {status}: Content-Type {content_type} is not a declared one")
        })?;
        if content_type == "text/event-stream" {
            return check_events(validator, body).map(|()| true).map_err(|e| format!("{id}: {e}"));
        }
        let body: Value = serde_json::from_slice(body)
            .map_err(|err| format!("{id} {status}: the body is not JSON: {err}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        match errors.is_empty() {
            true => Ok(true),
            false => Err(format!("{id} {status}: the body breaks the schema: {errors:?}: {body}")),
        }
    }

    /// The operation `method path` is, routed as poem routes: the path first, preferring
    /// literal segments to parameters (so that `/api/tasks/tasks` is the task `tasks`), then the
    /// method (so that `PUT /api/tasks/changes` is a 405 of the `changes` path, not an update).
    fn operation(&self, method: &str, path: &str) -> Option<&Operation> {
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let literals = |op: &Operation| op.segments.iter().map(Option::is_some).collect::<Vec<_>>();
        let matching: Vec<&Operation> = self
            .operations
            .iter()
            .filter(|op| op.segments.len() == segments.len())
            .filter(|op| {
                op.segments.iter().zip(&segments).all(|(template, segment)| match template {
                    Some(literal) => literal == segment,
                    None => !segment.is_empty(),
                })
            })
            .collect();
        let route = matching.iter().map(|op| literals(op)).max()?;
        matching.into_iter().find(|op| literals(op) == route && op.method == method)
    }
}

/// Events of a `text/event-stream` (whole ones; comments pass): `upsert` and `delete` carry an
/// `id` and one item of the declared array as `data`; `resync` carries `{}`; nothing else.
fn check_events(validator: &Validator, text: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(text).map_err(|_| "an event that is not UTF-8".to_owned())?;
    for block in text.split("\n\n").filter(|block| !block.trim().is_empty()) {
        let field =
            |name: &str| block.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(": "));
        if block.lines().all(|line| line.starts_with(':')) {
            continue;
        }
        let data = field("data").ok_or_else(|| format!("an event without data: {block:?}"))?;
        let data: Value = serde_json::from_str(data)
            .map_err(|err| format!("an event whose data is not JSON ({err}): {block:?}"))?;
        match field("event") {
            Some("resync") if data == json!({}) => {}
            Some("upsert" | "delete") if field("id").is_some() => {
                let errors: Vec<String> =
                    validator.iter_errors(&json!([data])).map(|e| e.to_string()).collect();
                if !errors.is_empty() {
                    return Err(format!("an event breaks the schema: {errors:?}: {block:?}"));
                }
            }
            _ => return Err(format!("an event of no declared kind, or without id: {block:?}")),
        }
    }
    Ok(())
}

fn compile_response(response: &Value, schemas: &Value) -> Result<Response, String> {
    let mut content = HashMap::new();
    for (media_type, media) in response["content"].as_object().into_iter().flatten() {
        let mut schema = translate(&media["schema"]);
        schema["components"] = json!({ "schemas": schemas });
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|err| format!("the schema for {media_type}: {err}"))?;
        content.insert(media_type.clone(), validator);
    }
    let required_headers = response["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, header)| header["required"] == true)
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    Ok(Response { content, required_headers })
}

/// OpenAPI 3.0 schema → JSON Schema: `nullable` as a `null` alternative, and no properties
/// beyond the listed ones.
fn translate(schema: &Value) -> Value {
    match schema {
        Value::Object(object) => {
            let mut out: Map<String, Value> =
                object.iter().map(|(key, value)| (key.clone(), translate(value))).collect();
            if out.contains_key("properties") && !out.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), json!(false));
            }
            if out.remove("nullable") == Some(json!(true)) {
                return match out.get("type").cloned() {
                    Some(Value::String(ty)) => {
                        out.insert("type".into(), json!([ty, "null"]));
                        Value::Object(out)
                    }
                    _ => json!({ "anyOf": [Value::Object(out), { "type": "null" }] }),
                };
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(translate).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::Contract;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_str(v).unwrap())).collect()
    }

    fn task() -> serde_json::Value {
        json!({"id": 1, "user_id": "alice", "title": "t", "description": null, "completed": false,
               "priority": "medium", "due_date": null, "tags": [],
               "created_at": "2026-01-09T10:00:00.123456Z", "updated_at": "2026-01-09T10:00:00.123456Z"})
    }

    fn check(status: u16, headers: &HeaderMap, body: &serde_json::Value) -> Result<bool, String> {
        let body = serde_json::to_vec(body).unwrap();
        Contract::get().check("GET", "/api/tasks/1", status, headers, &body)
    }

    #[test]
    fn accepts_what_the_document_declares() {
        let ok = headers(&[("content-type", "application/json; charset=utf-8"), ("etag", "\"1\"")]);
        assert!(check(200, &ok, &task()).unwrap());
        let problem = json!({"type": "about:blank", "title": "Not Found", "status": 404, "detail": "task not found"});
        check(404, &headers(&[("content-type", "application/problem+json")]), &problem).unwrap();
        // No operation: said so.
        let docs = Contract::get().check("GET", "/docs", 200, &HeaderMap::new(), b"<html>");
        assert!(!docs.unwrap());
        let head = Contract::get().check("HEAD", "/api/tasks", 200, &HeaderMap::new(), b"");
        assert!(!head.unwrap());
        let slash = Contract::get().check("GET", "/api/tasks/", 404, &HeaderMap::new(), b"");
        assert!(!slash.unwrap(), "a trailing slash is no operation");
        let put = Contract::get().check("PUT", "/api/tasks/changes", 405, &HeaderMap::new(), b"");
        assert!(!put.unwrap(), "routed by path first: the feed's path has no PUT");
    }

    #[test]
    fn fails_on_a_known_bad_response() {
        let ok = headers(&[("content-type", "application/json"), ("etag", "\"1\"")]);
        let mut null_title = task();
        null_title["title"] = json!(null);
        assert!(check(200, &ok, &null_title).unwrap_err().contains("schema"), "null where string");
        let mut no_description = task();
        no_description.as_object_mut().unwrap().remove("description");
        assert!(check(200, &ok, &no_description).is_err(), "description is required");
        let mut extra = task();
        extra["secret"] = json!("x");
        assert!(check(200, &ok, &extra).is_err(), "an undocumented field");
        let mut bad_time = task();
        bad_time["created_at"] = json!("yesterday");
        assert!(check(200, &ok, &bad_time).is_err(), "date-time format");
        assert!(check(418, &ok, &task()).unwrap_err().contains("not declared"));
        assert!(check(200, &headers(&[("content-type", "application/json")]), &task()).is_err());
        let text = headers(&[("content-type", "text/plain"), ("etag", "\"1\"")]);
        assert!(check(200, &text, &task()).is_err(), "content type");
        // 403 is not an answer of the `/api/tasks…` style.
        let problem =
            json!({"type": "about:blank", "title": "Forbidden", "status": 403, "detail": "x"});
        assert!(
            check(403, &headers(&[("content-type", "application/problem+json")]), &problem)
                .is_err()
        );
    }
}
