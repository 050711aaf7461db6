//! `bench [--quick] [--pooler]`: the release server against the database's own limit.
//!
//! - Setup: a throwaway PostgreSQL, the release server, 100 users × 20 tasks created through
//!   the API, one user after another (user `u` owns tasks `(u-1)*20+1 ..= u*20`).
//! - The service: `wrk` with a Lua script: 50 % list own tasks, 30 % get one, 10 % `PUT
//!   {"title"}`, 10 % toggle, through `/api/{user_id}/tasks`, at c = 10, 50 and 100.
//! - The limit: `pgbench -M prepared` running the statements the store issues for those four
//!   operations, in the same mix, at the same concurrency, against the same database.
//! - The headline: service and pgbench runs alternate three times per concurrency; the median
//!   ratio of their throughputs (absolute figures swing on shared machines, pairs hold).
//! - Also: the server's CPU per request (`/proc/PID/stat`), its peak RSS, the same workload on
//!   SQLite, and one user with 10,000 tasks (pages of 50 at several offsets, the keyset page
//!   that starts where the last offset does, and everything).
//! - Sync and retries: a create with an `Idempotency-Key` against one without, and the poll
//!   every open tab makes (`changes?since=` the latest cursor: nothing new) against a get of one
//!   task, at c = 50.
//! - `--server-binary PATH`: that build instead of a fresh release build, to compare two builds
//!   run after run.
//! - `--pooler`: the service behind PgBouncer (transaction mode, `DATABASE_STATEMENT_CACHE=0`).
//! - `--quick`: one short pair at c = 50 and short extras (CI runs it so that the tool never
//!   rots; its figures mean little).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;
use integration_tests::{
    postgres::{self, fresh_database, fresh_pooled_database},
    token,
};

use crate::{
    server_process::{self, ServerProcess},
    streams,
};

const USERS: usize = 100;
const TASKS_PER_USER: usize = 20;
const LARGE_USER_TASKS: usize = 10_000;

pub struct Options {
    quick: bool,
    pooler: bool,
    /// Only this concurrency (three pairs), and no extras.
    concurrency: Option<usize>,
    /// More environment for the server, e.g. `METRICS=off` to price the metrics.
    server_env: Vec<(String, String)>,
    /// This server binary instead of a fresh release build (to compare two builds in turn).
    server_binary: Option<PathBuf>,
}

const USAGE: &str =
    "bench [--quick] [--pooler] [--concurrency N] [--server-env KEY=VALUE]… [--server-binary PATH]";

impl Options {
    pub fn parse(args: &[&str]) -> anyhow::Result<Self> {
        let mut options = Options {
            quick: false,
            pooler: false,
            concurrency: None,
            server_env: Vec::new(),
            server_binary: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match *arg {
                "--quick" => options.quick = true,
                "--pooler" => options.pooler = true,
                "--concurrency" => {
                    let value = args.next().context(USAGE)?;
                    options.concurrency = Some(value.parse().context(USAGE)?);
                }
                "--server-env" => {
                    let (key, value) =
                        args.next().and_then(|a| a.split_once('=')).context(USAGE)?;
                    options.server_env.push((key.to_owned(), value.to_owned()));
                }
                "--server-binary" => {
                    options.server_binary = Some(args.next().context(USAGE)?.into());
                }
                other => anyhow::bail!("unknown bench option {other}: {USAGE}"),
            }
        }
        Ok(options)
    }
}

/// One run of `wrk` against the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServiceRun {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub cpu_micros_per_request: f64,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        Command::new("wrk").arg("--version").output().is_ok(),
        "wrk is not installed (Debian: apt-get install wrk)"
    );
    let binary = match &options.server_binary {
        Some(binary) => binary.clone(),
        None => server_process::build_release()?,
    };
    let scratch = tempfile::tempdir()?;
    measure(&options, &binary, scratch.path()).await.map_err(|err| {
        // The servers' logs say why a request failed; keep them for whoever reads the error.
        let kept = scratch.keep();
        err.context(format!("the servers' logs are kept in {}", kept.display()))
    })
}

