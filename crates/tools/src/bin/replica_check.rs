//! `replica-check`: proof that the lifecycle invariant holds across replicas.
//!
//! Starts several `integration-service` processes on one fresh PostgreSQL database, drives thousands of
//! concurrent creates, close-wons and close-losts over a small set of customers with competing owners
//! through all of them, then checks the database:
//! - never two open leads or two open opportunities for a key;
//! - every acknowledged response's record is present, with the reported status in its history;
//! - every record a `REPLACED` answer closed really is `Close Lost`, by that request;
//! - every close the service acknowledged is final in the database;
//! - every record's history is complete: a creation entry, an unbroken chain, ending at its status.
//!
//! It prints the counts it checked and exits 1 on any violation.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use store_postgres::scratch::ScratchDb;
use tools::{CLOSE_WON, CREATE, LOST_LEAD, LOST_OPP};

#[derive(Parser, Debug)]
#[command(name = "replica-check", about = "Drive several replicas on one PostgreSQL database and check the invariant")]
struct Args {
    /// The integration-service binary [default: next to this one]
    #[arg(long)]
    service_bin: Option<PathBuf>,
    /// Service processes to start on the one database
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Requests to send in all
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Distinct customers (matching keys) the requests compete for
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Distinct relationship managers competing for them
    #[arg(long, default_value_t = 3)]
    owners: usize,
    /// Requests in flight at once
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seed of the request mix
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the database afterwards, for inspection
    #[arg(long)]
    keep: bool,
    /// Break the database before checking (drop the unique index, add a second open record, add a count no
    /// change made), to show the check fails when the invariant does
    #[arg(long, hide = true)]
    sabotage: bool,
}

async fn sabotage(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("DROP INDEX records_one_open_per_key").execute(pool).await?;
    sqlx::query(
        "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, product,
             channel, created_at, updated_at)
         SELECT 'sabotage', 'LEAD', 'New Lead', 'RC0000/CARD', 'RM999', 'NTB', 'RC0000', 'CARD', 'X', now(), now()",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO records (id, record_type, status, match_key, owner_id, customer_type, id_number, product,
             channel, created_at, updated_at)
         SELECT 'sabotage2', 'LEAD', 'New Lead', 'RC0000/CARD', 'RM998', 'NTB', 'RC0000', 'CARD', 'X', now(), now()",
    )
    .execute(pool)
    .await?;
    // A count no change made.
    sqlx::query(
        "INSERT INTO report_rejections_new (source, day, reason, channel, product, n)
         VALUES ('records', current_date, 'SABOTAGE', 'X', 'CARD', 1)",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// splitmix64: a small, seedable generator, enough to vary the request mix reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Replica {
    child: Child,
    base: String,
}

fn start(bin: &PathBuf, url: &str) -> Result<Replica, String> {
    let (child, addr, out) = tools::start_service(bin, url, &[("RUST_LOG", "warn,integration_service::startup=info")])?;
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    Ok(Replica { child, base: format!("http://{addr}") })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Create,
    CloseWon,
    CloseLost,
}

/// One answered request.
struct Ack {
    kind: Kind,
    request_id: String,
    status: u16,
    body: Value,
    /// The body as received, for byte-for-byte comparison of replays.
    text: String,
    idempotency_key: Option<String>,
    replayed: bool,
}

/// A request sent, kept so it can be sent again with the same `Idempotency-Key`.
#[derive(Clone)]
struct Sent {
    kind: Kind,
    path: &'static str,
    body: Value,
    key: String,
}

#[derive(Default)]
struct Known {
    leads: Vec<String>,
    opportunities: Vec<String>,
    /// The id the last answered create gave, per customer (`idNumber`): the record likeliest to be still open.
    latest_lead: BTreeMap<String, String>,
    latest_opportunity: BTreeMap<String, String>,
    keyed: Vec<Sent>,
}

/// Recent ids are the likeliest to still be open, so closes pick among the last few.
fn recent(ids: &[String], rng: &mut Rng) -> String {
    let window = ids.len().min(12);
    ids[ids.len() - 1 - rng.below(window)].clone()
}

