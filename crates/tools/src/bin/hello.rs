//! `hello`: a bare axum route, the machine's HTTP ceiling for the benchmark. `hello 127.0.0.1:0` prints
//! `listening <addr>` and serves `GET /` until killed.

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!("listening {}", listener.local_addr().expect("address"));
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    axum::serve(listener, app).await.expect("serve");
}
