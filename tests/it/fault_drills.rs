//! Fault drills (SECURITY.md "Reliability", issue #8): PostgreSQL stopped and
//! started again under load, SIGTERM under load, and `keys rotate` killed at
//! several points while requests are served. Each drill sends real HTTP to a
//! real broker (in-process, or the `sp-broker` binary where a signal must
//! reach a process) and counts every answer.

use crate::common::*;
use crate::token_support::*;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What one request of a load got, when it started and how long it took.
#[derive(Debug, Clone)]
struct Sample {
    started: Instant,
    latency: Duration,
    /// The HTTP status, or `None` when no answer came (connection refused/reset).
    status: Option<u16>,
    kind: &'static str,
}

/// Requests sent in a loop by a few workers until stopped; every answer kept.
struct Load {
    running: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` tasks, each calling `request(context, worker, n)` in a
    /// loop with its own clone of `context` (what the requests share).
    fn start<C, F, Fut>(workers: usize, context: C, request: F) -> Load
    where
        C: Clone + Send + Sync + 'static,
        F: Fn(C, usize, usize) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = (&'static str, Option<u16>)> + Send,
    {
        let running = Arc::new(AtomicBool::new(true));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let request = Arc::new(request);
        let workers = (0..workers)
            .map(|worker| {
                let running = Arc::clone(&running);
                let samples = Arc::clone(&samples);
                let request = Arc::clone(&request);
                let context = context.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    while running.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let (kind, status) = request(context.clone(), worker, n).await;
                        samples.lock().unwrap().push(Sample {
                            started,
                            latency: started.elapsed(),
                            status,
                            kind,
                        });
                        n += 1;
                        if status.is_none() {
                            // No answer: do not spin against a closed port.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            running,
            samples,
            workers,
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    async fn stop(self) -> Vec<Sample> {
        self.running.store(false, Ordering::SeqCst);
        for worker in self.workers {
            worker.await.unwrap();
        }
        let samples = self.samples.lock().unwrap().clone();
        samples
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn status_of(client: &reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

async fn wait_for_status(client: &reqwest::Client, url: &str, want: u16, within: Duration) {
    let started = Instant::now();
    while status_of(client, url).await != Some(want) {
        assert!(
            started.elapsed() < within,
            "{url} did not answer {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- PostgreSQL stopped and started again -----------------------------------

/// A PostgreSQL cluster of the test's own on a spare port, so the test can
/// stop and start it (the shared server must stay up for the other tests).
/// As root (CI), the cluster runs as the `postgres` user, as PostgreSQL asks.
struct OwnPostgres {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl OwnPostgres {
    fn bin_dir() -> std::path::PathBuf {
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("pg_ctl").exists() {
                return dir;
            }
        }
        let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries (initdb, pg_ctl) are installed")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("pg_ctl").exists())
            .collect();
        versions.sort();
        versions
            .pop()
            .expect("initdb and pg_ctl under /usr/lib/postgresql/*/bin")
    }

    /// One of PostgreSQL's programs, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_new() -> OwnPostgres {
        let as_postgres_user = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let dir = std::env::temp_dir().join(format!("spb-drill-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres_user {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = OwnPostgres {
            bin: Self::bin_dir(),
            dir,
            port,
            as_postgres_user,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.start();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// A fast shutdown: every session is ended at once, as in a failover.
    fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn postgresql_stopped_and_started_under_load_fails_fast_and_recovers_losing_nothing() {
    let pg = OwnPostgres::start_new();
    let db = Arc::new(TestDb::new_on(&pg.url()).await);
    let app = Arc::new(TestApp::spawn_on(Arc::clone(&db), |_| {}).await);
    let key = app
        .api_key(None, &["tokens:issue", "connections:read", "tenants:admin"])
        .await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = app
            .seed_connection(
                "acme",
                &format!("A1DRILL{i}"),
                &format!("Atzr|drill-{i}"),
                &format!("Atza|drill-{i}"),
                secs(3600),
            )
            .await;
        ids.push(id);
    }
    let ids = Arc::new(ids);
    let created: Arc<Mutex<Vec<String>>> = Arc::default();

    // Three kinds of request: a cached token (no query), a connection read,
    // and a tenant created (a write, whose 201 must never be lost).
    let http = client();
    let load = Load::start(
        6,
        (
            Arc::clone(&app),
            key.clone(),
            Arc::clone(&ids),
            Arc::clone(&created),
            http.clone(),
        ),
        |(app, key, ids, created, http), worker, n| async move {
            let id = ids[(worker + n) % ids.len()];
            match worker % 3 {
                0 => {
                    let answer = access_token_at(&http, &app.base, &key, id, json!({})).await;
                    ("cached token", Some(answer.status))
                }
                1 => {
                    let answer = get(&app, &format!("/v1/connections/{id}"), &key).await;
                    ("connection read", Some(answer.status))
                }
                _ => {
                    let slug = format!("drill-{worker}-{n}");
                    let answer = post(&app, "/v1/tenants", &key, json!({ "slug": slug })).await;
                    if answer.status == 201 {
                        created.lock().unwrap().push(slug);
                    }
                    ("tenant created", Some(answer.status))
                }
            }
        },
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stopped_at = Instant::now();
    pg.stop();
    let readyz = app.url("/readyz");
    wait_for_status(&http, &readyz, 503, Duration::from_millis(3000)).await;
    let not_ready_after = stopped_at.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(status_of(&http, &app.url("/healthz")).await, Some(200));

    let started_at = Instant::now();
    pg.start();
    wait_for_status(&http, &readyz, 200, Duration::from_secs(15)).await;
    let ready_after = started_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = load.stop().await;

    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started >= stopped_at + Duration::from_millis(100) && s.started < started_at)
        .collect();
    // While PostgreSQL is gone: cached tokens still served, everything else a
    // fast 503 (the pool's 2 s acquire timeout), never a 500.
    assert!(
        during.len() > 20,
        "load kept going: {} requests",
        during.len()
    );
    for s in &during {
        match (s.kind, s.status) {
            ("cached token", Some(200)) => {}
            // "~2.5 s": the pool's 2 s acquire timeout, plus scheduling on
            // a CI machine running the other tests at once.
            (_, Some(503)) => assert!(
                s.latency < Duration::from_millis(3000),
                "a 503 took {:?}",
                s.latency
            ),
            other => panic!("while PostgreSQL was down: {other:?} ({s:?})"),
        }
    }
    let slowest_503 = during
        .iter()
        .filter(|s| s.status == Some(503))
        .map(|s| s.latency)
        .max()
        .expect("requests needing the database got 503");
    assert!(samples.iter().all(|s| s.status != Some(500)), "no 500 ever");
    // Back without a restart: after it settled, every request succeeds.
    let after: Vec<&Sample> = samples.iter().filter(|s| s.started >= settled).collect();
    assert!(!after.is_empty());
    for s in &after {
        assert!(matches!(s.status, Some(200 | 201)), "after recovery: {s:?}");
    }

    // Nothing lost: every tenant answered 201 exists, every token still opens.
    let created = created.lock().unwrap().clone();
    assert!(!created.is_empty());
    for slug in &created {
        assert!(app.find_tenant(slug).await.is_some(), "{slug} was lost");
    }
    for (i, id) in ids.iter().enumerate() {
        app.services.broker.forget(*id);
        let answer = access_token(&app, &key, *id, json!({})).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.access_token(), format!("Atza|drill-{i}"));
    }
    eprintln!(
        "drill: PostgreSQL stopped under load: /readyz 503 after {not_ready_after:?}, {} requests \
         while down (slowest 503 {slowest_503:?}, no 500), /readyz 200 {ready_after:?} after it \
         started, {} tenants created and none lost, {} requests in all",
        during.len(),
        created.len(),
        samples.len()
    );
    drop(app);
    drop(db);
}

// --- SIGTERM under load ------------------------------------------------------

/// The `sp-broker serve` binary on a free port against `db`.
struct BrokerProcess {
    child: Child,
    base: String,
}

impl BrokerProcess {
    async fn start(db: &TestDb, lwa_url: &str) -> BrokerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_sp-broker"))
            .arg("serve")
            .env("DATABASE_URL", db.url())
            .env("SP_BROKER_LISTEN", format!("127.0.0.1:{port}"))
            .env("SP_BROKER_PUBLIC_URL", &base)
            .env("SP_BROKER_ENCRYPTION_KEYS", TEST_KEY)
            .env("SP_BROKER_LWA_TOKEN_URL", lwa_url)
            .env("SP_BROKER_SWEEP_INTERVAL_SECONDS", "0")
            .env("SP_BROKER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_status(
            &client(),
            &format!("{base}/readyz"),
            200,
            Duration::from_secs(30),
        )
        .await;
        BrokerProcess { child, base }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_under_load_goes_unready_first_finishes_in_flight_requests_and_exits_in_time() {
    // Refreshes take 1.5 s at Amazon: they are in flight when the signal comes.
    let lwa = wiremock::MockServer::start().await;
    on_refresh(
        &lwa,
        lwa_tokens("Atza|refreshed", "Atzr|same", 3600).set_delay(Duration::from_millis(1500)),
    )
    .await;
    let seeder = TestApp::spawn().await;
    let key = seeder.api_key(None, &[]).await;
    let cached = seeder
        .seed_connection("acme", "A1CACHED", "Atzr|c", "Atza|cached", secs(3600))
        .await;
    let mut expired = Vec::new();
    for i in 0..8 {
        expired.push(
            seeder
                .seed_connection(
                    "acme",
                    &format!("A1EXP{i}"),
                    "Atzr|same",
                    "Atza|old",
                    secs(-60),
                )
                .await,
        );
    }
    let db = Arc::clone(&seeder.db);
    drop(seeder);
    let broker = BrokerProcess::start(&db, &lwa_url(&lwa)).await;
    let base = broker.base.clone();

    let load = Load::start(
        4,
        (base.clone(), key.clone()),
        move |(base, key), _, _| async move {
            let http = reqwest::Client::new();
            match http
                .post(format!("{base}/v1/connections/{cached}/access-token"))
                .bearer_auth(&key)
                .json(&json!({}))
                .send()
                .await
            {
                Ok(r) => ("cached token", Some(r.status().as_u16())),
                Err(_) => ("cached token", None),
            }
        },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Slow requests, each waiting on Amazon, then the signal.
    let http = client();
    let in_flight: Vec<_> = expired
        .iter()
        .map(|id| {
            let (http, base, key, id) = (http.clone(), base.clone(), key.clone(), *id);
            tokio::spawn(async move { access_token_at(&http, &base, &key, id, json!({})).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    broker.terminate();

    // /readyz is 503 at once, while the listener still answers.
    let readyz = format!("{base}/readyz");
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let mut first_503 = None;
    while signalled.elapsed() < Duration::from_secs(2) {
        match status_of(&fresh(), &readyz).await {
            Some(503) => {
                first_503.get_or_insert(signalled.elapsed());
            }
            Some(200) => assert!(first_503.is_none(), "/readyz went back to 200"),
            other => panic!("/readyz answered {other:?} during the notice"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_503 = first_503.expect("/readyz answered 503 after SIGTERM");
    assert!(first_503 < Duration::from_millis(500), "{first_503:?}");

    // Every request in flight at the signal is answered, with its new token.
    for request in in_flight {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.access_token(), "Atza|refreshed");
    }
    let mut child = broker;
    let exit = loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < sp_broker::app::SHUTDOWN_GRACE,
            "still running {:?} after SIGTERM",
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exited_after = signalled.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(
        exited_after >= sp_broker::app::SHUTDOWN_NOTICE,
        "exited {exited_after:?} after the signal: before the notice ended"
    );
    let samples = load.stop().await;

    // The load was served throughout the notice; only after the listener
    // closed did connections fail. No request ever got an error status.
    let notice_end = signalled + sp_broker::app::SHUTDOWN_NOTICE - Duration::from_millis(200);
    assert!(
        samples.iter().all(|s| s.status.is_none_or(|c| c == 200)),
        "{samples:?}"
    );
    let served_in_notice = samples
        .iter()
        .filter(|s| s.started > signalled && s.started < notice_end)
        .inspect(|s| assert_eq!(s.status, Some(200), "during the notice: {s:?}"))
        .count();
    assert!(served_in_notice > 0);

    // The jobs flushed on the way out: each token answered was counted.
    let served =
        samples.iter().filter(|s| s.status == Some(200)).count() as i64 + expired.len() as i64;
    let counted: i64 =
        sqlx::query_scalar("select coalesce(sum(count), 0)::bigint from token_issue_count")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(counted, served, "token-issue counts flushed at shutdown");
    eprintln!(
        "drill: SIGTERM under load: /readyz 503 after {first_503:?}, {} in-flight refreshes \
         answered 200, {served_in_notice} requests served during the notice, exit 0 after \
         {exited_after:?} (grace {:?}), {counted} token issues counted",
        expired.len(),
        sp_broker::app::SHUTDOWN_GRACE
    );
}

// --- keys rotate killed -----------------------------------------------------

const NEW_KEY: &str = "drill-key-2:BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ=";

fn keys_rotate(db: &TestDb) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sp-broker"))
        .args(["keys", "rotate"])
        .env("DATABASE_URL", db.url())
        .env("SP_BROKER_ENCRYPTION_KEYS", format!("{NEW_KEY},{TEST_KEY}"))
        .env("SP_BROKER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn values_under(db: &TestDb, key_id: &str) -> i64 {
    sp_broker::rotation::sealed_counts(&db.pool)
        .await
        .unwrap()
        .get(key_id)
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn keys_rotate_killed_at_several_points_then_rerun_loses_no_token_and_service_kept_answering()
{
    const CONNECTIONS: usize = 1500;
    let seeder = TestApp::spawn().await;
    seeder.create_tenant("acme").await;
    let mut seeded = Vec::with_capacity(CONNECTIONS);
    for chunk in (0..CONNECTIONS).collect::<Vec<_>>().chunks(25) {
        let stored = futures::future::join_all(chunk.iter().map(|&i| {
            let seeder = &seeder;
            async move {
                let id = seeder
                    .seed_connection(
                        "acme",
                        &format!("A1KILL{i}"),
                        &format!("Atzr|kill-{i}"),
                        &format!("Atza|kill-{i}"),
                        secs(3600),
                    )
                    .await;
                (id, i)
            }
        }))
        .await;
        seeded.extend(stored);
    }
    let db = Arc::clone(&seeder.db);
    let key = seeder.api_key(None, &[]).await;
    drop(seeder);

    // The instance serving meanwhile knows both keys (deployed before the
    // rotation, as the README says); each request reads its token from the
    // database, so it opens values mid-rotation.
    let app = Arc::new(
        TestApp::spawn_on(Arc::clone(&db), |s| {
            s.encryption_keys = Some(format!("{NEW_KEY},{TEST_KEY}"))
        })
        .await,
    );
    let ids: Arc<Vec<(Uuid, usize)>> = Arc::new(seeded.clone());
    let load = {
        let (app, key, ids) = (Arc::clone(&app), key.clone(), Arc::clone(&ids));
        Load::start(
            4,
            (Arc::clone(&app), key.clone(), Arc::clone(&ids)),
            |(app, key, ids), worker, n| async move {
                let (id, i) = ids[(worker * 997 + n * 31) % ids.len()];
                app.services.broker.forget(id);
                let answer = access_token(&app, &key, id, json!({})).await;
                let right =
                    answer.status == 200 && answer.access_token() == format!("Atza|kill-{i}");
                (
                    "token read from the database",
                    Some(if right { 200 } else { answer.status.max(1) }),
                )
            },
        )
    };

    // Killed (SIGKILL) before its first batch, after one, and past half.
    let total = (CONNECTIONS * 2) as i64;
    let mut kills = Vec::new();
    for kill_when_resealed in [0, 1, total / 2] {
        let mut rotate = keys_rotate(&db);
        let started = Instant::now();
        loop {
            let done = values_under(&db, "drill-key-2").await;
            if done >= kill_when_resealed
                && (kill_when_resealed > 0 || started.elapsed() > Duration::from_millis(30))
            {
                break;
            }
            assert!(
                rotate.try_wait().unwrap().is_none(),
                "the rotation ended before the kill point ({done} resealed)"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        rotate.kill().unwrap();
        let status = rotate.wait().unwrap();
        assert!(!status.success(), "killed, not finished: {status:?}");
        let resealed = values_under(&db, "drill-key-2").await;
        let old = values_under(&db, "test-key-1").await;
        assert_eq!(
            resealed + old,
            total,
            "every value under one key or the other"
        );
        kills.push(resealed);
    }
    assert!(kills.windows(2).all(|w| w[0] <= w[1]), "{kills:?}");

    let rerun = tokio::task::spawn_blocking({
        let child = keys_rotate(&db);
        move || child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let samples = load.stop().await;
    assert_eq!(values_under(&db, "drill-key-2").await, total);
    assert_eq!(values_under(&db, "test-key-1").await, 0);

    // The service answered every request right, throughout.
    assert!(samples.len() > 50, "{} requests", samples.len());
    assert!(
        samples.iter().all(|s| s.status == Some(200)),
        "{:?}",
        samples.iter().find(|s| s.status != Some(200))
    );

    // Every token opens under the new key alone, bound to its own row.
    let new_only =
        sp_broker::crypto::KeyRing::parse(&secrecy::SecretString::from(NEW_KEY.to_owned()))
            .unwrap();
    let rows: Vec<(Uuid, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("select id, refresh_token_sealed, access_token_sealed from connection")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), CONNECTIONS);
    let tenant_row = app.find_tenant("acme").await.unwrap().id.to_string();
    for (id, refresh, access) in rows {
        let i = seeded.iter().find(|(s, _)| *s == id).unwrap().1;
        let row = id.to_string();
        let open = |purpose, sealed: &[u8]| {
            new_only
                .open(connection_seal_context(purpose, &tenant_row, &row), sealed)
                .unwrap()
        };
        assert_eq!(
            open(sp_broker::crypto::Purpose::RefreshToken, &refresh),
            format!("Atzr|kill-{i}").into_bytes()
        );
        assert_eq!(
            open(sp_broker::crypto::Purpose::AccessToken, &access),
            format!("Atza|kill-{i}").into_bytes()
        );
    }
    eprintln!(
        "drill: keys rotate SIGKILLed with {kills:?} of {total} values resealed, then rerun: \
         {total} values open under the new key alone, {} requests all answered right",
        samples.len()
    );
}
