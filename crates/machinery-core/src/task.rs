//! Task functions: plain async Rust functions with typed parameters, type-erased for the
//! registry.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::types::{ArgError, FromGoValue, GoValue, IntoResults};
use crate::{Arg, Headers, Signature, TaskError};

/// What a running task may want to know about itself. Take it as the first parameter:
/// `async fn f(ctx: TaskContext, a: i64) -> Result<i64, String>`.
#[derive(Debug, Clone)]
pub struct TaskContext {
    signature: Arc<Signature>,
    cancel: CancellationToken,
}

impl TaskContext {
    pub(crate) fn new(signature: Arc<Signature>, cancel: CancellationToken) -> Self {
        TaskContext { signature, cancel }
    }

    /// The signature being run (UUID, name, retry count, group, ...).
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The task's UUID.
    pub fn uuid(&self) -> &str {
        &self.signature.uuid
    }

    /// The task's headers (trace context and user headers).
    pub fn headers(&self) -> Option<&Headers> {
        self.signature.headers.as_ref()
    }

    /// Cancelled when the task's time limit is reached or the worker quits at once.
    /// Long-running tasks should check it (`select!` on `cancelled()`) and return early.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the task has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// The future a type-erased task returns.
pub type TaskFuture = Pin<Box<dyn Future<Output = Result<Vec<GoValue>, TaskError>> + Send>>;

/// What a task function may return: `Result<T, E>` with `T` = `()`, one supported value or a
/// tuple of them and `E` any `Display` error (a [`TaskError`] keeps its retry-later / fatal
/// meaning, also inside a `Box<dyn Error>`).
pub trait IntoTaskOutput {
    /// Convert to results or a task error.
    ///
    /// # Errors
    /// The task's own error.
    fn into_task_output(self) -> Result<Vec<GoValue>, TaskError>;
}

impl<T: IntoResults, E: fmt::Display + Send + 'static> IntoTaskOutput for Result<T, E> {
    fn into_task_output(self) -> Result<Vec<GoValue>, TaskError> {
        self.map(IntoResults::into_results).map_err(to_task_error)
    }
}

fn to_task_error<E: fmt::Display + Send + 'static>(e: E) -> TaskError {
    let any: &dyn Any = &e;
    if let Some(t) = any.downcast_ref::<TaskError>() {
        return t.clone();
    }
    if let Some(boxed) = any.downcast_ref::<Box<dyn std::error::Error + Send + Sync>>()
        && let Some(t) = boxed.downcast_ref::<TaskError>()
    {
        return t.clone();
    }
    TaskError::Failed(e.to_string())
}

/// A function that can be registered as a task. Implemented for async functions (and
/// closures returning futures) of up to 8 typed parameters, optionally preceded by a
/// [`TaskContext`]. `M` is a marker that keeps the implementations apart; callers never name it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be registered as a task",
    label = "not a task function",
    note = "a task is an `async fn` (or a closure returning a `Send` future) taking up to 8 owned parameters, optionally preceded by `TaskContext`",
    note = "parameters are owned Go-convertible types: i64/i32/.../u64, f64/f32, bool, String, Vec<T>, Vec<u8>, GoValue, or a single `Variadic<T>` (no `&str` / references)",
    note = "it returns `Result<T, E>`: T is `()`, one such value or a tuple of them; E is any `Display` error (e.g. `String`, `TaskError` for retry-later / fatal)"
)]
pub trait TaskHandler<M>: Send + Sync + 'static {
    /// The Rust names of the typed parameters, for error messages.
    fn param_types(&self) -> Vec<&'static str>;

    /// Convert the arguments and start the task.
    ///
    /// # Errors
    /// When the number or types of the arguments do not fit the function.
    fn call(&self, ctx: TaskContext, args: &[Arg]) -> Result<TaskFuture, ArgError>;
}

/// Marker: the function takes no [`TaskContext`].
#[derive(Debug)]
pub struct NoContext;
/// Marker: the function takes a [`TaskContext`] first.
#[derive(Debug)]
pub struct WithContext;

