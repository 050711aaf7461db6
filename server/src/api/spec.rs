//! The OpenAPI document as published (`openapi.json`, `/openapi.json`, `/docs`): poem-openapi's
//! output, made to say exactly what the server does where poem-openapi cannot express it.
//!
//! poem-openapi 5 keys JSON bodies as `application/json; charset=utf-8`, upper-cases response
//! header names, has no `nullable`, and gives every operation the same error responses. Each rewrite below is one step over the generated document, so the code
//! stays the only source: the error sets come from [`ERROR_STATUSES`], the lengths from
//! [`crate::limits`], the error examples from the server's own error type. A missing schema or
//! an operation without error statuses panics, and the unit tests below check that nothing
//! poem-openapi wrote (charset media types, upper-cased headers) is left, so a renamed type
//! cannot silently drop a rewrite.

use serde_json::{Map, Value, json};

use super::{
    idempotency::MAX_KEY_CHARS,
    tasks::{ERROR_STATUSES, KEYED_OPERATIONS},
};
use crate::{
    error::{ApiError, PROBLEM_CONTENT_TYPE},
    limits::{DESCRIPTION_MAX_CHARS, TAG_MAX_CHARS, TAGS_MAX, TITLE_MAX_CHARS},
};

/// Response header names as the server sends them (HTTP names are case-insensitive, generated
/// types are not).
const HEADER_NAMES: [&str; 6] =
    ["ETag", "Link", "Location", "Retry-After", "WWW-Authenticate", "X-Total-Count"];

/// How the document describes the `Idempotency-Key` request header.
const IDEMPOTENCY_KEY: &str = "Makes retrying this request safe. The first request with a key \
runs; its outcome (2xx, 404, 412 or 422) is kept with the key for `IDEMPOTENCY_TTL_SECS` (a \
day by default). The same key with the same request (the same operation on the same task, \
the body compared as JSON with object keys in any order; either path style) runs nothing and \
gets the kept response again, with `Idempotent-Replayed: true`. The same key with a different \
request is a 422; while the first request still runs, a 409 with `Retry-After`. Keys belong to \
the caller: another user's identical key is another key. A structured-field string \
(`\"…\"`) or bare.";

/// poem-openapi's key for `Json<T>` bodies.
const JSON_WITH_CHARSET: &str = "application/json; charset=utf-8";

/// The published document, from poem-openapi's `generated` one.
pub fn publish(generated: &str) -> Value {
    let mut doc: Value = serde_json::from_str(generated).expect("poem-openapi writes JSON");
    for_each_object(&mut doc, &mut |object| {
        rename_key(object, "content", JSON_WITH_CHARSET, "application/json");
        if let Some(Value::Object(headers)) = object.get_mut("headers") {
            for name in HEADER_NAMES {
                let generated = name.to_ascii_uppercase();
                if let Some(header) = headers.remove(&generated) {
                    headers.insert(name.to_owned(), header);
                }
            }
        }
    });
    task_schemas(&mut doc["components"]["schemas"]);
    // One schema for every operation's key, so that generated clients have one key type. No
    // `example`: Swagger UI would fill it in, and every try-out would send the same key.
    doc["components"]["schemas"]["IdempotencyKey"] = json!({
        "type": "string",
        "description": "An `Idempotency-Key`: 1 to 255 characters of `A-Z a-z 0-9 - _ . : ~`, \
                        bare or in double quotes; a new one per user action, e.g. a UUID \
                        (`8e03978e-40d5-43e8-bc93-6894a57f9324`).",
        "maxLength": MAX_KEY_CHARS + 2,
        "pattern": format!("^\"?[A-Za-z0-9._:~-]{{1,{MAX_KEY_CHARS}}}\"?$"),
    });
    flatten_tagged_unions(&mut doc["components"]["schemas"]);
    let paths = doc["paths"].as_object_mut().expect("paths");
    for health in ["/health", "/health/live", "/health/ready"] {
        paths[health]["get"]["security"] = json!([]);
    }
    for (path, item) in paths.iter_mut() {
        for (_, operation) in item.as_object_mut().unwrap() {
            if operation.get("security").is_some_and(|s| s != &json!([])) {
                task_operation(path, operation);
            }
        }
    }
    doc
}

/// Request lengths from [`crate::limits`]; `description` nullable everywhere and always present
/// in a Task; an update needs at least one field.
fn task_schemas(schemas: &mut Value) {
    for name in ["Task", "TaskCreate", "TaskUpdate"] {
        let properties = &mut schemas[name]["properties"];
        assert!(properties.is_object(), "no schema {name}");
        properties["description"]["nullable"] = json!(true);
        if name != "Task" {
            properties["title"]["minLength"] = json!(1);
            properties["title"]["maxLength"] = json!(TITLE_MAX_CHARS);
            properties["description"]["maxLength"] = json!(DESCRIPTION_MAX_CHARS);
        }
    }
    for name in ["Task", "TaskCreate", "TaskUpdate"] {
        let properties = &mut schemas[name]["properties"];
        properties["due_date"]["nullable"] = json!(true);
        if name != "Task" {
            properties["tags"]["nullable"] = json!(true);
            properties["tags"]["maxItems"] = json!(TAGS_MAX);
            properties["tags"]["items"]["minLength"] = json!(1);
            properties["tags"]["items"]["maxLength"] = json!(TAG_MAX_CHARS);
            properties["tags"]["items"]["pattern"] = json!("^[^,]*$");
        }
    }
    let required = schemas["Task"]["required"].as_array_mut().expect("Task.required");
    required.insert(3, json!("description"));
    let after_priority = required.iter().position(|name| name == "priority").expect("priority");
    required.insert(after_priority + 1, json!("due_date"));
    schemas["TaskUpdate"]["minProperties"] = json!(1);
}