/// The runs and the report, with the servers' logs, scripts and SQLite file in `scratch`.
async fn measure(options: &Options, binary: &Path, scratch: &Path) -> anyhow::Result<()> {
    let (duration, concurrencies, rounds) = match (options.quick, options.concurrency) {
        (true, _) => (Duration::from_secs(4), vec![50], 1),
        (false, Some(concurrency)) => (Duration::from_secs(15), vec![concurrency], 3),
        (false, None) => (Duration::from_secs(15), vec![10, 50, 100], 3),
    };
    let mut report = String::new();
    writeln!(
        report,
        "| database | c | req/s | p50 ms | p90 ms | p99 ms | errors | server CPU µs/req | pgbench tx/s | ratio |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|---|---|")?;

    // PostgreSQL: the service, alternating with pgbench on the same database.
    let (service_url, env) = if options.pooler {
        (fresh_pooled_database().await, vec![("DATABASE_STATEMENT_CACHE", "0")])
    } else {
        (fresh_database().await, vec![])
    };
    // pgbench goes straight to the same database (behind PgBouncer too).
    let pgbench_url = postgres::direct_url(&service_url);
    let mut env: Vec<(&str, &str)> = env;
    // The limiter runs as in production but never binds: one user at c = 10 on a cheap page
    // asks for more than the default 5,000/s, and these rows measure the page, not the policy.
    env.extend([
        ("RUST_LOG", "info"),
        ("LOG_FORMAT", "json"),
        ("RATE_LIMIT_PER_SECOND", "1000000"),
    ]);
    env.extend(streams::SERVER_ENV);
    env.extend(options.server_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let log = scratch.join("bench-postgres.log");
    let server = ServerProcess::start_with(binary, &service_url, log, &env).await?;
    let script = seed_and_write_script(&server, scratch).await.context("seeding 100 users")?;
    let pgbench_scripts = write_pgbench_scripts(scratch)?;
    let label = if options.pooler { "PostgreSQL via PgBouncer (cache 0)" } else { "PostgreSQL" };
    for &concurrency in &concurrencies {
        let mut pairs = Vec::new();
        for _ in 0..rounds {
            let service = wrk(&server, &script, concurrency, duration)?;
            let limit = pgbench(&pgbench_url, &pgbench_scripts, concurrency, duration)?;
            pairs.push((service, limit));
        }
        let mut ratios: Vec<f64> = pairs.iter().map(|(s, l)| s.requests_per_second / l).collect();
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let (service, limit) = pairs[pairs.len() / 2];
        writeln!(
            report,
            "| {label} | {concurrency} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.0} | {limit:.0} | **{median:.2}** (pairs: {}) |",
            service.requests_per_second,
            service.p50_ms,
            service.p90_ms,
            service.p99_ms,
            service.errors,
            service.cpu_micros_per_request,
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
        )?;
    }
    let peak_rss = server.peak_rss_kib()?;
    writeln!(report, "\nPostgreSQL server peak RSS: {:.1} MB", peak_rss as f64 / 1024.0)?;
    if options.concurrency.is_some() {
        println!("\n{report}");
        return Ok(());
    }

    let sync = sync_and_retries(&server, scratch, duration / 2).await.context("sync and keys")?;
    writeln!(report, "\n{sync}")?;
    let live = streams::report(&server, &script, duration).await.context("live streams")?;
    writeln!(report, "\n{live}")?;

    // The user with 10,000 tasks, against a user with 20.
    let large = large_user(&server, duration / 2).await.context("the 10,000-task user")?;
    writeln!(report, "\n{large}")?;
    drop(server);

    // SQLite: the same workload, no pgbench line.
    if !options.pooler {
        let sqlite_url = format!("sqlite://{}", scratch.join("bench.db").display());
        let log = scratch.join("bench-sqlite.log");
        let server = ServerProcess::start_with(binary, &sqlite_url, log, &env).await?;
        let script = seed_and_write_script(&server, scratch).await.context("seeding 100 users")?;
        let service = wrk(&server, &script, 50, duration)?;
        writeln!(
            report,
            "\n| SQLite | 50 | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.0} | — | — |\n\nSQLite server peak RSS: {:.1} MB",
            service.requests_per_second,
            service.p50_ms,
            service.p90_ms,
            service.p99_ms,
            service.errors,
            service.cpu_micros_per_request,
            server.peak_rss_kib()? as f64 / 1024.0
        )?;
        let large = large_user(&server, duration / 2).await.context("the 10,000-task user")?;
        writeln!(report, "\n{large}")?;
    }
    println!("\n{report}");
    Ok(())
}

/// 100 users × 20 tasks through the API, one user after another; a `wrk` script that knows
/// their tokens.
async fn seed_and_write_script(server: &ServerProcess, dir: &Path) -> anyhow::Result<PathBuf> {
    let mut users = String::new();
    for user in 1..=USERS {
        let user_id = user.to_string();
        let token = token(&user_id);
        let client = client_sdk::authenticated(&server.base_url, &token)?;
        for task in 1..=TASKS_PER_USER {
            let created = client
                .create_user_task()
                .user_id(&user_id)
                .body(client_sdk::types::TaskCreate::builder().title(format!("task {task}")))
                .send()
                .await?;
            // pgbench's scripts rely on this numbering.
            let expected = ((user - 1) * TASKS_PER_USER + task) as i64;
            anyhow::ensure!(
                created.id == expected,
                "task ids are not sequential: a fresh database?"
            );
        }
        writeln!(users, "  {{id = \"{user_id}\", token = \"{token}\"}},")?;
    }
    let script = format!(
        "-- 50 % list, 30 % get, 10 % PUT title, 10 % toggle, by random users\n\
         local users = {{\n{users}}}\n\
         local per_user = {TASKS_PER_USER}\n\
         math.randomseed(os.time())\n\
         request = function()\n\
           local u = math.random(#users)\n\
           local user = users[u]\n\
           local headers = {{[\"Authorization\"] = \"Bearer \" .. user.token}}\n\
           local collection = \"/api/\" .. user.id .. \"/tasks\"\n\
           local task = collection .. \"/\" .. ((u - 1) * per_user + math.random(per_user))\n\
           local r = math.random(100)\n\
           if r <= 50 then return wrk.format(\"GET\", collection, headers) end\n\
           if r <= 80 then return wrk.format(\"GET\", task, headers) end\n\
           if r <= 90 then\n\
             headers[\"Content-Type\"] = \"application/json\"\n\
             return wrk.format(\"PUT\", task, headers, '{{\"title\": \"renamed\"}}')\n\
           end\n\
           return wrk.format(\"PATCH\", task .. \"/complete\", headers)\n\
         end\n"
    );
    let path = dir.join("mix.lua");
    std::fs::write(&path, script)?;
    Ok(path)
}

/// The store's statements for the four operations (as `server/src/store/postgres.rs` issues
/// them; parameters pgbench cannot bind as arrays are written as the NULL the store binds).
fn write_pgbench_scripts(dir: &Path) -> anyhow::Result<Vec<(PathBuf, u32)>> {
    let columns = "id, user_id, title, description, completed, created_at, updated_at";
    let pick = format!(
        "\\set u random(1, {USERS})\n\\set id (:u - 1) * {TASKS_PER_USER} + random(1, {TASKS_PER_USER})\n"
    );
    let scripts = [
        (
            "list",
            50,
            format!(
                "\\set u random(1, {USERS})\nSELECT {columns}, CAST(0 AS BIGINT) AS total FROM tasks \
                 WHERE user_id = :u ORDER BY created_at ASC, id ASC;\n"
            ),
        ),
        (
            "get",
            30,
            format!("{pick}SELECT {columns} FROM tasks WHERE id = :id AND user_id = :u;\n"),
        ),
        (
            "put",
            10,
            format!(
                "{pick}UPDATE tasks SET title = COALESCE('renamed', title), \
                 description = CASE WHEN false THEN NULL ELSE description END, \
                 completed = COALESCE(NULL::boolean, completed), \
                 updated_at = GREATEST(now(), updated_at + interval '1 microsecond') \
                 WHERE id = :id AND user_id = :u \
                 AND (NULL::timestamptz[] IS NULL OR updated_at = ANY(NULL::timestamptz[])) \
                 RETURNING {columns};\n"
            ),
        ),
        (
            "toggle",
            10,
            format!(
                "{pick}UPDATE tasks SET completed = NOT completed, \
                 updated_at = GREATEST(now(), updated_at + interval '1 microsecond') \
                 WHERE id = :id AND user_id = :u \
                 AND (NULL::timestamptz[] IS NULL OR updated_at = ANY(NULL::timestamptz[])) \
                 RETURNING {columns};\n"
            ),
        ),
    ];
    scripts
        .into_iter()
        .map(|(name, weight, sql)| {
            let path = dir.join(format!("{name}.sql"));
            std::fs::write(&path, sql)?;
            Ok((path, weight))
        })
        .collect()
}

pub(crate) fn wrk(
    server: &ServerProcess,
    script: &Path,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<ServiceRun> {
    let cpu_before = server.cpu_seconds()?;
    let output = Command::new("wrk")
        .args(["--latency", "-t", "2", "-c", &concurrency.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs())])
        .arg("-s")
        .arg(script)
        .arg(&server.base_url)
        .output()
        .context("run wrk")?;
    let cpu = server.cpu_seconds()? - cpu_before;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(output.status.success(), "wrk failed: {text}");
    let run = parse_wrk(&text, cpu)?;
    // A run with errors measured something else (a 429 or a 5xx is cheap): say so loudly.
    if run.errors > 0 {
        eprintln!(
            "bench: {} of the requests failed; the figures of this run are not valid",
            run.errors
        );
    }
    Ok(run)
}

fn parse_wrk(text: &str, cpu_seconds: f64) -> anyhow::Result<ServiceRun> {
    let field = |prefix: &str| -> Option<&str> {
        text.lines().find_map(|line| line.trim().strip_prefix(prefix)).map(str::trim)
    };
    let millis = |prefix: &str| -> anyhow::Result<f64> {
        let value =
            field(prefix).with_context(|| format!("no {prefix} in wrk's output: {text}"))?;
        let (number, unit) =
            value.split_at(value.find(|c: char| c.is_alphabetic()).unwrap_or(value.len()));
        let number: f64 = number.parse()?;
        Ok(match unit {
            "us" => number / 1000.0,
            "ms" => number,
            "s" => number * 1000.0,
            "m" => number * 60_000.0,
            other => anyhow::bail!("unknown unit {other} in wrk's output"),
        })
    };
    let requests: f64 = text
        .lines()
        .find_map(|line| line.trim().split_once(" requests in "))
        .and_then(|(count, _)| count.trim().parse().ok())
        .context("no request count in wrk's output")?;
    let errors = field("Non-2xx or 3xx responses:").map_or(Ok(0), str::parse)?
        + field("Socket errors:").map_or(0, |line| {
            line.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
    Ok(ServiceRun {
        requests_per_second: field("Requests/sec:").context("no Requests/sec")?.parse()?,
        p50_ms: millis("50%")?,
        p90_ms: millis("90%")?,
        p99_ms: millis("99%")?,
        errors,
        cpu_micros_per_request: cpu_seconds * 1e6 / requests.max(1.0),
    })
}

fn pgbench(
    database_url: &str,
    scripts: &[(PathBuf, u32)],
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let mut command = Command::new(postgres::tool("pgbench"));
    command
        .args(["-n", "-M", "prepared", "-j", "2", "-c", &concurrency.to_string()])
        .args(["-T", &duration.as_secs().to_string()]);
    for (path, weight) in scripts {
        command.arg("-f").arg(format!("{}@{weight}", path.display()));
    }
    let output = command.arg(database_url).output().context("run pgbench")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .context("no tps in pgbench's output")
}

/// A title from a few realistic words; one title in a hundred mentions the dentist (what the
/// search rows look for).
const TITLE_WORDS: [&str; 12] =
    ["buy", "milk", "call", "mom", "pay", "rent", "fix", "bike", "read", "book", "plan", "trip"];
const TAG_NAMES: [&str; 8] =
    ["home", "work", "errands", "health", "family", "money", "car", "ideas"];

/// Task `n` of the large user: realistic titles, random priorities, due dates (a quarter
/// without one) and 0 to 3 tags, from a fixed seed.
fn large_user_task(n: usize) -> client_sdk::types::builder::TaskCreate {
    let mut state = (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = |bound: usize| {
        state ^= state >> 33;
        state = state.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        state ^= state >> 29;
        (state % bound as u64) as usize
    };
    let mut title: Vec<&str> = (0..3).map(|_| TITLE_WORDS[next(TITLE_WORDS.len())]).collect();
    if n % 100 == 42 {
        title.insert(1, "dentist");
    }
    let priority = ["low", "medium", "high", "urgent"][next(4)];
    let due = (next(4) != 0).then(|| format!("2027-{:02}-{:02}", 1 + next(12), 1 + next(28)));
    let tags: Vec<_> =
        (0..next(4)).map(|_| TAG_NAMES[next(TAG_NAMES.len())].parse().expect("a tag")).collect();
    client_sdk::types::TaskCreate::builder()
        .title(format!("{} {n}", title.join(" ")))
        .priority(priority.parse::<client_sdk::types::Priority>().expect("a priority"))
        .due_date(due)
        .tags(Some(tags))
}

/// One user with 10,000 tasks: pages of 50 at several offsets, filtered, searched and sorted by
/// the richer fields, and the whole list, each against a 20-task user's first page of 50.
async fn large_user(server: &ServerProcess, duration: Duration) -> anyhow::Result<String> {
    let user = "large";
    let token = token(user);
    let client = client_sdk::authenticated(&server.base_url, &token)?;
    let batches = LARGE_USER_TASKS / 10;
    for batch in 0..batches {
        let creates =
            (0..10).map(|i| client.create_task().body(large_user_task(batch * 10 + i)).send());
        for created in futures::future::join_all(creates).await {
            created?;
        }
    }
    let small: Vec<String> =
        (1..=USERS).map(|user| integration_tests::token(&user.to_string())).collect();
    let mut report = String::new();
    writeln!(
        report,
        "| user | request | req/s (c=10) | p50 ms | p99 ms | ÷ a 20-task user's first page |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|")?;
    let baseline = fixed(server, &small, "/api/tasks?limit=50", duration, scratch_script()?)?;
    writeln!(
        report,
        "| 20 tasks | `?limit=50` | {:.0} | {:.2} | {:.2} | 1.0 |",
        baseline.requests_per_second, baseline.p50_ms, baseline.p99_ms
    )?;
    // The keyset page that starts where `offset=9950` does: the `Link` of the page before it.
    let before_last = client.list_tasks().limit(std::num::NonZeroU64::new(50).unwrap());
    let before_last = before_last.offset(9900).send().await?;
    let link = before_last.headers().get("link").context("no Link on a page with more after it")?;
    let after = link.to_str()?.split_once("after=").context("no after= in Link")?.1;
    let after = after.split_once('>').context("a Link ends with >")?.0;
    let keyset = format!("/api/tasks?limit=50&after={after}");
    let mut whole_list_peak = None;
    for path in [
        "/api/tasks?limit=50",
        "/api/tasks?limit=50&offset=5000",
        "/api/tasks?limit=50&offset=9950",
        keyset.as_str(),
        "/api/tasks?limit=50&search=dentist",
        "/api/tasks?limit=50&tag=health",
        "/api/tasks?limit=50&priority=high",
        "/api/tasks?limit=50&sort=due_date",
        "/api/tasks?limit=50&search=dentist&tag=health&priority=high,urgent&sort=due_date",
        "/api/tasks",
    ] {
        let whole = path == "/api/tasks";
        if whole {
            // The peak while ten clients read the whole list at once.
            server.reset_peak_rss()?;
        }
        let run = fixed(server, std::slice::from_ref(&token), path, duration, scratch_script()?)?;
        if whole {
            whole_list_peak = Some(server.peak_rss_kib()?);
        }
        writeln!(
            report,
            "| {LARGE_USER_TASKS} tasks | `{}` | {:.0} | {:.2} | {:.2} | {:.1}× slower |",
            path.trim_start_matches("/api/tasks").replace(after, "…"),
            run.requests_per_second,
            run.p50_ms,
            run.p99_ms,
            baseline.requests_per_second / run.requests_per_second
        )?;
    }
    if let Some(peak) = whole_list_peak {
        writeln!(
            report,
            "\nServer peak RSS while 10 clients read the whole {LARGE_USER_TASKS}-task list at \
             once: {:.1} MB",
            peak as f64 / 1024.0
        )?;
    }
    Ok(report)
}

/// What safe retries and sync cost: a create with an `Idempotency-Key` against one without, and
/// `changes?since=` the latest cursor (the poll of an idle tab) against a get of one task; the
/// 100 seeded users at random, c = 50.
async fn sync_and_retries(
    server: &ServerProcess,
    dir: &Path,
    duration: Duration,
) -> anyhow::Result<String> {
    // The 100 users, each with the cursor of a sync made now: read this right before a run, so
    // that the poll really finds nothing new.
    let users = async || -> anyhow::Result<String> {
        let mut users = String::new();
        for user in 1..=USERS {
            let user_id = user.to_string();
            let token = token(&user_id);
            let client = client_sdk::authenticated(&server.base_url, &token)?;
            let cursor = client.list_changes().send().await?.into_inner().cursor;
            let first = (user - 1) * TASKS_PER_USER + 1;
            writeln!(
                users,
                "  {{id = \"{user_id}\", token = \"{token}\", cursor = \"{cursor}\", first = {first}}},"
            )?;
        }
        Ok(users)
    };
    // Every wrk thread gets its own number (`setup`), so that keys never collide.
    let script = |users: &str, body: &str| {
        format!(
            "local users = {{\n{users}}}\n\
             local threads = 0\n\
             function setup(thread)\n\
               threads = threads + 1\n\
               thread:set(\"thread\", threads)\n\
             end\n\
             local n = 0\n\
             math.randomseed(os.time())\n\
             request = function()\n\
               local prefix = os.time() .. \"-\" .. thread\n\
               local user = users[math.random(#users)]\n\
               local headers = {{[\"Authorization\"] = \"Bearer \" .. user.token}}\n\
               n = n + 1\n\
               {body}\n\
             end\n"
        )
    };
    let create = "headers[\"Content-Type\"] = \"application/json\"\n\
                  return wrk.format(\"POST\", \"/api/\" .. user.id .. \"/tasks\", headers, '{\"title\": \"bench\"}')";
    let keyed_create = format!("headers[\"Idempotency-Key\"] = prefix .. \"-\" .. n\n{create}");
    let runs = [
        // The reads first, while each cursor is the latest.
        (
            "`GET …/tasks/changes?since=` (latest: nothing new)",
            "return wrk.format(\"GET\", \"/api/\" .. user.id .. \"/tasks/changes?since=\" .. user.cursor, headers)",
        ),
        (
            "`GET …/tasks/{id}`",
            "return wrk.format(\"GET\", \"/api/\" .. user.id .. \"/tasks/\" .. (user.first + math.random(0, 19)), headers)",
        ),
        ("`POST …/tasks` (no key)", create),
        ("`POST …/tasks` with `Idempotency-Key`", keyed_create.as_str()),
    ];
    let mut report = String::new();
    writeln!(report, "| request | req/s (c=50) | p50 ms | p99 ms | server CPU µs/req |")?;
    writeln!(report, "|---|---|---|---|---|")?;
    for (name, body) in runs {
        let path = dir.join("sync.lua");
        std::fs::write(&path, script(&users().await?, body))?;
        let run = wrk(server, &path, 50, duration.max(Duration::from_secs(1)))?;
        anyhow::ensure!(run.errors == 0, "{} failed requests: {name}", run.errors);
        writeln!(
            report,
            "| {name} | {:.0} | {:.2} | {:.2} | {:.0} |",
            run.requests_per_second, run.p50_ms, run.p99_ms, run.cpu_micros_per_request
        )?;
    }
    Ok(report)
}

fn scratch_script() -> anyhow::Result<tempfile::NamedTempFile> {
    Ok(tempfile::Builder::new().suffix(".lua").tempfile()?)
}

/// `wrk` at c = 10 on one URL, each request with a token picked at random from `tokens` (the
/// 20-task baseline spreads over 100 users, as the mix does).
fn fixed(
    server: &ServerProcess,
    tokens: &[String],
    path: &str,
    duration: Duration,
    script: tempfile::NamedTempFile,
) -> anyhow::Result<ServiceRun> {
    let tokens: Vec<String> = tokens.iter().map(|token| format!("\"Bearer {token}\"")).collect();
    std::fs::write(
        script.path(),
        format!(
            "local tokens = {{{}}}\n\
             request = function()\n\
               local headers = {{[\"Authorization\"] = tokens[math.random(#tokens)]}}\n\
               return wrk.format(\"GET\", \"{path}\", headers)\n\
             end\n",
            tokens.join(", ")
        ),
    )?;
    let duration = duration.max(Duration::from_secs(1));
    let run = wrk(server, script.path(), 10, duration)?;
    // One stray failure in a run is reported (see `wrk`) and its row is not to be trusted; more
    // is a broken service. (On SQLite the 10,000-task user's first run has shown one 1.8 s call
    // timeout: an open problem, noted in docs/benchmarks.md.)
    anyhow::ensure!(run.errors <= 1, "{} failed requests on {path}", run.errors);
    Ok(run)
}
