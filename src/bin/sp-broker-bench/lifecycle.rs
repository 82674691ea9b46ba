//! The lifecycle scenario (issue #5): with `--connections` seeded (100,000
//! for the figures in BENCHMARKS.md), in a mix of states,
//!
//! 1. `/ops` (first page), a filtered `/ops` page deep in the list and
//!    `GET /v1/tenants/bench/connections?status=needs_reauth`: p50 and p99 of
//!    `--page-requests` sequential requests each, before and after the sweep;
//! 2. one `sp-broker sweep` pass over every active connection (all due),
//!    against the sandbox Amazon of the running server, with
//!    `SP_BROKER_SWEEP_RATE=--sweep-rate`: token-endpoint calls in the busiest
//!    one-second window (sliding, from the refresh history), and the pass's
//!    own CPU and PostgreSQL transactions per connection.

use super::*;

/// Every 10th connection needs reauthorization, every 50th (another) is degraded.
const NEEDS_REAUTH_EVERY: i64 = 10;
const DEGRADED_EVERY: i64 = 50;
const TARGET_PAGE: Duration = Duration::from_millis(300);

pub async fn run(args: Args) -> Result<(), BoxError> {
    println!("sp-broker benchmark: lifecycle (ops pages, connection list, health sweep)");
    println!("  machine:   {}", machine());
    let started = Instant::now();
    let seeded = seed(&args.database_url, args.connections, true).await?;
    let stats = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await?;
    shape_states(&stats).await?;
    println!(
        "  seeded:    {} connections (1 in {NEEDS_REAUTH_EVERY} needs_reauth, 1 in {DEGRADED_EVERY} degraded, \
         all last refreshed 2 days ago) with sandbox grants in {:.1} s",
        seeded.connection_ids.len(),
        started.elapsed().as_secs_f64()
    );
    std::fs::write(&args.server_log, b"")?;
    let server = Server::start_with(
        &args,
        &seeded.key_spec,
        &[("SP_BROKER_SWEEP_INTERVAL_SECONDS", "0".into())],
    )
    .await?;
    let pages = Pages::new(&args, &seeded, &server, &stats).await?;

    let before = pages.measure(args.page_requests).await?;
    let sweep = sweep_pass(&args, &seeded, &server, &stats).await?;
    let after = pages.measure(args.page_requests).await?;
    drop(server);

    println!();
    println!(
        "{:<58} {:>9} {:>9} {:>9} {:>9}",
        "page (sequential requests)", "p50 ms", "p99 ms", "p50 ms", "p99 ms"
    );
    println!(
        "{:<58} {:>19} {:>19}",
        "", "before the sweep", "after (+refreshes)"
    );
    let mut met = true;
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        println!(
            "{name:<58} {:>9} {:>9} {:>9} {:>9}",
            ms(b.percentile(50.0)),
            ms(b.percentile(99.0)),
            ms(a.percentile(50.0)),
            ms(a.percentile(99.0)),
        );
        met &= [b, a].iter().all(|r| r.percentile(99.0) <= TARGET_PAGE);
    }
    println!(
        "Target each page's p50 and p99 < {} ms at {} connections -> {}",
        TARGET_PAGE.as_millis(),
        seeded.connection_ids.len(),
        if met { "MET" } else { "NOT MET" }
    );
    println!();
    sweep.print(args.sweep_rate);
    if sweep.errors > 0 || before.iter().chain(&after).any(|(_, r)| r.errors > 0) {
        return Err("some requests did not answer 200: the figures are not valid".into());
    }
    Ok(())
}

/// The mix of states the dashboard filters on, and every active connection
/// due for the sweep; status changes spread over the last days.
async fn shape_states(pool: &sqlx::PgPool) -> Result<(), BoxError> {
    sqlx::query(
        "with numbered as (select id, row_number() over (order by id) as n from connection)
         update connection c set
             last_refresh_at = now() - interval '2 days',
             status_changed_at = now() - make_interval(secs => numbered.n * 3),
             status = case when numbered.n % $1 = 0 then 'needs_reauth' else 'active' end,
             status_reason = case when numbered.n % $1 = 0 then 'invalid_grant' end,
             last_error_code = case when numbered.n % $1 = 0 then 'invalid_grant'
                                    when numbered.n % $2 = 1 then 'verification_failed' end,
             last_error_message = case when numbered.n % $1 = 0 then 'Amazon no longer accepts this authorization'
                                       when numbered.n % $2 = 1 then 'Amazon answered 403 to getMarketplaceParticipations' end,
             last_error_at = case when numbered.n % $1 = 0 or numbered.n % $2 = 1 then now() end
         from numbered where c.id = numbered.id",
    )
    .bind(NEEDS_REAUTH_EVERY)
    .bind(DEGRADED_EVERY)
    .execute(pool)
    .await?;
    sqlx::query("analyze connection").execute(pool).await?;
    Ok(())
}

