//! The tasks of Go Machinery's example program, used by the `machinery` CLI, the quickstart
//! and the integration tests.

use std::time::Duration;

use machinery::{Result, Server, TaskContext, TaskError, Variadic};

/// Sum of every argument (Go: `func Add(args ...int64) (int64, error)`).
pub async fn add(Variadic(args): Variadic<i64>) -> Result<i64, TaskError> {
    args.iter()
        .try_fold(0i64, |acc, v| acc.checked_add(*v))
        .ok_or_else(|| TaskError::fatal("add: integer overflow"))
}

/// Product of every argument.
pub async fn multiply(Variadic(args): Variadic<i64>) -> Result<i64, TaskError> {
    args.iter()
        .try_fold(1i64, |acc, v| acc.checked_mul(*v))
        .ok_or_else(|| TaskError::fatal("multiply: integer overflow"))
}

/// Sum of a slice of integers.
pub async fn sum_ints(numbers: Vec<i64>) -> Result<i64, TaskError> {
    add(Variadic(numbers)).await
}

/// Sum of a slice of floats.
pub async fn sum_floats(numbers: Vec<f64>) -> Result<f64, TaskError> {
    Ok(numbers.iter().sum())
}

/// Concatenation of strings.
pub async fn concat(strs: Vec<String>) -> Result<String, TaskError> {
    Ok(strs.concat())
}

/// The characters of a string.
pub async fn split(s: String) -> Result<Vec<String>, TaskError> {
    Ok(s.chars().map(String::from).collect())
}

/// The length in bytes of a string (`machinery bench rss` sends a 10 MB one: a big argument
/// and a small result).
pub async fn length(s: String) -> Result<i64, TaskError> {
    i64::try_from(s.len()).map_err(|_| TaskError::fatal("length: too long"))
}

/// Panics with "oops" (the worker turns it into a task failure).
pub async fn panic_task() -> Result<String, TaskError> {
    panic!("oops")
}

/// Runs for about ten seconds; stops early if the worker quits at once.
pub async fn long_running_task(ctx: TaskContext) -> Result<(), TaskError> {
    for i in 0..10 {
        tokio::select! {
            _ = ctx.cancellation().cancelled() => return Err(TaskError::fatal("cancelled")),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        tracing::info!(step = i + 1, of = 10, "long running task");
    }
    Ok(())
}

/// Returns only an error (Go: `func() error`).
pub async fn return_just_error() -> Result<(), TaskError> {
    Err(TaskError::failed("Test error"))
}

/// Returns two values.
pub async fn return_multiple_values(a: String, b: String) -> Result<(String, String), TaskError> {
    Ok((a, b))
}

/// Register every example task on `server`.
///
/// # Errors
/// Never in practice (names are fixed and non-empty).
pub fn register(server: &Server) -> Result<()> {
    server.register_task("add", add)?;
    server.register_task("multiply", multiply)?;
    server.register_task("sum_ints", sum_ints)?;
    server.register_task("sum_floats", sum_floats)?;
    server.register_task("concat", concat)?;
    server.register_task("split", split)?;
    server.register_task("length", length)?;
    server.register_task("panic_task", panic_task)?;
    server.register_task("long_running_task", long_running_task)?;
    server.register_task("return_just_error", return_just_error)?;
    server.register_task("return_multiple_values", return_multiple_values)?;
    Ok(())
}
