//! `sp-broker-bench`: how fast sp-broker hands out access tokens, next to the
//! floor of the same server (`GET /healthz`). Run it with `bench/run.sh`; the
//! figures and how to read them are in BENCHMARKS.md.
//!
//! 1. Drops and recreates the database `sp_broker_bench`, applies migrations and
//!    seeds one tenant, one platform API key (`tokens:issue`) and N connections
//!    (default 10,000), each with a sealed refresh token and a sealed access
//!    token valid for one hour, exactly as a finished authorization stores them.
//! 2. Starts the release `sp-broker serve` as a child process on that database
//!    (sandbox Amazon, which is never called: every token is cached),
//!    `SP_BROKER_LOG=warn`, and waits for `/readyz`.
//! 3. Drives it with its own closed-loop HTTP/1.1 load generator (C keep-alive
//!    connections, each sending its next request when the last answer is read;
//!    latency is from writing a request to reading the last byte of its answer):
//!    phase (a) is `GET /healthz`; phase (b) is cache-hit
//!    `POST /v1/connections/{id}/access-token` cycling over all connections
//!    (before the first round, one request per connection loads every token
//!    into the in-memory cache). (a) and (b) run R rounds (default 5), each
//!    after the server and PostgreSQL have gone idle; within a round they
//!    alternate in S slices (default 4) of their timed windows, each after a
//!    short warm-up, and the figures pool everything: the speed of this kind
//!    of machine drifts by tens of percent over tens of seconds, and
//!    alternating puts that drift on both phases alike. Phase (c) stops
//!    the server, starts it again (in-memory cache empty) and asks once per
//!    connection: every answer is read from PostgreSQL (the first 256, which
//!    open the server's pool and verify the key, are not timed), and
//!    `pg_stat_database` counts its transactions. Phase (d) reads the same
//!    rows by a bare primary-key `SELECT` from the benchmark's own sqlx pool:
//!    the yardstick for (c)'s CPU per request.
//! 4. Prints requests per second, p50, p99, the ratios to the floor, the CPU time
//!    per request of the server, the load generator and PostgreSQL, and whether
//!    the targets hold. Exits non-zero if any answer was not 200.
//!
//! The load generator is deliberately minimal (pre-serialized requests, a
//! Content-Length reader, no allocation per request beyond the read buffer) so
//! that it takes as little as possible of the machine from the server.

use clap::Parser;
use secrecy::{ExposeSecret, SecretString};
use sp_broker::amazon::marketplaces::{AccountType, Region};
use sp_broker::app::Services;
use sp_broker::authorization::NewAuthorization;
use sp_broker::clock::SystemClock;
use sp_broker::config::{Config, Settings};
use sp_broker::crypto::KeyRing;
use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

mod lifecycle;

type BoxError = Box<dyn Error + Send + Sync>;

/// The broker re-reads a cached connection's row after this long (the broker's
/// `RECHECK_AFTER`): phase (b) must end within it to be all cache hits.
const BROKER_RECHECK: Duration = Duration::from_secs(30);
const TARGET_RPS_RATIO: f64 = 0.80;
const TARGET_P99: Duration = Duration::from_millis(5);
/// Warm-up of a slice after the first: the connections are open already.
const SLICE_WARMUP: Duration = Duration::from_millis(500);

