//! PostgreSQL going away and coming back (CONTRACT §5 `/readyz`, SECURITY.md
//! fail fast): the app answers 503 quickly while it is gone and recovers by
//! itself when it is back, without a restart. PostgreSQL is cut by a TCP
//! proxy in front of it that the test switches off (closing every
//! connection) and on again.

use crate::common::*;
use crate::token_support::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to `upstream`: while down, it closes every connection it has
/// and refuses new ones.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let (cut, cuts) = watch::channel(0u64);
        let is_down = Arc::clone(&down);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if is_down.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let upstream = upstream.clone();
                let mut cuts = cuts.clone();
                // Only cuts from now on end this connection.
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { port, down, cut }
    }

    fn stop(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn start_again(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

async fn status_of(url: &str) -> u16 {
    reqwest::get(url).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn readyz_is_503_while_postgresql_is_unreachable_and_200_again_after_without_a_restart() {
    let db = Arc::new(TestDb::new().await);
    let direct = url::Url::parse(&db.url()).unwrap();
    let upstream = format!(
        "{}:{}",
        direct.host_str().unwrap(),
        direct.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(upstream).await;
    let mut through = direct.clone();
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(proxy.port)).unwrap();
    let pool = sp_broker::db::connect(through.as_str()).await.unwrap();
    let app = TestApp::spawn_with_pool(Arc::clone(&db), pool, |_| {}).await;
    let key = app.api_key(None, &[]).await;
    let id = app
        .seed_connection("acme", "A1OUTAGE", "Atzr|r", "Atza|a", secs(3600))
        .await;
    assert_eq!(status_of(&app.url("/readyz")).await, 200);

    proxy.stop();
    let started = Instant::now();
    assert_eq!(status_of(&app.url("/readyz")).await, 503);
    // A request that needs the database fails fast with the API's answer.
    app.services.broker.forget(id);
    let answer = access_token(&app, &key, id, serde_json::json!({})).await;
    assert_problem(&answer, 503, "service_unavailable");
    assert!(answer.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_millis(5000),
        "503s came within {:?}",
        started.elapsed()
    );
    // The process itself is alive throughout.
    assert_eq!(status_of(&app.url("/healthz")).await, 200);

    proxy.start_again();
    let back = Instant::now();
    loop {
        if status_of(&app.url("/readyz")).await == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "/readyz never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = access_token(&app, &key, id, serde_json::json!({})).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.access_token(), "Atza|a");
}
