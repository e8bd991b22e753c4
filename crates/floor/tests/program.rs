//! `mpconnect-floor` as `mpconnect bench` runs it: a file of bodies in, events/s out.

use std::process::Command;

fn floor_program() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mpconnect-floor"))
}

#[test]
fn it_prints_the_events_per_second_of_the_bodies_it_is_given() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bodies");
    let body = br#"[{"events":[{"data":{"event_name":"a"}},{"data":{}}]}]"#.to_vec();
    std::fs::write(&path, mpconnect_floor::write_bodies(&[body.clone(), body])).expect("write");
    let out = floor_program()
        .args([path.to_str().expect("utf-8 path"), "2", "0.05"])
        .output()
        .expect("run mpconnect-floor");
    assert!(out.status.success(), "{out:?}");
    let rate: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a number on stdout");
    assert!(rate > 0.0, "{rate}");
}

#[test]
fn a_cut_file_or_a_bad_argument_fails_with_a_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bodies");
    let file = mpconnect_floor::write_bodies(&[b"[1,2,3]".to_vec()]);
    std::fs::write(&path, &file[..file.len() - 1]).expect("write");
    let path = path.to_str().expect("utf-8 path");

    let cut = floor_program()
        .args([path, "1", "0.05"])
        .output()
        .expect("run");
    assert_eq!(cut.status.code(), Some(1), "{cut:?}");
    assert!(
        String::from_utf8_lossy(&cut.stderr).contains("cut short"),
        "{cut:?}"
    );

    for args in [[path, "1", "0"], [path, "x", "1"], [path, "1", "NaN"]] {
        let bad = floor_program().args(args).output().expect("run");
        assert_eq!(bad.status.code(), Some(2), "{args:?}: {bad:?}");
        assert!(bad.stdout.is_empty(), "{args:?}: {bad:?}");
    }
}
