//! What the configuration publishes about itself: the routing table (`tollgate routes`,
//! `GET /routes` on the admin listener) and the OpenAPI 3.1 document of the public surface
//! (`tollgate openapi`, `GET /openapi.json`).
//!
//! Both are made from the parsed file once per generation, by the assembler ([`Described`]),
//! never per request. A route's `openapi = "FILE"` is read then: a file that is missing or is
//! not an OpenAPI 3.x document is a problem of the configuration at `routes[N].openapi`, so
//! `tollgate -t` and a reload refuse it like any other.
//!
//! - [`routes`]: one row per route (JSON), and the same rows as an aligned text table;
//! - [`openapi`]: the document, the services' own documents merged under their routes'
//!   public prefixes, and [`openapi::operations`] (a route's operations, for request
//!   validation).

pub(crate) mod openapi;
pub(crate) mod routes;

use crate::config::file::ConfigFile;
use crate::config::{FromConfig, Problem};
use serde_json::Value;

/// The routing table and the OpenAPI document of one generation, made when it is assembled.
#[derive(Debug)]
pub(crate) struct Described {
    /// One JSON object per route, in the file's order (`GET /routes`).
    pub(crate) routes: Value,
    /// The OpenAPI 3.1 document (`GET /openapi.json`).
    pub(crate) openapi: Value,
    routes_json: String,
    openapi_json: String,
}

impl Described {
    /// The routing table as the admin listener serves it (pretty JSON).
    pub(crate) fn routes_json(&self) -> &str {
        &self.routes_json
    }

    /// The routing table as an aligned text table (`tollgate routes`).
    pub(crate) fn routes_text(&self) -> String {
        routes::text(&self.routes)
    }

    /// The OpenAPI document as the admin listener serves it (pretty JSON).
    pub(crate) fn openapi_json(&self) -> &str {
        &self.openapi_json
    }
}

impl FromConfig for Described {
    type Section = ConfigFile;

    /// The whole file (`at` is unused: each route's problems are at `routes[N].openapi`).
    fn from_config(
        _at: &str,
        file: &ConfigFile,
        _cx: &(),
        problems: &mut Vec<Problem>,
    ) -> Option<Described> {
        let before = problems.len();
        let openapi = openapi::document(file, problems);
        let mut rows = routes::rows(file);
        // A route with a service file lists the public operations it serves.
        for (row, r) in rows.iter_mut().zip(&file.routes) {
            if r.openapi.is_some() {
                let ops: Vec<Value> = openapi::operations(&openapi, &r.name)
                    .into_iter()
                    .map(|o| {
                        serde_json::json!({
                            "method": o.method,
                            "path": o.template,
                            "operationId": o.op.get("operationId"),
                        })
                    })
                    .collect();
                if let Some(row) = row.as_object_mut() {
                    row.insert("operations".into(), ops.into());
                }
            }
        }
        if problems.len() != before {
            return None;
        }
        let routes = Value::Array(rows);
        let pretty = |v: &Value| {
            let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
            text.push('\n');
            text
        };
        Some(Described {
            routes_json: pretty(&routes),
            openapi_json: pretty(&openapi),
            routes,
            openapi,
        })
    }
}
