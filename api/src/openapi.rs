//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]`
//! annotations. The router is assembled from the same annotations
//! (`utoipa_axum::routes!`), so a route cannot be served without being
//! documented, nor documented at another path than it is served at.

use axum::Router;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::json::ErrorJson;
use crate::routes::{changes, ops, versions, watches};
use crate::state::ApiState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "polld local API",
        description = "History, diffs, a long-poll changes feed and metrics of the URLs polld watches. \
            With a token configured, every /v1 request needs `Authorization: Bearer TOKEN`. \
            Every 4xx/5xx body is `{\"error\": \"...\"}`. Cursors (`next`, `after`, SSE ids) are opaque strings; \
            delivery is at least once."
    ),
    components(schemas(ErrorJson))
)]
struct ApiDoc;

/// What the guard layer (`crate::guard`) and the shared error paths add to
/// every operation, declared once here instead of on each handler: the
/// bearer token and its 401 on every `/v1` path, the `Host` check's 403 on
/// every path, and the store's 500/503 on every `/v1` path that reads it.
struct GuardResponses;

impl Modify for GuardResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in &mut openapi.paths.paths {
            let v1 = path == "/v1" || path.starts_with("/v1/");
            let reads_store = v1 && path != "/v1/openapi.json";
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            let has_params = path.contains('{');
            for op in operations.into_iter().flatten() {
                add_error(
                    op,
                    "403",
                    "The Host header names no allowed host (DNS-rebinding defence)",
                    None,
                );
                if has_params {
                    add_error(op, "400", "A path parameter is not valid UTF-8", None);
                }
                if v1 {
                    op.security = Some(vec![SecurityRequirement::new(
                        "bearer",
                        Vec::<String>::new(),
                    )]);
                    add_error(
                        op,
                        "401",
                        "Missing or wrong bearer token (only when a token is configured)",
                        Some(("WWW-Authenticate", "`Bearer realm=\"polld\"`")),
                    );
                }
                if reads_store || path == "/readyz" {
                    add_error(
                        op,
                        "500",
                        "Internal or store error (the detail is logged, not sent)",
                        None,
                    );
                }
                if reads_store {
                    add_error(
                        op,
                        "503",
                        "The store is closed (polld is shutting down)",
                        None,
                    );
                }
            }
        }
    }
}

/// Adds an `{"error": ...}` response for `status` (with a string header
/// when given), unless the handler documents its own.
fn add_error(op: &mut Operation, status: &str, description: &str, header: Option<(&str, &str)>) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            let mut response = ResponseBuilder::new().description(description).content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorJson"))),
            );
            if let Some((name, about)) = header {
                response = response.header(
                    name,
                    HeaderBuilder::new()
                        .schema(Object::with_type(Type::String))
                        .description(Some(about))
                        .build(),
                );
            }
            RefOr::T(response.build())
        });
}

/// Every route of the API, and its documentation with what the guard adds
/// (applied once the paths exist: a `modifiers(...)` of the derive would
/// run before the routes are added).
pub(crate) fn routes_and_doc() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = api_routes().split_for_parts();
    GuardResponses.modify(&mut doc);
    (routes, doc)
}

fn api_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(watches::list))
        .routes(routes!(watches::get_one))
        .routes(routes!(watches::poll))
        .routes(routes!(versions::list))
        .routes(routes!(versions::body))
        .routes(routes!(versions::diff))
        .routes(routes!(changes::long_poll))
        .routes(routes!(changes::sse))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::openapi_json))
}

/// The OpenAPI document of the API (what `/v1/openapi.json` serves).
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes_and_doc().1
}