/// The error responses this operation can give, each with the problem schema and a real
/// example; and, on create, links to the operations that take the new task.
fn task_operation(path: &str, operation: &mut Value) {
    let id = operation["operationId"].as_str().expect("an operationId").to_owned();
    // `list_user_tasks` has the errors of `list_tasks`, and a 403 (writes have one already: a
    // cross-site cookie write).
    let style_free = id.replacen("_user_", "_", 1);
    let (_, statuses) = ERROR_STATUSES
        .iter()
        .find(|(operation_id, _)| *operation_id == style_free)
        .unwrap_or_else(|| panic!("no error statuses for {id}"));
    let mut statuses = statuses.to_vec();
    if path.contains("{user_id}") && !statuses.contains(&403) {
        statuses.push(403);
        statuses.sort_unstable();
    }
    let responses = operation["responses"].as_object_mut().expect("responses");
    for status in statuses {
        let doc = ApiError::documented(status);
        let headers: Map<String, Value> = doc
            .headers
            .iter()
            .map(|(name, description, required)| {
                let header = json!({"description": description, "required": required, "schema": {"type": "string"}});
                ((*name).to_owned(), header)
            })
            .collect();
        let mut response = json!({
            "description": doc.description,
            "content": {PROBLEM_CONTENT_TYPE: {
                "schema": {"$ref": "#/components/schemas/Problem"},
                "example": doc.example,
            }},
        });
        if !headers.is_empty() {
            response["headers"] = Value::Object(headers);
        }
        responses.insert(status.to_string(), response);
    }
    responses.sort_keys();
    if style_free == "create_task" {
        responses["201"]["links"] = create_links(path.contains("{user_id}"));
    }
    if KEYED_OPERATIONS.contains(&style_free.as_str()) {
        keyed_operation(operation);
    }
}

/// The `Idempotency-Key` header as it is parsed, and the replay marker on every response that
/// may be a kept one.
fn keyed_operation(operation: &mut Value) {
    let parameters = operation["parameters"].as_array_mut().expect("parameters");
    let key = parameters
        .iter_mut()
        .find(|parameter| parameter["name"] == "Idempotency-Key")
        .expect("a keyed operation takes Idempotency-Key");
    key["description"] = json!(IDEMPOTENCY_KEY);
    key["schema"] = json!({"$ref": "#/components/schemas/IdempotencyKey"});
    let replayed = json!({
        "description": "`true` when this is the kept response of an earlier request with the \
                        same `Idempotency-Key`.",
        "required": false,
        "schema": {"type": "string", "enum": ["true"]},
    });
    for (status, response) in operation["responses"].as_object_mut().expect("responses") {
        if status.starts_with('2') || ["404", "412", "422"].contains(&status.as_str()) {
            let headers = response.as_object_mut().expect("a response").entry("headers");
            headers.or_insert_with(|| json!({}))["Idempotent-Replayed"] = replayed.clone();
        }
    }
}

/// poem-openapi writes a union with a discriminator as `anyOf` over `Union_Variant` schemas,
/// each an `allOf` of the tag and the variant. Generated clients read a `oneOf` over inline
/// objects that carry the tag best (progenitor's typify makes a Rust enum tagged by it,
/// openapi-typescript a discriminated union), and so does a validator that refuses
/// undocumented properties: each variant goes inline, with the tag as its first property.
fn flatten_tagged_unions(schemas: &mut Value) {
    let schemas = schemas.as_object_mut().expect("schemas");
    let unions: Vec<String> = schemas
        .iter()
        .filter(|(_, schema)| schema.get("discriminator").is_some())
        .map(|(name, _)| name.clone())
        .collect();
    for union in unions {
        let tag = schemas[&union]["discriminator"]["propertyName"].as_str().unwrap().to_owned();
        let mapping = schemas[&union]["discriminator"]["mapping"].as_object().unwrap().clone();
        let mut variants = Vec::new();
        for (value, wrapper) in mapping {
            let wrapper = wrapper.as_str().unwrap().trim_start_matches("#/components/schemas/");
            let wrapper = schemas.remove(wrapper).expect("the union's variant wrapper");
            let parts = wrapper["allOf"].as_array().expect("a tag and a variant");
            let variant = parts[1]["$ref"].as_str().expect("the variant");
            let name = variant.trim_start_matches("#/components/schemas/");
            let mut schema = schemas.remove(name).expect("the variant's schema");
            let mut properties = Map::new();
            properties.insert(tag.clone(), json!({"type": "string", "enum": [value]}));
            properties.extend(schema["properties"].as_object().unwrap().clone());
            schema["properties"] = Value::Object(properties);
            schema["required"].as_array_mut().unwrap().insert(0, json!(tag));
            variants.push(schema);
        }
        let object = schemas[&union].as_object_mut().unwrap();
        object.remove("anyOf");
        object.remove("type");
        object.insert("oneOf".into(), Value::Array(variants));
        object.insert("discriminator".into(), json!({"propertyName": tag}));
    }
    schemas.sort_keys();
}