/// The three pages, with an operator's session and the API key.
struct Pages {
    operator: reqwest::Client,
    api: reqwest::Client,
    api_key: String,
    urls: Vec<(String, String)>,
}

impl Pages {
    async fn new(
        args: &Args,
        seeded: &Seeded,
        server: &Server,
        pool: &sqlx::PgPool,
    ) -> Result<Pages, BoxError> {
        let base = format!("http://{}", server.addr);
        let link = cli(args, seeded, server, &["ops-link", "--user", "bench"])?;
        let operator = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let login = operator.get(link.trim()).send().await?;
        if login.status() != 303 {
            return Err(format!("the ops link answered {}", login.status()).into());
        }
        // Half-way down the tenant's list, newest status change first: the
        // cursor the dashboard's own Next links carry.
        let (at, id): (time::OffsetDateTime, Uuid) = sqlx::query_as(
            "select status_changed_at, id from connection
             order by status_changed_at desc, id desc offset $1 limit 1",
        )
        .bind((seeded.connection_ids.len() / 2) as i64)
        .fetch_one(pool)
        .await?;
        let deep = format!(
            "/ops?tenant=bench&health=all&after={}.{id}",
            at.unix_timestamp_nanos()
        );
        let urls = vec![
            (
                "GET /ops (first page: needs attention)".to_owned(),
                format!("{base}/ops"),
            ),
            (
                format!(
                    "GET /ops, tenant + health=all, {} rows deep",
                    seeded.connection_ids.len() / 2
                ),
                format!("{base}{deep}"),
            ),
            (
                "GET /v1/tenants/bench/connections?status=needs_reauth".to_owned(),
                format!("{base}/v1/tenants/bench/connections?status=needs_reauth"),
            ),
        ];
        Ok(Pages {
            operator,
            api: reqwest::Client::new(),
            api_key: seeded.api_key.expose_secret().to_owned(),
            urls,
        })
    }

    async fn measure(&self, requests: usize) -> Result<Vec<(String, PhaseResult)>, BoxError> {
        let mut results = Vec::new();
        for (i, (name, url)) in self.urls.iter().enumerate() {
            let mut result = PhaseResult::default();
            let started = Instant::now();
            // Five untimed requests first: pool connections, plans.
            for n in 0..requests + 5 {
                let request = if i == 2 {
                    self.api.get(url).bearer_auth(&self.api_key)
                } else {
                    self.operator.get(url)
                };
                let sent = Instant::now();
                let response = request.send().await?;
                let ok = response.status() == 200;
                let body = response.bytes().await?;
                if n >= 5 {
                    result.latencies_ns.push(sent.elapsed().as_nanos() as u64);
                    result.requests += 1;
                    if !ok || body.is_empty() {
                        result.errors += 1;
                    }
                }
            }
            result.window = started.elapsed();
            result.latencies_ns.sort_unstable();
            results.push((name.clone(), result));
        }
        Ok(results)
    }
}

