//! The demo upstream: answers every request with a JSON echo of what reached it, so a
//! user of `make run` can see which identity headers the filter added (and that the
//! client's own copies of them were dropped). `POST /login` is a stand-in login endpoint
//! for trying the lockout: the password `correct` logs in (200), any other gets 401.

use std::net::SocketAddr;

use axum::http::{HeaderMap, Method, Uri};
use axum::Json;
use serde_json::{json, Value};

async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> Json<Value> {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .filter(|(name, _)| name.as_str() != "authorization" && name.as_str() != "cookie")
        .map(|(name, value)| {
            (name.to_string(), Value::String(String::from_utf8_lossy(value.as_bytes()).into()))
        })
        .collect();
    Json(
        json!({ "upstream": "portcullis-demo", "method": method.as_str(), "path": uri.to_string(), "headers": headers }),
    )
}

async fn login(body: String) -> (axum::http::StatusCode, Json<Value>) {
    let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if doc.get("password").and_then(Value::as_str) == Some("correct") {
        (axum::http::StatusCode::OK, Json(json!({ "login": "ok" })))
    } else {
        (axum::http::StatusCode::UNAUTHORIZED, Json(json!({ "login": "bad credentials" })))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?.parse()?,
            "-h" | "--help" => {
                println!("portcullis-demo-upstream [--listen 127.0.0.1:8080]");
                return Ok(());
            }
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let app = axum::Router::new().route("/login", axum::routing::post(login)).fallback(echo);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("demo upstream listening on http://{listen}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