#[derive(Parser)]
#[command(
    name = "sp-broker-bench",
    about = "Benchmarks sp-broker: /healthz vs cache-hit vs from-PostgreSQL access tokens"
)]
struct Args {
    /// PostgreSQL URL of the benchmark database (dropped and recreated).
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/sp_broker_bench"
    )]
    database_url: String,
    /// The sp-broker binary to benchmark.
    #[arg(
        long,
        env = "BENCH_SERVER_BIN",
        default_value = "target/release/sp-broker"
    )]
    server_bin: PathBuf,
    /// Where the server's own output (warnings and errors) goes.
    #[arg(
        long,
        env = "BENCH_SERVER_LOG",
        default_value = "target/sp-broker-bench-server.log"
    )]
    server_log: PathBuf,
    /// Connections seeded (each with a cached access token).
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 10_000)]
    connections: usize,
    /// Concurrent HTTP connections of the load generator.
    #[arg(long, env = "BENCH_CONCURRENCY", default_value_t = 64)]
    concurrency: usize,
    /// Timed window of phases (a), (b) and (e) per round, seconds (a round stays
    /// within the broker's 30 s re-check).
    #[arg(long, env = "BENCH_SECONDS", default_value_t = 7)]
    seconds: u64,
    /// Warm-up before each timed window (not counted), seconds.
    #[arg(long, env = "BENCH_WARMUP_SECONDS", default_value_t = 2)]
    warmup_seconds: u64,
    /// Rounds of (a) and (b); the table pools them (the machine's speed drifts).
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 5)]
    rounds: u32,
    /// Each round alternates (b) and (a) this many times, splitting their timed
    /// windows into slices, so that drift in the machine's speed falls on both.
    #[arg(long, env = "BENCH_SLICES", default_value_t = 4)]
    slices: u32,
    /// Worker threads of the load generator's runtime.
    #[arg(long, env = "BENCH_CLIENT_THREADS", default_value_t = 2)]
    client_threads: usize,
    /// Profile the server with `perf record -g` over the first round's timed (a) and
    /// (b), writing DIR/a.perf.data and DIR/b.perf.data (perturbs the figures).
    #[arg(long, value_name = "DIR")]
    perf_dir: Option<PathBuf>,
    /// `tokens`: (a)–(d) above. `lifecycle`: the ops pages and the
    /// connection list at --connections, and one health-sweep pass over them.
    #[arg(long, value_enum, default_value_t = Scenario::Tokens)]
    scenario: Scenario,
    /// The sweep's budget in the lifecycle scenario (SP_BROKER_SWEEP_RATE).
    #[arg(long, default_value_t = 500)]
    sweep_rate: u32,
    /// Requests per page measured in the lifecycle scenario.
    #[arg(long, default_value_t = 100)]
    page_requests: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Tokens,
    Lifecycle,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?;
    match args.scenario {
        Scenario::Tokens => runtime.block_on(run(args)),
        Scenario::Lifecycle => runtime.block_on(lifecycle::run(args)),
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let timed = Duration::from_secs(args.seconds);
    let warmup = Duration::from_secs(args.warmup_seconds);
    let concurrency = args.concurrency.max(1);

    println!("sp-broker benchmark");
    println!("  machine:   {}", machine());
    println!(
        "  server:    {} serve (sandbox Amazon, never called), SP_BROKER_LOG=warn, log at {}",
        args.server_bin.display(),
        args.server_log.display()
    );
    println!(
        "  load:      {concurrency} keep-alive HTTP/1.1 connections, closed loop, {} client thread(s), same machine",
        args.client_threads.max(1)
    );
    let slices = args.slices.max(1);
    let slice = timed / slices;
    println!(
        "  phases:    {} round(s) of (a), (b) and (e), each {} s timed in {slices} alternating slice(s) of {:.1} s \
         ({:.1} s warm-up each; {} s for the first (b) of a round); (e) is POST /auth/o2/token (cache hit); (c) one request per connection",
        args.rounds.max(1),
        timed.as_secs(),
        slice.as_secs_f64(),
        SLICE_WARMUP.as_secs_f64(),
        warmup.as_secs(),
    );

    // 1. Seed.
    let started = Instant::now();
    let seeded = seed(&args.database_url, args.connections, false).await?;
    println!(
        "  seeded:    {} connections with sealed refresh and access tokens in {:.1} s",
        seeded.connection_ids.len(),
        started.elapsed().as_secs_f64()
    );
    std::fs::write(&args.server_log, b"")?;
    if let Some(dir) = &args.perf_dir {
        std::fs::create_dir_all(dir)?;
    }

    // 2. Start the server.
    let mut server = Server::start(&args, &seeded.key_spec).await?;
    check_token_answer(server.addr, &seeded).await?;
    // From the first warm-up of a round to the end of its last (b) slice.
    // (b), (a) and (e) take turns, so the last (e) ends this long after the first (b) starts.
    let round_span = warmup + slice + (SLICE_WARMUP + slice) * (3 * slices - 1);
    if round_span >= BROKER_RECHECK {
        println!(
            "  WARNING:   a round's (b) slices end {} s after its re-reads: cached connections get re-read from PostgreSQL during (b)",
            round_span.as_secs()
        );
    }

    // (a) and (b), `rounds` times; the figures pool all rounds.
    let healthz = Plan::healthz(server.addr);
    let tokens = Plan::access_tokens(server.addr, &seeded);
    let lwa = Plan::lwa_tokens(server.addr, &seeded);
    let perf = |phase: &str| {
        args.perf_dir
            .as_ref()
            .map(|d| d.join(format!("{phase}.perf.data")))
    };
    let mut floor = PhaseResult::default();
    let mut hits = PhaseResult::default();
    let mut lwa_hits = PhaseResult::default();
    let mut pass_errors = 0;
    // When the cached entries were last loaded: the broker re-reads an entry
    // from PostgreSQL once it is BROKER_RECHECK old.
    let mut last_load_end: Option<Instant> = None;
    for round in 1..=args.rounds.max(1) {
        // Nothing left over from the round before (the usage flush, say) may
        // run in this round's first slice.
        settle(&server).await;
        match last_load_end {
            // Round 1: one request per connection loads every token into memory.
            None => {
                let pass =
                    run_phase(&server, &tokens, concurrency, Limit::Count(tokens.len())).await?;
                println!(
                    "  warm-up:   one request per connection ({} loads from PostgreSQL) took {:.2} s",
                    pass.requests,
                    pass.window.as_secs_f64()
                );
                pass_errors += pass.errors;
                last_load_end = Some(Instant::now());
            }
            // Later rounds: wait until every entry is due for its re-read, so
            // that all re-reads happen in the first warm-up and none in a timed slice.
            Some(end) => {
                tokio::time::sleep_until((end + BROKER_RECHECK + Duration::from_secs(1)).into())
                    .await;
                last_load_end = Some(Instant::now() + warmup);
            }
        }
        let mut a = PhaseResult::default();
        let mut b = PhaseResult::default();
        let mut e = PhaseResult::default();
        for index in 0..slices {
            let first = round == 1 && index == 0;
            let limit = Limit::timed(if index == 0 { warmup } else { SLICE_WARMUP }, slice);
            profile(&server, limit, perf("b").filter(|_| first));
            b.merge(run_phase(&server, &tokens, concurrency, limit).await?);
            let limit = Limit::timed(SLICE_WARMUP, slice);
            profile(&server, limit, perf("a").filter(|_| first));
            a.merge(run_phase(&server, &healthz, concurrency, limit).await?);
            let limit = Limit::timed(SLICE_WARMUP, slice);
            e.merge(run_phase(&server, &lwa, concurrency, limit).await?);
        }
        println!(
            "  round {round}:   (a) {:>6.0} req/s, p99 {} ms   (b) {:>6.0} req/s, p99 {} ms   (b)/(a) {:.1} %   server RSS {} MiB",
            a.rps(),
            ms(a.percentile(99.0)),
            b.rps(),
            ms(b.percentile(99.0)),
            b.rps() / a.rps() * 100.0,
            server.rss_mib()
        );
        println!(
            "             (e) {:>6.0} req/s, p99 {} ms   (e)/(b) {:.1} %",
            e.rps(),
            ms(e.percentile(99.0)),
            e.rps() / b.rps() * 100.0
        );
        floor.merge(a);
        hits.merge(b);
        lwa_hits.merge(e);
    }

    // (c) restart: the in-memory cache is empty, every answer comes from PostgreSQL.
    server.stop()?;
    let server = Server::start(&args, &seeded.key_spec).await?;
    // Its first requests open the server's pool and verify the API key, as
    // (d) opens its own pool first: those connections are not timed.
    let (warm_ids, cold_ids) = seeded.miss_ids();
    let warm = Plan::access_tokens_for(server.addr, &seeded, warm_ids);
    pass_errors += run_phase(&server, &warm, concurrency, Limit::Count(warm.len()))
        .await?
        .errors;
    let tokens = Plan::access_tokens_for(server.addr, &seeded, cold_ids);
    let stats = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&args.database_url)
        .await?;
    let transactions_before = pg_transactions(&stats).await?;
    let misses = run_phase(&server, &tokens, concurrency, Limit::Count(tokens.len())).await?;
    let transactions = pg_transactions(&stats).await? - transactions_before;
    // (d) the same rows read by a bare primary-key SELECT, from this process.
    settle(&server).await;
    let bare = bare_selects(&server, &args.database_url, &seeded, concurrency).await?;
    let resident = server.rss_mib();
    drop(server);

    // 4. Report.
    println!();
    print_table(&[
        ("(a) GET /healthz (floor)", &floor),
        ("(b) access-token, cache hit", &hits),
        ("(e) /auth/o2/token, cache hit", &lwa_hits),
        ("(c) access-token, from PostgreSQL", &misses),
        ("(d) bare primary-key SELECT", &bare),
    ]);
    println!(
        "((d): `select * from connection where id = $1`, one per connection, from the benchmark's\n \
         own sqlx pool of {BARE_POOL} connections; its \"load gen\" column is the CPU a client spends on it.)"
    );
    println!();
    let per_request = |cpu: f64, r: &PhaseResult| cpu * 1e6 / (r.requests.max(1) as f64);
    let miss_cpu = per_request(misses.cpu.server, &misses);
    let miss_budget =
        per_request(floor.cpu.server, &floor) + 1.5 * per_request(bare.cpu.client, &bare);
    let statements = transactions as f64 / misses.requests.max(1) as f64;
    println!(
        "Target (c) sp-broker CPU per request <= (a)'s + 1.5 x (d)'s client: {miss_cpu:.1} <= {miss_budget:.1} µs -> {}",
        if miss_cpu <= miss_budget { "MET" } else { "NOT MET" }
    );
    println!(
        "Target (c) at most one PostgreSQL round trip per request: {statements:.2} transactions per request \
         ({transactions} in all, pg_stat_database) -> {}",
        if statements <= 1.05 { "MET" } else { "NOT MET" }
    );
    println!(
        "Server RSS after (c) and (d), {} cached connections: {resident} MiB",
        seeded.connection_ids.len()
    );
    let rps_ratio = hits.rps() / floor.rps();
    let p99 = hits.percentile(99.0);
    let rps_met = rps_ratio >= TARGET_RPS_RATIO;
    let p99_met = p99 <= TARGET_P99;
    println!(
        "Target (b) throughput >= {:.0} % of the floor: {:.1} % -> {}",
        TARGET_RPS_RATIO * 100.0,
        rps_ratio * 100.0,
        if rps_met { "MET" } else { "NOT MET" }
    );
    println!(
        "Target (b) p99 <= {} ms at {concurrency} connections: {} ms -> {}",
        TARGET_P99.as_millis(),
        ms(p99),
        if p99_met { "MET" } else { "NOT MET" }
    );
    let lwa_ratio = lwa_hits.rps() / hits.rps();
    println!(
        "Target (e) LWA-compatible throughput within 10 % of (b)'s: {:.1} % -> {}",
        lwa_ratio * 100.0,
        if lwa_ratio >= 0.90 { "MET" } else { "NOT MET" }
    );
    let errors = floor.errors + pass_errors + hits.errors + misses.errors + lwa_hits.errors;
    if errors > 0 {
        return Err(
            format!("{errors} requests did not answer 200: the figures are not valid").into(),
        );
    }
    Ok(())
}

