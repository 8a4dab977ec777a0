//! The example sequence of Go Machinery's example program, with expected results.

use std::time::{Duration, Instant};

use machinery::{Chain, Chord, Error, Group, Result, Server, Signature};

fn add(a: i64, b: i64) -> Signature {
    Signature::new("add").arg(a).arg(b)
}

fn group() -> Group {
    Group::new(vec![add(1, 1), add(2, 2), add(5, 6)])
}

fn report(step: usize, total: usize, what: &str, got: &str, ok: bool, took: Duration) -> bool {
    let mark = if ok { "ok" } else { "WRONG" };
    println!("[{step:>2}/{total}] {what:<58} = {got:<22} {mark} ({took:.2?})");
    ok
}

/// Send every example and check its result; prints one line per step.
///
/// # Errors
/// Infrastructure errors; a wrong result is reported and counted, then an error at the end.
pub async fn run_all(server: &Server, skip_long: bool, timeout: Duration) -> Result<()> {
    let total = if skip_long { 9 } else { 10 };
    let mut good = 0usize;
    let mut step = 0usize;
    let mut next = || {
        step += 1;
        step
    };

    let t = Instant::now();
    let v: i64 = server.send_task(add(1, 1)).await?.get_as(timeout).await?;
    good += usize::from(report(
        next(),
        total,
        "add(1, 1)",
        &v.to_string(),
        v == 2,
        t.elapsed(),
    ));

    let t = Instant::now();
    let v: i64 = server
        .send_task(Signature::new("sum_ints").arg(vec![1i64, 2]))
        .await?
        .get_as(timeout)
        .await?;
    good += usize::from(report(
        next(),
        total,
        "sum_ints([1, 2])",
        &v.to_string(),
        v == 3,
        t.elapsed(),
    ));

    let t = Instant::now();
    let v: f64 = server
        .send_task(Signature::new("sum_floats").arg(vec![1.5f64, 2.7]))
        .await?
        .get_as(timeout)
        .await?;
    good += usize::from(report(
        next(),
        total,
        "sum_floats([1.5, 2.7])",
        &v.to_string(),
        (v - 4.2).abs() < 1e-9,
        t.elapsed(),
    ));

    let t = Instant::now();
    let v: String = server
        .send_task(Signature::new("concat").arg(vec!["foo", "bar"]))
        .await?
        .get_as(timeout)
        .await?;
    good += usize::from(report(
        next(),
        total,
        "concat([\"foo\", \"bar\"])",
        &format!("{v:?}"),
        v == "foobar",
        t.elapsed(),
    ));

    let t = Instant::now();
    let v: Vec<String> = server
        .send_task(Signature::new("split").arg("foo"))
        .await?
        .get_as(timeout)
        .await?;
    good += usize::from(report(
        next(),
        total,
        "split(\"foo\")",
        &format!("{v:?}"),
        v == ["f", "o", "o"],
        t.elapsed(),
    ));

    let t = Instant::now();
    let results = server.send_group(group(), 0).await?;
    let mut v = Vec::new();
    for r in &results {
        v.push(r.get_as::<i64>(timeout).await?);
    }
    good += usize::from(report(
        next(),
        total,
        "group add(1, 1) add(2, 2) add(5, 6)",
        &format!("{v:?}"),
        v == [2, 4, 11],
        t.elapsed(),
    ));

    let t = Instant::now();
    let v: i64 = server
        .send_chord(Chord::new(group(), Signature::new("multiply")), 0)
        .await?
        .get_as(timeout)
        .await?;
    good += usize::from(report(
        next(),
        total,
        "chord of that group -> multiply",
        &v.to_string(),
        v == 88,
        t.elapsed(),
    ));

    let t = Instant::now();
    let chain = Chain::new(vec![
        add(1, 1),
        add(2, 2),
        add(5, 6),
        Signature::new("multiply").arg(4i64),
    ])?;
    let v: i64 = server.send_chain(chain).await?.get_as(timeout).await?;
    good += usize::from(report(
        next(),
        total,
        "chain add(1, 1) -> add(2, 2) -> add(5, 6) -> multiply(4)",
        &v.to_string(),
        v == 68,
        t.elapsed(),
    ));

    let t = Instant::now();
    let r = server.send_task(Signature::new("panic_task")).await?;
    let (got, ok) = match r.get_with_timeout(timeout, Duration::from_millis(5)).await {
        Err(Error::TaskFailed(msg)) => (format!("FAILURE {msg:?}"), msg == "oops"),
        Ok(v) => (format!("SUCCESS {v:?}"), false),
        Err(e) => return Err(e),
    };
    good += usize::from(report(
        next(),
        total,
        "panic_task() fails",
        &got,
        ok,
        t.elapsed(),
    ));

    if !skip_long {
        let t = Instant::now();
        let r = server
            .send_task(Signature::new("long_running_task"))
            .await?;
        r.get_with_timeout(
            timeout.max(Duration::from_secs(30)),
            Duration::from_millis(20),
        )
        .await?;
        good += usize::from(report(
            next(),
            total,
            "long_running_task() (about 10 s)",
            "SUCCESS",
            true,
            t.elapsed(),
        ));
    }

    if good == total {
        println!("all {total} results correct");
        Ok(())
    } else {
        Err(Error::TaskFailed(format!(
            "{} of {total} results were wrong",
            total - good
        )))
    }
}