/// Runs `sp-broker ARGS` against the benchmark's database and server; its stdout.
fn cli(
    args: &Args,
    seeded: &Seeded,
    server: &Server,
    cli_args: &[&str],
) -> Result<String, BoxError> {
    let output = sp_broker_command(args, seeded, server)
        .args(cli_args)
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!("sp-broker {} failed: {}", cli_args.join(" "), output.status).into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn sp_broker_command(args: &Args, seeded: &Seeded, server: &Server) -> Command {
    let mut command = Command::new(&args.server_bin);
    for (name, _) in std::env::vars() {
        if name.starts_with("SP_BROKER_") {
            command.env_remove(name);
        }
    }
    command
        .env("DATABASE_URL", &args.database_url)
        .env("SP_BROKER_ENCRYPTION_KEYS", seeded.key_spec.expose_secret())
        .env("SP_BROKER_PUBLIC_URL", format!("http://{}", server.addr))
        .env("SP_BROKER_AMAZON", "sandbox")
        .env("SP_BROKER_LOG", "warn")
        .stdin(Stdio::null());
    command
}

struct SweepFigures {
    counts: String,
    due: i64,
    wall: Duration,
    sweep_cpu: f64,
    server_cpu: f64,
    postgres_cpu: f64,
    transactions: i64,
    refreshes: usize,
    busiest_window: usize,
    errors: u64,
}

impl SweepFigures {
    fn print(&self, rate: u32) {
        let per = |x: f64| x / self.due.max(1) as f64;
        println!(
            "Sweep pass (`sp-broker sweep`, SP_BROKER_SWEEP_RATE={rate}): {}",
            self.counts.trim()
        );
        println!(
            "  {} due connections in {:.1} s ({:.0} refreshes/s); {} token-endpoint calls recorded",
            self.due,
            self.wall.as_secs_f64(),
            self.refreshes as f64 / self.wall.as_secs_f64().max(1e-9),
            self.refreshes
        );
        println!(
            "  CPU per connection: the sweep process {:.0} µs (its own overhead: claims, pacing, the \
             refresh client and write-back); the server {:.0} µs (the sandbox Amazon answering); PostgreSQL {:.0} µs",
            per(self.sweep_cpu) * 1e6,
            per(self.server_cpu) * 1e6,
            per(self.postgres_cpu) * 1e6,
        );
        println!(
            "  PostgreSQL transactions per connection: {:.2} ({} in all, both processes: the sandbox's own \
             grant lookup and token insert included)",
            per(self.transactions as f64),
            self.transactions
        );
        println!(
            "Target the budget is never exceeded: busiest one-second window (sliding) {} calls <= {rate} -> {}",
            self.busiest_window,
            if self.busiest_window <= rate as usize { "MET" } else { "NOT MET" }
        );
    }
}

async fn sweep_pass(
    args: &Args,
    seeded: &Seeded,
    server: &Server,
    pool: &sqlx::PgPool,
) -> Result<SweepFigures, BoxError> {
    let due: i64 = sqlx::query_scalar("select count(*) from connection where status = 'active'")
        .fetch_one(pool)
        .await?;
    settle(server).await;
    let started_at = time::OffsetDateTime::now_utc();
    let transactions_before = pg_transactions(pool).await?;
    let before = cpu_sample(server.child.id());
    let started = Instant::now();
    let mut child = sp_broker_command(args, seeded, server)
        .arg("sweep")
        .env("SP_BROKER_SWEEP_RATE", args.sweep_rate.to_string())
        .env("SP_BROKER_SWEEP_STALE_AFTER_SECONDS", "3600")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    // The pass's CPU, sampled until it exits (the last ≤ 100 ms are lost).
    let mut sweep_cpu = 0.0;
    let pid = child.id();
    while child.try_wait()?.is_none() {
        sweep_cpu = process_cpu_seconds(&format!("/proc/{pid}/stat")).max(sweep_cpu);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed();
    let after = cpu_sample(server.child.id());
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(format!("sp-broker sweep failed: {}", output.status).into());
    }
    let transactions = pg_transactions(pool).await? - transactions_before;
    let calls: Vec<time::OffsetDateTime> =
        sqlx::query_scalar("select at from refresh_event where at >= $1 order by at")
            .bind(started_at)
            .fetch_all(pool)
            .await?;
    let mut busiest = 0;
    let mut start = 0;
    for end in 0..calls.len() {
        while calls[end] - calls[start] >= time::Duration::SECOND {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    let cpu = after - before;
    let counts = String::from_utf8(output.stdout)?;
    let failed = !counts.contains("\"failed\":0") || !counts.contains("\"needs_reauth\":0");
    Ok(SweepFigures {
        counts,
        due,
        wall,
        sweep_cpu,
        server_cpu: cpu.server,
        postgres_cpu: cpu.postgres,
        transactions,
        refreshes: calls.len(),
        busiest_window: busiest,
        errors: u64::from(failed),
    })
}