/// Committed and rolled-back transactions of the benchmark database so far
/// (each statement outside a transaction is one). Waits first for the
/// backends to report: PostgreSQL flushes their counts about once a second.
async fn pg_transactions(pool: &sqlx::PgPool) -> Result<i64, BoxError> {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("select pg_stat_clear_snapshot()")
        .execute(pool)
        .await?;
    Ok(sqlx::query_scalar(
        "select (xact_commit + xact_rollback)::bigint from pg_stat_database where datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

/// Connections whose (c) requests only warm the restarted server up.
const MISS_WARMUP: usize = 256;

/// The benchmark's own pool for (d): as many connections as the server's.
const BARE_POOL: u32 = 20;

/// (d): one `select *` by primary key per connection, `concurrency` at a time.
async fn bare_selects(
    server: &Server,
    database_url: &str,
    seeded: &Seeded,
    concurrency: usize,
) -> Result<PhaseResult, BoxError> {
    // The server's own pool settings, so that (d) measures what a query costs it.
    let pool = sp_broker::db::pool_options()
        .max_connections(BARE_POOL)
        .min_connections(BARE_POOL)
        .connect(database_url)
        .await?;
    // Every pooled connection opened and its statement prepared before timing.
    let mut warm = Vec::new();
    for i in 0..BARE_POOL as usize {
        let pool = pool.clone();
        let id = seeded.connection_ids[i % seeded.connection_ids.len()];
        warm.push(tokio::spawn(async move { select_row(&pool, id).await }));
    }
    for task in warm {
        task.await??;
    }
    let ids = Arc::new(seeded.miss_ids().1.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let pid = server.child.id();
    let before = cpu_sample(pid);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (pool, ids, next) = (pool.clone(), Arc::clone(&ids), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                let sent = Instant::now();
                select_row(&pool, *id).await?;
                latencies.push(sent.elapsed().as_nanos() as u64);
            }
            Ok::<_, BoxError>(latencies)
        }));
    }
    let mut latencies_ns = Vec::new();
    for task in tasks {
        latencies_ns.extend(task.await??);
    }
    let window = started.elapsed();
    let cpu = cpu_sample(pid) - before;
    latencies_ns.sort_unstable();
    pool.close().await;
    Ok(PhaseResult {
        requests: latencies_ns.len(),
        errors: 0,
        window,
        latencies_ns,
        answer_bytes: 0,
        request_bytes: 0,
        cpu,
    })
}

