//! The OpenAPI document served at `GET /openapi.json` against the code it describes: it is
//! OpenAPI 3.1, documents exactly the public routes registered in `src/http/mod.rs` (path and
//! methods; nothing more, nothing less), every `$ref` in it resolves, every path parameter is
//! declared, and every error code the server can answer is listed in its `ErrorCode` schema.
//!
//! The routes are read from the router's source at test time rather than listed here, so that a
//! route added without documentation fails this test instead of going unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

/// The HTTP methods axum's `MethodRouter` is built from in our router, as OpenAPI names them.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Routes under this prefix are node-to-node plumbing, not part of the public API.
const INTERNAL_PREFIX: &str = "/internal/";

/// `cargo test` names the crate's directory at run time; the compiled-in path is the fallback
/// (a test binary shared through one `CARGO_TARGET_DIR` by clones in other directories is not
/// rebuilt for a new path).
fn manifest_path(relative: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join(relative)
}

fn read(relative: &str) -> String {
    let path = manifest_path(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn document() -> Value {
    serde_json::from_str(&read("src/http/openapi.json"))
        .unwrap_or_else(|error| panic!("src/http/openapi.json is not valid JSON: {error}"))
}

/// Rust source with its `//` comments blanked out (string literals kept intact), so that a
/// commented-out route is not taken for a registered one.
fn without_comments(source: &str) -> String {
    let mut output = String::with_capacity(source.len());
    let mut characters = source.chars().peekable();
    let mut in_string = false;
    while let Some(character) = characters.next() {
        if in_string {
            output.push(character);
            match character {
                '\\' => {
                    if let Some(escaped) = characters.next() {
                        output.push(escaped);
                    }
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if character == '/' && characters.peek() == Some(&'/') {
            for skipped in characters.by_ref() {
                if skipped == '\n' {
                    output.push('\n');
                    break;
                }
            }
            continue;
        }
        if character == '"' {
            in_string = true;
        }
        output.push(character);
    }
    output
}

/// The methods of one method router expression such as
/// `get(handlers::get_account).patch(credits::update_account)`: the identifiers called at
/// nesting depth 0 (the handlers inside the parentheses are deeper).
fn methods_of(expression: &str) -> BTreeSet<String> {
    let mut methods = BTreeSet::new();
    let bytes = expression.as_bytes();
    let mut depth = 0_usize;
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ if depth == 0 && (byte.is_ascii_alphabetic() || byte == b'_') => {
                let start = index;
                while index < bytes.len()
                    && (bytes[index].is_ascii_alphanumeric() || bytes[index] == b'_')
                {
                    index += 1;
                }
                let identifier = &expression[start..index];
                let called = expression[index..].trim_start().starts_with('(');
                assert!(
                    !called || METHODS.contains(&identifier),
                    "unexpected call {identifier}(...) in the method router {expression:?}: \
                     teach this test about it"
                );
                if called {
                    methods.insert(identifier.to_owned());
                }
                continue;
            }
            _ => {}
        }
        index += 1;
    }
    methods
}

/// Every `.route("path", method_router)` of the router's source: path → methods.
fn registered_routes(source: &str) -> BTreeMap<String, BTreeSet<String>> {
    let source = without_comments(source);
    for other in [".nest(", ".merge(", ".route_service(", ".nest_service("] {
        assert!(
            !source.contains(other),
            "the router uses {other}: routes registered that way escape this test"
        );
    }
    let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut rest = source.as_str();
    while let Some(position) = rest.find(".route(") {
        rest = &rest[position + ".route(".len()..];
        let after_quote = rest
            .trim_start()
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("a .route( whose path is not a string literal: {rest:.80}"));
        let end_of_path = after_quote.find('"').expect("an unterminated route path");
        let path = after_quote[..end_of_path].to_owned();
        let arguments = after_quote[end_of_path + 1..]
            .trim_start()
            .strip_prefix(',')
            .unwrap_or_else(|| panic!("route {path}: expected a method router after the path"));
        // The method router runs to the parenthesis that closes `.route(`.
        let mut depth = 0_usize;
        let end_of_route = arguments
            .char_indices()
            .find_map(|(index, character)| match character {
                '(' => {
                    depth += 1;
                    None
                }
                ')' if depth == 0 => Some(index),
                ')' => {
                    depth -= 1;
                    None
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("route {path}: unbalanced parentheses"));
        let methods = methods_of(&arguments[..end_of_route]);
        assert!(!methods.is_empty(), "route {path}: no method found");
        let known = routes.entry(path.clone()).or_default();
        for method in methods {
            assert!(
                known.insert(method.clone()),
                "route {path}: {method} registered twice"
            );
        }
        rest = &arguments[end_of_route..];
    }
    routes
}

/// The operations of one path item: its keys that are HTTP methods.
fn documented_methods(path_item: &Value) -> BTreeSet<String> {
    const OPENAPI_METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    path_item
        .as_object()
        .map(|item| {
            item.keys()
                .filter(|key| OPENAPI_METHODS.contains(&key.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Resolves a local reference (`#/a/b`, JSON Pointer with `~0` and `~1` escapes).
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    root.pointer(pointer)
}

/// Every `$ref` in `value`, with where it was found.
fn collect_references(value: &Value, location: &str, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                if key == "$ref" {
                    if let Value::String(reference) = child {
                        found.push((location.to_owned(), reference.clone()));
                        continue;
                    }
                }
                collect_references(child, &format!("{location}/{key}"), found);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                collect_references(child, &format!("{location}/{index}"), found);
            }
        }
        _ => {}
    }
}

/// A parameter, following its `$ref` if it is one.
fn parameter<'a>(root: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => resolve(root, reference)
            .unwrap_or_else(|| panic!("parameter reference {reference} does not resolve")),
        None => value,
    }
}

#[test]
fn route_extraction_reads_chained_methods_and_skips_comments() {
    let source = r#"
        Router::new()
            // .route("/commented", get(handlers::nothing))
            .route("/a/{id}", get(handlers::get_a).patch(credits::update_a))
            .route(
                "/b",
                post(handlers::b), // a comment with "quotes" and (parentheses
            )
            .route("/c", put(credits::put_c).delete(credits::delete_c))
    "#;
    let routes = registered_routes(source);
    let expected: BTreeMap<String, BTreeSet<String>> = [
        ("/a/{id}", &["get", "patch"][..]),
        ("/b", &["post"][..]),
        ("/c", &["delete", "put"][..]),
    ]
    .into_iter()
    .map(|(path, methods)| {
        (
            path.to_owned(),
            methods.iter().map(|method| (*method).to_owned()).collect(),
        )
    })
    .collect();
    assert_eq!(routes, expected);
}

#[test]
fn document_is_openapi_3_1_with_info() {
    let document = document();
    let version = document["openapi"]
        .as_str()
        .expect("an openapi version string");
    assert!(
        version.starts_with("3.1."),
        "openapi is {version}, expected 3.1.x"
    );
    for field in ["title", "version"] {
        let value = document["info"][field].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "info.{field} is missing or empty");
    }
    assert!(document["paths"].is_object(), "paths is missing");
    assert!(
        document["components"]["schemas"].is_object(),
        "components.schemas is missing"
    );
}

#[test]
fn every_public_route_is_documented_and_nothing_else() {
    let routes = registered_routes(&read("src/http/mod.rs"));
    let public: BTreeSet<(String, String)> = routes
        .iter()
        .filter(|(path, _)| !path.starts_with(INTERNAL_PREFIX))
        .flat_map(|(path, methods)| {
            methods
                .iter()
                .map(move |method| (path.clone(), method.clone()))
        })
        .collect();
    // A floor so that a parser that finds nothing cannot pass: the router has had these from
    // the first version of the contract.
    for (path, method) in [
        ("/v1/accounts", "post"),
        ("/v1/accounts/{account_id}/debits", "post"),
        ("/health", "get"),
    ] {
        assert!(
            public.contains(&(path.to_owned(), method.to_owned())),
            "route extraction missed {method} {path}"
        );
    }

    let document = document();
    let paths = document["paths"].as_object().expect("paths is an object");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            documented_methods(item)
                .into_iter()
                .map(move |method| (path.clone(), method))
        })
        .collect();

    let undocumented: Vec<_> = public.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&public).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "openapi.json documents routes the router does not have: {unknown:?}"
    );
    for path in paths.keys() {
        assert!(
            !path.starts_with(INTERNAL_PREFIX),
            "{path} is internal and must not be documented"
        );
    }
}

