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

use super::tasks::ERROR_STATUSES;
use crate::{
    error::{ApiError, PROBLEM_CONTENT_TYPE},
    limits::{DESCRIPTION_MAX_CHARS, TITLE_MAX_CHARS},
};

/// Response header names as the server sends them (HTTP names are case-insensitive, generated
/// types are not).
const HEADER_NAMES: [&str; 6] =
    ["ETag", "Link", "Location", "Retry-After", "WWW-Authenticate", "X-Total-Count"];

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
    let required = schemas["Task"]["required"].as_array_mut().expect("Task.required");
    required.insert(3, json!("description"));
    schemas["TaskUpdate"]["minProperties"] = json!(1);
}

/// The error responses this operation can give, each with the problem schema and a real
/// example; and, on create, links to the operations that take the new task.
fn task_operation(path: &str, operation: &mut Value) {
    let id = operation["operationId"].as_str().expect("an operationId").to_owned();
    // `list_user_tasks` has the errors of `list_tasks`, and a 403.
    let style_free = id.replacen("_user_", "_", 1);
    let (_, statuses) = ERROR_STATUSES
        .iter()
        .find(|(operation_id, _)| *operation_id == style_free)
        .unwrap_or_else(|| panic!("no error statuses for {id}"));
    let mut statuses = statuses.to_vec();
    if path.contains("{user_id}") {
        statuses.push(403);
        statuses.sort_unstable();
    }
    let responses = operation["responses"].as_object_mut().expect("responses");
    for status in statuses {
        let doc = ApiError::documented(status);
        let headers: Map<String, Value> = doc
            .headers
            .iter()
            .map(|(name, description)| {
                let header =
                    json!({"description": description, "required": true, "schema": {"type": "string"}});
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
            ["204", "400", "401", "403", "404", "412", "429", "500", "503"]
        );
        assert_eq!(statuses("/health", "get"), ["200", "503"]);
        let problem = &doc["paths"]["/api/tasks/{id}"]["put"]["responses"]["422"];
        assert_eq!(problem["content"]["application/problem+json"]["example"]["status"], 422);
    }
}