async fn select_row(pool: &sqlx::PgPool, id: Uuid) -> Result<(), BoxError> {
    use sqlx::Row;
    let row = sqlx::query("select * from connection where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await?;
    let _: Uuid = row.try_get("id")?;
    Ok(())
}

/// The Linux machine in one line: CPU model and count, memory.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB")
}

// ---------------------------------------------------------------------------
// Seeding
// ---------------------------------------------------------------------------

struct Seeded {
    key_spec: SecretString,
    api_key: SecretString,
    connection_ids: Vec<Uuid>,
    /// The plaintext access token of the first connection (to check an answer).
    first_access_token: SecretString,
}

impl Seeded {
    /// The connections whose (c) requests warm the restarted server up, and
    /// the rest, timed in (c) and read again in (d).
    fn miss_ids(&self) -> (&[Uuid], &[Uuid]) {
        self.connection_ids
            .split_at(MISS_WARMUP.min(self.connection_ids.len() / 2))
    }
}

/// A fresh database with one tenant, one API key and `count` connections whose
/// tokens are sealed as the authorization flow seals them.
/// With `sandbox_grants`, the sandbox Amazon also knows every refresh token
/// (as if each seller had consented), so refreshes succeed.
async fn seed(database_url: &str, count: usize, sandbox_grants: bool) -> Result<Seeded, BoxError> {
    recreate_database(database_url).await?;
    let pool = sp_broker::db::connect(database_url).await?;
    sp_broker::db::migrate(&pool).await?;

    let key_spec = KeyRing::generate_key_spec();
    let settings = Settings {
        database_url: database_url.to_owned(),
        listen: "127.0.0.1:0".into(),
        public_url: "http://127.0.0.1:1".into(),
        app_draft: "false".into(),
        log: "warn".into(),
        log_format: "text".into(),
        encryption_keys: Some(key_spec.expose_secret().to_owned()),
        ..Settings::default()
    };
    let config = Config::from_settings(&settings)?;
    let keys = config.load_key_ring()?;
    sp_broker::db::key_checks::verify_key_ring(&pool, &keys, time::OffsetDateTime::now_utc())
        .await?;
    let services = Services::build(config, pool, keys, Arc::new(SystemClock))?;

    let tenant = services.tenants.create("bench", Some("Benchmark")).await?;
    let api_key = services
        .api_keys
        .create(
            "bench",
            None,
            &["tokens:issue".into(), "connections:read".into()],
            "bench",
        )
        .await?;

    // Batches of 500 in one transaction each, a few transactions at a time.
    let batches: Vec<(usize, usize)> = (0..count)
        .step_by(500)
        .map(|start| (start, (start + 500).min(count)))
        .collect();
    let mut connection_ids = Vec::with_capacity(count);
    let mut first_access_token = None;
    for group in batches.chunks(8) {
        let mut tasks = Vec::new();
        for &(start, end) in group {
            let services = services.clone();
            let tenant_id = tenant.id;
            tasks.push(tokio::spawn(async move {
                seed_batch(&services, tenant_id, start, end, sandbox_grants).await
            }));
        }
        for task in tasks {
            let (ids, first) = task.await??;
            connection_ids.extend(ids);
            first_access_token = first_access_token.or(first);
        }
    }
    services.db.close().await;
    Ok(Seeded {
        key_spec,
        api_key,
        connection_ids,
        first_access_token: first_access_token.ok_or("no connection seeded")?,
    })
}

