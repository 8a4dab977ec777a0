//! Task results: what a task function may return ([`IntoResults`]) and how results are read
//! back ([`FromResults`]).

use super::{ArgError, FromGoValue, GoValue, IntoGoValue};
use crate::state::TaskResult;

/// The return value of a task: `()`, one [`IntoGoValue`] or a tuple of up to six of them.
pub trait IntoResults {
    /// The values in order.
    fn into_results(self) -> Vec<GoValue>;
}

impl IntoResults for () {
    fn into_results(self) -> Vec<GoValue> {
        Vec::new()
    }
}

impl<T: IntoGoValue> IntoResults for T {
    fn into_results(self) -> Vec<GoValue> {
        vec![self.into_go_value()]
    }
}

/// Read a task's results back: `()` (no results), one [`FromGoValue`] (exactly one result),
/// a tuple of up to six (exactly that many), or `Vec<GoValue>` (any number).
pub trait FromResults: Sized {
    /// Convert.
    ///
    /// # Errors
    /// When the count or a type does not fit.
    fn from_results(results: &[TaskResult]) -> Result<Self, ArgError>;
}

fn expect_count(results: &[TaskResult], expected: usize) -> Result<(), ArgError> {
    if results.len() == expected {
        return Ok(());
    }
    let plural = if expected == 1 { "" } else { "s" };
    Err(ArgError::new(format!(
        "expected {expected} result{plural}, got {}",
        results.len()
    )))
}

fn result_at<T: FromGoValue>(results: &[TaskResult], i: usize) -> Result<T, ArgError> {
    results[i]
        .decode()
        .and_then(T::from_go_value)
        .map_err(|e| ArgError::new(format!("result {i}: {e}")))
}

impl FromResults for () {
    fn from_results(results: &[TaskResult]) -> Result<Self, ArgError> {
        expect_count(results, 0)
    }
}

impl<T: FromGoValue> FromResults for T {
    fn from_results(results: &[TaskResult]) -> Result<Self, ArgError> {
        expect_count(results, 1)?;
        result_at(results, 0)
    }
}

impl FromResults for Vec<GoValue> {
    fn from_results(results: &[TaskResult]) -> Result<Self, ArgError> {
        (0..results.len()).map(|i| result_at(results, i)).collect()
    }
}

macro_rules! tuple_results {
    ($($n:literal => ($($t:ident $i:tt),+);)*) => {$(
        impl<$($t: IntoGoValue),+> IntoResults for ($($t,)+) {
            fn into_results(self) -> Vec<GoValue> {
                vec![$(self.$i.into_go_value()),+]
            }
        }

        impl<$($t: FromGoValue),+> FromResults for ($($t,)+) {
            fn from_results(results: &[TaskResult]) -> Result<Self, ArgError> {
                expect_count(results, $n)?;
                Ok(($(result_at::<$t>(results, $i)?,)+))
            }
        }
    )*};
}

tuple_results! {
    1 => (A 0);
    2 => (A 0, B 1);
    3 => (A 0, B 1, C 2);
    4 => (A 0, B 1, C 2, D 3);
    5 => (A 0, B 1, C 2, D 3, E 4);
    6 => (A 0, B 1, C 2, D 3, E 4, F 5);
}
