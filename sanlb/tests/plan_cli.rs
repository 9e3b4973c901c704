//! `sanlb plan` as a user runs it: the built binary on the documented example
//! inputs (docs/examples/) and on broken ones.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use sanlb::optimize::{Problem, evaluate};
use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples")
}

fn example(name: &str) -> String {
    examples().join(name).display().to_string()
}

fn sanlb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sanlb"))
        .arg("plan")
        .args(args)
        .output()
        .expect("running sanlb")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A file under cargo's scratch directory for integration tests.
fn scratch(name: &str, text: &str) -> String {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("plan_cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the scratch directory");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a scratch file");
    path.display().to_string()
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "sanlb failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("JSON output")
}

/// The JSON output is consistent with the problem: the assignment in input
/// order, the cost and loads of that assignment.
fn check_against(p: &Problem, out: &Value) {
    let assignment = out["assignment"].as_array().expect("an assignment array");
    assert_eq!(assignment.len(), p.routes.len());
    let mut indices = Vec::new();
    for (entry, route) in assignment.iter().zip(&p.routes) {
        assert_eq!(entry["target"], route.target.to_string());
        assert_eq!(entry["host"], serde_json::to_value(route.host).unwrap());
        let name = entry["gateway"].as_str().expect("a gateway name");
        indices.push(
            p.gateways
                .iter()
                .position(|g| g.name == name)
                .expect("a known gateway"),
        );
    }
    let e = evaluate(p, &indices).expect("a valid assignment");
    assert_eq!(out["cost"].as_f64(), Some(e.cost));
    assert_eq!(out["var_norm"].as_f64(), Some(e.var_norm));
    assert_eq!(out["moves"].as_u64(), Some(e.moves as u64));
    let loads = out["loads"].as_object().expect("loads by gateway");
    let names: Vec<&str> = loads.keys().map(String::as_str).collect();
    let want: Vec<&str> = p.gateways.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, want, "loads in gateway order");
    for (g, l) in p.gateways.iter().zip(&e.loads) {
        assert_eq!(loads[&g.name].as_f64(), Some(*l));
    }
}

#[test]
fn plans_the_example_problem_and_proves_it() {
    let path = example("problem.json");
    let p: Problem =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("the example");
    let out = json(&sanlb(&["--problem", &path, "--json"]));
    check_against(&p, &out);
    assert_eq!(out["optimal"], true);
    assert_eq!(out["solver"], "exact");
    // gw4 is drained and 198.18.1.12 may only use gw1 or gw2.
    assert_eq!(out["loads"]["gw4"], 0.0);
    let g12 = &out["assignment"][2]["gateway"];
    assert!(g12 == "gw1" || g12 == "gw2", "{g12}");
}