async fn recreate_database(database_url: &str) -> Result<(), BoxError> {
    use sqlx::Connection;
    let mut admin = url::Url::parse(database_url)?;
    let name = admin.path().trim_start_matches('/').to_owned();
    if name.is_empty() || name.contains('"') {
        return Err(format!("database URL must name a database: {database_url}").into());
    }
    let _ = BENCH_DB.set(name.clone());
    admin.set_path("/postgres");
    let mut conn = sqlx::PgConnection::connect(admin.as_str()).await?;
    sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Connections `start..end`, stored as a finished authorization stores them.
async fn seed_batch(
    services: &Services,
    tenant_id: Uuid,
    start: usize,
    end: usize,
    sandbox_grants: bool,
) -> Result<(Vec<Uuid>, Option<SecretString>), BoxError> {
    let expires_at = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    // LWA tokens are a few hundred characters: 300 random bytes, base64url.
    let sellers: Vec<(String, SecretString, SecretString)> = (start..end)
        .map(|i| {
            (
                format!("ABENCH{i:08}"),
                prefixed("Atzr|", sp_broker::secrets::random_token(300)),
                prefixed("Atza|", sp_broker::secrets::random_token(300)),
            )
        })
        .collect();
    let authorizations: Vec<NewAuthorization<'_>> = sellers
        .iter()
        .map(
            |(selling_partner_id, refresh_token, access_token)| NewAuthorization {
                tenant_id,
                selling_partner_id,
                region: Region::Na,
                account_type: AccountType::Seller,
                marketplace_id: "ATVPDKIKX0DER",
                refresh_token,
                access_token,
                access_token_expires_at: expires_at,
                actor: "bench",
                flow: "bench",
            },
        )
        .collect();
    let stored = services.authorizer.store_all(&authorizations).await?;
    if sandbox_grants {
        let hashes: Vec<Vec<u8>> = sellers
            .iter()
            .map(|(_, refresh, _)| sp_broker::secrets::sha256_secret(refresh))
            .collect();
        let ids: Vec<&str> = sellers.iter().map(|(id, _, _)| id.as_str()).collect();
        sqlx::query(
            "insert into sandbox_grant (refresh_token_hash, selling_partner_id, client_id, created_at)
             select unnest($1::bytea[]), unnest($2::text[]), $3, now()",
        )
        .bind(&hashes)
        .bind(&ids)
        .bind(sp_broker::config::SANDBOX_CLIENT_ID)
        .execute(&services.db)
        .await?;
    }
    let first = (start == 0)
        .then(|| sellers.first().map(|(_, _, access)| access.clone()))
        .flatten();
    Ok((stored.into_iter().map(|(id, _)| id).collect(), first))
}

fn prefixed(prefix: &str, token: SecretString) -> SecretString {
    SecretString::from(format!("{prefix}{}", token.expose_secret()))
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `sp-broker serve` on a free port and waits until `/readyz` answers 200.
    async fn start(args: &Args, key_spec: &SecretString) -> Result<Server, BoxError> {
        Server::start_with(args, key_spec, &[]).await
    }

    /// `start` with more settings (name, value).
    async fn start_with(
        args: &Args,
        key_spec: &SecretString,
        settings: &[(&str, String)],
    ) -> Result<Server, BoxError> {
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&args.server_log)?;
        let mut command = Command::new(&args.server_bin);
        command.arg("serve");
        // Only what this benchmark sets: no SP_BROKER_* from the caller's shell.
        for (name, _) in std::env::vars() {
            if name.starts_with("SP_BROKER_") {
                command.env_remove(name);
            }
        }
        command
            .env("DATABASE_URL", &args.database_url)
            .env("SP_BROKER_ENCRYPTION_KEYS", key_spec.expose_secret())
            .env("SP_BROKER_LISTEN", addr.to_string())
            .env("SP_BROKER_PUBLIC_URL", format!("http://{addr}"))
            .env("SP_BROKER_AMAZON", "sandbox")
            .env("SP_BROKER_LOG", "warn")
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", args.server_bin.display()))?;
        let mut server = Server { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                return Err(format!(
                    "sp-broker exited at start-up ({status}); see {}",
                    args.server_log.display()
                )
                .into());
            }
            if let Ok(mut conn) = HttpConn::connect(addr).await {
                let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
                if matches!(conn.round_trip(request.as_bytes()).await, Ok(200)) {
                    return Ok(server);
                }
            }
            if Instant::now() >= deadline {
                return Err("sp-broker did not become ready within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Graceful stop (SIGTERM, as an orchestrator would), then waits for exit.
    fn stop(&mut self) -> Result<(), BoxError> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                self.child.kill()?;
                return Err("sp-broker did not stop within 120 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Server {
    /// Resident memory of the server process, MiB (0 if unknown).
    fn rss_mib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) && self.stop().is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU seconds used so far by the server, this process (the load generator)
/// and PostgreSQL (every process named `postgres`).
#[derive(Clone, Copy, Default)]
struct Cpu {
    server: f64,
    client: f64,
    postgres: f64,
    /// Busy CPU time of the whole machine (`/proc/stat`).
    machine: f64,
}

impl Cpu {
    /// CPU time taken by anything else than the three (other jobs on the machine).
    fn others(&self) -> f64 {
        (self.machine - self.server - self.client - self.postgres).max(0.0)
    }
}

impl std::ops::Add for Cpu {
    type Output = Cpu;
    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            server: self.server + other.server,
            client: self.client + other.client,
            postgres: self.postgres + other.postgres,
            machine: self.machine + other.machine,
        }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, before: Cpu) -> Cpu {
        Cpu {
            server: self.server - before.server,
            client: self.client - before.client,
            postgres: self.postgres - before.postgres,
            machine: self.machine - before.machine,
        }
    }
}

/// The benchmark database's name: PostgreSQL backends of other databases (other
/// people's tests, say) count as "others", not as this benchmark's PostgreSQL.
static BENCH_DB: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn cpu_sample(pid: u32) -> Cpu {
    let postgres = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres")
                && std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| is_bench_postgres(&String::from_utf8_lossy(&c)))
        })
        .map(|e| process_cpu_seconds(&e.path().join("stat").to_string_lossy()))
        .sum();
    Cpu {
        server: process_cpu_seconds(&format!("/proc/{pid}/stat")),
        client: process_cpu_seconds("/proc/self/stat"),
        postgres,
        machine: machine_busy_seconds(),
    }
}