/// What a client (or schemathesis' stateful phase) can do next with a created task.
fn create_links(user_path: bool) -> Value {
    let mut links = Map::new();
    let suffix = if user_path { "_user_task" } else { "_task" };
    for verb in ["get", "update", "toggle", "delete"] {
        let mut parameters = json!({"id": "$response.body#/id"});
        if user_path {
            parameters["user_id"] = json!("$response.body#/user_id");
        }
        let name = format!("{}{}Task", verb[..1].to_uppercase(), &verb[1..]);
        let description = format!("The new task, by its `id`: {verb} it.");
        let link = json!({"operationId": format!("{verb}{suffix}"), "parameters": parameters, "description": description});
        links.insert(name, link);
    }
    Value::Object(links)
}

fn rename_key(object: &mut Map<String, Value>, field: &str, from: &str, to: &str) {
    if let Some(Value::Object(inner)) = object.get_mut(field)
        && let Some(value) = inner.remove(from)
    {
        inner.insert(to.to_owned(), value);
    }
}

fn for_each_object(value: &mut Value, visit: &mut impl FnMut(&mut Map<String, Value>)) {
    match value {
        Value::Object(object) => {
            visit(object);
            for (_, child) in object.iter_mut() {
                for_each_object(child, visit);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| for_each_object(item, visit)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::limits::{DESCRIPTION_MAX_CHARS, LIST_LIMIT_MAX, MAX_BODY_BYTES, TITLE_MAX_CHARS};

    fn document() -> Value {
        serde_json::from_str(&super::super::openapi_json()).unwrap()
    }

    /// Every number in the document comes from `limits`.
    #[test]
    fn the_documented_limits_are_the_enforced_ones() {
        let doc = document();
        for schema in ["TaskCreate", "TaskUpdate"] {
            let properties = &doc["components"]["schemas"][schema]["properties"];
            assert_eq!(properties["title"]["maxLength"], TITLE_MAX_CHARS, "{schema}");
            assert_eq!(properties["description"]["maxLength"], DESCRIPTION_MAX_CHARS, "{schema}");
        }
        let list = &doc["paths"]["/api/tasks"]["get"];
        let limit = list["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "limit");
        assert_eq!(limit.unwrap()["schema"]["maximum"], LIST_LIMIT_MAX as f64);
        let too_large = &doc["paths"]["/api/tasks"]["post"]["responses"]["413"]["description"];
        assert!(too_large.as_str().unwrap().contains(&MAX_BODY_BYTES.to_string()));
    }

    /// Swagger UI fills a parameter's example into its field: a key with one would be sent by
    /// every try-out, the same key for different requests.
    #[test]
    fn the_idempotency_key_has_no_example() {
        let doc = document();
        let key = &doc["components"]["schemas"]["IdempotencyKey"];
        assert!(key.is_object() && key.get("example").is_none());
        let header = doc["paths"]["/api/tasks"]["post"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == "Idempotency-Key")
            .cloned()
            .unwrap();
        assert!(header.get("example").is_none() && header["schema"].get("example").is_none());
    }

    #[test]
    fn nothing_generated_is_left_behind() {
        let text = super::super::openapi_json();
        assert!(!text.contains("charset=utf-8"));
        for upper in ["X-TOTAL-COUNT", "ETAG", "LINK", "LOCATION", "RETRY-AFTER"] {
            assert!(!text.contains(&format!("\"{upper}\"")), "{upper}");
        }
        assert_eq!(document()["servers"][0]["url"], "/");
    }

    #[test]
    fn each_operation_lists_only_its_own_errors() {
        let doc = document();
        let statuses = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["responses"].as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(
            statuses("/api/tasks", "get"),
            ["200", "400", "401", "422", "429", "500", "503"]
        );
        assert_eq!(
            statuses("/api/{user_id}/tasks/{id}", "delete"),
            ["204", "400", "401", "403", "404", "409", "412", "422", "429", "500", "503"]
        );
        assert_eq!(
            statuses("/api/tasks/changes", "get"),
            ["200", "400", "401", "410", "422", "429", "500", "503"]
        );
        assert_eq!(
            statuses("/api/{user_id}/tasks/events", "get"),
            ["200", "400", "401", "403", "429", "500", "503"]
        );
        assert_eq!(statuses("/health", "get"), ["200", "503"]);
        let problem = &doc["paths"]["/api/tasks/{id}"]["put"]["responses"]["422"];
        assert_eq!(problem["content"]["application/problem+json"]["example"]["status"], 422);
    }
}