fn check_arity(args: &[Arg], params: &[&'static str]) -> Result<(), ArgError> {
    if args.len() == params.len() {
        return Ok(());
    }
    let received: Vec<&str> = args.iter().map(|a| a.type_name.as_str()).collect();
    Err(ArgError::new(format!(
        "wrong number of arguments: expected {} ({}), received {} ({})",
        params.len(),
        params.join(", "),
        args.len(),
        received.join(", ")
    )))
}

fn convert<T: FromGoValue>(index: usize, arg: &Arg) -> Result<T, ArgError> {
    arg.get::<T>().map_err(|e| {
        ArgError::new(format!(
            "argument {} (Go type {}): expected {}: {}",
            index + 1,
            arg.type_name,
            T::RUST_TYPE,
            e.message
        ))
    })
}

macro_rules! impl_handler {
    ($($A:ident),*) => {
        #[allow(non_snake_case, unused_mut, unused_variables, unused_assignments)]
        impl<F, Fut, R, $($A,)*> TaskHandler<(NoContext, $($A,)*)> for F
        where
            F: Fn($($A),*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoTaskOutput,
            $($A: FromGoValue + Send + 'static,)*
        {
            fn param_types(&self) -> Vec<&'static str> {
                vec![$($A::RUST_TYPE),*]
            }

            fn call(&self, _ctx: TaskContext, args: &[Arg]) -> Result<TaskFuture, ArgError> {
                check_arity(args, &self.param_types())?;
                let mut i = 0usize;
                $(
                    let $A = convert::<$A>(i, &args[i])?;
                    i += 1;
                )*
                let fut = (self)($($A),*);
                Ok(Box::pin(async move { fut.await.into_task_output() }))
            }
        }

        #[allow(non_snake_case, unused_mut, unused_variables, unused_assignments)]
        impl<F, Fut, R, $($A,)*> TaskHandler<(WithContext, $($A,)*)> for F
        where
            F: Fn(TaskContext, $($A),*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoTaskOutput,
            $($A: FromGoValue + Send + 'static,)*
        {
            fn param_types(&self) -> Vec<&'static str> {
                vec![$($A::RUST_TYPE),*]
            }

            fn call(&self, ctx: TaskContext, args: &[Arg]) -> Result<TaskFuture, ArgError> {
                check_arity(args, &self.param_types())?;
                let mut i = 0usize;
                $(
                    let $A = convert::<$A>(i, &args[i])?;
                    i += 1;
                )*
                let fut = (self)(ctx, $($A),*);
                Ok(Box::pin(async move { fut.await.into_task_output() }))
            }
        }
    };
}

impl_handler!();
impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);
impl_handler!(A1, A2, A3, A4);
impl_handler!(A1, A2, A3, A4, A5);
impl_handler!(A1, A2, A3, A4, A5, A6);
impl_handler!(A1, A2, A3, A4, A5, A6, A7);
impl_handler!(A1, A2, A3, A4, A5, A6, A7, A8);

/// All the arguments of a task, each converted to `T`: Go's variadic functions
/// (`func Add(args ...int64)`). Use it as the only typed parameter:
/// `async fn add(Variadic(args): Variadic<i64>) -> Result<i64, String>`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Variadic<T>(pub Vec<T>);

/// Marker: a variadic function without context.
#[derive(Debug)]
pub struct VariadicNoContext;
/// Marker: a variadic function with context.
#[derive(Debug)]
pub struct VariadicWithContext;

fn convert_all<T: FromGoValue>(args: &[Arg]) -> Result<Variadic<T>, ArgError> {
    args.iter()
        .enumerate()
        .map(|(i, a)| convert::<T>(i, a))
        .collect::<Result<Vec<T>, ArgError>>()
        .map(Variadic)
}

impl<F, Fut, R, T> TaskHandler<(VariadicNoContext, T)> for F
where
    F: Fn(Variadic<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoTaskOutput,
    T: FromGoValue + Send + 'static,
{
    fn param_types(&self) -> Vec<&'static str> {
        vec![T::RUST_TYPE, "..."]
    }

    fn call(&self, _ctx: TaskContext, args: &[Arg]) -> Result<TaskFuture, ArgError> {
        let fut = (self)(convert_all(args)?);
        Ok(Box::pin(async move { fut.await.into_task_output() }))
    }
}

impl<F, Fut, R, T> TaskHandler<(VariadicWithContext, T)> for F
where
    F: Fn(TaskContext, Variadic<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoTaskOutput,
    T: FromGoValue + Send + 'static,
{
    fn param_types(&self) -> Vec<&'static str> {
        vec![T::RUST_TYPE, "..."]
    }

    fn call(&self, ctx: TaskContext, args: &[Arg]) -> Result<TaskFuture, ArgError> {
        let fut = (self)(ctx, convert_all(args)?);
        Ok(Box::pin(async move { fut.await.into_task_output() }))
    }
}

/// Per-task options given at registration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskOptions {
    /// Time limit for one run; overrides the worker's `task_timeout` setting.
    pub timeout: Option<Duration>,
}

impl TaskOptions {
    /// Options with a time limit.
    pub fn with_timeout(timeout: Duration) -> Self {
        TaskOptions {
            timeout: Some(timeout),
        }
    }
}

type CallFn = dyn Fn(TaskContext, &[Arg]) -> Result<TaskFuture, ArgError> + Send + Sync;

/// A type-erased registered task.
#[derive(Clone)]
pub struct Task {
    call: Arc<CallFn>,
    param_types: Vec<&'static str>,
    options: TaskOptions,
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("param_types", &self.param_types)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Task {
    /// Erase a task function.
    pub fn new<M, H: TaskHandler<M>>(handler: H) -> Self {
        let param_types = handler.param_types();
        Task {
            call: Arc::new(move |ctx, args| handler.call(ctx, args)),
            param_types,
            options: TaskOptions::default(),
        }
    }

    /// Set options (time limit, ...).
    pub fn with_options(mut self, options: TaskOptions) -> Self {
        self.options = options;
        self
    }

    /// The Rust parameter types.
    pub fn param_types(&self) -> &[&'static str] {
        &self.param_types
    }

    /// The options.
    pub fn options(&self) -> &TaskOptions {
        &self.options
    }

    /// Convert arguments and start the task.
    ///
    /// # Errors
    /// When arguments do not fit the function.
    pub fn call(&self, ctx: TaskContext, args: &[Arg]) -> Result<TaskFuture, ArgError> {
        (self.call)(ctx, args)
    }
}

/// Erase a task function for [`crate::Server::register_tasks`].
pub fn task<M, H: TaskHandler<M>>(handler: H) -> Task {
    Task::new(handler)
}