/// Whether a PostgreSQL process (by its title, e.g. `postgres: 15/main:
/// postgres sp_broker_bench 127.0.0.1(5678) idle`) works for the benchmark:
/// the postmaster and shared workers (WAL writer, checkpointer…) do; a backend
/// or autovacuum worker does only for the benchmark database.
fn is_bench_postgres(title: &str) -> bool {
    let Some(rest) = title.strip_prefix("postgres: ") else {
        return true; // the postmaster: its command line is left as started
    };
    // Drop the optional cluster name (`15/main: `).
    let rest = rest.split_once(": ").map_or(rest, |(_, r)| r);
    let words: Vec<&str> = rest.split_whitespace().collect();
    let bench_db = BENCH_DB.get().map_or("", String::as_str);
    match words.as_slice() {
        ["autovacuum", "worker", db, ..] => *db == bench_db,
        [_user, db, host, ..] if host.contains('(') || host.starts_with("[local]") => {
            *db == bench_db
        }
        _ => true,
    }
}

/// Busy CPU seconds of all cores since boot: the first line of `/proc/stat`
/// minus idle and iowait.
fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

/// utime + stime from a `/proc/<pid>/stat` file (clock ticks of 1/100 s), or 0.
fn process_cpu_seconds(stat_path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(utime), Some(stime)) => (utime + stime) / 100.0,
        _ => 0.0,
    }
}

/// Waits (up to 60 s) until the server and PostgreSQL are idle: under 5 % of a
/// core each over half a second.
async fn settle(server: &Server) {
    let pid = server.child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = cpu_sample(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let used = cpu_sample(pid) - before;
        if used.server < 0.025 && used.postgres < 0.025 {
            return;
        }
        if Instant::now() >= deadline {
            println!("  WARNING:   server or PostgreSQL still busy after 60 s; measuring anyway");
            return;
        }
    }
}

/// With `output`, runs `perf record` on the server over the timed window of `limit`.
fn profile(server: &Server, limit: Limit, output: Option<PathBuf>) {
    let (Some(output), Limit::Until { record_from, end }) = (output, limit) else {
        return;
    };
    let pid = server.child.id().to_string();
    tokio::spawn(async move {
        tokio::time::sleep_until(record_from.into()).await;
        let seconds = (end - record_from).as_secs().to_string();
        let recorded = tokio::task::spawn_blocking(move || {
            Command::new("perf")
                .args(["record", "-q", "-g", "-F", "999", "-p", &pid, "-o"])
                .arg(&output)
                .args(["--", "sleep", &seconds])
                .stdout(Stdio::null())
                .status()
        })
        .await;
        if !matches!(recorded, Ok(Ok(status)) if status.success()) {
            eprintln!("  perf record failed");
        }
    });
}

