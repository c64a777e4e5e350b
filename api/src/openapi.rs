//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]`
//! annotations. The router is assembled from the same annotations
//! (`utoipa_axum::routes!`), so a route cannot be served without being
//! documented, nor documented at another path than it is served at.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
    components(schemas(ErrorJson)),
    modifiers(&BearerToken),
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route of the API, with its documentation.
pub(crate) fn api_routes() -> OpenApiRouter<ApiState> {
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
    api_routes().into_openapi()
}