fn plan(rng: &mut Rng, args: &Args, known: &Known, n: usize) -> (Kind, &'static str, Value) {
    let roll = rng.below(100);
    let pool_empty = known.leads.is_empty() && known.opportunities.is_empty();
    if roll < 60 || pool_empty {
        let key = rng.below(args.keys);
        let owner = rng.below(args.owners);
        // Mostly NTB, so leads (and their conversions) are exercised, not only opportunities.
        let etb = rng.below(10) == 0;
        let body = json!({
            "customerType": if etb { "ETB" } else { "NTB" },
            "customer": { "idNumber": format!("RC{key:04}"), "cif": if etb { Some("CIF1") } else { None } },
            "product": "CARD", "ownerId": format!("RM{owner:03}"), "channel": "REPLICA_CHECK",
            "journeyId": format!("J{n}")
        });
        return (Kind::Create, CREATE, body);
    }
    let lead = known.opportunities.is_empty() || (!known.leads.is_empty() && rng.below(2) == 0);
    // Half the closes aim at a customer's latest record, so some succeed however many creates are in flight
    // (with few customers, most recent records have been handed over by the time a close reaches them); the
    // other half at any recent one, most of them closed already.
    let latest = if lead { &known.latest_lead } else { &known.latest_opportunity };
    let id = match rng.below(2) {
        0 if !latest.is_empty() => latest.values().nth(rng.below(latest.len())).cloned().unwrap_or_default(),
        _ if lead => recent(&known.leads, rng),
        _ => recent(&known.opportunities, rng),
    };
    if roll < 80 {
        let body = if lead {
            json!({"leadId": id, "channel": "REPLICA_CHECK", "convertToOpportunity": rng.below(2) == 0})
        } else {
            json!({"opportunityId": id, "channel": "REPLICA_CHECK"})
        };
        (Kind::CloseWon, CLOSE_WON, body)
    } else if lead {
        (
            Kind::CloseLost,
            LOST_LEAD,
            json!({"leadId": id, "status": "Close Lost", "channel": "REPLICA_CHECK", "reason": "NCB_REJECTED"}),
        )
    } else {
        (
            Kind::CloseLost,
            LOST_OPP,
            json!({"opportunityId": id, "status": "Close Lost", "channel": "REPLICA_CHECK", "reason": "AML_REJECTED"}),
        )
    }
}