#[test]
fn every_operation_declares_its_path_parameters_and_responses() {
    let document = document();
    let paths = document["paths"].as_object().expect("paths is an object");
    let mut operation_ids = BTreeSet::new();
    for (path, item) in paths {
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        let shared = item["parameters"].as_array().cloned().unwrap_or_default();
        for method in documented_methods(item) {
            let operation = &item[&method];
            let mut declared = BTreeSet::new();
            for value in shared
                .iter()
                .chain(operation["parameters"].as_array().into_iter().flatten())
            {
                let parameter = parameter(&document, value);
                if parameter["in"] == "path" {
                    assert_eq!(
                        parameter["required"], true,
                        "{method} {path}: path parameters are required"
                    );
                    let name = parameter["name"].as_str().expect("a parameter name");
                    declared.insert(name.to_owned());
                }
            }
            assert_eq!(
                declared, in_template,
                "{method} {path}: declared path parameters differ from the template"
            );
            let responses = operation["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|status| status.starts_with('2')),
                "{method} {path}: no success response"
            );
            let id = operation["operationId"].as_str().expect("an operationId");
            assert!(
                operation_ids.insert(id.to_owned()),
                "operationId {id} is used twice"
            );
        }
    }
}

#[test]
fn every_reference_resolves() {
    let document = document();
    let mut references = Vec::new();
    collect_references(&document, "#", &mut references);
    assert!(!references.is_empty(), "the document uses no $ref at all");
    let broken: Vec<_> = references
        .iter()
        .filter(|(_, reference)| resolve(&document, reference).is_none())
        .collect();
    assert!(
        broken.is_empty(),
        "references that do not resolve (where, $ref): {broken:?}"
    );
}

#[test]
fn every_error_code_is_listed() {
    let document = document();
    let listed: BTreeSet<&str> = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode has an enum")
        .iter()
        .map(|code| code.as_str().expect("codes are strings"))
        .collect();

    // The state machine's rejections ...
    for rejection in ledger_core::Rejection::ALL {
        assert!(
            listed.contains(rejection.code()),
            "rejection code {} is not in ErrorCode",
            rejection.code()
        );
    }
    // ... and the codes of the API edge, read from `ledger_api::codes` (a module of constants,
    // which Rust cannot enumerate).
    let api_source = read("../ledger-api/src/lib.rs");
    let codes_module = api_source
        .split_once("pub mod codes {")
        .map(|(_, module)| module)
        .expect("ledger-api has a codes module");
    let api_codes: Vec<&str> = codes_module
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub const "))
        .filter_map(|declaration| declaration.split('"').nth(1))
        .collect();
    assert!(
        api_codes.contains(&ledger_api::codes::INSUFFICIENT_CREDITS),
        "codes extraction found {api_codes:?}"
    );
    for code in api_codes {
        assert!(listed.contains(code), "API code {code} is not in ErrorCode");
    }
}
