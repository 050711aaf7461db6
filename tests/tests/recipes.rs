//! The image and the deploy recipes (`Dockerfile`, `render.yaml`, `fly.toml`,
//! `deploy/kubernetes.yaml`) say only what the service understands: every environment variable
//! they set is one it reads, every probe path is one of its operations, and every port is the
//! one it listens on. A renamed variable or route breaks this test, not a newcomer's deploy.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use serde_json::Value;
use server::config::Config;

fn read(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|err| panic!("read {path}: {err}"))
}

/// Every variable `Config` asks for, and the two read elsewhere: `RUST_LOG` (the log filter)
/// and `SQLITE_TMPDIR` (SQLite's own, for its temporary files on a read-only root).
fn variables_the_service_reads() -> BTreeSet<String> {
    let asked = Arc::new(Mutex::new(BTreeSet::new()));
    let recorder = asked.clone();
    // Asked with nothing set, then with everything set to something: every branch reads.
    for value in [None, Some("1")] {
        let recorder = recorder.clone();
        let _ = Config::from_lookup(move |name| {
            recorder.lock().unwrap().insert(name.to_owned());
            value.map(str::to_owned)
        });
    }
    let mut names = asked.lock().unwrap().clone();
    names.extend(["RUST_LOG".to_owned(), "SQLITE_TMPDIR".to_owned()]);
    names
}

/// Upper-case names right after one of `markers` and followed by one of `ends` (assignments,
/// `- key: NAME`, `name: NAME,`, `--from-literal=NAME=…`, `fly secrets set NAME=…`).
fn variables_set_in(text: &str, markers: &[&str], ends: &[char]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        for marker in markers {
            let mut rest = line;
            while let Some(at) = rest.find(marker) {
                rest = &rest[at + marker.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                // A name is followed by one of `ends` (`=` for its value, `,` for the next
                // entry, `\n` for the end of the line), spaces aside.
                let after = rest[name.len()..].trim_start();
                let assigned =
                    after.chars().next().map_or(ends.contains(&'\n'), |c| ends.contains(&c));
                if name.len() > 2 && name.starts_with(|c: char| c.is_ascii_uppercase()) && assigned
                {
                    names.insert(name);
                }
            }
        }
    }
    names
}

/// The values after `key` (e.g. `path: `) on every line that has it, unquoted.
fn values_after(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split_once(key))
        .map(|(_, value)| {
            let value = value.split([',', '}', '#']).next().unwrap_or_default();
            value.trim().trim_matches('"').to_owned()
        })
        .collect()
}

fn operation_paths() -> BTreeSet<String> {
    let spec: Value = serde_json::from_str(&read("openapi.json")).unwrap();
    spec["paths"].as_object().unwrap().keys().cloned().collect()
}

#[test]
fn every_variable_a_recipe_sets_is_one_the_service_reads() {
    let read_by_service = variables_the_service_reads();
    assert!(read_by_service.contains("BETTER_AUTH_SECRET") && read_by_service.contains("PORT"));
    let recipes = [
        ("Dockerfile", variables_set_in(&read("Dockerfile"), &["ENV ", "    "], &['='])),
        ("render.yaml", variables_set_in(&read("render.yaml"), &["- key: "], &['\n'])),
        ("fly.toml", variables_set_in(&read("fly.toml"), &[" "], &['='])),
        (
            "deploy/kubernetes.yaml",
            variables_set_in(
                &read("deploy/kubernetes.yaml"),
                &["name: ", "--from-literal="],
                &[',', '='],
            ),
        ),
    ];
    for (recipe, names) in recipes {
        assert!(!names.is_empty(), "{recipe}: no variable found: is the parser still right?");
        let unknown: Vec<_> = names.difference(&read_by_service).collect();
        assert!(unknown.is_empty(), "{recipe} sets what the service never reads: {unknown:?}");
        for needed in ["BETTER_AUTH_SECRET", "DATABASE_URL"] {
            assert!(
                recipe == "Dockerfile" || names.contains(needed),
                "{recipe} does not ask for {needed}"
            );
        }
    }
}

#[test]
fn every_probe_is_an_operation_and_every_port_the_one_listened_on() {
    let paths = operation_paths();
    let probes = [
        ("render.yaml", values_after(&read("render.yaml"), "healthCheckPath:")),
        ("fly.toml", values_after(&read("fly.toml"), "path =")),
        ("deploy/kubernetes.yaml", values_after(&read("deploy/kubernetes.yaml"), "path:")),
    ];
    for (recipe, probes) in probes {
        assert!(probes.iter().any(|probe| probe == "/health/ready"), "{recipe}: {probes:?}");
        for probe in probes {
            assert!(paths.contains(&probe), "{recipe} probes {probe}, which the service lacks");
        }
    }

    let dockerfile = read("Dockerfile");
    let image_port = values_after(&dockerfile, "PORT=")[0].trim_end_matches(" \\").to_owned();
    assert_eq!(values_after(&dockerfile, "EXPOSE")[0], image_port);
    let fly = read("fly.toml");
    assert_eq!(values_after(&fly, "PORT =")[0], values_after(&fly, "internal_port =")[0]);
    let kubernetes = read("deploy/kubernetes.yaml");
    // No PORT in the pod's environment: the image's own.
    assert_eq!(values_after(&kubernetes, "containerPort:")[0], image_port);
    assert!(!kubernetes.contains("name: PORT"));
}

#[test]
fn the_grace_periods_cover_the_drain_and_requests_in_flight() {
    // SHUTDOWN_DRAIN_SECS (5) + 10 s for requests in flight, and Kubernetes' preStop before it.
    let fly = read("fly.toml");
    assert_eq!(values_after(&fly, "kill_signal =")[0], "SIGTERM");
    let kill_timeout: u64 =
        values_after(&fly, "kill_timeout =")[0].trim_end_matches('s').parse().unwrap();
    assert!(kill_timeout >= 15, "fly.toml: kill_timeout {kill_timeout}");
    let render: u64 =
        values_after(&read("render.yaml"), "maxShutdownDelaySeconds:")[0].parse().unwrap();
    assert!(render >= 15, "render.yaml: maxShutdownDelaySeconds {render}");
    let kubernetes = read("deploy/kubernetes.yaml");
    let grace: u64 =
        values_after(&kubernetes, "terminationGracePeriodSeconds:")[0].parse().unwrap();
    let pre_stop: u64 = values_after(&kubernetes, "sleep: { seconds:")[0].parse().unwrap();
    assert!(grace >= pre_stop + 15, "kubernetes: grace {grace} s, preStop {pre_stop} s");
}