async fn drive(args: &Args, bases: &[String]) -> Vec<Ack> {
    let client = reqwest::Client::new();
    let known = Arc::new(Mutex::new(Known::default()));
    let rng = Arc::new(Mutex::new(Rng(args.seed)));
    stream::iter(0..args.requests)
        .map(|n| {
            let (client, known, rng) = (client.clone(), known.clone(), rng.clone());
            let base = bases[n % bases.len()].clone();
            async move {
                // A quarter of the requests carry an Idempotency-Key; half of those repeat an earlier one.
                let (kind, path, body, key) = {
                    let mut k = known.lock().unwrap();
                    let mut rng = rng.lock().unwrap();
                    let keyed = rng.below(4) == 0;
                    if keyed && !k.keyed.is_empty() && rng.below(2) == 0 {
                        let again = k.keyed[rng.below(k.keyed.len())].clone();
                        (again.kind, again.path, again.body, Some(again.key))
                    } else {
                        let (kind, path, body) = plan(&mut rng, args, &k, n);
                        let key = keyed.then(|| format!("rc-key-{n}"));
                        if let Some(key) = &key {
                            k.keyed.push(Sent { kind, path, body: body.clone(), key: key.clone() });
                        }
                        (kind, path, body, key)
                    }
                };
                let request_id = format!("rc-{n}");
                let mut request = client
                    .post(format!("{base}{path}"))
                    .header("x-request-id", &request_id)
                    .json(&body)
                    .timeout(Duration::from_secs(60));
                if let Some(key) = &key {
                    request = request.header("idempotency-key", key);
                }
                let (status, replayed, text) = match request.send().await {
                    Ok(r) => {
                        let replayed = r.headers().contains_key("idempotent-replayed");
                        (r.status().as_u16(), replayed, r.text().await.unwrap_or_default())
                    }
                    Err(_) => (0, false, String::new()),
                };
                let sent = body;
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if kind == Kind::Create && (status == 200 || status == 201) {
                    let mut k = known.lock().unwrap();
                    let id = body["id"].as_str().unwrap_or_default().to_owned();
                    let customer = sent["customer"]["idNumber"].as_str().unwrap_or_default().to_owned();
                    match body["recordType"].as_str() {
                        Some("LEAD") => {
                            k.latest_lead.insert(customer, id.clone());
                            k.leads.push(id)
                        }
                        _ => {
                            k.latest_opportunity.insert(customer, id.clone());
                            k.opportunities.push(id)
                        }
                    }
                }
                Ack { kind, request_id, status, body, text, idempotency_key: key, replayed }
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await
}

#[derive(Clone)]
struct HistoryRow {
    at: time::OffsetDateTime,
    from: Option<String>,
    to: String,
    request_id: String,
    reason: Option<String>,
}

struct Checker {
    violations: Vec<String>,
}

impl Checker {
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok && self.violations.len() < 10_000 {
            self.violations.push(what());
        }
    }
}

async fn check(pool: &PgPool, acks: &[Ack]) -> Result<(Checker, HashMap<&'static str, usize>), sqlx::Error> {
    let mut c = Checker { violations: Vec::new() };
    let mut counts: HashMap<&'static str, usize> = HashMap::new();

    let dupes: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT match_key, record_type, count(*) FROM records
         WHERE status IN ('New Lead', 'New Opportunity') GROUP BY 1, 2 HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await?;
    for (key, record_type, n) in &dupes {
        c.violations.push(format!("{n} open {record_type} records for key {key}"));
    }
    let keys: i64 = sqlx::query_scalar("SELECT count(DISTINCT match_key) FROM records").fetch_one(pool).await?;
    counts.insert("keys checked for duplicate open records", keys as usize);

    // The reports' daily counts: each change counted once, by whichever replica or batch wrote it, and
    // nothing counted for a batch that was overtaken and wrote nothing.
    let kept: Vec<store_postgres::check::CountRow> =
        sqlx::query_as(store_postgres::check::COUNTS_KEPT).fetch_all(pool).await?;
    let recounted: Vec<store_postgres::check::CountRow> =
        sqlx::query_as(store_postgres::check::COUNTS_FROM_HISTORY).fetch_all(pool).await?;
    c.expect(kept == recounted, || format!("the reports' counts {kept:?} differ from the history's {recounted:?}"));
    counts.insert("rows of the reports' counts checked against the history", recounted.len());

    let backwards: i64 =
        sqlx::query_scalar("SELECT count(*) FROM records WHERE updated_at < created_at").fetch_one(pool).await?;
    c.expect(backwards == 0, || format!("{backwards} records updated before they were created"));
    let leads: i64 =
        sqlx::query_scalar("SELECT count(*) FROM records WHERE record_type = 'LEAD'").fetch_one(pool).await?;
    counts.insert("leads in the database", leads as usize);
    let converted: i64 = sqlx::query_scalar("SELECT count(*) FROM records WHERE converted_from_lead_id IS NOT NULL")
        .fetch_one(pool)
        .await?;
    counts.insert("opportunities converted from leads", converted as usize);
    let mut records: HashMap<String, (String, String, Option<String>, Option<String>)> = HashMap::new();
    for r in
        sqlx::query("SELECT id, record_type, status, converted_opportunity_id, converted_from_lead_id FROM records")
            .fetch_all(pool)
            .await?
    {
        records.insert(
            r.get("id"),
            (r.get("record_type"), r.get("status"), r.get("converted_opportunity_id"), r.get("converted_from_lead_id")),
        );
    }
    let mut history: HashMap<String, Vec<HistoryRow>> = HashMap::new();
    for r in sqlx::query("SELECT record_id, at, from_status, to_status, request_id, reason FROM history ORDER BY seq")
        .fetch_all(pool)
        .await?
    {
        history.entry(r.get("record_id")).or_default().push(HistoryRow {
            at: r.get("at"),
            from: r.get("from_status"),
            to: r.get("to_status"),
            request_id: r.get("request_id"),
            reason: r.get("reason"),
        });
    }
    counts.insert("records", records.len());
    counts.insert("history entries", history.values().map(Vec::len).sum());

    // History complete for every record.
    for (id, (_, status, _, _)) in &records {
        let h = history.get(id).map(Vec::as_slice).unwrap_or(&[]);
        c.expect(!h.is_empty() && h[0].from.is_none(), || format!("{id}: no creation entry"));
        for pair in h.windows(2) {
            c.expect(pair[1].from.as_deref() == Some(pair[0].to.as_str()), || format!("{id}: broken history chain"));
            c.expect(pair[0].at <= pair[1].at, || format!("{id}: history goes back in time"));
            c.expect(pair[0].to.starts_with("New"), || format!("{id}: changed after a final status"));
        }
        c.expect(h.last().map(|e| &e.to) == Some(status), || format!("{id}: history does not end at {status}"));
    }

    // Idempotent repeats: once the first answer is known, every repeat is that answer, byte for byte, and
    // no key ran more than once.
    let mut first: HashMap<&str, &Ack> = HashMap::new();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    let in_use = |a: &Ack| a.body["code"] == "IDEMPOTENCY_KEY_IN_USE";
    for ack in acks.iter().filter(|a| a.idempotency_key.is_some() && !a.replayed && a.status != 0 && !in_use(a)) {
        let key = ack.idempotency_key.as_deref().unwrap_or_default();
        first.entry(key).or_insert(ack);
        *runs.entry(key).or_default() += 1;
    }
    for (key, n) in &runs {
        c.expect(*n == 1, || format!("{key}: ran {n} times"));
    }
    for ack in acks.iter().filter(|a| a.replayed) {
        *counts.entry("idempotent replays checked").or_default() += 1;
        let key = ack.idempotency_key.as_deref().unwrap_or_default();
        match first.get(key) {
            Some(original) => c.expect(original.status == ack.status && original.text == ack.text, || {
                format!("{}: replay of {key} differs from the first answer", ack.request_id)
            }),
            None => c.violations.push(format!("{}: replayed {key} but no request ran it", ack.request_id)),
        }
    }

    for ack in acks {
        *counts
            .entry(match (ack.kind, ack.status) {
                (Kind::Create, 200 | 201) => "acknowledged creates",
                (Kind::CloseWon, 200) => "acknowledged close-wons",
                (Kind::CloseLost, 200) => "acknowledged close-losts",
                (_, 409) => "refused transitions (409)",
                (_, 404) => "unknown ids (404)",
                (_, 0) => "no answer (connection failed)",
                (_, s) if s >= 500 => "server errors (5xx)",
                _ => "other answers",
            })
            .or_default() += 1;
        c.expect(ack.status != 0 && ack.status < 500, || format!("{}: answered {}", ack.request_id, ack.status));
        match (ack.kind, ack.status) {
            (Kind::Create, 200 | 201) => {
                let id = ack.body["id"].as_str().unwrap_or_default();
                let reported = ack.body["status"].as_str().unwrap_or_default();
                let Some((_, _, _, _)) = records.get(id) else {
                    c.violations.push(format!("{}: acknowledged record {id} is missing", ack.request_id));
                    continue;
                };
                let h = history.get(id).cloned().unwrap_or_default();
                c.expect(h.iter().any(|e| e.to == reported), || {
                    format!("{id}: never had the reported status {reported}")
                });
                // A replay names what the original request did: checked through the original above.
                if ack.replayed {
                    continue;
                }
                if ack.status == 201 {
                    c.expect(h.first().is_some_and(|e| e.request_id == ack.request_id), || {
                        format!("{id}: not created by {}", ack.request_id)
                    });
                }
                for closed in ack.body["closedRecordIds"].as_array().into_iter().flatten() {
                    let closed = closed.as_str().unwrap_or_default();
                    *counts.entry("records closed by REPLACED answers").or_default() += 1;
                    c.expect(records.get(closed).is_some_and(|r| r.1 == "Close Lost"), || {
                        format!("{closed}: REPLACED by {} but not Close Lost", ack.request_id)
                    });
                    c.expect(
                        history.get(closed).is_some_and(|h| {
                            h.iter().any(|e| {
                                e.request_id == ack.request_id
                                    && e.to == "Close Lost"
                                    && e.reason.as_deref() == Some("OWNER_CHANGED")
                            })
                        }),
                        || format!("{closed}: no OWNER_CHANGED history entry by {}", ack.request_id),
                    );
                }
            }
            (Kind::CloseWon, 200) => {
                for side in ["lead", "opportunity"] {
                    if let Some(id) = ack.body[side]["id"].as_str() {
                        c.expect(records.get(id).is_some_and(|r| r.1 == "Close Won"), || {
                            format!("{id}: acknowledged Close Won by {} but is not", ack.request_id)
                        });
                    }
                }
                if let (Some(lead), Some(opp)) =
                    (ack.body["lead"]["id"].as_str(), ack.body["opportunity"]["id"].as_str())
                {
                    c.expect(records.get(opp).is_some_and(|r| r.3.as_deref() == Some(lead)), || {
                        format!("{opp}: not linked to the lead {lead} it was converted from")
                    });
                    c.expect(records.get(lead).is_some_and(|r| r.2.as_deref() == Some(opp)), || {
                        format!("{lead}: not linked to its opportunity {opp}")
                    });
                }
            }
            (Kind::CloseLost, 200) => {
                let id = ack.body["leadId"].as_str().or(ack.body["opportunityId"].as_str()).unwrap_or_default();
                c.expect(records.get(id).is_some_and(|r| r.1 == "Close Lost"), || {
                    format!("{id}: acknowledged Close Lost by {} but is not", ack.request_id)
                });
            }
            _ => {}
        }
    }
    Ok((c, counts))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bin = match tools::service_binary(args.service_bin.clone()) {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("replica-check: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("replica-check: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        let mut db = ScratchDb::create("crm_replicas").await;
        if args.keep {
            db.keep();
        }
        // Migrate once before the replicas start, as a deployment would.
        if let Err(e) = tools::migrate(&bin, &db.url) {
            eprintln!("replica-check: {e}");
            return ExitCode::from(2);
        }
        let mut replicas = Vec::new();
        for _ in 0..args.replicas.max(1) {
            match start(&bin, &db.url) {
                Ok(r) => replicas.push(r),
                Err(e) => {
                    eprintln!("replica-check: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
        println!("replicas: {} ({}), database {}", bases.len(), bases.join(", "), db.name);
        let started = Instant::now();
        let acks = drive(&args, &bases).await;
        let elapsed = started.elapsed();
        println!(
            "requests: {} in {:.2}s ({:.0}/s), {} keys, {} owners, concurrency {}",
            acks.len(),
            elapsed.as_secs_f64(),
            acks.len() as f64 / elapsed.as_secs_f64(),
            args.keys,
            args.owners,
            args.concurrency
        );
        let mut stopped_cleanly = true;
        for mut r in replicas {
            let _ = Command::new("kill").args(["-TERM", &r.child.id().to_string()]).status();
            stopped_cleanly &= r.child.wait().map(|s| s.success()).unwrap_or(false);
        }
        let pool = match PgPool::connect(&db.url).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("replica-check: cannot read the database: {e}");
                return ExitCode::from(2);
            }
        };
        if args.sabotage {
            if let Err(e) = sabotage(&pool).await {
                eprintln!("replica-check: sabotage failed: {e}");
                return ExitCode::from(2);
            }
        }
        let (checker, counts) = match check(&pool, &acks).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("replica-check: cannot read the database: {e}");
                return ExitCode::from(2);
            }
        };
        pool.close().await;
        let mut names: Vec<_> = counts.into_iter().collect();
        names.sort();
        for (name, n) in names {
            println!("  {name}: {n}");
        }
        println!("replicas stopped with exit 0: {stopped_cleanly}");
        for v in checker.violations.iter().take(20) {
            println!("VIOLATION {v}");
        }
        println!("violations: {}", checker.violations.len());
        if checker.violations.is_empty() && stopped_cleanly {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
