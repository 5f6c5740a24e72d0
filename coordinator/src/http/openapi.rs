//! The OpenAPI 3.1 document of the client and mesh APIs (`docs/openapi.json`, maintained
//! beside the wire types in `quarry_api::http`), served at `GET /api/v2/openapi.json`. The
//! tests here keep it and the routers of `routes.rs` in step.
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, as committed under `docs/`.
pub const DOCUMENT: &str = include_str!("../../../docs/openapi.json");

/// `GET /api/v2/openapi.json`.
pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

/// `(api, path, method)` of every operation in the document; `api` is a tag (`client` or
/// `mesh`), `method` upper case.
pub fn documented_operations() -> Result<Vec<(String, String, String)>, String> {
    let doc: serde_json::Value =
        serde_json::from_str(DOCUMENT).map_err(|e| format!("docs/openapi.json: {e}"))?;
    let paths = doc["paths"]
        .as_object()
        .ok_or("docs/openapi.json has no paths")?;
    let mut out = Vec::new();
    for (path, item) in paths {
        let item = item.as_object().ok_or("a path item is not an object")?;
        for (method, op) in item {
            for tag in op["tags"].as_array().into_iter().flatten() {
                let api = tag.as_str().ok_or("a tag is not a string")?;
                out.push((api.to_string(), path.clone(), method.to_uppercase()));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `(api, path, method)` of every `.route(…)` in `routes.rs`, read from its source.
    fn registered_routes() -> BTreeSet<(String, String, String)> {
        let src = include_str!("routes.rs");
        let mut out = BTreeSet::new();
        for (api, start) in [
            ("client", "pub fn client_router"),
            ("mesh", "pub fn mesh_router"),
        ] {
            let begin = src.find(start).expect("router function");
            let body = &src[begin..];
            let end = body
                .find("serve(routes,")
                .expect("router ends by serving its routes");
            let body = &body[..end];
            let mut rest = body;
            while let Some(i) = rest.find(".route(") {
                let call = &rest[i + ".route(".len()..];
                // The call runs to its matching parenthesis.
                let mut depth = 1;
                let mut len = 0;
                for (j, c) in call.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        len = j;
                        break;
                    }
                }
                let call = &call[..len];
                let q1 = call.find('"').expect("route path literal");
                let q2 = q1 + 1 + call[q1 + 1..].find('"').expect("closing quote");
                let path = &call[q1 + 1..q2];
                let handlers = &call[q2 + 1..];
                for method in ["get", "post", "put", "delete", "patch"] {
                    let pat = format!("{method}(");
                    let found = handlers.match_indices(&pat).any(|(k, _)| {
                        k == 0
                            || !handlers[..k]
                                .chars()
                                .next_back()
                                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                    });
                    if found {
                        out.insert((api.to_string(), path.to_string(), method.to_uppercase()));
                    }
                }
                rest = &rest[i + ".route(".len() + len..];
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_and_every_documented_operation_is_routed() {
        let routed = registered_routes();
        assert!(
            routed.len() > 10,
            "the route parser found too few routes: {routed:?}"
        );
        let documented: BTreeSet<_> = documented_operations()
            .expect("the document parses")
            .into_iter()
            .collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from docs/openapi.json (tag the operation client/mesh): {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "docs/openapi.json documents operations no router serves: {unrouted:?}"
        );
    }

    #[test]
    fn every_operation_documents_jsend_errors_and_a_success_schema() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("parses");
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let r = &op["responses"];
                let ok = &r["200"]["content"];
                assert!(ok.is_object(), "{method} {path}: no 200 content");
                if let Some(schema) = ok.get("application/json").map(|c| &c["schema"]) {
                    if path != "/api/v2/openapi.json" {
                        assert_eq!(
                            schema["properties"]["status"]["const"], "success",
                            "{method} {path}: 200 is not JSend success"
                        );
                        assert!(
                            schema["properties"]["data"].is_object(),
                            "{method} {path}: no data schema"
                        );
                    }
                }
                assert_eq!(
                    r["4XX"]["$ref"], "#/components/responses/Fail",
                    "{method} {path}"
                );
                assert_eq!(
                    r["5XX"]["$ref"], "#/components/responses/Error",
                    "{method} {path}"
                );
                assert!(
                    op["operationId"].is_string(),
                    "{method} {path}: no operationId"
                );
            }
        }
        let fail = &doc["components"]["schemas"]["JSendFail"];
        assert_eq!(fail["required"], serde_json::json!(["status", "message"]));
    }

    #[test]
    fn the_status_documents_every_recovery_reason_code_and_each_variant_has_its_own() {
        use crate::state::RecoveryReason as R;
        let all = [
            R::KeyMissing(String::new()),
            R::StateMissing(String::new()),
            R::Unseal(String::new()),
            R::Rollback(String::new()),
            R::Unreadable(String::new()),
            R::NoKey(String::new()),
            R::SplitView(String::new()),
        ];
        let codes: Vec<&str> = all.iter().map(R::code).collect();
        assert_eq!(codes, R::CODES);
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("parses");
        let documented =
            &doc["components"]["schemas"]["Status"]["properties"]["recoveryReason"]["enum"];
        assert_eq!(documented, &serde_json::json!(R::CODES));
    }
}