/// One request for the first seeded connection: the answer must carry the token
/// that was sealed for it (so the benchmark measures real, correct answers).
async fn check_token_answer(addr: SocketAddr, seeded: &Seeded) -> Result<(), BoxError> {
    let plan = Plan::access_tokens(addr, seeded);
    let mut conn = HttpConn::connect(addr).await?;
    let status = conn.round_trip(plan.request(0)).await?;
    let body: serde_json::Value = serde_json::from_slice(conn.body())?;
    let expected = seeded.first_access_token.expose_secret();
    if status != 200 || body["access_token"].as_str() != Some(expected) {
        return Err(format!("access-token check failed: status {status}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Load generator
// ---------------------------------------------------------------------------

/// One keep-alive HTTP/1.1 connection; answers must carry Content-Length
/// (every sp-broker answer does).
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    body: std::ops::Range<usize>,
}

impl HttpConn {
    async fn connect(addr: SocketAddr) -> Result<HttpConn, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: Vec::with_capacity(4096),
            body: 0..0,
        })
    }

    /// Writes one serialized request and reads its whole answer; returns the status.
    async fn round_trip(&mut self, request: &[u8]) -> Result<u16, BoxError> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        loop {
            if let Some(head_end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..head_end])?;
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse::<u16>().ok())
                    .ok_or("malformed status line")?;
                let length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .ok_or("answer without Content-Length")?;
                let total = head_end + 4 + length;
                while self.buf.len() < total {
                    self.read_more().await?;
                }
                if self.buf.len() > total {
                    return Err("unexpected bytes after the answer".into());
                }
                self.body = head_end + 4..total;
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), BoxError> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err("connection closed by the server".into());
        }
        Ok(())
    }

    fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The requests of a phase, serialized once; request `i` is `requests[i % len]`.
struct Plan {
    requests: Arc<Vec<Vec<u8>>>,
}

impl Plan {
    fn healthz(addr: SocketAddr) -> Plan {
        Plan {
            requests: Arc::new(vec![format!(
                "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"
            )
            .into_bytes()]),
        }
    }

    /// One `POST /v1/connections/{id}/access-token` per seeded connection, with
    /// the body a typical caller sends (`{}`: defaults).
    fn access_tokens(addr: SocketAddr, seeded: &Seeded) -> Plan {
        Self::access_tokens_for(addr, seeded, &seeded.connection_ids)
    }

    fn access_tokens_for(addr: SocketAddr, seeded: &Seeded, ids: &[Uuid]) -> Plan {
        let key = seeded.api_key.expose_secret();
        let requests = ids
            .iter()
            .map(|id| {
                format!(
                    "POST /v1/connections/{id}/access-token HTTP/1.1\r\nHost: {addr}\r\n\
                     Authorization: Bearer {key}\r\nContent-Type: application/json\r\n\
                     Content-Length: 2\r\n\r\n{{}}"
                )
                .into_bytes()
            })
            .collect();
        Plan {
            requests: Arc::new(requests),
        }
    }

    /// (e): what an SP-API SDK sends to `POST /auth/o2/token` (the
    /// connection id as refresh token, the API key as client secret).
    fn lwa_tokens(addr: SocketAddr, seeded: &Seeded) -> Plan {
        let key: String =
            url::form_urlencoded::byte_serialize(seeded.api_key.expose_secret().as_bytes())
                .collect();
        let requests = seeded
            .connection_ids
            .iter()
            .map(|id| {
                let body = format!(
                    "grant_type=refresh_token&refresh_token={id}&client_id=amzn1.application-oa2-client.sdk&client_secret={key}"
                );
                format!(
                    "POST /auth/o2/token HTTP/1.1\r\nHost: {addr}\r\n\
                     Content-Type: application/x-www-form-urlencoded\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            })
            .collect();
        Plan {
            requests: Arc::new(requests),
        }
    }

    fn len(&self) -> usize {
        self.requests.len()
    }

    fn request(&self, i: usize) -> &[u8] {
        &self.requests[i % self.requests.len()]
    }
}

#[derive(Clone, Copy)]
enum Limit {
    /// Run until `end`; record requests started from `record_from` on.
    Until { record_from: Instant, end: Instant },
    /// Exactly this many requests (request `i` for `i` in `0..n`), all recorded.
    Count(usize),
}

impl Limit {
    fn timed(warmup: Duration, timed: Duration) -> Limit {
        let record_from = Instant::now() + warmup;
        Limit::Until {
            record_from,
            end: record_from + timed,
        }
    }
}

#[derive(Default)]
struct WorkerResult {
    latencies_ns: Vec<u64>,
    /// Bytes of the last answer (head and body).
    answer_bytes: usize,
    errors: u64,
    first_error: Option<String>,
}

#[derive(Default)]
struct PhaseResult {
    requests: usize,
    errors: u64,
    window: Duration,
    /// Sorted.
    latencies_ns: Vec<u64>,
    /// Size of an answer and of a request on the wire.
    answer_bytes: usize,
    request_bytes: usize,
    /// CPU used over the recorded part of the phase.
    cpu: Cpu,
}

impl PhaseResult {
    /// Pools another run of the same phase into this one.
    fn merge(&mut self, other: PhaseResult) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.window += other.window;
        self.latencies_ns.extend(other.latencies_ns);
        self.latencies_ns.sort_unstable();
        self.answer_bytes = other.answer_bytes;
        self.request_bytes = other.request_bytes;
        self.cpu = self.cpu + other.cpu;
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64()
    }

    /// Nearest-rank percentile.
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies_ns.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies_ns.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies_ns.len()) - 1;
        Duration::from_nanos(self.latencies_ns[index])
    }
}