#[test]
fn the_table_shows_loads_moves_and_figures() {
    let o = sanlb(&["--problem", &example("problem.json")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "GATEWAY",
        "drained",
        "█",
        "ROUTE",
        "198.18.1.14",
        "var_norm",
        "moves",
        "cost",
        "solver exact — proven optimal",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
    // The drained gateway's route must move: a row "198.18.1.14 ... gw4 ...".
    let row = text
        .lines()
        .find(|l| l.starts_with("198.18.1.14"))
        .expect("the drained route's move");
    assert!(row.contains("gw4"), "{row}");
}

#[test]
fn weights_on_the_command_line_override_the_file() {
    // A move price no imbalance can pay for: nothing moves but the route on
    // the drained gateway, which must.
    let out = json(&sanlb(&[
        "--problem",
        &example("problem.json"),
        "--w-change",
        "1000",
        "--json",
    ]));
    assert_eq!(out["moves"], 1);
}

#[test]
fn traffic_matrix_plans_are_a_fixed_point() {
    let args = [
        "--traffic",
        &example("traffic.csv"),
        "--gateways",
        &example("gateways.json"),
    ];
    let first = sanlb(
        &[
            &args[..],
            &["--current", &example("current.json"), "--json"],
        ]
        .concat(),
    );
    let first_out = json(&first);
    assert_eq!(first_out["optimal"], true);
    assert!(first_out["moves"].as_u64().unwrap() > 0);
    assert_eq!(first_out["assignment"].as_array().unwrap().len(), 8);
    // Planning again from the plan moves nothing: it is already optimal.
    let again = scratch("plan.json", &stdout(&first));
    let second = json(&sanlb(
        &[&args[..], &["--current", &again, "--json"]].concat(),
    ));
    assert_eq!(second["moves"], 0);
    assert_eq!(second["assignment"], first_out["assignment"]);
}

#[test]
fn pair_mode_routes_every_cell() {
    let out = json(&sanlb(&[
        "--traffic",
        &example("traffic.csv"),
        "--gateways",
        &example("gateways.json"),
        "--pairs",
        "--solver",
        "greedy",
        "--json",
    ]));
    let assignment = out["assignment"].as_array().unwrap();
    assert_eq!(assignment.len(), 4 * 8);
    assert_eq!(assignment[0]["host"], "198.18.0.1");
    assert_eq!(assignment[1]["target"], "198.18.1.11");
    assert_eq!(out["solver"], "greedy");
}

/// Runs sanlb on bad input: exit code 2 and a message containing `want`.
fn rejects(args: &[&str], want: &[&str]) {
    let o = sanlb(args);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout {}\nstderr {}",
        stdout(&o),
        stderr(&o)
    );
    let err = stderr(&o);
    for w in want {
        assert!(err.contains(w), "{w:?} missing from {err:?}");
    }
    assert!(o.stdout.is_empty());
}

#[test]
fn bad_input_exits_2_naming_file_route_and_reason() {
    let gws = example("gateways.json");
    let unknown = scratch(
        "unknown.json",
        r#"[{"target":"198.18.1.10","host":null,"gateway":"gw9"}]"#,
    );
    rejects(
        &[
            "--traffic",
            &example("traffic.csv"),
            "--gateways",
            &gws,
            "--current",
            &unknown,
        ],
        &["unknown.json", "198.18.1.10", "unknown gateway \"gw9\""],
    );
    let negative = scratch("negative.csv", "h,198.18.1.1\n198.18.0.1,-5\n");
    rejects(
        &["--traffic", &negative, "--gateways", &gws],
        &["negative.csv", "line 2", "198.18.0.1→198.18.1.1", "\"-5\""],
    );
    let nan = scratch("nan.csv", "h,198.18.1.1\n198.18.0.1,NaN\n");
    rejects(
        &["--traffic", &nan, "--gateways", &gws],
        &["nan.csv", "198.18.0.1→198.18.1.1"],
    );
    let duplicate = scratch(
        "duplicate.json",
        r#"{"gateways":[{"name":"gw1"}],"routes":[
            {"target":"198.18.1.1","rate":1},{"target":"198.18.1.1","rate":2}]}"#,
    );
    rejects(
        &["--problem", &duplicate],
        &["duplicate.json", "198.18.1.1", "listed twice"],
    );
    let negative_rate = scratch(
        "negative.json",
        r#"{"gateways":[{"name":"gw1"}],"routes":[{"target":"198.18.1.3","rate":-1}]}"#,
    );
    rejects(
        &["--problem", &negative_rate],
        &["negative.json", "198.18.1.3", "invalid rate -1"],
    );
    let malformed = scratch(
        "malformed.json",
        r#"{"gateways":[{"name":"gw1"}],"routes":["#,
    );
    rejects(&["--problem", &malformed], &["malformed.json", "line 1"]);
    let unreachable = scratch(
        "unreachable.json",
        r#"{"gateways":[{"name":"gw1"},{"name":"gw2","capacity":0}],
            "routes":[{"target":"198.18.1.4","rate":1,"allowed":["gw2"]}]}"#,
    );
    rejects(
        &["--problem", &unreachable],
        &[
            "unreachable.json",
            "198.18.1.4",
            "no allowed gateway with capacity > 0",
        ],
    );
    rejects(
        &["--problem", "/nonexistent/sanlb-plan.json"],
        &["/nonexistent/sanlb-plan.json"],
    );
    rejects(
        &["--problem", &example("problem.json"), "--w-change", "-1"],
        &["--w-change -1"],
    );
    let bad_weight = scratch(
        "weight.json",
        r#"{"gateways":[{"name":"gw1"}],"routes":[],"w_var":-2}"#,
    );
    rejects(&["--problem", &bad_weight], &["weight.json", "w_var = -2"]);
}

#[test]
fn usage_errors_exit_2_and_help_documents_the_formats() {
    let o = sanlb(&["--traffic", &example("traffic.csv")]);
    assert_eq!(o.status.code(), Some(2), "--traffic needs --gateways");
    let o = sanlb(&[]);
    assert_eq!(o.status.code(), Some(2), "an input is required");
    let help = stdout(&sanlb(&["--help"]));
    for want in [
        "--gateways FILE   JSON array",
        "--current FILE    JSON array",
        "Exit status",
    ] {
        assert!(help.contains(want), "{want:?} missing from\n{help}");
    }
}

/// Issue 11, item 7: `sanlb plan` exited 101 (a panic) for capacities
/// {1e200, 1} or {1e308, 1}, or 5 routes at rate 1e-160, and rates ≥ 1e160
/// gave NaN costs reported as "proven optimal". Now a span of capacities no
/// float can carry is bad input (exit 2, naming the gateway), and extreme
/// rates plan with finite figures.
#[test]
fn regression_11_7_extreme_numbers_are_planned_or_refused_never_a_panic() {
    for big in ["1e200", "1e308"] {
        let p = scratch(
            &format!("span-{big}.json"),
            &format!(
                r#"{{"gateways":[{{"name":"big","capacity":{big}}},{{"name":"small","capacity":1}}],
                   "routes":[{{"target":"198.18.1.1","rate":1}}]}}"#
            ),
        );
        let o = sanlb(&["--problem", &p]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("\"small\": capacity 1 is more than"),
            "{}",
            stderr(&o)
        );
    }
    for rate in ["1e-160", "1e160", "1e300"] {
        let routes: Vec<String> = (1..=5)
            .map(|i| format!(r#"{{"target":"198.18.1.{i}","rate":{rate},"current":"a"}}"#))
            .collect();
        let p = scratch(
            &format!("rates-{rate}.json"),
            &format!(
                r#"{{"gateways":[{{"name":"a"}},{{"name":"b"}}],"routes":[{}]}}"#,
                routes.join(",")
            ),
        );
        let o = sanlb(&["--problem", &p, "--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let cost = v["cost"]
            .as_f64()
            .expect("a finite cost (NaN prints as null)");
        let var = v["var_norm"].as_f64().expect("a finite var_norm");
        // 5 equal routes on 2 gateways: 3 + 2 at best (var_norm 0.04), one
        // or two moves of 0.01 each.
        assert!((var - 0.04).abs() < 1e-9, "rate {rate}: var_norm {var}");
        assert!(cost.is_finite() && cost > 0.04, "rate {rate}: cost {cost}");
    }
}
