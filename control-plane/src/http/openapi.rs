//! The OpenAPI 3.1 document of both listeners, generated from the handlers.
//!
//! Invariant: a route is in the document if and only if a listener serves it. Both come
//! from the same route tables ([`super::route_groups`]): each handler is registered with
//! `utoipa_axum::routes!`, which takes its method and path from the handler's
//! `#[utoipa::path]` and records the operation at the same time (a plain `.route()` would
//! bypass the document; `tests/openapi.rs` checks that none is used and that every
//! documented operation is answered by its listener).
//!
//! Each path says which listener serves it (`servers`) and which credential it needs
//! (`security`: the fleet credential or the admin token, both `Authorization: Bearer`);
//! every operation lists its error answers as `application/problem+json` documents.
//!
//! Served at `GET /openapi.json` on the admin listener without the admin token, like
//! `/metrics`: it describes routes and shapes only, no state and no secret. The copy
//! committed as `docs/openapi.json` is checked against it by `tests/openapi.rs`.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, Ref, RefOr};
use utoipa::PartialSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{Problem, PROBLEM_CONTENT_TYPE};
use super::AppState;

/// Where the document is served (admin listener).
pub const OPENAPI_PATH: &str = "/openapi.json";
const FLEET_SCHEME: &str = "fleetCredential";
const ADMIN_SCHEME: &str = "adminToken";

/// The listeners, as `servers` entries (their default addresses).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Listener {
    Internal,
    Admin,
}

impl Listener {
    fn server(self) -> Server {
        let (url, description) = match self {
            Listener::Internal => {
                ("http://127.0.0.1:9091", "internal listener (--internal-listen): what Envoys call")
            }
            Listener::Admin => {
                ("http://127.0.0.1:9090", "admin listener (--admin-listen): operators and monitoring")
            }
        };
        let mut server = Server::new(url);
        server.description = Some(description.to_owned());
        server
    }
}

/// The credential a group of routes needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Credential {
    None,
    Fleet,
    Admin,
}

/// One route table: what a listener serves under a credential.
pub struct RouteGroup {
    pub listener: Listener,
    pub credential: Credential,
    pub routes: OpenApiRouter<AppState>,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// The OpenAPI document of the admin and internal APIs (this one included).
#[utoipa::path(
    get,
    path = OPENAPI_PATH,
    tag = "admin",
    summary = "This OpenAPI document",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"))
)]
async fn openapi_json() -> Json<&'static OpenApi> {
    static DOCUMENT: LazyLock<OpenApi> = LazyLock::new(document);
    Json(&DOCUMENT)
}

/// The document as committed in `docs/openapi.json`: pretty JSON, one final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

/// The document, built from the route tables the listeners serve.
pub fn document() -> OpenApi {
    let mut paths: BTreeMap<String, (PathItem, Vec<Listener>)> = BTreeMap::new();
    let mut components = ComponentsBuilder::new().build();
    for group in super::route_groups() {
        let api = group.routes.into_openapi();
        if let Some(found) = api.components {
            components.schemas.extend(found.schemas);
        }
        for (path, mut item) in api.paths.paths {
            for operation in operations(&mut item) {
                describe_errors(operation, group.credential);
            }
            match paths.get_mut(&path) {
                // The probes are on both listeners: the same operations, two servers.
                Some((_, listeners)) => listeners.push(group.listener),
                None => {
                    paths.insert(path, (item, vec![group.listener]));
                }
            }
        }
    }
    let mut api = OpenApi::new(
        InfoBuilder::new()
            .title("Portcullis control plane")
            .version(env!("CARGO_PKG_VERSION"))
            .description(Some(
                "The admin API (admin listener, admin token) and the internal API (internal \
                 listener: what Envoys call with the fleet credential, plus the public JWKS, \
                 refresh token exchange and probes). See docs/control-plane.md.",
            ))
            .build(),
        utoipa::openapi::Paths::new(),
    );
    for (path, (mut item, mut listeners)) in paths {
        listeners.sort();
        listeners.dedup();
        item.servers = Some(listeners.into_iter().map(Listener::server).collect());
        api.paths.paths.insert(path, item);
    }
    components.schemas.insert("Problem".to_owned(), Problem::schema());
    let bearer = |description: &str| {
        RefOr::T(SecurityScheme::Http(
            HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build(),
        ))
    };
    components.security_schemes.insert(
        FLEET_SCHEME.to_owned(),
        bearer("The fleet credential every Envoy running the filter presents (internal listener)."),
    );
    components.security_schemes.insert(ADMIN_SCHEME.to_owned(), bearer("The admin token (admin listener)."));
    api.components = Some(components);
    api
}

/// Every operation of a path item.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The credential an operation needs and its error answers: problem documents for every
/// 4xx and 5xx, `401` with `WWW-Authenticate` where a credential is required.
fn describe_errors(operation: &mut Operation, credential: Credential) {
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    PROBLEM_CONTENT_TYPE,
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build(),
        )
    };
    let responses = &mut operation.responses.responses;
    let scheme = match credential {
        Credential::None => None,
        Credential::Fleet => Some(FLEET_SCHEME),
        Credential::Admin => Some(ADMIN_SCHEME),
    };
    if let Some(scheme) = scheme {
        operation.security = Some(vec![SecurityRequirement::new(scheme, Vec::<String>::new())]);
        responses.insert(
            "401".to_owned(),
            problem(
                "No or a wrong credential (`WWW-Authenticate: Bearer realm=…`); nothing was read or changed.",
            ),
        );
    }
    responses.insert(
        "4XX".to_owned(),
        problem("A bad request (the detail names the field), an unknown id (404), a conflict (409), a body too large (413) or not JSON (415)."),
    );
    responses.insert(
        "5XX".to_owned(),
        problem("The store is unavailable (503, retry) or an internal error (500, logged; generic detail)."),
    );
}
