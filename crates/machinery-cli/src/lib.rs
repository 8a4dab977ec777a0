//! The library half of the `machinery` command line: the example tasks it registers, shared
//! with the quickstart and the integration tests. The command itself is `src/main.rs`.

pub mod example_tasks;