async fn run_phase(
    server: &Server,
    plan: &Plan,
    concurrency: usize,
    limit: Limit,
) -> Result<PhaseResult, BoxError> {
    let requests = plan.requests.clone();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // CPU used by server and load generator over the recorded part of the phase.
    let pid = server.child.id();
    let sampler = tokio::spawn(async move {
        let (from, to) = match limit {
            Limit::Until { record_from, end } => (Some(record_from), Some(end)),
            Limit::Count(_) => (None, None),
        };
        if let Some(from) = from {
            tokio::time::sleep_until(from.into()).await;
        }
        let before = cpu_sample(pid);
        let after = match to {
            Some(to) => {
                tokio::time::sleep_until(to.into()).await;
                Some(cpu_sample(pid))
            }
            None => None,
        };
        (before, after)
    });
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let requests = requests.clone();
        let next = next.clone();
        let addr = server.addr;
        workers.push(tokio::spawn(async move {
            worker(addr, &requests, &next, limit).await
        }));
    }
    let mut latencies_ns = Vec::new();
    let mut answer_bytes = 0;
    let mut errors = 0;
    let mut first_error = None;
    for worker in workers {
        let result = worker.await??;
        latencies_ns.extend(result.latencies_ns);
        answer_bytes = answer_bytes.max(result.answer_bytes);
        errors += result.errors;
        first_error = first_error.or(result.first_error);
    }
    let finished = Instant::now();
    // Timed phase: the sampler measured the recorded window; counted: start to finish.
    let (before, after) = sampler.await?;
    let after = after.unwrap_or_else(|| cpu_sample(pid));
    let cpu = after - before;
    if let Some(error) = first_error {
        eprintln!("  {errors} failed requests; first: {error}");
    }
    latencies_ns.sort_unstable();
    let window = match limit {
        Limit::Until { record_from, end } => end - record_from,
        Limit::Count(_) => finished - started,
    };
    Ok(PhaseResult {
        requests: latencies_ns.len(),
        errors,
        window,
        latencies_ns,
        answer_bytes,
        request_bytes: plan.request(0).len(),
        cpu,
    })
}

/// One connection's closed loop: take the next request number, send, read the
/// whole answer, record the latency.
async fn worker(
    addr: SocketAddr,
    requests: &[Vec<u8>],
    next: &AtomicUsize,
    limit: Limit,
) -> Result<WorkerResult, BoxError> {
    let mut conn = HttpConn::connect(addr).await?;
    let mut out = WorkerResult::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let record = match limit {
            Limit::Count(n) if i >= n => break,
            Limit::Count(_) => true,
            Limit::Until { end, .. } if started >= end => break,
            Limit::Until { record_from, .. } => started >= record_from,
        };
        let status = conn.round_trip(&requests[i % requests.len()]).await?;
        let latency = started.elapsed();
        out.answer_bytes = conn.buf.len();
        if record {
            out.latencies_ns.push(latency.as_nanos() as u64);
            if status != 200 {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!(
                        "status {status}: {}",
                        String::from_utf8_lossy(conn.body())
                    ));
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn print_table(rows: &[(&str, &PhaseResult)]) {
    let Some((_, floor)) = rows.first() else {
        return;
    };
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "{:<34} {:>8} {:>6} {:>8} {:>7} {:>7} {:>9} {:>9} {:>9}",
        "phase",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "rps/floor",
        "p50/floor",
        "p99/floor"
    );
    for (name, r) in rows {
        println!(
            "{:<34} {:>8} {:>6} {:>8.0} {:>7} {:>7} {:>8.1}% {:>8.2}x {:>8.2}x",
            name,
            r.requests,
            r.errors,
            r.rps(),
            ms(r.percentile(50.0)),
            ms(r.percentile(99.0)),
            r.rps() / floor.rps() * 100.0,
            ratio(r.percentile(50.0), floor.percentile(50.0)),
            ratio(r.percentile(99.0), floor.percentile(99.0)),
        );
    }

    // Where the machine's CPU went, per request.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!();
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "CPU per request (µs) / bytes",
        "sp-broker",
        "load gen",
        "postgres",
        "others",
        "req B",
        "answer B"
    );
    for (name, r) in rows {
        let per_request = |cpu: f64| cpu * 1e6 / (r.requests.max(1) as f64);
        println!(
            "{:<34} {:>10.1} {:>10.1} {:>10.1} {:>9.1}% {:>8} {:>8}",
            name,
            per_request(r.cpu.server),
            per_request(r.cpu.client),
            per_request(r.cpu.postgres),
            r.cpu.others() / (r.window.as_secs_f64() * cores) * 100.0,
            r.request_bytes,
            r.answer_bytes,
        );
    }
    println!(
        "(CPU time, user + system, in the timed windows divided by their requests: the sp-broker\n \
         process, the load generator, and PostgreSQL (the benchmark database's backends and the\n \
         shared processes); the {cores} cores give {:.1} µs per request at the floor's rate.\n \
         others: share of the machine's CPU taken by anything else meanwhile; above a few % the\n \
         figures are disturbed.)",
        cores * 1e6 / floor.rps()
    );
}
