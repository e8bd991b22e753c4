//! `mpconnect-floor BODIES EVENTS_PER_BODY SECONDS`: the floor as a plain program, on the
//! system allocator (no `#[global_allocator]` here, unlike `mpconnect`). Prints events/s.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, events, seconds] = args.as_slice() else {
        eprintln!("usage: mpconnect-floor BODIES EVENTS_PER_BODY SECONDS");
        return ExitCode::from(2);
    };
    let (Ok(events), Some(seconds)) = (
        events.parse::<usize>(),
        seconds
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0),
    ) else {
        eprintln!("mpconnect-floor: EVENTS_PER_BODY is a count, SECONDS a positive number");
        return ExitCode::from(2);
    };
    let bodies = match std::fs::read(path).map(|file| mpconnect_floor::read_bodies(&file)) {
        Ok(Some(bodies)) => bodies,
        Ok(None) => {
            eprintln!("mpconnect-floor: {path} is cut short");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("mpconnect-floor: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rate =
        mpconnect_floor::events_per_second(&bodies, events, Duration::from_secs_f64(seconds));
    println!("{rate:.0}");
    ExitCode::SUCCESS
}
