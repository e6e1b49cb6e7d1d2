//! The OpenAPI 3.1 document of the HTTP/JSON access (`GET /openapi.json`), generated from the
//! routes this access serves, so from the same contracts: every call a browser or an HTTP
//! client may make, its request and answer as the proto3 JSON mapping writes them (field names
//! in lowerCamelCase, 64-bit integers as strings, enums by name), who may call it, and the
//! error body. A front-end developer generates a client from it; nothing is written by hand.

use std::collections::BTreeMap;

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use crate::Routes;

/// The document of `routes`; the calls of `admin_service` (the admin API) are the ops
/// credential's.
pub(crate) fn document(routes: &Routes, admin_service: Option<&str>) -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths = serde_json::Map::new();
    for route in routes.iter() {
        let admin = Some(route.contract.service) == admin_service;
        let input = reference(&route.input, &mut schemas);
        let output = reference(&route.output, &mut schemas);
        let answer = if route.streams() {
            json!({
                "description": format!(
                    "server-sent events: a `message` event per {} (its JSON), then `end` or `error`",
                    route.output.full_name()
                ),
                "content": { "text/event-stream": { "schema": { "type": "string" } } },
            })
        } else {
            json!({
                "description": route.output.full_name(),
                "content": { "application/json": { "schema": output } },
            })
        };
        let security: Vec<Value> = if admin {
            vec![json!({ "opsToken": [] })]
        } else {
            route
                .method
                .audience
                .names()
                .into_iter()
                .filter_map(|who| match who {
                    "USER" => Some(json!({ "userToken": [] })),
                    "BACKEND" => Some(json!({ "backendToken": [] })),
                    _ => None,
                })
                .collect()
        };
        let mut parameters = vec![json!({
            "name": "x-mesh-timeout-ms", "in": "header", "required": false,
            "description": "shortens the contract's deadline, never lengthens it",
            "schema": { "type": "integer", "minimum": 1 },
        })];
        if !admin {
            parameters.insert(
                0,
                json!({
                    "name": "x-mesh-tenant", "in": "header", "required": true,
                    "description": "the business line called as",
                    "schema": { "type": "string" },
                }),
            );
        }
        let operation = json!({
            "operationId": format!("{}.{}", route.contract.service, route.method.name),
            "summary": format!(
                "{} (gRPC {}; tier {}; deadline {} ms)",
                route.method.name,
                route.method.path,
                route.contract.tier.get(),
                route.method.timeout.as_millis()
            ),
            "tags": [route.contract.service],
            "parameters": parameters,
            "requestBody": {
                "required": true,
                "content": { "application/json": { "schema": input } },
            },
            "responses": {
                "200": answer,
                "default": {
                    "description": "the call's gRPC status as its HTTP status, and why",
                    "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/Error" },
                    } },
                },
            },
            "security": security,
        });
        paths.insert(route.http_path.clone(), json!({ "post": operation }));
    }
    let mut components: serde_json::Map<String, Value> = schemas.into_iter().collect();
    components.insert(
        "Error".into(),
        json!({
            "type": "object",
            "properties": { "error": {
                "type": "object",
                "properties": {
                    "code": { "type": "integer", "description": "the HTTP status" },
                    "status": { "type": "string", "description": "the gRPC status name" },
                    "message": { "type": "string" },
                },
            } },
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "The mesh's HTTP/JSON access",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every contract call as POST /<contract>/v<major>/<Method> with its \
                request message as JSON (the proto3 JSON mapping); errors as the gRPC status's \
                HTTP status and a JSON body. Generated from the contracts.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "userToken": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "an end user's token, which its business line's account system issued" },
                "backendToken": { "type": "apiKey", "in": "header", "name": "x-mesh-token",
                    "description": "the business line's backend credential" },
                "opsToken": { "type": "http", "scheme": "bearer",
                    "description": "an ops credential (the admin API)" },
            },
        },
    })
}

/// A `$ref` to `message`'s schema, added (with every message it holds) to `schemas`.
fn reference(message: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    let name = message.full_name().to_owned();
    if name == "google.protobuf.Empty" {
        return json!({ "type": "object" });
    }
    if !schemas.contains_key(&name) {
        // claimed before its fields are walked: a message that holds itself refers to itself
        schemas.insert(name.clone(), Value::Null);
        let properties: serde_json::Map<String, Value> = message
            .fields()
            .map(|field| (field.json_name().to_owned(), field_schema(&field, schemas)))
            .collect();
        schemas.insert(
            name.clone(),
            json!({ "type": "object", "properties": properties }),
        );
    }
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn field_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return json!({ "type": "object" });
        };
        let value = entry.map_entry_value_field();
        return json!({ "type": "object", "additionalProperties": single(&value, schemas) });
    }
    let one = single(field, schemas);
    if field.cardinality() == Cardinality::Repeated {
        json!({ "type": "array", "items": one })
    } else {
        one
    }
}

/// The schema of one value of `field`, as the proto3 JSON mapping writes it.
fn single(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    match field.kind() {
        Kind::Double | Kind::Float => json!({ "type": "number" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({ "type": "integer", "format": "int32" })
        }
        Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "minimum": 0 }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({ "type": "string", "format": "int64" })
        }
        Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
            json!({ "type": "string", "enum": names })
        }
        Kind::Message(m) => reference(&m, schemas),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_every_reference_resolves() {
        let routes = Routes::new(mesh_api::CONTRACTS, mesh_api::FILE_DESCRIPTOR_SET).unwrap();
        let doc = document(&routes, None);
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), routes.iter().count());
        let send = &paths["/message/v1/Send"]["post"];
        assert_eq!(send["operationId"], "message.v1.Message.Send");
        assert_eq!(send["security"][0], json!({ "userToken": [] }));
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let request = &schemas["message.v1.SendRequest"]["properties"];
        assert_eq!(
            request["clientMsgId"]["type"], "string",
            "lowerCamelCase names"
        );
        let chat = &schemas["message.v1.ChatMessage"]["properties"];
        assert_eq!(
            chat["sentAtMs"]["format"], "int64",
            "64-bit integers as strings"
        );
        assert!(
            chat["kind"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json!("MESSAGE_KIND_TEXT"))
        );
        // every $ref names a schema the document has
        let text = doc.to_string();
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but not described"
            );
        }
        assert!(
            !schemas.values().any(Value::is_null),
            "every schema filled in"
        );
    }
}
